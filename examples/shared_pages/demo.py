"""Shared pages under load: worker processes read, a controller revokes and rewrites.

The launcher creates the `SharedDomain` and a `SharedMemory` segment
holding a `GuardedMemory` of `PAGES` pages, fills every page, and starts
``python -m uvicorn ... app:app --workers 4`` on a free localhost port: each
worker attaches to both by name (`app.py`).  For a few seconds, several
httpx clients read random pages while a controller repeatedly

1. revokes a few pages through ``POST /control/revoke`` with ``"wipe":
   true``: whichever worker takes the request commits the
   `BitmapTransaction` and, as soon as the commit returns, overwrites the
   pages with a scribble, as a pool does before it hands freed pages to a
   new tenant (safe only because the revoke waited for every reader in
   every worker),
2. rewrites them, directly in the shared memory, with a new generation of
   their content, and
3. grants them back through ``POST /control/grant``.

Each control request opens a new connection, so the commits come from all
the workers in turn.

The invariant: while a read section is open, in any worker, no page that
was read in it changes in shared memory.  A revoke returns only after every
section that could have read the page has ended, and only then is the page
wiped and rewritten; so a change seen from inside a section means a revoke
returned too early.  It is checked live three ways: every page served must
be whole (no scribbled bytes, no mix of two versions: each page carries a
checksum, `pages.problem()`); every request's worker compares, still inside
its section, the page in shared memory with what it served
(``x-page-intact``); and each worker's sentinel holds sections of several
milliseconds and does the same comparison for every page it read.  The run
prints its verdict and exits 0 if the invariant held, 1 if not; it always
stops the workers and removes the domain and the segment, Ctrl-C included.

    python examples/shared_pages/demo.py                  # 5 s, 4 workers
    python examples/shared_pages/demo.py --busted         # negative control: must fail

``--busted`` makes the workers' grace periods stop waiting for readers
(`aiorcu.testing.set_busted`, in the processes that revoke), and the same
check catches the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import httpx
from app import SENTINEL_HOLD_SECONDS
from pages import (
    BUFFER_SIZE,
    DATA_OFFSET,
    ENV_BUSTED,
    ENV_DOMAIN,
    ENV_MEMORY,
    PAGE_SIZE,
    PAGES,
    page_content,
    problem,
    view,
)

import aiorcu

HERE = Path(__file__).resolve().parent
MAX_THREADS = 64  # reader slots of the whole domain: one per worker thread that reads
STARTUP_SECONDS = 60.0  # hang guard for the workers' start on a busy machine
STOP_SECONDS = 20.0  # how long the workers get to shut down cleanly
RECYCLE = 25  # a client asks for a new connection after this many requests...
# ... so that the kernel spreads the connections over the workers' accept().
HOLD_SECONDS = 0.001  # how long the "device" keeps a revoked page
PAUSE_SECONDS = 0.002  # between the controller's rounds
EXAMPLES = 5  # violations shown


class DemoError(Exception):
    """The demo could not run (the workers did not start, a port was taken...)."""


@dataclass
class DemoResult:
    """What the run saw, from the clients, the controller and the domain."""

    seconds: float
    url: str
    workers: int
    busted: bool
    load_seconds: float = 0.0  # measured: from the first request to the last answer
    domain: str = ""
    memory: str = ""  # the SharedMemory segment's name
    backend: str = ""
    processes_attached: int = 0
    reads: int = 0
    reads_by_pid: Counter[int] = field(default_factory=Counter)
    denials: int = 0
    torn: int = 0  # responses that failed the page's checksum (client side)
    changed: int = 0  # pages that changed under a request's section (worker side)
    # Per worker pid, its sentinel's latest (rounds, pages checked, pages changed).
    sentinels: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    sentinels_final: set[int] = field(default_factory=set)  # pids read after the load
    examples: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    revokes: int = 0
    grants: int = 0
    pages_rewritten: int = 0
    pages_wiped: int = 0
    commits_by_pid: Counter[int] = field(default_factory=Counter)
    grace_seconds: list[float] = field(default_factory=list)
    control_answers: dict[str, int] = field(default_factory=dict)
    stats: aiorcu.DomainStatistics | None = None

    @property
    def sentinel_changed(self) -> int:
        return sum(changed for _rounds, _pages, changed in self.sentinels.values())

    @property
    def violations(self) -> int:
        return self.torn + self.changed + self.sentinel_changed

    @property
    def held(self) -> bool:
        return self.violations == 0

    @property
    def ok(self) -> bool:
        """The invariant held, and the run exercised it."""
        return (
            self.held
            and not self.unexpected
            and self.reads > 0
            and self.revokes > 0
            and self.control_answers == {"malformed": 422, "past the end": 409}
            and len(self.sentinels_final) >= self.workers
        )


# -- the workers ---------------------------------------------------------------------
def listening_socket(host: str) -> socket.socket:
    """A TCP socket listening on a free port of ``host``, for the workers to share.

    The launcher binds it (no race for the port) with TCP_NODELAY, which the
    connections the workers accept inherit: uvicorn writes a response's
    headers and body separately, and without it the body would wait for the
    client's delayed ACK, about 40 ms per response.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def start_workers(
    env: dict[str, str], sock: socket.socket, workers: int
) -> subprocess.Popen[bytes]:
    """``python -m uvicorn app:app --workers N`` on ``sock``, in a process group of its own."""
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(HERE),
        "app:app",
        "--fd",
        str(sock.fileno()),
        "--workers",
        str(workers),
        "--lifespan",
        "on",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    # A session of its own: Ctrl-C reaches only the launcher, which stops the
    # workers in order, and stop_workers() can kill whatever is left.
    return subprocess.Popen(command, env=env, pass_fds=(sock.fileno(),), start_new_session=True)


