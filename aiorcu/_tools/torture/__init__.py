"""Stress-test aiorcu the way Linux's rcutorture does, and report what it saw.

Reader threads and asyncio tasks keep reading a shared object while four
writers replace it, each waiting for grace periods in its own way (blocking,
awaiting, callbacks, polling) before retiring the old copy.  Every read
checks that the object it holds was not retired and that no grace period
that had to wait for it has completed.  The run also fails when grace
periods stop completing, when sleeping writers are not woken, or (with
--report-rss on long runs) when memory keeps growing.  It prints progress,
a histogram of how old the objects read were, and a summary.

With --processes N the readers run in N processes and the writers in
--writer-processes others, all on one shared domain and one block of shared
memory, which also holds guarded pages that the writers revoke and reuse.
With --kill, a random reader or writer process is killed (SIGKILL) every
0.15 to 0.5 s and a new one takes its place: the run then also fails when
the readers of a process killed inside a read section are not released
within 5 s.  Ctrl-C stops every process and removes the shared memory.

Exit status: 0 when no error was found, 1 on any error or failed check,
2 for bad options.
"""

from __future__ import annotations

from .checks import judge_backstops, judge_rss, rss_bytes
from .run import add_arguments, run, validate

__all__ = ["add_arguments", "judge_backstops", "judge_rss", "rss_bytes", "run", "validate"]
