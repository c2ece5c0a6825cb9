"""``aiorcu bench --plot DIR``: read cost and grace-period latency against readers.

Four PNG files (the "plot" extra: matplotlib): the cost of a read and the
latency of a grace period (or a write lock) against the number of reader
threads, then reader tasks, for aiorcu and the lock-based alternatives.  A
baseline whose package is missing keeps its legend entry, which names the
extra.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import aiorcu

from .measure import Reporter, Settings, needs, optional, per_thread_reader

FILES = ("read_cost_threads.png", "grace_period_threads.png", "read_cost_tasks.png",
         "grace_period_tasks.png")  # fmt: skip


def matplotlib_missing() -> str | None:
    """What to tell the user when --plot cannot work, or None."""
    if optional("matplotlib") is None:
        return f"aiorcu bench --plot {needs('matplotlib', 'plot')}"
    return None


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
    """Two steps of measurements, then the four PNG files; returns their paths."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise SystemExit(matplotlib_missing()) from None
    os.makedirs(directory, exist_ok=True)
    secs = 0.1 if s.quick else 0.4
    thread_counts = [1, 2, 4] if s.quick else [1, 2, 4, 8]
    task_counts = [1, 10, 100] if s.quick else [1, 10, 100, 1000]
    rw = optional("readerwriterlock.rwlock")
    aiorwlock = optional("aiorwlock")
    # Legend entries of the baselines that could not run: they name the extra.
    absent_threads = (
        [] if rw is not None else ["readerwriterlock: not installed (the 'bench' extra)"]
    )
    absent_tasks = [] if aiorwlock is not None else ["aiorwlock: not installed (the 'bench' extra)"]

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
        rlock, wlock = per_thread_reader(fair), fair.gen_wlock()

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
        (FILES[0], "Read cost vs reader threads", "reader threads", thread_counts,
         thread_cost, "ns per read (wall clock, all threads)", absent_threads),
        (FILES[1], "Grace period / write-lock latency vs reader threads",
         "reader threads", thread_counts, thread_write, "median µs per synchronize / write lock",
         absent_threads),
        (FILES[2], "Read cost vs reader tasks", "reader tasks", task_counts,
         task_cost, "ns per read (wall clock, all tasks)", absent_tasks),
        (FILES[3], "Grace period / write-lock latency vs reader tasks",
         "reader tasks", task_counts, task_write, "median µs per synchronize / write lock",
         absent_tasks),
    ]  # fmt: skip
    for filename, title, xlabel, xs, series, ylabel, absent in figures:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, ys in series.items():
            ax.plot(xs, ys, marker="o", label=label)
        for label in absent:
            ax.plot([], [], linestyle="none", label=label)
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
