"""The torture run: start the workers, watch them, judge the figures.

The run stops at the first reader error and fails (exit 1).  It also fails
when more writer sleeps were ended by their 50 ms backstop timer (readers
gone, no wake-up) than read sections lasted 50 ms or more: only such a
section's wake-up can have come that late, so the rest were lost; when no
grace period completes for 20 s; and, with ``--report-rss`` on runs of 60 s
or more, when RSS grows more than 5 MiB between the end of the warm-up (a
fifth of the run, 60 s at most) and the end.  ``--busted`` makes grace
periods skip their waits: the run must catch that within seconds, and with
``--expect-failure`` it succeeds only if it did.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import aiorcu
from aiorcu import testing

from ..cli import count, positive_float, positive_int
from .checks import RssSamples, judge_backstops, judge_rss, sum_tallies
from .processes import run_processes
from .report import print_summary, print_verdict, progress_for
from .state import HANG_S, RSS_JUDGED_FROM_S, STALL_S, STALL_WARNING_S, Run, Tally
from .workers import jitter, make_workers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=positive_float, default=5.0, help="how long to run (default: 5)"
    )
    parser.add_argument(
        "--threads", "--readers", type=count, default=2, help="reader threads (default: 2)"
    )
    parser.add_argument(
        "--tasks", type=count, default=16, help="reader tasks on the event loop (default: 16)"
    )
    parser.add_argument(
        "--report-rss",
        action="store_true",
        help="report memory (RSS) growth after the warm-up; over 5 MiB fails runs of 60 s or more",
    )
    parser.add_argument("--json", action="store_true", help="print the final figures as JSON")
    shared = parser.add_argument_group(
        "across processes",
        "readers and writers in separate processes on one shared domain and shared memory",
    )
    shared.add_argument(
        "--processes",
        type=count,
        default=0,
        metavar="N",
        help="run N reader processes, each with --threads threads and --tasks tasks "
        "(default: 0, everything in this process)",
    )
    shared.add_argument(
        "--writer-processes",
        type=positive_int,
        default=2,
        metavar="M",
        help="writer processes, with --processes (default: 2)",
    )
    shared.add_argument(
        "--kill",
        action="store_true",
        help="with --processes: every 0.15 to 0.5 s, SIGKILL a random reader or writer "
        "process and start a new one in its place",
    )
    advanced = parser.add_argument_group(
        "advanced", "for checking aiorcu itself: fault injection and negative controls"
    )
    advanced.add_argument(
        "--jitter",
        action="store_true",
        help="random delays inside read sections, in section entries and between writer steps",
    )
    advanced.add_argument(
        "--busted",
        action="store_true",
        help="negative control: grace periods stop waiting for readers, so readers must be "
        "caught seeing retired objects",
    )
    advanced.add_argument(
        "--expect-failure",
        action="store_true",
        help="invert the verdict: exit 0 only if a reader error was caught (with --busted)",
    )
    advanced.add_argument(
        "--seed", type=int, default=None, help="seed of the random choices (default: random)"
    )


def validate(args: argparse.Namespace) -> str | None:
    """Checks that span several options (the single ones are argparse types)."""
    if args.threads + args.tasks < 1:
        return "need at least one reader: --threads or --tasks must be 1 or more"
    if args.kill and not args.processes:
        return "--kill needs --processes: it kills reader and writer processes"
    if args.processes and args.report_rss:
        return "--report-rss measures one process; leave it out of --processes runs"
    return None


def monitor(
    state: Run, args: argparse.Namespace, tallies: list[Tally], rss: RssSamples | None
) -> None:
    """The main thread's part: progress, the stall check and RSS samples, then stop."""
    progress = progress_for(args)
    last_gp, last_gp_at = state.completed(), time.monotonic()
    try:
        while not state.stop.is_set():
            elapsed = time.monotonic() - state.started
            gp = state.completed()
            if gp != last_gp:
                last_gp, last_gp_at = gp, time.monotonic()
            elif time.monotonic() - last_gp_at > STALL_S:
                state.fail(f"no grace period completed for {STALL_S:g} s")
            status = f"reads {sum(t.reads for t in tallies):,}  grace periods {gp:,}"
            status += f"  errors {state.errors}"
            if rss is not None:
                status += f"  RSS {rss.sample(elapsed) / 2**20:.1f} MiB"
            if progress is not None:
                progress.update(min(elapsed, args.seconds), status)
            if elapsed >= args.seconds or state.errors:
                break
            time.sleep(0.2)
        if rss is not None:
            rss.finish()
    finally:
        state.stop.set()
        if progress is not None:
            progress.close()


