"""The torture run's own checks: lost wake-ups, memory growth, and the tallies summed."""

from __future__ import annotations

import os
from typing import final

from .state import AGES, BACKSTOP_NS, RSS_JUDGED_FROM_S, RSS_LIMIT, Tally


@final
class RssSamples:
    """RSS after the warm-up, at the end of the run (workers still running), and the peak."""

    def __init__(self, warmup: float) -> None:
        self.warmup = warmup
        self.warm: int | None = None
        self.end: int | None = None
        self.peak = 0

    def sample(self, elapsed: float) -> int:
        now = rss_bytes()
        self.peak = max(self.peak, now)
        if self.warm is None and elapsed >= self.warmup:
            self.warm = now
        return now

    def finish(self) -> None:
        self.end = self.sample(0.0)
        if self.warm is None:
            self.warm = self.end


def rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def judge_rss(seconds: float, warm: int | None, end: int | None) -> str | None:
    """Why the RSS figures fail the run, or None.  Short runs are not judged."""
    if seconds < RSS_JUDGED_FROM_S or warm is None or end is None:
        return None
    if end - warm > RSS_LIMIT:
        return (
            f"RSS grew {(end - warm) / 2**20:.1f} MiB after the warm-up (limit "
            f"{RSS_LIMIT / 2**20:.0f} MiB): something keeps memory per read or grace period"
        )
    return None


def judge_backstops(backstops: int, long_sections: int) -> str | None:
    """Why the writer's backstop wake-ups fail the run, or None.

    A writer sleep ends by its backstop timer, with the readers gone, only
    if the last reader's wake-up came more than BACKSTOP_NS after the writer
    saw that reader inside: so that reader's section, timed from before its
    phase load to after its wake-up, lasted that long.  Each such section
    can excuse one backstop (it clears its flag once); the rest are wake-ups
    that were lost.
    """
    lost = backstops - long_sections
    if lost > 0:
        return (
            f"{backstops} writer sleep(s) ended by the {BACKSTOP_NS // 1_000_000} ms backstop "
            f"timer with the readers gone, and only {long_sections} read section(s) lasted "
            f"that long: at least {lost} wake-up(s) were lost"
        )
    return None


def sum_tallies(tallies: list[Tally]) -> tuple[int, list[int], list[int], int, int]:
    reads = sum(t.reads for t in tallies)
    ages = [sum(t.ages[i] for t in tallies) for i in range(AGES + 1)]
    pipeline = [sum(t.pipeline[i] for t in tallies) for i in range(3)]
    longest = max((t.max_span_ns for t in tallies), default=0)
    long_sections = sum(t.long_sections for t in tallies)
    return reads, ages, pipeline, longest, long_sections
