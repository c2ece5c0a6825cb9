"""Writers and grace periods: what a grace period costs, and what a writer costs readers.

The last case is the reason to choose RCU: a writer whose update takes 1 ms
with the GIL released, every 10 ms.  Readers of a reader-writer lock wait
behind it; aiorcu readers do not, so their p99 latency hardly moves.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import anyio.to_thread

import aiorcu
from aiorcu import testing

from .measure import (
    WRITE_TAKES,
    Result,
    Settings,
    best_of,
    idle_reader_thread,
    missing,
    on_loop,
    optional,
    p99_pair,
    per_thread_reader,
    stmt,
    task_latencies,
    thread_latencies,
)


def bench_synchronize_idle(s: Settings) -> list[Result]:
    domain = aiorcu.Domain(name="bench-sync")
    number = max(200, s.number // 100)
    with idle_reader_thread(domain):
        lock = threading.Lock()
        ns = best_of(
            {
                "sync": stmt("sync()", sync=domain.synchronize_blocking),
                "lock": stmt("acquire(); release()", acquire=lock.acquire, release=lock.release),
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

            ans = best_of(
                {"sync": on_loop(loop, await_sync), "hop": on_loop(loop, thread_hop)},
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
            label="synchronize_blocking(), no readers",
            baseline_label="threading.Lock",
        ),
        Result(
            "await synchronize(), no reader active",
            ans["sync"],
            "await anyio.to_thread.run_sync() round trip",
            ans["hop"],
            goal="<= 0.1x",
            goal_ratio=0.1,
            label="await synchronize(), no readers",
            baseline_label="to_thread.run_sync",
        ),
    ]


def bench_wait_modes(s: Settings) -> list[Result]:
    """Reader cost while a writer thread loops synchronize_blocking()."""
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
            measured = best_of(
                {
                    "busy": stmt("with domain.read(): pass", domain=domain),
                    "idle": stmt("with domain.read(): pass", domain=idle_domain),
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
            label=f"read, writer looping sync ({mode})",
            baseline_label="idle domain",
        )
        for mode in ("futex", "poll")
    ]


def bench_writer_scenario(s: Settings) -> list[Result]:
    """Readers' p99 with and without a 1 ms writer every 10 ms."""
    results: list[Result] = []
    secs = s.scenario_seconds
    note = "p99 read latency with the writer vs without it"
    waits = " (readers wait behind the write lock)"
    same = "same, no writer"

    domain = aiorcu.Domain(name="bench-writer")
    holder: dict[str, object] = {"config": {}}

    def rcu_write() -> None:
        time.sleep(WRITE_TAKES)  # the update: build the new version, GIL released
        holder["config"] = {"value": 1}  # publish
        domain.synchronize_blocking()  # then wait for readers of the old one

    loaded, plain = p99_pair(
        lambda w, t: thread_latencies(domain.read, rcu_write if w else None, t), secs
    )
    results.append(
        Result(
            "threads: with domain.read() p99, writer active",
            loaded,
            same,
            plain,
            goal="<= 1.2x",
            goal_ratio=1.2,
            unit="ns (p99)",
            note=note,
            label="threads: read p99, writer active",
        )
    )

    name = "threads: readerwriterlock p99, writer active"
    label = "threads: rwlock p99, writer active"
    rw = optional("readerwriterlock.rwlock")
    if rw is not None:
        lock = rw.RWLockFairD()
        rlock, wlock = per_thread_reader(lock), lock.gen_wlock()

        def rw_write() -> None:
            with wlock:
                time.sleep(WRITE_TAKES)

        loaded, plain = p99_pair(
            lambda w, t: thread_latencies(rlock, rw_write if w else None, t), secs
        )
        results.append(
            Result(name, loaded, same, plain, unit="ns (p99)", note=note + waits, label=label)
        )
    else:
        results.append(
            missing(name, "bench", "readerwriterlock", baseline=same, label=label, unit="ns (p99)")
        )

    adomain = aiorcu.Domain(name="bench-writer-async")

    async def rcu_awrite() -> None:
        await asyncio.to_thread(time.sleep, WRITE_TAKES)
        holder["config"] = {"value": 2}
        await adomain.synchronize()

    loaded, plain = p99_pair(
        lambda w, t: task_latencies(adomain.read, rcu_awrite if w else None, t), secs
    )
    results.append(
        Result(
            "tasks: async with domain.read() p99, writer active",
            loaded,
            same,
            plain,
            goal="<= 1.2x",
            goal_ratio=1.2,
            unit="ns (p99)",
            note=note,
            label="tasks: read p99, writer active",
        )
    )

    name = "tasks: aiorwlock reader p99, writer active"
    label = "tasks: aiorwlock p99, writer active"
    aiorwlock = optional("aiorwlock")
    if aiorwlock is not None:
        cell: dict[str, Any] = {}

        def reader_section() -> Any:
            if "lock" not in cell:
                cell["lock"] = aiorwlock.RWLock()
            return cell["lock"].reader

        async def arw_write() -> None:
            async with cell["lock"].writer:
                await asyncio.to_thread(time.sleep, WRITE_TAKES)

        def measure(w: bool, t: float) -> list[int]:
            cell.clear()  # a new lock for each loop
            return task_latencies(reader_section, arw_write if w else None, t)

        loaded, plain = p99_pair(measure, secs)
        results.append(
            Result(name, loaded, same, plain, unit="ns (p99)", note=note + waits, label=label)
        )
    else:
        results.append(
            missing(name, "bench", "aiorwlock", baseline=same, label=label, unit="ns (p99)")
        )
    return results
