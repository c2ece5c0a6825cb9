"""The page-visibility service's harness: the live invariant check, the load, the verdict.

`service.py` promises that once a commit that revoked a page has returned, no
access to that page is still in progress.  This harness checks exactly that,
for every successful access, while the service runs:

    no access to a page completes after the commit that revoked it returned
    (until a later grant makes the page accessible again).

Each accessor takes a `time.monotonic_ns()` stamp while still inside its read
section, after each successful access (and sometimes after staying in the
section a millisecond longer, like a slow accessor).  The control plane keeps,
per page, the windows from "a revoking commit returned" to "a later grant
began"; a stamp inside a window is a violation.  `CheckedPageService` is the
service with that check; `/stats` reports it under "invariant".

`--demo` (`python examples/page_visibility/service.py --demo`, what `make
demo` runs) serves on a free port, posts random transactions with an httpx
client (plus malformed and rejected ones) for a few seconds, prints the
summary and its verdict, and exits 1 on any violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import random
import socket
import time
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn
from service import PAGE_SIZE, PAGES, Accessor, PageService, percentiles, serve
from starlette.requests import Request
from starlette.responses import JSONResponse

import aiorcu

CHUNK = 4096  # log entries (two per access) an accessor hands over at once...
HAND_OVER_NS = 500_000_000  # ... or after this long, so that old windows can be dropped
OPEN = 1 << 62  # end of a revocation window that no grant has closed yet

T = TypeVar("T")


class LoggedAccessor(Accessor):
    """An accessor that also logs its successful accesses for the check.

    Only the accessor writes its log; the check takes it only through the
    service's queue, in chunks the accessor no longer touches.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        chunks: queue.SimpleQueue[tuple[LoggedAccessor, array[int], int]],
        now: int,
    ) -> None:
        super().__init__(name, kind)
        # (page, monotonic ns taken inside the read section after the access) pairs
        self.log: array[int] = array("q")
        # Hand the log over at this time at the latest.
        self.hand_over_by = now + HAND_OVER_NS
        self._chunks = chunks

    def accessed(self, page: int, done: int) -> None:
        self.log.append(page)
        self.log.append(done)
        self.accesses += 1
        if len(self.log) >= CHUNK or done > self.hand_over_by:
            self.hand_over()

    def stopped(self) -> None:
        self.hand_over()

    def hand_over(self) -> None:
        now = time.monotonic_ns()
        self._chunks.put((self, self.log, now))
        self.log = array("q")
        self.hand_over_by = now + HAND_OVER_NS


class Ledger:
    """Per page, the windows during which no access may complete.

    A window opens when a commit that revoked the page has returned (for a
    ``sync="never"`` commit: once a grace period that began after it
    returned has completed, the opt-out's own contract) and closes when a
    later commit that grants the page back *begins*.  Both ends are
    conservative: a legal access never falls inside a window.  Used on the
    event loop's thread only.
    """

    def __init__(self, pages: int) -> None:
        self.starts: list[list[int]] = [[] for _ in range(pages)]
        self.ends: list[list[int]] = [[] for _ in range(pages)]
        self.pending: dict[int, int] = {}  # page -> grace-period token (sync="never")

    def revoked(self, pages: list[int], returned_at: int) -> None:
        for page in pages:
            self.pending.pop(page, None)
            self.starts[page].append(returned_at)
            self.ends[page].append(OPEN)

    def revoked_unsynchronized(self, pages: list[int], token: int) -> None:
        for page in pages:
            self.pending[page] = token

    def settle(self, poll: Callable[[int], bool]) -> None:
        """Opens the windows of ``sync="never"`` revocations whose grace period is over."""
        done = [page for page, token in self.pending.items() if poll(token)]
        if done:
            self.revoked(done, time.monotonic_ns())  # taken after the polls returned True

    def granting(self, pages: list[int], begins_at: int) -> list[tuple[int, int | None]]:
        """Closes the pages' windows at ``begins_at``; returns what `undo()` needs."""
        undo: list[tuple[int, int | None]] = []
        for page in pages:
            if page in self.pending:
                undo.append((page, self.pending.pop(page)))
            elif self.ends[page] and self.ends[page][-1] == OPEN:
                self.ends[page][-1] = begins_at
                undo.append((page, None))
        return undo

    def undo(self, undo: list[tuple[int, int | None]]) -> None:
        """Reopens what `granting()` closed: the commit applied nothing."""
        for page, token in undo:
            if token is not None:
                self.pending[page] = token
            else:
                self.ends[page][-1] = OPEN

    def forget_before(self, at: int) -> None:
        """Drops the windows that closed at or before ``at``."""
        for starts, ends in zip(self.starts, self.ends, strict=True):
            k = 0
            while k < len(ends) and ends[k] <= at:
                k += 1
            if k:
                del starts[:k], ends[:k]

    def window_at(self, page: int, t: int) -> tuple[int, int] | None:
        """The window of ``page`` with ``start < t < end``, if any."""
        starts = self.starts[page]
        i = bisect_left(starts, t) - 1
        if i >= 0 and t < self.ends[page][i]:
            return starts[i], self.ends[page][i]
        return None