def wait_until_serving(
    proc: subprocess.Popen[bytes], domain: aiorcu.SharedDomain, url: str, workers: int
) -> int:
    """Waits until every worker has attached and one answers; returns the processes attached."""
    deadline = time.monotonic() + STARTUP_SECONDS
    attached = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"uvicorn exited with status {proc.returncode} before serving")
        attached = domain.stats().processes_attached  # this process and each worker
        if attached >= 1 + workers:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/stats", timeout=5.0).status_code == 200:
                    return attached
        time.sleep(0.1)
    raise DemoError(
        f"the workers did not start within {STARTUP_SECONDS:.0f} s "
        f"({attached - 1} of {workers} attached to the domain)"
    )


def stop_workers(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to uvicorn, which stops each worker cleanly; then kills what is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group it leads, if anything outlived it
    proc.wait()


# -- the load and the controller --------------------------------------------------------
def new_client(url: str) -> httpx.AsyncClient:
    """A client whose request bodies do not wait for the server's delayed ACK either."""
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.AsyncHTTPTransport(socket_options=nodelay)
    return httpx.AsyncClient(base_url=url, timeout=30.0, transport=transport)


async def reader(url: str, seed: int, stop: asyncio.Event, result: DemoResult) -> None:
    """Reads random pages and checks each one that is served."""
    rng = random.Random(seed)
    async with new_client(url) as client:
        requests = 0
        while not stop.is_set():
            page = rng.randrange(PAGES)
            requests += 1
            # Now and then a new connection, which any worker may accept.
            headers = {"connection": "close"} if requests % RECYCLE == 0 else None
            response = await client.get(f"/pages/{page}", headers=headers)
            pid = answered(result, response)
            if response.status_code == 403:
                result.denials += 1
                continue
            if response.status_code != 200:
                result.unexpected.append(f"GET /pages/{page} -> {response.status_code}")
                continue
            result.reads += 1
            result.reads_by_pid[pid] += 1
            wrong = problem(page, response.content)
            if wrong is not None:
                result.torn += 1
                note(result, f"worker {pid} served page {page} with {wrong}")
            if response.headers.get("x-page-intact") != "1":
                result.changed += 1
                note(result, f"worker {pid}: page {page} changed while its section was open")


def answered(result: DemoResult, response: httpx.Response) -> int:
    """Records the answering worker's sentinel counters; returns its pid."""
    pid = int(response.headers.get("x-worker-pid", 0))
    counters = response.headers.get("x-sentinel")
    if counters is not None:
        rounds, pages, changed = (int(n) for n in counters.split())
        if rounds >= result.sentinels.get(pid, (0, 0, 0))[0]:  # answers may cross
            result.sentinels[pid] = (rounds, pages, changed)
    return pid


async def final_counts(url: str, result: DemoResult, attempts: int = 400) -> None:
    """Asks until every worker has answered once after the load.

    Each request opens a new connection, which any worker may accept; after
    the load no page changes any more, so these are the sentinels' final
    counts.
    """
    async with new_client(url) as client:
        for _ in range(attempts):
            final = result.sentinels_final
            if len(final) >= result.workers and final >= result.sentinels.keys():
                return
            response = await client.get("/stats", headers={"connection": "close"})
            result.sentinels_final.add(answered(result, response))


def note(result: DemoResult, example: str) -> None:
    if len(result.examples) < EXAMPLES:
        result.examples.append(example)


async def control(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    # A new connection each time: whichever worker accepts it commits.
    response = await client.post(path, json=body, headers={"connection": "close"})
    response.raise_for_status()
    return response


async def controller(
    url: str, shared: memoryview, stop: asyncio.Event, result: DemoResult, seed: int
) -> None:
    """Revokes and wipes pages, rewrites them, grants them back; in rounds."""
    rng = random.Random(seed)
    generation = [0] * PAGES
    async with new_client(url) as client:
        # The control path refuses what it cannot apply, and applies nothing then.
        malformed = await client.post("/control/revoke", json={"pages": ["3"]})
        result.control_answers["malformed"] = malformed.status_code
        too_far = await client.post("/control/revoke", json={"pages": [0, PAGES]})
        result.control_answers["past the end"] = too_far.status_code
        while not stop.is_set():
            pages = rng.sample(range(PAGES), rng.randint(1, 3))
            body = {"pages": pages, "label": f"evict-{result.revokes}", "wipe": True}
            response = await control(client, "/control/revoke", body)
            answer = response.json()
            report = aiorcu.CommitReport.model_validate(answer)
            result.revokes += 1
            result.pages_wiped += answer.get("pages_wiped", 0)
            result.grace_seconds.append(report.grace_period_seconds)
            result.commits_by_pid[answered(result, response)] += 1
            if report.pages_revoked != len(pages) or answer.get("pages_wiped") != len(pages):
                result.unexpected.append(f"revoke of {pages} answered {answer}")
            # The commit has returned: no reader in any worker is still using
            # these pages, so they are ours to rewrite.
            await asyncio.sleep(HOLD_SECONDS)
            for page in pages:
                generation[page] += 1
                content = page_content(page, generation[page])
                shared[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] = content
            result.pages_rewritten += len(pages)
            response = await control(client, "/control/grant", {"pages": pages})
            result.grants += 1
            result.commits_by_pid[answered(result, response)] += 1
            await asyncio.sleep(PAUSE_SECONDS)


async def drive(
    url: str, shared: memoryview, seconds: float, clients: int, result: DemoResult
) -> None:
    stop = asyncio.Event()
    started = time.monotonic()
    tasks = [asyncio.create_task(reader(url, 100 + i, stop, result)) for i in range(clients)]
    tasks.append(asyncio.create_task(controller(url, shared, stop, result, seed=1)))
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        stop.set()
    for task in tasks:
        await task  # raises what a task raised
    result.load_seconds = time.monotonic() - started
    await asyncio.sleep(0.05)  # the sentinels' sections that began before the last rewrite
    await final_counts(url, result)


# -- the run ---------------------------------------------------------------------------
@contextlib.contextmanager
def shared_pages(
    name: str,
) -> Iterator[tuple[aiorcu.SharedDomain, aiorcu.GuardedMemory, SharedMemory]]:
    """The domain and the filled guarded memory; closed and unlinked on the way out."""
    with contextlib.ExitStack() as stack:
        domain = aiorcu.SharedDomain(name, create=True, max_threads=MAX_THREADS)
        stack.callback(domain.close)
        stack.callback(domain.unlink)  # runs first: the name goes, then this process detaches
        shm = SharedMemory(create=True, size=BUFFER_SIZE)
        stack.callback(shm.unlink)
        stack.callback(shm.close)
        mem = aiorcu.GuardedMemory(PAGES, PAGE_SIZE, domain=domain, buffer=shm.buf, initial=True)
        stack.callback(mem.close)
        for page in range(PAGES):
            mem.write(page * PAGE_SIZE, page_content(page, 0))
        # The scribbles and the workers' check assume where the pages are.
        if bytes(view(shm)[DATA_OFFSET : DATA_OFFSET + PAGE_SIZE]) != page_content(0, 0):
            raise DemoError("the pages are not where pages.DATA_OFFSET says")
        yield domain, mem, shm


def run_demo(
    seconds: float,
    *,
    workers: int = 4,
    clients: int = 8,
    busted: bool = False,
    host: str = "127.0.0.1",
    announce: Callable[[str], None] | None = None,
) -> DemoResult:
    """Runs the workers under load for ``seconds``; always cleans up, Ctrl-C included.

    ``announce`` is called with a line once the workers serve, before the load.
    """
    name = f"shared-pages-{os.getpid()}"
    with listening_socket(host) as sock, shared_pages(name) as (domain, mem, shm):
        url = f"http://{host}:{sock.getsockname()[1]}"
        result = DemoResult(seconds, url, workers, busted, domain=name, memory=shm.name)
        result.backend = domain.backend_info().mechanism
        env = {**os.environ, ENV_DOMAIN: name, ENV_MEMORY: shm.name}
        env[ENV_BUSTED] = "1" if busted else ""
        proc = start_workers(env, sock, workers)
        shared = view(shm)[DATA_OFFSET : DATA_OFFSET + mem.size]
        try:
            result.processes_attached = wait_until_serving(proc, domain, url, workers)
            if announce is not None:
                announce(
                    f"shared_pages: {workers} workers serve on {url}, domain {name!r}, "
                    f"memory {shm.name!r}; {seconds:g} s of load (Ctrl-C stops it)"
                )
            asyncio.run(drive(url, shared, seconds, clients, result))
        finally:
            shared.release()
            stop_workers(proc)
        result.stats = domain.stats()
    return result


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else 0.0


def summary(result: DemoResult) -> list[str]:
    """The printed report; its last line (and the examples after it) is the verdict."""
    r = result
    rate = 1 / r.load_seconds if r.load_seconds > 0 else 0.0
    by_pid = ", ".join(f"{pid}: {n * rate:.0f}/s" for pid, n in sorted(r.reads_by_pid.items()))
    served_by = len(r.reads_by_pid)
    everyone = "all" if served_by == r.workers else f"only {served_by} of"
    grace_ms = [s * 1e3 for s in r.grace_seconds]
    p50, p99 = percentile(grace_ms, 0.5), percentile(grace_ms, 0.99)
    peak = max(grace_ms, default=0.0)
    commits_by = ", ".join(f"{pid}: {n}" for pid, n in sorted(r.commits_by_pid.items()))
    refused = ", ".join(f"{what} {status}" for what, status in r.control_answers.items())
    stats = r.stats
    busted = ", BUSTED grace periods" if r.busted else ""
    lines = [
        f"shared_pages: {r.load_seconds:.1f} s of load, {r.workers} worker processes on "
        f"{r.url}, shared domain {r.domain!r} ({r.backend}){busted}",
        f"  reads served    {r.reads} pages of {PAGE_SIZE} bytes, {r.reads * rate:.0f}/s; "
        f"per worker pid {by_pid} ({everyone} {r.workers} workers)",
        f"  denials         {r.denials} (403: the page was revoked)",
        f"  revokes         {r.revokes} commits ({r.pages_wiped} pages wiped as each returned), "
        f"grace period p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {peak:.3f} ms",
        f"  grants          {r.grants} commits, after {r.pages_rewritten} pages were rewritten",
        f"  control path    commits by worker pid {commits_by}; refused: {refused}",
    ]
    if stats is not None:
        lines.append(
            f"  domain          {r.processes_attached} processes attached, "
            f"{stats.grace_periods} grace periods, "
            f"{stats.dead_readers_released} dead readers released"
        )
    rounds = sum(n for n, _pages, _changed in r.sentinels.values())
    pages = sum(n for _rounds, n, _changed in r.sentinels.values())
    missing = len(r.sentinels.keys() - r.sentinels_final)
    stale = f" ({missing} from answers during the load)" if missing else ""
    lines.append(
        f"  sentinels       {len(r.sentinels)} workers{stale}: {rounds} sections of "
        f"{SENTINEL_HOLD_SECONDS * 1e3:g} ms holding {pages} pages; "
        + ", ".join(f"pid {pid}: {c} changed" for pid, (_n, _p, c) in sorted(r.sentinels.items()))
    )
    lines.extend(f"  unexpected      {problem_seen}" for problem_seen in r.unexpected[:EXAMPLES])
    lines.append(
        f"  invariant       {r.reads} pages served: {r.torn} torn or scribbled, {r.changed} "
        f"changed under a request's section; {r.sentinel_changed} changed under a sentinel's "
        f"section; violations {r.violations}: "
        + ("invariant held" if r.held else "INVARIANT VIOLATED")
    )
    lines.extend(f"    violation: {example}" for example in r.examples)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the load (default 5)")
    parser.add_argument("--workers", type=int, default=4, help="uvicorn workers (default 4)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent readers (default 8)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--busted",
        action="store_true",
        help="negative control: the workers' grace periods do not wait; the check must fail",
    )
    args = parser.parse_args(argv)
    # Ctrl-C stops the run and cleans up, even when started from a shell that
    # ignores SIGINT for background jobs; SIGTERM cleans up the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        result = run_demo(
            args.seconds,
            workers=args.workers,
            clients=args.clients,
            busted=args.busted,
            host=args.host,
            announce=lambda line: print(line, flush=True),
        )
    except DemoError as exc:
        print(f"shared_pages: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shared_pages: interrupted; workers stopped, domain and memory removed")
        return 130
    print("\n".join(summary(result)))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
