"""What a benchmark row is, and how its figures are taken.

Every figure is the best of several interleaved trials (A, B, A, B, ...), so
a burst of noise on a shared machine hits every side alike; latency figures
are percentiles of samples pooled over alternating rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import math
import random
import statistics
import threading
import time
import timeit
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, final

import aiorcu


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
    """``"ns/op"``, ``"ns (p99)"``, ``"ns total"``, or a count's unit (``"hops"``)."""
    note: str | None = None
    label: str | None = None
    """A short form of ``name`` for the default (narrow) table."""
    baseline_label: str | None = None
    """A short form of ``baseline`` for the default (narrow) table."""
    needs_extra: str | None = None
    """The optional extra whose absence kept this row from being measured."""
    paired_ratio: float | None = None
    """For rows measured in pairs of trials: the median of the pairs' ratios,
    shown as the row's ratio (the costs are then each side's median, and
    JSON's ``ratio_of`` says ``"pairs"`` rather than ``"figures"``)."""

    @property
    def short_name(self) -> str:
        return self.label or self.name

    @property
    def short_baseline(self) -> str:
        return self.baseline_label or self.baseline or ""

    @property
    def ratio(self) -> float | None:
        """aiorcu's cost divided by the baseline's (below 1 means aiorcu is faster)."""
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.baseline_ns_per_op is None or not self.baseline_ns_per_op > 0:
            return None
        if math.isnan(self.ns_per_op):
            return None
        return self.ns_per_op / self.baseline_ns_per_op

    @property
    def met(self) -> bool | None:
        checks: list[bool] = []
        ratio = self.ratio
        if self.goal_ratio is not None and ratio is not None:
            checks.append(ratio <= self.goal_ratio)
        if self.goal_ns is not None and not math.isnan(self.ns_per_op):
            checks.append(self.ns_per_op <= self.goal_ns)
        return all(checks) if checks else None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ns_per_op": _rounded(self.ns_per_op),
            "baseline": self.baseline,
            "baseline_ns_per_op": _rounded(self.baseline_ns_per_op),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "ratio_of": "pairs" if self.paired_ratio is not None else "figures",
            "goal": self.goal,
            "met": self.met,
            "unit": self.unit,
            "note": self.note,
            "needs_extra": self.needs_extra,
        }


def _rounded(value: float | None) -> float | None:
    """JSON has no NaN: a figure that was not measured is null."""
    if value is None or math.isnan(value):
        return None
    return round(value, 1)


@final
@dataclasses.dataclass(frozen=True)
class Settings:
    number: int  # operations per trial for the cheap micro-benchmarks
    repeat: int  # interleaved trials; the best one counts
    scenario_seconds: float  # per side of each latency scenario
    quick: bool


@final
@dataclasses.dataclass(frozen=True)
class Case:
    """One step of ``aiorcu bench``: a group of rows measured together."""

    title: str
    run: Callable[[Settings], list[Result]]
    seconds: tuple[float, float]
    """Rough wall time (full run, quick run) on a 2-CPU machine: the first
    estimate of the time left, before any step has finished."""

    def estimate(self, s: Settings) -> float:
        return self.seconds[1] if s.quick else self.seconds[0]


class Reporter(Protocol):
    def step(self, label: str) -> None: ...


# -- optional packages --------------------------------------------------------------


def install_hint(extra: str) -> str:
    """How to install one of aiorcu's extras (from a clone: not on a public index)."""
    return f"pip install '.[{extra}]' in the aiorcu clone"


def needs(module: str, extra: str) -> str:
    """The sentence every tool prints when an optional package is missing."""
    return f"needs {module}, from the {extra!r} extra ({install_hint(extra)})"


def missing(
    name: str,
    extra: str,
    module: str,
    *,
    baseline: str | None = None,
    label: str | None = None,
    baseline_label: str | None = None,
    goal: str | None = None,
    unit: str = "ns/op",
) -> Result:
    """A row that could not run because an optional package is not installed.

    It keeps its place (and its goal) in the table and says which extra is
    missing, rather than vanishing.
    """
    return Result(
        name,
        math.nan,
        baseline,
        goal=goal,
        unit=unit,
        note=f"not measured: {needs(module, extra)}",
        label=label,
        baseline_label=baseline_label,
        needs_extra=extra,
    )


def optional(module: str) -> Any:
    """The module, or None when it (or its extra) is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# -- timing -------------------------------------------------------------------------


def best_of(
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


@final
@dataclasses.dataclass(frozen=True)
class Paired:
    """Figures of a candidate and its baseline, trial by trial, in pairs."""

    candidate: list[float]
    baseline: list[float]

    @property
    def ratios(self) -> list[float]:
        return [c / b for c, b in zip(self.candidate, self.baseline, strict=True) if b > 0]

    @property
    def ratio(self) -> float:
        """The median of the pairs' ratios: a pair hit by a burst of noise moves it little."""
        ratios = self.ratios
        return statistics.median(ratios) if ratios else math.nan

    def quartiles(self) -> tuple[float, float]:
        """The middle half of the pairs' ratios, for the notes."""
        ratios = self.ratios
        if len(ratios) < 2:
            return self.ratio, self.ratio
        low, _, high = statistics.quantiles(ratios, n=4)
        return low, high


