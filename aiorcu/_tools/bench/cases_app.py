"""Application-shaped rows: CPU-bound readers, an ASGI service, fence mode.

- Grace periods while reader threads compute inside their sections: the GIL
  stretches them (reported, no goal).
- An ASGI app answering lookups from a table a writer replaces every 10 ms,
  on aiorcu and on locks (the "examples" extra: Starlette).
- The read rows again in a process running with ``AIORCU_MEMBARRIER=off``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiorcu

from .measure import (
    WRITE_EVERY,
    WRITE_TAKES,
    Result,
    Settings,
    fmt_ns,
    missing,
    optional,
    percentile,
)

# -- CPU-bound reader threads: the GIL stretches grace periods ----------------------------


def _busy_reader_grace_periods(threads: int, seconds: float) -> list[int]:
    """Grace-period latencies (ns) while ``threads`` threads compute inside sections.

    A reader thread that loses the GIL inside its section stays inside until
    the GIL comes back to it: with N busy threads that can take several
    switch intervals (5 ms each by default), however short the section's
    own work.
    """
    domain = aiorcu.Domain(name=f"bench-busy-{threads}", stall_warning=None)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with domain.read():
                sum(range(2000))  # about 20-50 us of pure Python, holding the GIL

    workers = [threading.Thread(target=reader, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    samples: list[int] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            t0 = time.perf_counter_ns()
            domain.synchronize_blocking()
            samples.append(time.perf_counter_ns() - t0)
            time.sleep(0.002)
    finally:
        stop.set()
        for t in workers:
            t.join()
    return samples


def bench_busy_readers(s: Settings) -> list[Result]:
    counts = [1, 4] if s.quick else [1, 2, 4, 8]
    results = []
    for n in counts:
        samples = _busy_reader_grace_periods(n, s.scenario_seconds)
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        results.append(
            Result(
                f"grace period, {n} CPU-bound reader thread(s), p99",
                p99,
                unit="ns (p99)",
                note=f"p50 {fmt_ns(p50)}, max {fmt_ns(float(max(samples)))}, "
                f"{len(samples)} grace periods; readers compute inside their sections and "
                f"wait for the GIL there (switch interval {sys.getswitchinterval() * 1e3:g} ms); "
                "reported, no goal",
                label=f"grace period p99, {n} busy reader(s)",
            )
        )
    return results


# -- an application: lookups served by an ASGI app -----------------------------------

_ASGI_CLIENTS = 16


class _Table:
    """A lookup table a writer replaces; a closed one must never answer."""

    __slots__ = ("closed", "rows")

    def __init__(self, generation: int) -> None:
        self.rows = {i: generation * 1000 + i for i in range(256)}
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _asgi_app(kind: str) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """A Starlette app answering /lookup/{key} from a table, and its writer step.

    ``kind`` is "rcu" (an RcuCell; the writer builds the next table outside
    any lock, publishes it, and closes the old one after a grace period),
    "lock" (asyncio.Lock around every lookup and around the writer's update)
    or "rwlock" (aiorwlock: readers share, the writer excludes them).  The
    writer's 1 ms of work runs on a thread, with the GIL released.
    """
    from starlette.applications import Starlette  # noqa: PLC0415 - the examples extra
    from starlette.responses import PlainTextResponse  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    generation = [0]

    def build() -> _Table:
        time.sleep(WRITE_TAKES)  # the update itself, GIL released
        generation[0] += 1
        return _Table(generation[0])

    def answer(table: _Table, key: int) -> PlainTextResponse:
        if table.closed:
            raise RuntimeError("a closed table answered a lookup")
        return PlainTextResponse(str(table.rows[key % 256]))

    if kind == "rcu":
        domain = aiorcu.Domain(name="bench-asgi")
        cell: aiorcu.RcuCell[_Table] = aiorcu.RcuCell(_Table(0), domain=domain)

        async def lookup(request: Any) -> PlainTextResponse:
            async with domain.read():
                return answer(cell.get(), int(request.path_params["key"]))

        async def write() -> None:
            new = await asyncio.to_thread(build)
            await cell.replace(new, retire=_Table.close)

    elif kind == "lock":
        lock = asyncio.Lock()
        box = [_Table(0)]

        async def lookup(request: Any) -> PlainTextResponse:
            async with lock:
                return answer(box[0], int(request.path_params["key"]))

        async def write() -> None:
            async with lock:
                new = await asyncio.to_thread(build)
                old, box[0] = box[0], new
                old.close()

    else:
        rwlock = optional("aiorwlock").RWLock()
        box = [_Table(0)]

        async def lookup(request: Any) -> PlainTextResponse:
            async with rwlock.reader:
                return answer(box[0], int(request.path_params["key"]))

        async def write() -> None:
            async with rwlock.writer:
                new = await asyncio.to_thread(build)
                old, box[0] = box[0], new
                old.close()

    app = Starlette(routes=[Route("/lookup/{key:int}", lookup)])
    return app, write


async def _asgi_receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _asgi_sender(status: list[int]) -> Callable[[dict[str, Any]], Awaitable[None]]:
    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    return send


async def _drive_asgi(app: Any, write: Callable[[], Awaitable[None]], seconds: float) -> list[int]:
    """Clients call the app in-process (no sockets) while the writer runs every 10 ms."""
    latencies: list[int] = []
    stop = asyncio.Event()

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        clock = time.perf_counter_ns
        while not stop.is_set():
            key = rng.randrange(1 << 16)
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": f"/lookup/{key}",
                "raw_path": f"/lookup/{key}".encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [],
                "server": ("bench", 80),
                "client": ("bench", 1),
            }
            status: list[int] = []
            t0 = clock()
            await app(scope, _asgi_receive, _asgi_sender(status))
            latencies.append(clock() - t0)
            if status[:1] != [200]:
                raise RuntimeError(f"lookup answered {status}")
            await asyncio.sleep(0)

    async def writer() -> None:
        while not stop.is_set():
            await asyncio.sleep(WRITE_EVERY)
            await write()

    tasks = [asyncio.ensure_future(client(i)) for i in range(_ASGI_CLIENTS)]
    tasks.append(asyncio.ensure_future(writer()))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return latencies


def bench_asgi(s: Settings) -> list[Result]:
    labels = {
        "rcu": "RcuCell + async with domain.read()",
        "lock": "asyncio.Lock",
        "rwlock": "aiorwlock reader/writer",
    }
    name = f"ASGI lookups, p99 ({labels['rcu']})"
    label = "ASGI lookup p99 (RcuCell)"
    if optional("starlette") is None:
        return [missing(name, "examples", "starlette", label=label, unit="ns (p99)")]
    kinds = ["rcu", "lock"] + (["rwlock"] if optional("aiorwlock") is not None else [])
    stats: dict[str, tuple[float, float]] = {}
    for kind in kinds:
        app, write = _asgi_app(kind)
        latencies = asyncio.run(_drive_asgi(app, write, s.scenario_seconds))
        stats[kind] = (len(latencies) / s.scenario_seconds, percentile(latencies, 0.99))
    rps, p99 = stats["rcu"]
    results = []
    for kind in kinds[1:]:
        other_rps, other_p99 = stats[kind]
        results.append(
            Result(
                name,
                p99,
                f"same app on {labels[kind]}",
                other_p99,
                unit="ns (p99)",
                note=f"requests/s: aiorcu {rps:,.0f}, {labels[kind]} {other_rps:,.0f}; "
                f"{_ASGI_CLIENTS} in-process clients, Starlette, writer every 10 ms "
                "(1 ms of GIL-free work: under the write lock for the locks, before "
                "publishing for aiorcu, which closes the old table after the grace period)",
                label=label,
                baseline_label={"lock": "asyncio.Lock app", "rwlock": "aiorwlock app"}[kind],
            )
        )
    if "rwlock" not in kinds:
        results.append(
            missing(
                name,
                "bench",
                "aiorwlock",
                baseline=f"same app on {labels['rwlock']}",
                label=label,
                baseline_label="aiorwlock app",
                unit="ns (p99)",
            )
        )
    return results


# -- the fence fallback ------------------------------------------------------------

_FENCE_PROBE = """
import dataclasses, json
from aiorcu._tools.bench import cases_read, measure
settings = measure.Settings(number={number}, repeat={repeat}, scenario_seconds=0.5, quick=True)
rows = cases_read.bench_thread_read(settings) + cases_read.bench_async_read(settings)
print(json.dumps([dataclasses.asdict(r) for r in rows]))
"""


def bench_fence_mode(s: Settings) -> list[Result]:
    """The read rows again in a process that runs with AIORCU_MEMBARRIER=off."""
    env = dict(os.environ, AIORCU_MEMBARRIER="off")
    code = _FENCE_PROBE.format(number=s.number, repeat=s.repeat)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    results = []
    for fields in json.loads(out.stdout.strip().splitlines()[-1]):
        row = Result(**fields)
        results.append(
            dataclasses.replace(
                row,
                name=f"fence mode: {row.name}",
                label=f"fence: {row.short_name}",
                goal=None,
                goal_ratio=None,
                goal_ns=None,
                note=row.note
                if row.needs_extra
                else "readers run full fences (F1/F2); reported, no goal",
            )
        )
    return results
