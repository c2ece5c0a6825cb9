"""``aiorcu bench``: the cases in order, the progress, then the table or the JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from ..cli import positive_int
from ..console import Progress
from . import plots, report
from .cases_app import bench_asgi, bench_busy_readers, bench_fence_mode
from .cases_features import bench_bitmap, bench_cell_callbacks
from .cases_read import bench_async_read, bench_thread_read
from .cases_shared import bench_shared_grace, bench_shared_read, bench_shared_readers
from .cases_writers import bench_synchronize_idle, bench_wait_modes, bench_writer_scenario
from .measure import Case, Result, Settings

# The seconds are wall times (full run, quick run) measured on a shared 2-CPU
# machine (a full run took 55 s there); they only seed the estimate of the
# time left, which then follows how long the finished steps really took.
CASES: list[Case] = [
    Case("with domain.read() vs threading.Lock and readerwriterlock", bench_thread_read,
         (3.5, 0.2)),
    Case("async with domain.read() vs asyncio.Lock and aiorwlock", bench_async_read, (7, 0.3)),
    Case("synchronize_blocking() and await synchronize() with no reader active",
         bench_synchronize_idle, (0.7, 0.1)),
    Case("reader cost with a busy writer: futex vs poll wait modes", bench_wait_modes, (2, 0.1)),
    Case("readers' p99 with and without a 1 ms writer every 10 ms", bench_writer_scenario,
         (12, 2.5)),
    Case("grace periods with CPU-bound reader threads", bench_busy_readers, (6.5, 0.8)),
    Case("bitmap: check_range, GuardedMemory.read, commits", bench_bitmap, (2, 0.1)),
    Case("RcuCell.get() and call_after_grace_period()", bench_cell_callbacks, (1.5, 0.1)),
    Case("SharedDomain read sections vs Domain", bench_shared_read, (4, 0.2)),
    Case("SharedDomain grace periods with 1, 2, 4, 8 processes attached", bench_shared_grace,
         (20, 4)),
    Case("SharedDomain reader processes with a writer revoking every 10 ms",
         bench_shared_readers, (15, 4)),
    Case("an ASGI app answering lookups while a writer replaces its table", bench_asgi, (4.5, 1)),
    Case("read sections in fence mode (AIORCU_MEMBARRIER=off), in a subprocess",
         bench_fence_mode, (15, 1.5)),
]  # fmt: skip
PLOT_STEPS = ((11.0, 2.0), (11.0, 2.0))
"""write_plots()'s two steps (reader threads, reader tasks): seconds (full run, quick run)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (noisier figures)")
    parser.add_argument(
        "--goals",
        action="store_true",
        help="add each row's goal and whether this run met it, and a goals-met count "
        "(a wider table)",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="full row names and baselines, and every note (wider than 100 columns)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with every field, no table"
    )
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="also write PNG plots of read cost and grace-period latency into DIR "
        "(needs matplotlib: the 'plot' extra)",
    )
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="run only the steps whose title contains TEXT (case-insensitive), "
        "e.g. --only SharedDomain",
    )
    advanced = parser.add_argument_group("advanced")
    advanced.add_argument(
        "--repeat",
        type=positive_int,
        default=None,
        help="interleaved trials per figure; the best counts (default: 7, quick: 3)",
    )


def selected(only: str | None) -> list[Case]:
    """The steps to run: all of them, or those whose title contains ``only``."""
    if not only:
        return list(CASES)
    return [case for case in CASES if only.casefold() in case.title.casefold()]


def validate(args: argparse.Namespace) -> str | None:
    if args.only is not None and not selected(args.only):
        titles = "; ".join(case.title for case in CASES)
        return f"--only {args.only!r} matches no step; the steps are: {titles}"
    return None


def settings_for(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    return Settings(
        number=20_000 if quick else 200_000,
        repeat=args.repeat or (3 if quick else 7),
        scenario_seconds=0.3 if quick else 1.5,
        quick=quick,
    )


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """A SIGTERM (``timeout``, ``kill``) ends the run as Ctrl-C does: by an exception.

    Each step's cleanup then runs: helper processes are stopped and joined,
    shared names removed.  Python's default for SIGTERM is to die on the spot.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        problem = plots.matplotlib_missing()
        if problem:
            print(problem, file=sys.stderr)
            return 2
    settings = settings_for(args)
    cases = selected(args.only)
    estimates = [case.estimate(settings) for case in cases]
    if args.plot:
        estimates += [quick if settings.quick else full for full, quick in PLOT_STEPS]
    results: list[Result] = []
    written: list[str] = []
    with (
        sigterm_unwinds(),
        Progress("bench", len(estimates), estimates=estimates, stream=sys.stderr) as progress,
    ):
        for case in cases:
            progress.step(case.title)
            results.extend(case.run(settings))
        if args.plot:
            written = plots.write_plots(args.plot, settings, progress)

    if args.json:
        print(json.dumps(report.to_json(results, settings, written), indent=2))
        return 0
    head = report.header(settings)
    report.print_table(results, head, wide=args.wide, goals=args.goals)
    for path in written:
        print(f"wrote {path}")
    return 0
