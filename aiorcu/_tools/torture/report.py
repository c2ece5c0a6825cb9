"""The torture run's report: the age histogram, the summary, and the verdict."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..console import Progress
from .state import AGES


def progress_for(args: argparse.Namespace) -> Progress | None:
    """The console progress line of a torture run (none with --json)."""
    if args.json:
        return None
    return Progress(
        "torture",
        args.seconds,
        unit="s",
        every=min(30.0, max(1.0, args.seconds / 5)),
        stream=sys.stdout,
        transient=False,
    )


def print_ages(figures: dict[str, Any], what: str = "objects") -> None:
    """The age histogram and the pipeline line of a run's figures."""
    reads = figures["reads"]
    print(f"age of the {what} read, in grace periods completed since their publication:")
    top = max(figures["age_histogram"]) or 1
    for age, count in enumerate(figures["age_histogram"]):
        label = f"{age}" if age < AGES else f"{AGES}+"
        share = 100 * count / reads if reads else 0.0
        print(f"  {label:>4}  {count:>13,}  {share:5.1f}%  {'#' * round(40 * count / top)}")
    current, pending, late = figures["pipeline"]
    print(
        f"{what} read: still current {current:,}; replaced, grace period pending "
        f"{pending:,}; replaced, grace period completed (errors) {late:,}"
    )


def print_summary(figures: dict[str, Any]) -> None:
    reads = figures["reads"]
    print_ages(figures)
    published = figures["published"]
    rss = figures.get("rss")
    lines = [
        (
            "reads",
            f"{reads:,} ({reads / figures['elapsed']:,.0f}/s): threads "
            f"{figures['thread_reads']:,}, tasks {figures['task_reads']:,}",
        ),
        ("grace periods", f"{figures['grace_periods']:,}"),
        (
            "objects published",
            f"{sum(published.values()):,} ("
            + ", ".join(f"{k} {v:,}" for k, v in sorted(published.items()))
            + f"), retired {figures['retired']:,}",
        ),
        ("callbacks", f"{figures['callbacks_queued']:,} queued, {figures['callbacks_run']:,} run"),
        ("offloaded waits", f"{figures['offloaded_waits']:,}"),
        (
            "writer sleeps",
            f"{figures['writer_sleeps']:,}, reader wake-ups {figures['reader_wakeups']:,}",
        ),
        (
            "backstop timeouts",
            f"{figures['backstop_timeouts']:,} (read sections of 50 ms or more: "
            f"{figures['long_sections']:,}, longest {figures['longest_section_ms']:.1f} ms)",
        ),
        ("stall warnings", f"{figures['stall_warnings']:,} (grace periods waiting 1 s or more)"),
    ]
    if rss is not None:
        lines.append(
            (
                "RSS",
                f"{rss['warm'] / 2**20:.1f} MiB after {rss['warmup_seconds']:g} s warm-up, "
                f"{rss['end'] / 2**20:.1f} MiB at the end: growth "
                f"{(rss['end'] - rss['warm']) / 2**20:+.2f} MiB, peak {rss['peak'] / 2**20:.1f} MiB"
                + ("" if rss["judged"] else " (not judged: run shorter than 60 s)"),
            )
        )
    lines.append(("errors", f"{figures['errors']:,}"))
    _print_lines(lines, figures)


def _print_lines(lines: list[tuple[str, str]], figures: dict[str, Any]) -> None:
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")
    for message in figures["error_messages"]:
        print(f"  error: {message}")
    for message in figures["failures"]:
        print(f"  failure: {message}")


def print_process_summary(figures: dict[str, Any]) -> None:
    """The summary of a cross-process run (``--processes``)."""
    print_ages(figures, "elements")
    reads, kills, published = figures["reads"], figures["kills"], figures["published"]
    gap_ms, release_ms = figures["longest_gap_ms"], kills["longest_release_ms"]
    goal_ms = figures["release_goal_ms"]
    lines = [
        (
            "reads",
            f"{reads:,} ({reads / max(figures['elapsed'], 1e-9):,.0f}/s): threads "
            f"{figures['thread_reads']:,}, tasks {figures['task_reads']:,}",
        ),
        (
            "page reads",
            f"{figures['memory_reads']:,}, denied {figures['memory_denied']:,}; "
            f"pages revoked and reused {figures['revokes']:,}",
        ),
        (
            "grace periods",
            f"{figures['grace_periods']:,}, longest gap between two {gap_ms:,.1f} ms",
        ),
        (
            "elements published",
            f"{sum(published.values()):,} ("
            + ", ".join(f"{k} {v:,}" for k, v in sorted(published.items()))
            + f"), retired {figures['retired']:,}",
        ),
        ("callbacks", f"{figures['callbacks_queued']:,} queued, {figures['callbacks_run']:,} run"),
        ("processes attached", f"{figures['processes_attached']:,} at the end"),
        (
            "writer sleeps",
            f"{figures['writer_sleeps']:,}, reader wake-ups {figures['reader_wakeups']:,}",
        ),
        (
            "backstop timeouts",
            f"{figures['backstop_timeouts']:,}"
            + (
                f", while a victim was stopped {kills['backstops_during_kills']:,}"
                if figures["kill"]
                else ""
            )
            + f" (read sections of 50 ms or more: {figures['long_sections']:,}, longest "
            f"{figures['longest_section_ms']:.1f} ms)",
        ),
        ("errors", f"{figures['errors']:,}"),
    ]
    if figures["kill"]:
        killed = kills["readers"] + kills["writers"]
        lines[5:5] = [
            (
                "kills",
                f"{killed:,} (reader processes {kills['readers']:,}, writer processes "
                f"{kills['writers']:,}): inside a read section {kills['inside_sections']:,}, "
                f"waiting for a grace period {kills['waiting_for_grace_periods']:,}"
                + (f", not seen stopped {kills['unconfirmed']:,}" if kills["unconfirmed"] else ""),
            ),
            (
                "dead readers released",
                f"{figures['dead_readers_released']:,}; from a death to the release: longest "
                f"{release_ms:,.1f} ms of {kills['releases_timed']:,} timed"
                + (f" (over {goal_ms:g} ms)" if release_ms > goal_ms else ""),
            ),
        ]
    _print_lines(lines, figures)


def print_verdict(figures: dict[str, Any], expect_failure: bool) -> None:
    """The last line: OK or FAILED, and why."""
    errors, failures = figures["errors"], figures["failures"]
    first = figures["first_error_seconds"]
    if errors and first is not None:
        when = f"first error after {first:.3f} s"
        if expect_failure and failures:
            print(f"FAILED: errors were caught ({when}), but {failures[0]}")
        elif expect_failure:
            print(f"OK (failure expected): the run caught {errors:,} error(s), {when}")
        else:
            print(f"FAILED: {errors:,} reader error(s), {when}")
    elif expect_failure:
        print("FAILED: an error was expected and none was caught")
    elif failures:
        print(f"FAILED: {failures[0]}")
    else:
        print("OK: no reader saw a retired object")