def paired(
    candidate: Callable[[], float],
    baseline: Callable[[], float],
    pairs: int,
    *,
    warm_up: bool = True,
) -> Paired:
    """``pairs`` trials of each side, A B, B A, A B, ...: each call is one trial's figure.

    Each pair runs back to back, so the load of the moment weighs on both of
    its trials; alternating which goes first cancels what running second
    costs or saves (a warm cache, a frequency step).  ``warm_up`` runs one
    trial of each side first and drops it (caches, slots, lazily built
    objects).
    """
    if warm_up:
        candidate(), baseline()
    mine: list[float] = []
    theirs: list[float] = []
    for i in range(pairs):
        if i % 2:
            theirs.append(baseline())
            mine.append(candidate())
        else:
            mine.append(candidate())
            theirs.append(baseline())
    return Paired(mine, theirs)


def stmt(statement: str, **namespace: object) -> Callable[[int], float]:
    timer = timeit.Timer(statement, globals=namespace)
    return timer.timeit


def on_loop(
    loop: asyncio.AbstractEventLoop, body: Callable[[int], Awaitable[float]]
) -> Callable[[int], float]:
    def run(number: int) -> float:
        return loop.run_until_complete(body(number))

    return run


def percentile(samples: list[int], q: float) -> float:
    if not samples:
        return math.nan
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return float(ordered[index])


def fmt_ns(value: float | None, unit: str = "ns/op") -> str:
    """A time for the table; a figure in another unit (a count, ``"hops"``) with its unit."""
    if value is None or math.isnan(value):
        return "-"
    if not unit.startswith("ns"):
        return f"{value:,.0f} {unit}"
    if unit == "ns total" or value >= 1e6:
        return f"{value / 1e6:,.2f} ms"
    if value >= 10_000:
        return f"{value / 1e3:,.1f} µs"
    return f"{value:,.0f} ns"


@contextmanager
def idle_reader_thread(domain: aiorcu.Domain) -> Iterator[None]:
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


def per_thread_reader(lock: Any) -> Callable[[], AbstractContextManager[object]]:
    """readerwriterlock's reader objects keep per-holder state: one per thread."""
    local = threading.local()

    def reader() -> AbstractContextManager[object]:
        try:
            rlock: AbstractContextManager[object] = local.rlock
        except AttributeError:
            rlock = local.rlock = lock.gen_rlock()
        return rlock

    return reader


# -- read latency while a writer runs -------------------------------------------------

WRITE_EVERY = 0.010
WRITE_TAKES = 0.001
READ_PAUSE = 0.0002  # between a reader's operations (sleeps, releasing the GIL)
READERS = 2


def thread_latencies(
    section: Callable[[], AbstractContextManager[object]],
    write: Callable[[], None] | None,
    seconds: float,
) -> list[int]:
    """Reader threads time each protected read while an optional writer runs."""
    state = {"config": {"value": 0}}
    samples: list[list[int]] = [[] for _ in range(READERS)]
    stop = threading.Event()

    def reader(out: list[int]) -> None:
        clock = time.perf_counter_ns
        while not stop.is_set():
            t0 = clock()
            with section():
                _ = state["config"]["value"]
            out.append(clock() - t0)
            time.sleep(random.uniform(0, 2 * READ_PAUSE))  # arrivals not in step with the writer

    def writer() -> None:
        assert write is not None
        while not stop.wait(WRITE_EVERY):
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


def task_latencies(
    section: Callable[[], Any],
    write: Callable[[], Awaitable[None]] | None,
    seconds: float,
) -> list[int]:
    """Reader tasks on one event loop time each protected read while an optional writer runs."""

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
                await asyncio.sleep(random.uniform(0, 2 * READ_PAUSE))

        async def writer() -> None:
            assert write is not None
            while not stop.is_set():
                await asyncio.sleep(WRITE_EVERY)
                await write()

        tasks = [asyncio.ensure_future(reader()) for _ in range(READERS * 4)]
        if write is not None:
            tasks.append(asyncio.ensure_future(writer()))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        return samples

    return asyncio.run(main())


def p99_pair(measure: Callable[[bool, float], list[int]], seconds: float) -> tuple[float, float]:
    """(p99 with the writer, p99 without), from alternating rounds pooled per side."""
    rounds = 3
    plain: list[int] = []
    loaded: list[int] = []
    for _ in range(rounds):
        plain += measure(False, seconds / rounds)
        loaded += measure(True, seconds / rounds)
    return percentile(loaded, 0.99), percentile(plain, 0.99)
