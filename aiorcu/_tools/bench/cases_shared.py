"""SharedDomain: read sections, grace periods across processes, readers in workers.

- A section of a `SharedDomain` against one of a `Domain`, ``with`` and
  ``async with``: the reader's slot lives in the shared segment instead of
  process memory, and should cost next to nothing more.  Timed in this
  thread's CPU time, in many short pairs of trials: on a loaded machine a
  trial that waits for a CPU would otherwise weigh more than the section.
- Grace periods with 1, 2, 4 and 8 processes attached (helpers spawned,
  attached, each with one section behind it, then idle): the writer's
  barrier reaches every attached process.  With 4 attached, the median of
  ``synchronize_blocking()`` against a `Domain`'s, and ``await
  synchronize()`` with nobody inside, which should never hop to a thread
  (counted by ``stats().offloaded_waits``, with a control that makes it hop).
  Then the latency distribution (p50, p99) for each number of processes.
- Reader processes timing their own ``GuardedMemory.read()`` while this
  process revokes and grants a page every 10 ms, against the same readers
  with no writer, in alternating windows: the worst worker's figure.

Rows that need other processes start them through `Members`, which stops,
joins (or kills) every one of them, and every name (the domain's segment,
the pages file) is removed, however a row ends.  Each row removes the names
as soon as every process is attached, so not even a SIGKILL of the bench
leaves one behind after that point.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import final

import aiorcu

from .measure import (
    WRITE_EVERY,
    Paired,
    Result,
    Settings,
    fmt_ns,
    idle_reader_thread,
    paired,
    percentile,
)
from .members import PAGE_SIZE, PAGES, Members, pages_file, scratch_names

AnyDomain = aiorcu.Domain | aiorcu.SharedDomain
Sides = dict[str, AnyDomain]

PAIRS_PER_REPEAT = 30
"""Pairs of trials of the section rows per ``--repeat``: 210 in a full run."""
READER_PROCESSES = 2
"""Reader workers of the writer row: with this process, three busy on a 2-CPU machine."""
GOAL_ATTACHED = 4
SPACED_ROUND = 20
"""Grace periods in a row of one side, 1 ms apart, before the other side's turn."""
WINDOW = 0.1
"""Seconds of each window of the worker row, with or without the writer: 10 revokes."""


@contextlib.contextmanager
def scratch_domain(name: str) -> Iterator[aiorcu.SharedDomain]:
    """A new shared domain; on exit its name is removed (if still there) and it is closed."""
    domain = aiorcu.SharedDomain(name, create=True, stall_warning=None)
    try:
        yield domain
    finally:
        with contextlib.suppress(FileNotFoundError):
            domain.unlink()
        domain.close()


def _spread(pairs: Paired) -> str:
    low, high = pairs.quartiles()
    return f"middle half of the pairs {low:.2f}x to {high:.2f}x"


# -- read sections ---------------------------------------------------------------------


def _sections(domain: AnyDomain, ops: int) -> Callable[[], float]:
    """One trial: ``ops`` empty ``with`` sections; CPU ns per section."""
    clock = time.thread_time_ns

    def trial() -> float:
        t0 = clock()
        for _ in range(ops):
            with domain.read():
                pass
        return (clock() - t0) / ops

    return trial


def _async_sections(
    loop: asyncio.AbstractEventLoop, domain: AnyDomain, ops: int
) -> Callable[[], float]:
    """One trial: ``ops`` empty ``async with`` sections in a task; CPU ns per section."""
    clock = time.thread_time_ns

    async def body() -> float:
        t0 = clock()
        for _ in range(ops):
            async with domain.read():
                pass
        return (clock() - t0) / ops

    def trial() -> float:
        return loop.run_until_complete(body())

    return trial


