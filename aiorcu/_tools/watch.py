"""Watch RCU work: threads and tasks read while a writer replaces a config.

Reader threads and reader tasks keep loading a published configuration
object and using it; the tasks await while they hold it.  Two writers (a
thread and a task) publish a new version every few milliseconds, wait for a
grace period, and only then retire the old version, the way a real program
would free it.  Every reader checks that the version it holds was never
retired.  At the end it prints how many reads, versions, grace periods and
membarrier calls there were, and the longest grace period.  Exit status: 0
when no reader ever saw a retired version, 1 otherwise, 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import threading
import time

import aiorcu
from aiorcu import testing

from .cli import count, positive_float


@dataclasses.dataclass
class Config:
    """One published version; ``retired`` is set after its grace period."""

    version: int
    limits: dict[str, int]
    retired: bool = False


@dataclasses.dataclass
class Tally:
    reads: int = 0
    violations: int = 0
    publishes: int = 0
    max_grace_ns: int = 0
    first_violation: str | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def saw_retired(self, who: str, version: int) -> None:
        with self.lock:
            self.violations += 1
            if self.first_violation is None:
                self.first_violation = f"{who} still used version {version} after it was retired"

    def grace(self, ns: int) -> None:
        with self.lock:
            self.publishes += 1
            self.max_grace_ns = max(self.max_grace_ns, ns)


class Published:
    """The shared reference plus the writers' lock (writers serialize, readers never wait)."""

    def __init__(self) -> None:
        self.current = Config(0, {"rps": 100})
        self.write_lock = threading.Lock()
        self.next_version = 1

    def swap(self) -> Config:
        with self.write_lock:
            old = self.current
            # Copy, update the copy, publish it with one reference store.
            limits = dict(old.limits, rps=100 + self.next_version % 50)
            self.current = Config(self.next_version, limits)
            self.next_version += 1
            return old


def _thread_reader(
    domain: aiorcu.Domain, shared: Published, tally: Tally, stop: threading.Event, pause: bool
) -> None:
    name = threading.current_thread().name
    reads = 0
    while not stop.is_set():
        with domain.read():
            config = shared.current
            budget = config.limits["rps"]
            if pause and reads % 64 == 0:
                time.sleep(0.0002)  # readers may block inside a section; writers wait
            if config.retired or budget <= 0:
                tally.saw_retired(name, config.version)
        reads += 1
    with tally.lock:
        tally.reads += reads


def _thread_writer(
    domain: aiorcu.Domain, shared: Published, tally: Tally, stop: threading.Event
) -> None:
    while not stop.wait(0.002):
        old = shared.swap()
        t0 = time.perf_counter_ns()
        domain.synchronize_blocking()
        tally.grace(time.perf_counter_ns() - t0)
        old.retired = True  # safe: no reader that could see `old` is still inside


async def _async_side(
    domain: aiorcu.Domain, shared: Published, tally: Tally, seconds: float, tasks: int
) -> None:
    stop = asyncio.Event()

    async def reader(name: str) -> None:
        reads = 0
        while not stop.is_set():
            async with domain.read():
                config = shared.current
                await asyncio.sleep(0)  # other tasks run while this one is inside
                if config.retired:
                    tally.saw_retired(name, config.version)
            reads += 1
        with tally.lock:
            tally.reads += reads

    async def writer() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.003)
            old = shared.swap()
            t0 = time.perf_counter_ns()
            await domain.synchronize()
            tally.grace(time.perf_counter_ns() - t0)
            old.retired = True

    workers = [
        asyncio.create_task(reader(f"reader-task-{i}"), name=f"reader-task-{i}")
        for i in range(tasks)
    ]
    workers.append(asyncio.create_task(writer(), name="writer-task"))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*workers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=positive_float, default=3.0, help="how long to run (default: 3)"
    )
    parser.add_argument("--threads", type=count, default=2, help="reader threads (default: 2)")
    parser.add_argument("--tasks", type=count, default=8, help="reader tasks (default: 8)")
    advanced = parser.add_argument_group("advanced")
    advanced.add_argument(
        "--busted",
        action="store_true",
        help="negative control: grace periods stop waiting for readers; the run must notice "
        "and exit 1",
    )


def validate(args: argparse.Namespace) -> str | None:
    """Checks that span several options (the single ones are argparse types)."""
    if args.threads + args.tasks < 1:
        return "need at least one reader: --threads or --tasks must be 1 or more"
    return None


def run(args: argparse.Namespace) -> int:
    problem = validate(args)
    if problem:
        print(f"aiorcu watch: {problem}", file=sys.stderr)
        return 2
    domain = aiorcu.Domain(name="watch")
    if args.busted:
        testing.set_busted(domain)
    shared = Published()
    tally = Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_thread_reader,
            args=(domain, shared, tally, stop, True),
            name=f"reader-thread-{i}",
        )
        for i in range(args.threads)
    ]
    threads.append(
        threading.Thread(target=_thread_writer, args=(domain, shared, tally, stop), name="writer")
    )
    info = aiorcu.backend_info()
    print(
        f"aiorcu watch: {args.threads} reader threads, {args.tasks} reader tasks, "
        f"2 writers, {args.seconds:g} s, backend {info.mechanism}"
        + (" [BUSTED grace periods]" if args.busted else ""),
        flush=True,
    )
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        asyncio.run(_async_side(domain, shared, tally, args.seconds, args.tasks))
    finally:
        stop.set()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - started
    stats = domain.stats()
    lines = [
        ("reads", f"{tally.reads:,} ({tally.reads / elapsed:,.0f}/s)"),
        ("versions published", f"{tally.publishes:,}"),
        ("grace periods", f"{stats.grace_periods:,}"),
        ("membarrier calls", f"{stats.membarrier_calls:,}"),
        ("offloaded waits", f"{stats.offloaded_waits:,}"),
        ("stall warnings", f"{stats.stall_warnings:,}"),
        ("max grace period", f"{tally.max_grace_ns / 1e6:.2f} ms"),
        ("retired versions seen", f"{tally.violations:,}"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")
    if tally.violations:
        print(f"FAILED: {tally.first_violation}")
        return 1
    if tally.publishes == 0 or tally.reads == 0:
        print("FAILED: the run was too short to read or publish anything")
        return 1
    print("OK: no reader ever used a retired version")
    return 0