def _start_and_join(
    state: Run, workers: list[threading.Thread], monitored: Callable[[], None]
) -> None:
    state.started = time.monotonic()
    for w in workers:
        w.start()
    monitored()
    deadline = time.monotonic() + HANG_S
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    stuck = [w.name for w in workers if w.is_alive()]
    if stuck:
        state.fail(f"{', '.join(stuck)} did not stop within {HANG_S:g} s")
    else:
        flushed = threading.Event()
        state.domain.call_after_grace_period(flushed.set)
        if not flushed.wait(HANG_S):
            state.fail(f"queued callbacks did not run within {HANG_S:g} s")


def run(args: argparse.Namespace) -> int:
    problem = validate(args)
    if problem:
        print(f"aiorcu torture: {problem}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    if args.processes:
        return run_processes(args, seed)
    domain = aiorcu.Domain(name="torture")
    # Warn about grace periods stuck for a second, not the 100 ms that a busy
    # machine reaches now and then; each warning names who is inside.
    testing.set_stall_interval(domain, STALL_WARNING_S, 10.0)
    if args.busted:
        testing.set_busted(domain)
    state = Run(domain, seed, args.jitter)
    thread_tallies = [Tally() for _ in range(args.threads)]
    task_tally = Tally()
    workers = make_workers(state, thread_tallies, task_tally, args.tasks)
    if not args.json:
        print(
            f"aiorcu torture: {args.threads} reader threads, {args.tasks} reader tasks, "
            f"4 writers, {args.seconds:g} s, backend {aiorcu.backend_info().mechanism}, "
            f"seed {seed}"
            + (" [jitter]" if args.jitter else "")
            + (" [BUSTED grace periods]" if args.busted else ""),
            flush=True,
        )
    tallies = [*thread_tallies, task_tally]
    rss = RssSamples(min(60.0, args.seconds / 5)) if args.report_rss else None
    with jitter(state, args.jitter):
        _start_and_join(state, workers, lambda: monitor(state, args, tallies, rss))
    elapsed = time.monotonic() - state.started

    stats = domain.stats()
    raw = testing.raw_stats(domain)
    reads, ages, pipeline, longest, long_sections = sum_tallies(tallies)
    thread_reads = sum(t.reads for t in thread_tallies)
    failures = list(state.failures)
    backstop = judge_backstops(raw["backstop_timeouts"], long_sections)
    if backstop:
        failures.append(backstop)
    if not state.errors:
        if reads == 0 or stats.grace_periods == 0:
            failures.append("the run was too short to read or complete a grace period")
        elif args.tasks and task_tally.reads == 0:
            failures.append("no reader task read anything")
    rss_figures: dict[str, Any] | None = None
    if rss is not None and rss.warm is not None and rss.end is not None:
        rss_figures = {
            "warmup_seconds": round(rss.warmup, 1),
            "warm": rss.warm,
            "end": rss.end,
            "growth": rss.end - rss.warm,
            "peak": max(rss.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "judged": args.seconds >= RSS_JUDGED_FROM_S,
        }
        rss_failure = judge_rss(args.seconds, rss.warm, rss.end)
        if rss_failure:
            failures.append(rss_failure)

    caught = state.errors > 0
    # A crash, hang or leak fails the run even when errors were expected.
    code = 0 if caught == bool(args.expect_failure) and not failures else 1
    figures: dict[str, Any] = {
        "seconds": args.seconds,
        "elapsed": round(elapsed, 3),
        "seed": seed,
        "threads": args.threads,
        "tasks": args.tasks,
        "busted": args.busted,
        "jitter": args.jitter,
        "backend": aiorcu.backend_info().mechanism,
        "reads": reads,
        "thread_reads": thread_reads,
        "task_reads": task_tally.reads,
        "age_histogram": ages,
        "pipeline": pipeline,
        "grace_periods": stats.grace_periods,
        "published": dict(state.published),
        "retired": state.retired,
        "callbacks_queued": state.callbacks_queued,
        "callbacks_run": state.callbacks_run,
        "offloaded_waits": stats.offloaded_waits,
        "writer_sleeps": stats.writer_sleeps,
        "reader_wakeups": stats.reader_wakeups,
        "backstop_timeouts": raw["backstop_timeouts"],
        "long_sections": long_sections,
        "longest_section_ms": round(longest / 1e6, 3),
        "stall_warnings": stats.stall_warnings,
        "errors": state.errors,
        "first_error_seconds": (
            None if state.first_error_at is None else round(state.first_error_at, 3)
        ),
        "error_messages": list(state.messages),
        "failures": failures,
        "rss": rss_figures,
        "exit_code": code,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return code
    print_summary(figures)
    print_verdict(figures, args.expect_failure)
    return code