class CheckedPageService(PageService):
    """The service, checking the invariant for every successful access.

    Takes the same arguments as `PageService`.
    """

    def __init__(self, domain: aiorcu.Domain | None = None, **kwargs: Any) -> None:
        super().__init__(domain, **kwargs)
        self.ledger = Ledger(PAGES)
        self._chunks: queue.SimpleQueue[tuple[LoggedAccessor, array[int], int]] = (
            queue.SimpleQueue()
        )
        self._auditor: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        # Per accessor: every access it has not handed over yet completed
        # after this time (the time of its last hand-over), so windows that
        # closed before the earliest of these can no longer catch anything.
        self._covered: dict[Accessor, int] = {}
        self.checked = self.violations = self.ledger_errors = 0
        self.examples: list[dict[str, Any]] = []

    def _new_accessor(self, name: str, kind: str) -> Accessor:
        now = time.monotonic_ns()
        acc = LoggedAccessor(name, kind, self._chunks, now)
        self._covered[acc] = now
        self.accessors.append(acc)
        return acc

    async def start(self) -> None:
        await super().start()
        self._auditor = asyncio.create_task(self._audit_forever(), name="auditor")

    async def stop(self) -> None:
        await super().stop()
        if self._auditor is not None:
            self._auditor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._auditor
        self.audit()  # every access is logged and every commit has returned

    # -- the invariant --------------------------------------------------------
    async def _audit_forever(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.audit()

    def audit(self) -> None:
        """Checks the accesses logged so far against the revocation windows.

        Sound at any time, not only at the end: every access taken from the
        queue completed before now, and the ledger changes only at times
        after now (a window opens when a commit returns and closes when a
        grant begins), so the answer for an access never changes later.
        """
        self.ledger.settle(self.domain.poll)
        ledger = self.ledger
        starts = ledger.starts
        while True:
            try:
                acc, log, handed_over_at = self._chunks.get_nowait()
            except queue.Empty:
                break
            for i in range(0, len(log), 2):
                page, t = log[i], log[i + 1]
                page_starts = starts[page]
                if not page_starts or t <= page_starts[0]:
                    continue
                window = ledger.window_at(page, t)
                if window is not None:
                    self.violations += 1
                    if len(self.examples) < 5:
                        self.examples.append(
                            {
                                "accessor": acc.name,
                                "page": page,
                                "completed_us_after_revoke_returned": (t - window[0]) / 1e3,
                            }
                        )
            self.checked += len(log) // 2
            self._covered[acc] = handed_over_at
        ledger.forget_before(min(self._covered.values(), default=0))

    async def _commit(self, tx: aiorcu.BitmapTransaction) -> aiorcu.CommitReport:
        """Commits ``tx`` and records, per page, when access was surely gone or back."""
        async with self._commit_lock:  # one commit at a time keeps the ledger in commit order
            self.ledger.settle(self.domain.poll)
            before = self._visible()
            after = list(before)
            for op in tx.ops:  # ops past the end are the commit's to reject
                end = min(op.start + op.count, PAGES)
                if op.start < end:
                    after[op.start : end] = [op.op == "grant"] * (end - op.start)
            granted = [p for p in range(PAGES) if after[p] and not before[p]]
            revoked = [p for p in range(PAGES) if before[p] and not after[p]]
            undo = self.ledger.granting(granted, time.monotonic_ns())
            try:
                report = await self.memory.bitmap.commit(tx)
            except aiorcu.TransactionRejected:
                # Raised before the commit's first await: no audit ran meanwhile.
                self.ledger.undo(undo)
                raise
            # (Any other exception leaves the ledger short of windows: it can
            # only miss a violation, and the next commit starts from the
            # bitmap as it really is.)
            returned = time.monotonic_ns()
            if tx.sync == "never":
                self.ledger.revoked_unsynchronized(revoked, self.domain.start_grace_period())
            else:
                self.ledger.revoked(revoked, returned)
            # The memory must now be what the ops say, and the report must agree.
            if (
                self._visible() != after
                or report.pages_granted != len(granted)
                or report.pages_revoked != len(revoked)
            ):
                self.ledger_errors += 1
        self._count_commit(tx, report)
        return report

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats["invariant"] = {
            "accesses_checked": self.checked,
            "violations": self.violations,
            "ledger_errors": self.ledger_errors,
            "examples": list(self.examples),
            "held": self.violations == 0 and self.ledger_errors == 0,
        }
        return stats

    async def get_stats(self, request: Request) -> JSONResponse:
        self.audit()
        return await super().get_stats(request)


# -- load generator ---------------------------------------------------------------
MALFORMED = [
    b'{"ops": [{"op": "revoke", "start": "8", "count": 1}]}',  # strict ints: no strings
    b'{"ops": [{"op": "grant", "start": 0, "count": true}]}',  # ... and no bools
    b'{"ops": [{"op": "evict", "start": 0, "count": 1}]}',  # unknown op
    b'{"ops": [{"op": "grant", "start": 0, "count": 0}]}',  # count >= 1
    b'{"ops": [], "sync": "sometimes"}',
    b'{"ops": [], "priority": 1}',  # extra fields are refused
    b'{"ops": [{"op": "revoke", "start": 0',  # not even JSON
]


MIN_POSTS = 20


@dataclass
class LoadReport:
    """What the load generator saw from the client side."""

    posts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    round_trips: list[float] = field(default_factory=list)
    stats_polls: int = 0
    last_stats: dict[str, Any] = field(default_factory=dict)


def random_transaction(rng: random.Random, n: int) -> dict[str, Any]:
    ops = []
    for _ in range(rng.randint(1, 3)):
        start = rng.randrange(PAGES)
        count = rng.randint(1, min(4, PAGES - start))
        ops.append({"op": rng.choice(("grant", "revoke")), "start": start, "count": count})
    sync = rng.choices(("auto", "always", "never"), weights=(8, 1, 1))[0]
    return {"ops": ops, "sync": sync, "label": f"load-{n}"}


def generate_load(base_url: str, seconds: float, seed: int = 2) -> LoadReport:
    """Posts random transactions for ``seconds``; one in ten is malformed, one rejected."""
    rng = random.Random(seed)
    load = LoadReport()
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        deadline = time.monotonic() + seconds
        # At least MIN_POSTS, so that every kind of answer shows up even on a
        # machine too busy to post much in the time given.
        while load.posts < MIN_POSTS or time.monotonic() < deadline:
            load.posts += 1
            n = load.posts
            if n % 10 == 1:
                body, expect = MALFORMED[(n // 10) % len(MALFORMED)], 422
            elif n % 10 == 2:  # well formed, but past the last page: nothing applies
                ops = [
                    {"op": "grant", "start": 0, "count": 1},
                    {"op": "revoke", "start": PAGES - 2, "count": 4},
                ]
                body, expect = json.dumps({"ops": ops, "label": f"too-far-{n}"}).encode(), 409
            else:
                body, expect = json.dumps(random_transaction(rng, n)).encode(), 200
            started = time.perf_counter()
            response = client.post(
                "/transactions", content=body, headers={"content-type": "application/json"}
            )
            load.round_trips.append(time.perf_counter() - started)
            load.statuses[response.status_code] += 1
            payload = response.json()
            if response.status_code != expect:
                load.unexpected.append(f"{body!r} -> {response.status_code} {payload}")
            elif expect == 200:
                aiorcu.CommitReport.model_validate(payload)
            elif expect == 422 and not payload["errors"]:
                load.unexpected.append(f"{body!r} -> 422 without errors")
            if n % 100 == 0:
                load.last_stats = client.get("/stats").json()
                load.stats_polls += 1
        load.last_stats = client.get("/stats").json()
        load.stats_polls += 1
    return load


# -- running it -------------------------------------------------------------------
@dataclass
class DemoResult:
    url: str
    stats: dict[str, Any]
    load: LoadReport

    @property
    def ok(self) -> bool:
        s = self.stats
        return (
            s["invariant"]["held"]
            and not self.load.unexpected
            and s["accesses"] > 0
            and s["commits_restricting"] > 0
        )


def _free_socket(host: str) -> socket.socket:
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted
    # connections only when the listening socket says TCP, and without it each
    # response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


async def serve_while(
    service: PageService, client: Callable[[str], T], host: str = "127.0.0.1"
) -> T:
    """Serves on a free port of ``host`` while ``client(url)`` runs on a thread.

    Returns what the client returned, once the server has shut down (and so
    the accessors have stopped and every access has been checked).
    """
    sock = _free_socket(host)
    url = f"http://{host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(service.app(), log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises why it stopped
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        return await asyncio.to_thread(client, url)
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def run_demo(
    seconds: float = 5.0, service: CheckedPageService | None = None, host: str = "127.0.0.1"
) -> DemoResult:
    """Serves on a free port, runs the load generator for ``seconds``, shuts down."""
    service = service if service is not None else CheckedPageService()
    urls: list[str] = []

    def client(url: str) -> LoadReport:
        urls.append(url)
        return generate_load(url, seconds)

    load = await serve_while(service, client, host)
    return DemoResult(urls[0], service.stats(), load)


def print_summary(seconds: float, url: str, stats: dict[str, Any], load: LoadReport | None) -> None:
    def ms(x: float) -> str:
        return f"{x * 1e3:.3f} ms"

    gp = stats["grace_period_seconds"]
    inv = stats["invariant"]
    print(f"page_visibility: {seconds:.1f} s on {url} ({stats['backend']})")
    print(
        f"  accessors       {stats['accessors']['threads']} threads + "
        f"{stats['accessors']['tasks']} asyncio tasks on {PAGES} pages of {PAGE_SIZE} bytes"
    )
    print(
        f"  accesses        {stats['accesses']} "
        f"(threads {stats['accesses_by_threads']}, tasks {stats['accesses_by_tasks']})"
    )
    print(f"  denials         {stats['denials']} (AccessDenied on a revoked page)")
    print(
        f"  commits         {stats['commits']} "
        f"({stats['commits_restricting']} revoked access, "
        f"{stats['commits_sync_never']} with sync=never); "
        f"rejected 409: {stats['rejected']}, malformed 422: {stats['malformed']}"
    )
    print(
        f"  grace periods   {stats['grace_periods']}; commit waits p50 {ms(gp['p50'])}, "
        f"p99 {ms(gp['p99'])}, max {ms(gp['max'])} "
        f"({stats['commits_synchronized']} synchronized commits)"
    )
    if load is not None:
        rt = percentiles(load.round_trips)
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(load.statuses.items()))
        print(
            f"  http client     {load.posts} POST /transactions ({codes}), round trip "
            f"p50 {ms(rt['p50'])}, p99 {ms(rt['p99'])}; {len(load.unexpected)} unexpected"
        )
        for line in load.unexpected[:5]:
            print(f"    unexpected: {line}")
    print(
        f"  invariant       {inv['accesses_checked']} accesses checked, "
        f"violations {inv['violations']}, ledger errors {inv['ledger_errors']}: "
        + ("held" if inv["held"] else "VIOLATED")
    )
    for example in inv["examples"]:
        print(f"    violation: {example}")


def demo(service: CheckedPageService, seconds: float, host: str) -> int:
    """The `--demo` run: load for ``seconds``, the summary; 0 if the check held."""
    result = asyncio.run(run_demo(seconds, service, host))
    print_summary(seconds, result.url, result.stats, result.load)
    return 0 if result.ok else 1


def serve_checked(service: CheckedPageService, host: str, port: int) -> int:
    """Serves until stopped (Ctrl-C), then the summary; 0 if the check held."""
    started = time.monotonic()
    asyncio.run(serve(host, port, service))
    stats = service.stats()
    print_summary(time.monotonic() - started, f"http://{host}:{port}", stats, None)
    return 0 if stats["invariant"]["held"] else 1