def bench_shared_read(s: Settings) -> list[Result]:
    name, _ = scratch_names()
    private = aiorcu.Domain(name="bench-private-read")
    ops = max(100, s.number // 100)
    pairs = PAIRS_PER_REPEAT * s.repeat
    with scratch_domain(name) as shared:
        shared.unlink()  # nobody else attaches: no name is left even if this process dies
        sync = paired(_sections(shared, ops), _sections(private, ops), pairs)
        loop = asyncio.new_event_loop()
        try:
            tasks = paired(
                _async_sections(loop, shared, ops), _async_sections(loop, private, ops), pairs
            )
        finally:
            loop.close()
    how = (
        f"CPU time of this thread, {ops:,} sections per trial, {pairs} pairs of trials "
        "(A B, B A, ...); costs are medians, the ratio is the median of the pairs' ratios"
    )
    return [
        Result(
            "with shared_domain.read(): pass",
            statistics.median(sync.candidate),
            "with domain.read(): pass (a Domain)",
            statistics.median(sync.baseline),
            goal="<= 1.1x",
            goal_ratio=1.1,
            note=f"{how}; {_spread(sync)}",
            label="with shared.read(): pass",
            baseline_label="Domain section",
            paired_ratio=sync.ratio,
        ),
        Result(
            "async with shared_domain.read(): pass",
            statistics.median(tasks.candidate),
            "async with domain.read(): pass (a Domain)",
            statistics.median(tasks.baseline),
            goal="<= 1.1x",
            goal_ratio=1.1,
            note=f"{how}; {_spread(tasks)}",
            label="async with shared.read(): pass",
            baseline_label="Domain section",
            paired_ratio=tasks.ratio,
        ),
    ]


# -- grace periods with processes attached ---------------------------------------------------


def _sync_trial(domain: AnyDomain, calls: int, out: list[int]) -> Callable[[], float]:
    """One trial: ``calls`` grace periods back to back, each kept in ``out``; their median."""
    clock = time.perf_counter_ns
    sync = domain.synchronize_blocking

    def trial() -> float:
        first = len(out)
        for _ in range(calls):
            t0 = clock()
            sync()
            out.append(clock() - t0)
        return percentile(out[first:], 0.5)

    return trial


def _idle(sides: Sides, calls: int, pairs: int) -> tuple[Paired, dict[str, list[int]]]:
    """Per pair of rounds, each side's median ``synchronize_blocking()``; every latency."""
    for domain in sides.values():
        for _ in range(calls):
            domain.synchronize_blocking()  # warm up
    samples: dict[str, list[int]] = {side: [] for side in sides}
    pairs_of = paired(
        _sync_trial(sides["shared"], calls, samples["shared"]),
        _sync_trial(sides["private"], calls, samples["private"]),
        pairs,
        warm_up=False,
    )
    return pairs_of, samples


def _spaced(sides: Sides, seconds: float) -> dict[str, list[int]]:
    """Each side's ``synchronize_blocking()`` latencies (ns), calls 1 ms apart.

    About ``seconds`` per side, in turns of `SPACED_ROUND` calls, the side
    that goes first alternating.  A writer that waits now and then finds
    colder caches than one looping: on the machine these rows were first run
    on, a `Domain`'s grace period took 4 times as long 1 ms apart as back to
    back, and 15 times 10 ms apart.
    """
    samples: dict[str, list[int]] = {side: [] for side in sides}
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds * len(sides)
    turn = 0
    while time.monotonic() < deadline or turn < 2:
        order = list(sides) if turn % 2 == 0 else list(reversed(sides))
        for side in order:
            sync, out = sides[side].synchronize_blocking, samples[side]
            for _ in range(SPACED_ROUND):
                t0 = clock()
                sync()
                out.append(clock() - t0)
                time.sleep(0.001)
        turn += 1
    return samples


def _hold(domain: AnyDomain, inside: threading.Event, leave: threading.Event) -> None:
    with domain.read():
        inside.set()
        leave.wait()


def _awaits(sides: Sides, number: int) -> dict[str, tuple[int, float, int]]:
    """Per side: thread hops over ``number`` awaits with nobody inside, ns per await,
    and hops over 3 awaits with a reader inside on another thread (the control)."""

    async def idle(domain: AnyDomain) -> tuple[int, float]:
        before = domain.stats().offloaded_waits
        t0 = time.perf_counter_ns()
        for _ in range(number):
            await domain.synchronize()
        per_await = (time.perf_counter_ns() - t0) / number
        return domain.stats().offloaded_waits - before, per_await

    async def with_reader(domain: AnyDomain) -> int:
        before = domain.stats().offloaded_waits
        for _ in range(3):
            inside, leave = threading.Event(), threading.Event()
            thread = threading.Thread(
                target=_hold, args=(domain, inside, leave), name="aiorcu-bench-control-reader"
            )
            thread.start()
            inside.wait()
            asyncio.get_running_loop().call_later(0.002, leave.set)
            try:
                await domain.synchronize()
            finally:
                leave.set()
                thread.join()
        return domain.stats().offloaded_waits - before

    async def main() -> dict[str, tuple[int, float, int]]:
        out = {}
        for side, domain in sides.items():
            await domain.synchronize()  # warm up
            hops, per_await = await idle(domain)
            out[side] = (hops, per_await, await with_reader(domain))
        return out

    return asyncio.run(main())


def bench_shared_grace(s: Settings) -> list[Result]:
    counts = [1, GOAL_ATTACHED] if s.quick else [1, 2, GOAL_ATTACHED, 8]
    name, _ = scratch_names()
    private = aiorcu.Domain(name="bench-private-sync")
    number = max(20, s.number // 200)
    calls, pairs = max(10, s.number // 4000), 6 * s.repeat
    spaced: dict[int, dict[str, list[int]]] = {}
    with (
        scratch_domain(name) as shared,
        Members(name) as members,
        idle_reader_thread(private),
    ):
        sides: Sides = {"shared": shared, "private": private}
        helpers = members.start("idle", max(counts) - 1)
        attached = 1
        for n in counts:
            members.attach(helpers[attached - 1 : n - 1])
            attached = n
            seen = shared.stats().processes_attached
            if seen != n:
                raise RuntimeError(f"{n} processes should be attached; the domain counts {seen}")
            if n == max(counts):
                shared.unlink()  # all attached: no name is left even if this process dies
            if n == GOAL_ATTACHED:
                idle, back = _idle(sides, calls, pairs)
                awaits = _awaits(sides, number)
            spaced[n] = _spaced(sides, s.scenario_seconds)
    return [
        *_idle_rows(idle, back, awaits, number, s.repeat),
        *(row for n in counts for row in _spaced_rows(n, spaced[n])),
    ]


def _idle_rows(
    idle: Paired,
    back: dict[str, list[int]],
    awaits: dict[str, tuple[int, float, int]],
    number: int,
    repeat: int,
) -> list[Result]:
    hops, per_await, control = awaits["shared"]
    private_hops, private_per_await, private_control = awaits["private"]
    mine, theirs = back["shared"], back["private"]
    return [
        Result(
            f"synchronize_blocking(), {GOAL_ATTACHED} processes attached, nobody inside (median)",
            percentile(mine, 0.5),
            "a Domain's, an idle reader thread (median)",
            percentile(theirs, 0.5),
            goal="<= 50 us",
            goal_ns=50_000,
            note=f"p99 {fmt_ns(percentile(mine, 0.99))} (Domain "
            f"{fmt_ns(percentile(theirs, 0.99))}); {len(mine):,} calls per side, back to back, "
            f"in {len(idle.candidate)} pairs of rounds (A B, B A, ...); the ratio is the median "
            f"of the rounds' ratios of medians ({_spread(idle)}); {GOAL_ATTACHED - 1} helper "
            "processes attached, each with one section behind it, then idle",
            label=f"synchronize_blocking(), {GOAL_ATTACHED} procs",
            baseline_label="Domain, median",
            paired_ratio=idle.ratio,
        ),
        Result(
            f"await synchronize(), {GOAL_ATTACHED} processes attached, nobody inside: thread hops",
            float(hops),
            unit="hops",
            goal="0 (no thread hop)",
            goal_ns=0,
            note=f"stats().offloaded_waits grew by {hops} over {number:,} awaits "
            f"({fmt_ns(per_await)} each); a Domain: {private_hops} "
            f"({fmt_ns(private_per_await)} each). Control, a reader inside on another "
            f"thread: {control} of 3 awaits hopped (Domain: {private_control} of 3)",
            label=f"await synchronize(), {GOAL_ATTACHED} procs",
        ),
    ]


def _spaced_rows(n: int, samples: dict[str, list[int]]) -> list[Result]:
    mine, theirs = samples["shared"], samples["private"]
    notes = {
        "p50": f"{len(mine):,} synchronize_blocking() calls per side, 1 ms apart, in turns of "
        f"{SPACED_ROUND} per side; the attached counts are measured one after the other; "
        "reported, no goal",
        "p99": f"the p50 row's samples; max {fmt_ns(float(max(mine)))} (Domain "
        f"{fmt_ns(float(max(theirs)))}); reported, no goal",
    }
    return [
        Result(
            f"grace period, {n} process(es) attached and idle, 1 ms apart, {tag}",
            percentile(mine, q),
            f"a Domain's, same spacing, an idle reader thread ({tag})",
            percentile(theirs, q),
            unit=f"ns ({tag})",
            note=notes[tag],
            label=f"shared grace {tag}, {n} attached",
            baseline_label=f"Domain, {tag}",
        )
        for q, tag in ((0.5, "p50"), (0.99, "p99"))
    ]


# -- readers in worker processes, a writer revoking every 10 ms ------------------------------


def _revoke_every(bitmap: aiorcu.Bitmap, seconds: float, out: list[int]) -> None:
    """Revokes page 0 and grants it back every 10 ms for ``seconds``; revoke latencies to out."""
    revoke = aiorcu.BitmapTransaction(ops=[aiorcu.Revoke(start=0, count=1)])
    grant = aiorcu.BitmapTransaction(ops=[aiorcu.Grant(start=0, count=1)])
    clock = time.perf_counter_ns
    start = time.perf_counter()
    tick = start
    while tick < start + seconds:
        t0 = clock()
        bitmap.commit_blocking(revoke)  # returns once no reader can still see page 0
        out.append(clock() - t0)
        bitmap.commit_blocking(grant)
        tick += WRITE_EVERY
        time.sleep(max(0.0, tick - time.perf_counter()))


@final
@dataclasses.dataclass(frozen=True)
class Window:
    writer: bool
    pair: int
    start: int
    end: int


@final
@dataclasses.dataclass(frozen=True)
class Worker:
    """One reader process's figures: p99 read latency with the writer and without."""

    ratio: float
    """The median over groups of windows of p99 with / p99 without."""
    loaded: float
    plain: float
    reads: int
    groups: list[float]


def _worker(stamps: list[int], durations: list[int], windows: list[Window], groups: int) -> Worker:
    """Sorts a worker's reads into the windows; reads outside every window are dropped."""
    starts = [w.start for w in windows]
    sides: dict[bool, list[int]] = {False: [], True: []}
    by_group: dict[tuple[int, bool], list[int]] = {}
    for t0, took in zip(stamps, durations, strict=True):
        i = bisect.bisect_right(starts, t0) - 1
        if i < 0 or t0 >= windows[i].end:
            continue
        w = windows[i]
        sides[w.writer].append(took)
        by_group.setdefault((w.pair % groups, w.writer), []).append(took)
    ratios = [
        percentile(by_group.get((g, True), []), 0.99)
        / percentile(by_group.get((g, False), []), 0.99)
        for g in range(groups)
    ]
    ratios = [r for r in ratios if not math.isnan(r)]
    return Worker(
        statistics.median(ratios) if ratios else math.nan,
        percentile(sides[True], 0.99),
        percentile(sides[False], 0.99),
        len(sides[True]) + len(sides[False]),
        ratios,
    )


def bench_shared_readers(s: Settings) -> list[Result]:
    name, pages = scratch_names()
    size = aiorcu.GuardedMemory.buffer_size(PAGES, PAGE_SIZE)
    groups = 3 if s.quick else 5
    # 45 pairs in a full run: with fewer, the median of the groups' p99
    # ratios still wandered by 0.3 between runs on a loaded 2-CPU machine.
    pairs = max(groups, round(3 * s.scenario_seconds / WINDOW))
    windows: list[Window] = []
    revokes: dict[str, list[int]] = {"shared": [], "private": []}
    private = aiorcu.Domain(name="bench-private-revoke")
    private_mem = aiorcu.GuardedMemory(PAGES, PAGE_SIZE, domain=private, initial=True)
    with contextlib.ExitStack() as stack:
        shared = stack.enter_context(scratch_domain(name))
        buf = stack.enter_context(pages_file(pages, size))
        mem = aiorcu.GuardedMemory(PAGES, PAGE_SIZE, domain=shared, initial=True, buffer=buf)
        stack.callback(mem.close)
        stack.enter_context(idle_reader_thread(private))
        members = stack.enter_context(Members(name, pages))
        readers = members.start("reader", READER_PROCESSES)
        members.attach(readers)
        shared.unlink()  # all attached: no name is left even if this process dies
        os.unlink(pages)
        time.sleep(0.05)  # the readers settle into their loops
        clock = time.perf_counter_ns
        for pair in range(pairs):
            for writer in (False, True) if pair % 2 == 0 else (True, False):
                t0 = clock()
                if writer:
                    _revoke_every(mem.bitmap, WINDOW, revokes["shared"])
                else:
                    time.sleep(WINDOW)
                windows.append(Window(writer, pair, t0, clock()))
            if pair % 2 == 0:
                # The baseline of the revoke row: the same commits on a Domain's
                # memory nobody reads (the readers' samples meanwhile are dropped).
                _revoke_every(private_mem.bitmap, WINDOW, revokes["private"])
        samples = members.collect(readers)
    workers = [_worker(*samples[index], windows, groups) for index in sorted(samples)]
    return _reader_rows(workers, revokes, pairs, groups)


def _reader_rows(
    workers: list[Worker], revokes: dict[str, list[int]], pairs: int, groups: int
) -> list[Result]:
    worst = max(workers, key=lambda w: -math.inf if math.isnan(w.ratio) else w.ratio)
    each = "; ".join(
        f"worker {i}: {fmt_ns(w.loaded)} vs {fmt_ns(w.plain)}, "
        f"groups {' '.join(f'{r:.2f}' for r in w.groups)}, median {w.ratio:.2f}x "
        f"({w.reads:,} reads)"
        for i, w in enumerate(workers)
    )
    mine, theirs = revokes["shared"], revokes["private"]
    return [
        Result(
            f"worker processes: GuardedMemory.read() p99, revoking writer (worst of "
            f"{READER_PROCESSES})",
            worst.loaded,
            "the same worker, no writer",
            worst.plain,
            goal="<= 1.2x",
            goal_ratio=1.2,
            unit="ns (p99)",
            note=f"p99 with the writer vs without, pooled, per worker: {each}. This process "
            f"revokes page 0 (which the readers never read) and grants it back every 10 ms, "
            f"in {WINDOW * 1000:g} ms windows alternating with windows without it ({pairs} "
            f"pairs, in {groups} groups); a worker's ratio is the median of its groups' p99 "
            "ratios; readers pause 0-0.4 ms between reads",
            label="procs: read p99, revoking writer",
            baseline_label="same worker, no writer",
            paired_ratio=worst.ratio,
        ),
        Result(
            f"revoke commit, {READER_PROCESSES} reader processes reading, p99",
            percentile(mine, 0.99),
            "the same commits on a Domain's memory nobody reads (p99)",
            percentile(theirs, 0.99),
            unit="ns (p99)",
            note=f"p50 {fmt_ns(percentile(mine, 0.5))} (Domain {fmt_ns(percentile(theirs, 0.5))}"
            f"), max {fmt_ns(float(max(mine)))}, {len(mine):,} revokes (Domain {len(theirs):,}), "
            "10 ms apart; each waits "
            f"for a grace period across {READER_PROCESSES + 1} processes while the readers read; "
            "reported, no goal",
            label=f"revoke p99, {READER_PROCESSES} reader procs",
            baseline_label="Domain, no readers",
        ),
    ]
