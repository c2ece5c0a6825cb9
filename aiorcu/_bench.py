"""Measure what aiorcu costs next to what you would use instead, in one run.

Every figure is a ratio of two measurements taken in the same run, each the
best of several interleaved trials, so a noisy or shared machine shifts both
sides alike.  Baselines: threading.Lock, asyncio.Lock, readerwriterlock's
RWLockFairD and aiorwlock (the "bench" extra), anyio.to_thread.run_sync.

The last rows show the reason to choose RCU: a writer whose update takes 1 ms
with the GIL released, every 10 ms.  Readers of a reader-writer lock wait
behind it; aiorcu readers do not, so their p99 latency hardly moves.

Bitmap, RcuCell and callback rows appear when this aiorcu has those features.

  aiorcu bench                  full run, a table
  aiorcu bench --quick --json   a fast smoke run, one JSON object
  aiorcu bench --plot DIR       also write PNG plots (needs matplotlib: aiorcu[plot])
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import timeit
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, final

import anyio.to_thread

import aiorcu

from . import testing


@final
@dataclasses.dataclass(frozen=True)
class Result:
    """One benchmark row: aiorcu's figure next to its baseline in the same run."""

    name: str
    ns_per_op: float
    baseline: str | None = None
    baseline_ns_per_op: float | None = None
    goal: str | None = None
    """Human-readable goal, e.g. ``"<= 2.5x"`` or ``">= 3.5x faster"``."""
    goal_ratio: float | None = None
    """Largest ``ratio`` (aiorcu / baseline) that meets the goal."""
    goal_ns: float | None = None
    """Largest ``ns_per_op`` that meets an absolute goal."""
    unit: str = "ns/op"
    note: str | None = None

    @property
    def ratio(self) -> float | None:
        """aiorcu's cost divided by the baseline's (below 1 means aiorcu is faster)."""
        if self.baseline_ns_per_op is None or self.baseline_ns_per_op <= 0:
            return None
        return self.ns_per_op / self.baseline_ns_per_op

    @property
    def met(self) -> bool | None:
        checks: list[bool] = []
        ratio = self.ratio
        if self.goal_ratio is not None and ratio is not None:
            checks.append(ratio <= self.goal_ratio)
        if self.goal_ns is not None:
            checks.append(self.ns_per_op <= self.goal_ns)
        return all(checks) if checks else None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ns_per_op": round(self.ns_per_op, 1),
            "baseline": self.baseline,
            "baseline_ns_per_op": (
                None if self.baseline_ns_per_op is None else round(self.baseline_ns_per_op, 1)
            ),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "goal": self.goal,
            "met": self.met,
            "unit": self.unit,
            "note": self.note,
        }


@final
@dataclasses.dataclass(frozen=True)
class Settings:
    number: int  # operations per trial for the cheap micro-benchmarks
    repeat: int  # interleaved trials; the best one counts
    scenario_seconds: float  # per side of each latency scenario
    quick: bool


class Reporter(Protocol):
    def step(self, label: str) -> None: ...


# -- measurement helpers ------------------------------------------------------------


