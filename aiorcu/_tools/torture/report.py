"""The torture run's report: the age histogram, the summary, and the verdict."""

from __future__ import annotations

from typing import Any

from .state import AGES


def print_summary(figures: dict[str, Any]) -> None:
    reads = figures["reads"]
    print("age of the objects read, in grace periods completed since their publication:")
    top = max(figures["age_histogram"]) or 1
    for age, count in enumerate(figures["age_histogram"]):
        label = f"{age}" if age < AGES else f"{AGES}+"
        share = 100 * count / reads if reads else 0.0
        print(f"  {label:>4}  {count:>13,}  {share:5.1f}%  {'#' * round(40 * count / top)}")
    current, pending, late = figures["pipeline"]
    print(
        f"objects read: still current {current:,}; replaced, grace period pending "
        f"{pending:,}; replaced, grace period completed (errors) {late:,}"
    )
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
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")
    for message in figures["error_messages"]:
        print(f"  error: {message}")
    for message in figures["failures"]:
        print(f"  failure: {message}")


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