def _best_of(
    candidates: dict[str, Callable[[int], float]], number: int, repeat: int
) -> dict[str, float]:
    """ns per op for each candidate: the best of ``repeat`` interleaved trials.

    Each candidate runs ``number`` operations and returns the seconds they took.
    Interleaving (A, B, A, B, ...) makes a burst of noise hit every side.
    """
    best = dict.fromkeys(candidates, math.inf)
    for fn in candidates.values():
        fn(max(1, number // 10))  # warm up: caches, slots, lazily built objects
    for _ in range(repeat):
        for name, fn in candidates.items():
            best[name] = min(best[name], fn(number))
    return {name: seconds / number * 1e9 for name, seconds in best.items()}


def _stmt(stmt: str, **namespace: object) -> Callable[[int], float]:
    timer = timeit.Timer(stmt, globals=namespace)
    return timer.timeit


def _on_loop(
    loop: asyncio.AbstractEventLoop, body: Callable[[int], Awaitable[float]]
) -> Callable[[int], float]:
    def run(number: int) -> float:
        return loop.run_until_complete(body(number))

    return run


def _percentile(samples: list[int], q: float) -> float:
    if not samples:
        return math.nan
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return float(ordered[index])


@contextmanager
def _idle_reader_thread(domain: aiorcu.Domain) -> Iterator[None]:
    """Another thread that owns a reader slot but stays outside any section.

    A domain whose only reader is the writer's own thread may skip the
    membarrier; a real program has other reader threads.
    """
    ready = threading.Event()
    stop = threading.Event()

    def park() -> None:
        with domain.read():
            pass
        ready.set()
        stop.wait()

    thread = threading.Thread(target=park, name="aiorcu-bench-idle-reader", daemon=True)
    thread.start()
    ready.wait()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _per_thread_reader(lock: Any) -> Callable[[], AbstractContextManager[object]]:
    """readerwriterlock's reader objects keep per-holder state: one per thread."""
    local = threading.local()

    def reader() -> AbstractContextManager[object]:
        try:
            rlock: AbstractContextManager[object] = local.rlock
        except AttributeError:
            rlock = local.rlock = lock.gen_rlock()
        return rlock

    return reader


def _missing(name: str, extra: str, module: str) -> Result:
    """A row that could not run because an optional package is not installed."""
    return Result(
        name,
        math.nan,
        note=f"not measured: needs {module}, from the {extra!r} extra "
        f"(pip install 'aiorcu[{extra}]')",
    )


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# -- the benchmarks -------------------------------------------------------------------


def bench_thread_read(s: Settings, r: Reporter) -> list[Result]:
    r.step("with domain.read() vs threading.Lock and readerwriterlock")
    domain = aiorcu.Domain(name="bench")
    candidates = {
        "aiorcu": _stmt("with domain.read(): pass", domain=domain),
        "lock": _stmt("with lock: pass", lock=threading.Lock()),
    }
    rw = _optional("readerwriterlock.rwlock")
    if rw is not None:
        candidates["rwlock"] = _stmt("with rlock: pass", rlock=rw.RWLockFairD().gen_rlock())
    ns = _best_of(candidates, s.number, s.repeat)
    results = [
        Result(
            "with domain.read(): pass",
            ns["aiorcu"],
            "with threading.Lock(): pass",
            ns["lock"],
            goal="<= 0.85x (stretch 0.7x)",
            goal_ratio=0.85,
        )
    ]
    if "rwlock" in ns:
        results.append(
            Result(
                "with domain.read(): pass",
                ns["aiorcu"],
                "readerwriterlock RWLockFairD read lock",
                ns["rwlock"],
                goal=">= 8x faster",
                goal_ratio=1 / 8,
            )
        )
    return results


def bench_async_read(s: Settings, r: Reporter) -> list[Result]:
    r.step("async with domain.read() vs asyncio.Lock and aiorwlock")
    domain = aiorcu.Domain(name="bench-async")
    aiorwlock = _optional("aiorwlock")
    loop = asyncio.new_event_loop()
    try:

        async def make() -> tuple[asyncio.Lock, Any]:
            return asyncio.Lock(), (aiorwlock.RWLock() if aiorwlock is not None else None)

        lock, rwlock = loop.run_until_complete(make())

        async def with_section(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                async with domain.read():
                    pass
            return time.perf_counter() - t0

        async def with_lock(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                async with lock:
                    pass
            return time.perf_counter() - t0

        async def with_rwlock(n: int) -> float:
            reader = rwlock.reader
            t0 = time.perf_counter()
            for _ in range(n):
                async with reader:
                    pass
            return time.perf_counter() - t0

        candidates = {"aiorcu": _on_loop(loop, with_section), "lock": _on_loop(loop, with_lock)}
        if rwlock is not None:
            candidates["aiorwlock"] = _on_loop(loop, with_rwlock)
        ns = _best_of(candidates, s.number // 2, s.repeat)
    finally:
        loop.close()
    results = [
        Result(
            "async with domain.read(): pass",
            ns["aiorcu"],
            "async with asyncio.Lock(): pass",
            ns["lock"],
            goal="<= 0.9x (stretch 0.6x)",
            goal_ratio=0.9,
        )
    ]
    if "aiorwlock" in ns:
        results.append(
            Result(
                "async with domain.read(): pass",
                ns["aiorcu"],
                "aiorwlock reader",
                ns["aiorwlock"],
                goal=">= 12x faster",
                goal_ratio=1 / 12,
            )
        )
    return results


def bench_synchronize_idle(s: Settings, r: Reporter) -> list[Result]:
    r.step("synchronize_blocking() and await synchronize() with no reader active")
    domain = aiorcu.Domain(name="bench-sync")
    number = max(200, s.number // 100)
    with _idle_reader_thread(domain):
        lock = threading.Lock()
        ns = _best_of(
            {
                "sync": _stmt("sync()", sync=domain.synchronize_blocking),
                "lock": _stmt("acquire(); release()", acquire=lock.acquire, release=lock.release),
            },
            number,
            s.repeat,
        )
        loop = asyncio.new_event_loop()
        try:

            async def await_sync(n: int) -> float:
                t0 = time.perf_counter()
                for _ in range(n):
                    await domain.synchronize()
                return time.perf_counter() - t0

            def noop() -> None:
                return None

            async def thread_hop(n: int) -> float:
                t0 = time.perf_counter()
                for _ in range(n):
                    await anyio.to_thread.run_sync(noop)
                return time.perf_counter() - t0

            ans = _best_of(
                {"sync": _on_loop(loop, await_sync), "hop": _on_loop(loop, thread_hop)},
                max(100, number // 4),
                s.repeat,
            )
        finally:
            loop.close()
    return [
        Result(
            "synchronize_blocking(), no reader active",
            ns["sync"],
            "threading.Lock acquire+release",
            ns["lock"],
            goal="<= 10 us",
            goal_ns=10_000,
        ),
        Result(
            "await synchronize(), no reader active",
            ans["sync"],
            "await anyio.to_thread.run_sync() round trip",
            ans["hop"],
            goal="<= 0.1x",
            goal_ratio=0.1,
        ),
    ]


def bench_wait_modes(s: Settings, r: Reporter) -> list[Result]:
    """Reader cost while a writer thread loops synchronize_blocking()."""
    r.step("reader cost with a busy writer: futex vs poll wait modes")
    ns: dict[str, float] = {}
    grace: dict[str, int] = {}
    idle_domain = aiorcu.Domain(name="bench-idle")
    for mode in ("futex", "poll"):
        domain = aiorcu.Domain(name=f"bench-{mode}")
        testing.set_wait_mode(domain, mode)
        stop = threading.Event()

        def writer(domain: aiorcu.Domain = domain, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                domain.synchronize_blocking()

        with domain.read():
            pass  # this thread's slot exists before the writer starts
        thread = threading.Thread(target=writer, name=f"aiorcu-bench-{mode}-writer")
        before = domain.stats().grace_periods
        # A short switch interval lets the writer take the GIL back often, so
        # it really is busy; both modes and the control share the setting.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(5e-5)
        thread.start()
        try:
            measured = _best_of(
                {
                    "busy": _stmt("with domain.read(): pass", domain=domain),
                    "idle": _stmt("with domain.read(): pass", domain=idle_domain),
                },
                s.number,
                s.repeat,
            )
        finally:
            stop.set()
            thread.join()
            sys.setswitchinterval(interval)
        ns[mode] = measured["busy"]
        ns[f"{mode}-idle"] = measured["idle"]
        grace[mode] = domain.stats().grace_periods - before
    return [
        Result(
            f"with domain.read(), writer looping synchronize ({mode} wait)",
            ns[mode],
            "another domain's section, same writer running",
            ns[f"{mode}-idle"],
            note=f"{grace[mode]} grace periods during the trials; the baseline pays the same "
            "GIL hand-offs, so the ratio is what the writer's barriers and wake-ups cost readers",
        )
        for mode in ("futex", "poll")
    ]


# -- the reason to choose RCU ------------------------------------------------------------

_WRITE_EVERY = 0.010
_WRITE_TAKES = 0.001
_READ_PAUSE = 0.0002  # between a reader's operations (sleeps, releasing the GIL)
_READERS = 2


def _thread_latencies(
    section: Callable[[], AbstractContextManager[object]],
    write: Callable[[], None] | None,
    seconds: float,
) -> list[int]:
    """Reader threads time each protected read while an optional writer runs."""
    state = {"config": {"value": 0}}
    samples: list[list[int]] = [[] for _ in range(_READERS)]
    stop = threading.Event()

    def reader(out: list[int]) -> None:
        clock = time.perf_counter_ns
        while not stop.is_set():
            t0 = clock()
            with section():
                _ = state["config"]["value"]
            out.append(clock() - t0)
            time.sleep(random.uniform(0, 2 * _READ_PAUSE))  # arrivals not in step with the writer

    def writer() -> None:
        assert write is not None
        while not stop.wait(_WRITE_EVERY):
            write()

    threads = [threading.Thread(target=reader, args=(out,)) for out in samples]
    if write is not None:
        threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return [x for out in samples for x in out]


def _task_latencies(
    section: Callable[[], Any],
    write: Callable[[], Awaitable[None]] | None,
    seconds: float,
) -> list[int]:
    async def main() -> list[int]:
        samples: list[int] = []
        stop = asyncio.Event()
        state = {"config": {"value": 0}}

        async def reader() -> None:
            clock = time.perf_counter_ns
            while not stop.is_set():
                t0 = clock()
                async with section():
                    _ = state["config"]["value"]
                samples.append(clock() - t0)
                await asyncio.sleep(random.uniform(0, 2 * _READ_PAUSE))

        async def writer() -> None:
            assert write is not None
            while not stop.is_set():
                await asyncio.sleep(_WRITE_EVERY)
                await write()

        tasks = [asyncio.ensure_future(reader()) for _ in range(_READERS * 4)]
        if write is not None:
            tasks.append(asyncio.ensure_future(writer()))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        return samples

    return asyncio.run(main())


def _p99_pair(measure: Callable[[bool, float], list[int]], seconds: float) -> tuple[float, float]:
    """(p99 with the writer, p99 without), from alternating rounds pooled per side."""
    rounds = 3
    plain: list[int] = []
    loaded: list[int] = []
    for _ in range(rounds):
        plain += measure(False, seconds / rounds)
        loaded += measure(True, seconds / rounds)
    return _percentile(loaded, 0.99), _percentile(plain, 0.99)


def bench_writer_scenario(s: Settings, r: Reporter) -> list[Result]:
    r.step("readers' p99 with and without a 1 ms writer every 10 ms")
    results: list[Result] = []
    secs = s.scenario_seconds
    note = "p99 read latency with the writer vs without it"

    domain = aiorcu.Domain(name="bench-writer")
    holder: dict[str, object] = {"config": {}}

    def rcu_write() -> None:
        time.sleep(_WRITE_TAKES)  # the update: build the new version, GIL released
        holder["config"] = {"value": 1}  # publish
        domain.synchronize_blocking()  # then wait for readers of the old one

    loaded, plain = _p99_pair(
        lambda w, t: _thread_latencies(domain.read, rcu_write if w else None, t), secs
    )
    results.append(
        Result(
            "threads: with domain.read() p99, writer active",
            loaded,
            "same, no writer",
            plain,
            goal="<= 1.2x",
            goal_ratio=1.2,
            unit="ns (p99)",
            note=note,
        )
    )

    rw = _optional("readerwriterlock.rwlock")
    if rw is not None:
        lock = rw.RWLockFairD()
        rlock, wlock = _per_thread_reader(lock), lock.gen_wlock()

        def rw_write() -> None:
            with wlock:
                time.sleep(_WRITE_TAKES)

        loaded, plain = _p99_pair(
            lambda w, t: _thread_latencies(rlock, rw_write if w else None, t), secs
        )
        results.append(
            Result(
                "threads: readerwriterlock p99, writer active",
                loaded,
                "same, no writer",
                plain,
                unit="ns (p99)",
                note=note + " (readers wait behind the write lock)",
            )
        )

    adomain = aiorcu.Domain(name="bench-writer-async")

    async def rcu_awrite() -> None:
        await asyncio.to_thread(time.sleep, _WRITE_TAKES)
        holder["config"] = {"value": 2}
        await adomain.synchronize()

    loaded, plain = _p99_pair(
        lambda w, t: _task_latencies(adomain.read, rcu_awrite if w else None, t), secs
    )
    results.append(
        Result(
            "tasks: async with domain.read() p99, writer active",
            loaded,
            "same, no writer",
            plain,
            goal="<= 1.2x",
            goal_ratio=1.2,
            unit="ns (p99)",
            note=note,
        )
    )

    aiorwlock = _optional("aiorwlock")
    if aiorwlock is not None:
        cell: dict[str, Any] = {}

        def reader_section() -> Any:
            if "lock" not in cell:
                cell["lock"] = aiorwlock.RWLock()
            return cell["lock"].reader

        async def arw_write() -> None:
            async with cell["lock"].writer:
                await asyncio.to_thread(time.sleep, _WRITE_TAKES)

        def measure(w: bool, t: float) -> list[int]:
            cell.clear()  # a new lock for each loop
            return _task_latencies(reader_section, arw_write if w else None, t)

        loaded, plain = _p99_pair(measure, secs)
        results.append(
            Result(
                "tasks: aiorwlock reader p99, writer active",
                loaded,
                "same, no writer",
                plain,
                unit="ns (p99)",
                note=note + " (readers wait behind the write lock)",
            )
        )
    return results


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


def bench_busy_readers(s: Settings, r: Reporter) -> list[Result]:
    counts = [1, 4] if s.quick else [1, 2, 4, 8]
    results = []
    for n in counts:
        r.step(f"grace periods with {n} CPU-bound reader thread(s)")
        samples = _busy_reader_grace_periods(n, s.scenario_seconds)
        p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
        results.append(
            Result(
                f"grace period, {n} CPU-bound reader thread(s), p99",
                p99,
                unit="ns (p99)",
                note=f"p50 {_fmt_ns(p50)}, max {_fmt_ns(float(max(samples)))}, "
                f"{len(samples)} grace periods; readers compute inside their sections and "
                f"wait for the GIL there (switch interval {sys.getswitchinterval() * 1e3:g} ms); "
                "reported, no goal",
            )
        )
    return results


# -- features from other modules, when present ------------------------------------------


def bench_bitmap(s: Settings, r: Reporter) -> list[Result]:
    bitmap_cls = getattr(aiorcu, "Bitmap", None)
    tx_cls = getattr(aiorcu, "BitmapTransaction", None)
    if bitmap_cls is None or tx_cls is None:
        return []
    r.step("bitmap: check_range, GuardedMemory.read, commits")
    domain = aiorcu.Domain(name="bench-bitmap")
    bitmap = bitmap_cls(4096, domain=domain, initial=True)
    data = bytearray(4096)
    lock = threading.Lock()
    with domain.read():
        ns = _best_of(
            {
                "check": _stmt("check(100, 1)", check=bitmap.check_range),
                "locked": _stmt("with lock: data[100]", lock=lock, data=data),
            },
            s.number,
            s.repeat,
        )
    ns.update(
        _best_of(
            {
                "protected": _stmt(
                    "with domain.read(): check(100, 1)", domain=domain, check=bitmap.check_range
                ),
                "locked2": _stmt("with lock: data[100]", lock=lock, data=data),
            },
            s.number,
            s.repeat,
        )
    )
    results = [
        Result(
            "bitmap.check_range(p, 1) in an open section",
            ns["check"],
            "with threading.Lock(): bytearray[p]",
            ns["locked"],
        ),
        Result(
            "with domain.read(): bitmap.check_range(p, 1)",
            ns["protected"],
            "with threading.Lock(): bytearray[p]",
            ns["locked2"],
            goal="<= 1.3x",
            goal_ratio=1.3,
        ),
    ]
    memory_cls = getattr(aiorcu, "GuardedMemory", None)
    if memory_cls is not None:
        mem = memory_cls(16, page_size=4096, domain=domain, initial=True)
        ns = _best_of(
            {
                "read": _stmt("read(100, 64)", read=mem.read),
                "slice": _stmt("with lock: bytes(data[100:164])", lock=lock, data=data),
            },
            s.number // 2,
            s.repeat,
        )
        results.append(
            Result(
                "GuardedMemory.read(offset, 64)",
                ns["read"],
                "with threading.Lock(): bytes(bytearray[a:a+64])",
                ns["slice"],
                goal="<= 2x",
                goal_ratio=2.0,
            )
        )
    ops = [{"op": "grant", "start": i * 64, "count": 8} for i in range(64)]
    commit = bitmap.commit_blocking
    ns = _best_of(
        {"commit": _stmt("commit(tx(ops=ops))", commit=commit, tx=tx_cls, ops=ops)},
        max(20, s.number // 2000),
        s.repeat,
    )
    results.append(
        Result(
            "64-op commit, no restriction (validation included)",
            ns["commit"],
            goal="<= 100 us",
            goal_ns=100_000,
        )
    )
    big = bitmap_cls(1_000_000, domain=domain, initial=False)
    grant = tx_cls(ops=[{"op": "grant", "start": 0, "count": 1_000_000}], sync="never")
    revoke = tx_cls(ops=[{"op": "revoke", "start": 0, "count": 1_000_000}], sync="never")
    ns = _best_of(
        {
            "flip": _stmt(
                "commit(grant); commit(revoke)",
                commit=big.commit_blocking,
                grant=grant,
                revoke=revoke,
            )
        },
        max(5, s.number // 20000),
        s.repeat,
    )
    results.append(
        Result(
            "grant or revoke of 1,000,000 pages in one op",
            ns["flip"] / 2,
            goal="<= 1 ms",
            goal_ns=1_000_000,
            note='sync="never", so the figure is the word-level update alone',
        )
    )
    return results


def bench_cell_callbacks(s: Settings, r: Reporter) -> list[Result]:
    results: list[Result] = []
    domain = aiorcu.Domain(name="bench-cell")
    cell_cls = getattr(aiorcu, "RcuCell", None)
    if cell_cls is not None:
        r.step("RcuCell.get() vs an attribute read under threading.Lock")

        class Box:
            value = 1

        cell = cell_cls(Box(), domain=domain)
        ns = _best_of(
            {
                "cell": _stmt("with domain.read(): get()", domain=domain, get=cell.get),
                "lock": _stmt("with lock: box.value", lock=threading.Lock(), box=Box()),
            },
            s.number,
            s.repeat,
        )
        results.append(
            Result(
                "with domain.read(): cell.get()",
                ns["cell"],
                "with threading.Lock(): obj.attr",
                ns["lock"],
                goal="<= 1.3x",
                goal_ratio=1.3,
            )
        )
    if hasattr(domain, "call_after_grace_period") and hasattr(domain, "barrier_blocking"):
        r.step("call_after_grace_period() vs deque.append + a call")

        def nothing() -> None:
            return None

        queue: deque[Callable[[], None]] = deque()
        number = max(1000, s.number // 10)

        def queue_rcu(n: int) -> float:
            call = domain.call_after_grace_period
            t0 = time.perf_counter()
            for _ in range(n):
                call(nothing)
            elapsed = time.perf_counter() - t0
            domain.barrier_blocking()
            return elapsed

        def queue_deque(n: int) -> float:
            append, popleft = queue.append, queue.popleft
            t0 = time.perf_counter()
            for _ in range(n):
                append(nothing)
                popleft()()
            return time.perf_counter() - t0

        ns = _best_of({"rcu": queue_rcu, "deque": queue_deque}, number, s.repeat)
        results.append(
            Result(
                "domain.call_after_grace_period(fn)",
                ns["rcu"],
                "deque.append(fn); deque.popleft()()",
                ns["deque"],
                goal="<= 1.5x",
                goal_ratio=1.5,
            )
        )
        total = 100_000

        def end_to_end() -> float:
            done = [0]

            def count() -> None:
                done[0] += 1

            t0 = time.perf_counter()
            for _ in range(total):
                domain.call_after_grace_period(count)
            domain.barrier_blocking()
            elapsed = time.perf_counter() - t0
            if done[0] != total:
                raise RuntimeError(f"{done[0]} of {total} callbacks ran before the barrier")
            return elapsed

        best = min(end_to_end() for _ in range(1 if s.quick else 3))
        results.append(
            Result(
                "100,000 callbacks queued and run, end to end",
                best * 1e9,
                goal="<= 1 s",
                goal_ns=1e9,
                unit="ns total",
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
        time.sleep(_WRITE_TAKES)  # the update itself, GIL released
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
        rwlock = _optional("aiorwlock").RWLock()
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
            await asyncio.sleep(_WRITE_EVERY)
            await write()

    tasks = [asyncio.ensure_future(client(i)) for i in range(_ASGI_CLIENTS)]
    tasks.append(asyncio.ensure_future(writer()))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return latencies


def bench_asgi(s: Settings, r: Reporter) -> list[Result]:
    if _optional("starlette") is None:
        return [_missing("ASGI lookup service", "examples", "starlette")]
    r.step("an ASGI app answering lookups while a writer replaces its table every 10 ms")
    kinds = ["rcu", "lock"] + (["rwlock"] if _optional("aiorwlock") is not None else [])
    labels = {
        "rcu": "RcuCell + async with domain.read()",
        "lock": "asyncio.Lock",
        "rwlock": "aiorwlock reader/writer",
    }
    stats: dict[str, tuple[float, float]] = {}
    for kind in kinds:
        app, write = _asgi_app(kind)
        latencies = asyncio.run(_drive_asgi(app, write, s.scenario_seconds))
        stats[kind] = (len(latencies) / s.scenario_seconds, _percentile(latencies, 0.99))
    rps, p99 = stats["rcu"]
    results = []
    for kind in kinds[1:]:
        other_rps, other_p99 = stats[kind]
        results.append(
            Result(
                f"ASGI lookups, p99 ({labels['rcu']})",
                p99,
                f"same app on {labels[kind]}",
                other_p99,
                unit="ns (p99)",
                note=f"requests/s: aiorcu {rps:,.0f}, {labels[kind]} {other_rps:,.0f}; "
                f"{_ASGI_CLIENTS} in-process clients, Starlette, writer every 10 ms "
                "(1 ms of GIL-free work: under the write lock for the locks, before "
                "publishing for aiorcu, which closes the old table after the grace period)",
            )
        )
    return results


# -- the fence fallback ------------------------------------------------------------

_FENCE_PROBE = """
import json, sys
from aiorcu import _bench
settings = _bench.Settings(number={number}, repeat={repeat}, scenario_seconds=0.5, quick=True)
class Quiet:
    def step(self, label): pass
rows = _bench.bench_thread_read(settings, Quiet()) + _bench.bench_async_read(settings, Quiet())
print(json.dumps([r.to_json() for r in rows]))
"""


def bench_fence_mode(s: Settings, r: Reporter) -> list[Result]:
    """The read rows again in a process that runs with AIORCU_MEMBARRIER=off."""
    r.step("read sections in fence mode (AIORCU_MEMBARRIER=off), in a subprocess")
    env = dict(os.environ, AIORCU_MEMBARRIER="off")
    code = _FENCE_PROBE.format(number=s.number, repeat=s.repeat)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    return [
        Result(
            f"fence mode: {row['name']}",
            row["ns_per_op"],
            row["baseline"],
            row["baseline_ns_per_op"],
            note="readers run full fences (F1/F2); reported, no goal",
        )
        for row in rows
    ]


BENCHES: list[Callable[[Settings, Reporter], list[Result]]] = [
    bench_thread_read,
    bench_async_read,
    bench_synchronize_idle,
    bench_wait_modes,
    bench_writer_scenario,
    bench_busy_readers,
    bench_bitmap,
    bench_cell_callbacks,
    bench_asgi,
    bench_fence_mode,
]


# -- plots ----------------------------------------------------------------------------


def _aggregate_thread_cost(
    enter: Callable[[], AbstractContextManager[object]], threads: int, seconds: float
) -> float:
    """Wall-clock ns per read across ``threads`` reader threads looping sections."""
    stop = threading.Event()
    counts = [0] * threads
    go = threading.Barrier(threads + 1)

    def loop(i: int) -> None:
        go.wait()
        n = 0
        while not stop.is_set():
            for _ in range(200):
                with enter():
                    pass
            n += 200
        counts[i] = n

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    go.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return (time.perf_counter() - t0) / max(1, sum(counts)) * 1e9


def _thread_write_latency(
    enter: Callable[[], AbstractContextManager[object]],
    write: Callable[[], None],
    threads: int,
    seconds: float,
) -> float:
    """Median ns of ``write()`` while ``threads`` reader threads loop sections."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for _ in range(200):
                with enter():
                    pass

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        write()
        samples.append((time.perf_counter() - t0) * 1e9)
        time.sleep(0.001)
    stop.set()
    for w in workers:
        w.join()
    return statistics.median(samples)


def _task_figures(
    make: Callable[[], tuple[Callable[[], Any], Callable[[], Awaitable[None]]]],
    tasks: int,
    seconds: float,
) -> tuple[float, float]:
    """(ns per read, median ns per write) with ``tasks`` reader tasks on one loop."""

    async def main() -> tuple[float, float]:
        section, write = make()
        stop = asyncio.Event()
        count = [0]

        async def reader() -> None:
            while not stop.is_set():
                for _ in range(50):
                    async with section():
                        pass
                count[0] += 50
                await asyncio.sleep(0)

        workers = [asyncio.ensure_future(reader()) for _ in range(tasks)]
        t0 = time.perf_counter()
        samples: list[float] = []
        while time.perf_counter() - t0 < seconds:
            w0 = time.perf_counter()
            await write()
            samples.append((time.perf_counter() - w0) * 1e9)
            await asyncio.sleep(0.001)
        stop.set()
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - t0
        return elapsed / max(1, count[0]) * 1e9, statistics.median(samples)

    return asyncio.run(main())


def write_plots(directory: str, s: Settings, r: Reporter) -> list[str]:
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise SystemExit(
            "aiorcu bench --plot needs matplotlib, which is not installed; "
            "install the optional extra: pip install 'aiorcu[plot]'"
        ) from None
    os.makedirs(directory, exist_ok=True)
    secs = 0.1 if s.quick else 0.4
    thread_counts = [1, 2, 4] if s.quick else [1, 2, 4, 8]
    task_counts = [1, 10, 100] if s.quick else [1, 10, 100, 1000]
    rw = _optional("readerwriterlock.rwlock")
    aiorwlock = _optional("aiorwlock")

    r.step("plot: read cost and grace-period latency against reader threads")
    thread_kinds: dict[
        str, tuple[Callable[[], AbstractContextManager[object]], Callable[[], None]]
    ] = {}
    domain = aiorcu.Domain(name="bench-plot")
    thread_kinds["aiorcu with domain.read()"] = (domain.read, domain.synchronize_blocking)
    lock = threading.Lock()

    def lock_write() -> None:
        with lock:
            pass

    thread_kinds["threading.Lock"] = (lambda: lock, lock_write)
    if rw is not None:
        fair = rw.RWLockFairD()
        rlock, wlock = _per_thread_reader(fair), fair.gen_wlock()

        def rw_write() -> None:
            with wlock:
                pass

        thread_kinds["readerwriterlock RWLockFairD"] = (rlock, rw_write)
    thread_cost: dict[str, list[float]] = {k: [] for k in thread_kinds}
    thread_write: dict[str, list[float]] = {k: [] for k in thread_kinds}
    for n in thread_counts:
        for kind, (enter, write) in thread_kinds.items():
            thread_cost[kind].append(_aggregate_thread_cost(enter, n, secs))
            thread_write[kind].append(_thread_write_latency(enter, write, n, secs) / 1000)

    r.step("plot: read cost and grace-period latency against reader tasks")
    task_kinds: dict[
        str, Callable[[], tuple[Callable[[], Any], Callable[[], Awaitable[None]]]]
    ] = {}
    adomain = aiorcu.Domain(name="bench-plot-async")
    task_kinds["aiorcu async with domain.read()"] = lambda: (adomain.read, adomain.synchronize)

    def asyncio_lock() -> tuple[Callable[[], Any], Callable[[], Awaitable[None]]]:
        alock = asyncio.Lock()

        async def write() -> None:
            async with alock:
                pass

        return (lambda: alock), write

    task_kinds["asyncio.Lock"] = asyncio_lock
    if aiorwlock is not None:

        def arw() -> tuple[Callable[[], Any], Callable[[], Awaitable[None]]]:
            lk = aiorwlock.RWLock()

            async def write() -> None:
                async with lk.writer:
                    pass

            return (lambda: lk.reader), write

        task_kinds["aiorwlock"] = arw
    task_cost: dict[str, list[float]] = {k: [] for k in task_kinds}
    task_write: dict[str, list[float]] = {k: [] for k in task_kinds}
    for n in task_counts:
        for kind, make in task_kinds.items():
            cost, write_ns = _task_figures(make, n, secs)
            task_cost[kind].append(cost)
            task_write[kind].append(write_ns / 1000)

    written = []
    figures = [
        ("read_cost_threads.png", "Read cost vs reader threads", "reader threads", thread_counts,
         thread_cost, "ns per read (wall clock, all threads)"),
        ("grace_period_threads.png", "Grace period / write-lock latency vs reader threads",
         "reader threads", thread_counts, thread_write, "median µs per synchronize / write lock"),
        ("read_cost_tasks.png", "Read cost vs reader tasks", "reader tasks", task_counts,
         task_cost, "ns per read (wall clock, all tasks)"),
        ("grace_period_tasks.png", "Grace period / write-lock latency vs reader tasks",
         "reader tasks", task_counts, task_write, "median µs per synchronize / write lock"),
    ]  # fmt: skip
    for filename, title, xlabel, xs, series, ylabel in figures:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, ys in series.items():
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2 if xs is thread_counts else 10)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(directory, filename)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# -- output ----------------------------------------------------------------------------


def _fmt_ns(value: float | None, unit: str = "ns/op") -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "ns total" or value >= 1e6:
        return f"{value / 1e6:,.2f} ms"
    if value >= 10_000:
        return f"{value / 1e3:,.1f} µs"
    return f"{value:,.0f} ns"


def _fmt_ratio(res: Result) -> str:
    ratio = res.ratio
    if ratio is None:
        return "-"
    if ratio < 1 and res.goal is not None and "faster" in res.goal:
        return f"{ratio:.2f}x ({1 / ratio:.1f}x faster)"
    return f"{ratio:.2f}x"


def _met(res: Result) -> str:
    met = res.met
    return "" if met is None else ("yes" if met else "NO")


_COLUMNS = ("benchmark", "aiorcu", "baseline", "baseline cost", "ratio", "goal", "met")


def _rows(results: list[Result]) -> list[tuple[str, ...]]:
    return [
        (
            res.name,
            _fmt_ns(res.ns_per_op, res.unit),
            res.baseline or "",
            _fmt_ns(res.baseline_ns_per_op, res.unit),
            _fmt_ratio(res),
            res.goal or "",
            _met(res),
        )
        for res in results
    ]


def _print_plain(results: list[Result], header: str) -> None:
    rows = [_COLUMNS, *_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    print(header)
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for res in results:
        if res.note:
            print(f"  * {res.name}: {res.note}")


def _print_rich(results: list[Result], header: str) -> None:
    console_mod = _optional("rich.console")
    table_mod = _optional("rich.table")
    table = table_mod.Table(title=header, title_justify="left")
    for col in _COLUMNS:
        table.add_column(
            col, justify="right" if col in ("aiorcu", "baseline cost", "ratio") else "left"
        )
    for res, row in zip(results, _rows(results), strict=True):
        style = {True: "green", False: "bold red", None: ""}[res.met]
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]" if style else row[-1])
    console = console_mod.Console()
    console.print(table)
    for res in results:
        if res.note:
            console.print(f"  [dim]* {res.name}: {res.note}[/]")


class _PlainReporter:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def step(self, label: str) -> None:
        self.done += 1
        print(f"[bench {self.done}] {label}", file=sys.stderr, flush=True)


class _RichReporter:
    def __init__(self, progress: Any, task: Any) -> None:
        self.progress = progress
        self.task = task
        self.started = False

    def step(self, label: str) -> None:
        if self.started:
            self.progress.advance(self.task)
        self.started = True
        self.progress.update(self.task, description=label)


def _has_rich() -> bool:
    return _optional("rich") is not None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (noisier figures)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="also write PNG plots of read cost and grace-period latency into DIR (matplotlib)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="interleaved trials per figure (best counts)"
    )


def _collect(settings: Settings, reporter: Reporter) -> list[Result]:
    results: list[Result] = []
    for bench in BENCHES:
        results.extend(bench(settings, reporter))
    return results


def run(args: argparse.Namespace) -> int:
    if args.plot and _optional("matplotlib") is None:
        print(
            "aiorcu bench --plot needs matplotlib, which is not installed; "
            "install the optional extra: pip install 'aiorcu[plot]'",
            file=sys.stderr,
        )
        return 2
    quick = bool(args.quick)
    settings = Settings(
        number=20_000 if quick else 200_000,
        repeat=args.repeat or (3 if quick else 7),
        scenario_seconds=0.3 if quick else 1.5,
        quick=quick,
    )
    info = aiorcu.backend_info()
    header = (
        f"aiorcu bench ({info.mechanism}, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}{', quick' if quick else ''}): best of {settings.repeat} "
        "interleaved trials; ratio = aiorcu / baseline"
    )
    fancy = _has_rich() and sys.stderr.isatty() and not args.json
    plots: list[str] = []
    steps = len(BENCHES) + (2 if args.plot else 0)
    if fancy:
        rp = _optional("rich.progress")
        with rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.TimeElapsedColumn(),
            transient=True,
        ) as progress:
            task = progress.add_task("starting", total=steps)
            reporter: Reporter = _RichReporter(progress, task)
            results = _collect(settings, reporter)
            if args.plot:
                plots = write_plots(args.plot, settings, reporter)
    else:
        reporter = _PlainReporter(steps)
        results = _collect(settings, reporter)
        if args.plot:
            plots = write_plots(args.plot, settings, reporter)

    if args.json:
        out = {
            "backend": info.mechanism,
            "membarrier": info.membarrier,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "quick": quick,
            "repeat": settings.repeat,
            "results": [res.to_json() for res in results],
            "plots": plots,
        }
        print(json.dumps(out, indent=2))
        return 0
    if _has_rich() and sys.stdout.isatty():
        _print_rich(results, header)
    else:
        _print_plain(results, header)
    met = [res.met for res in results if res.met is not None]
    print(f"goals met: {sum(met)} of {len(met)}")
    for path in plots:
        print(f"wrote {path}")
    return 0
