"""Measure what aiorcu costs next to what you would use instead, in one run.

Every figure is a ratio of two measurements taken in the same run, each the
best of several interleaved trials, so a noisy or shared machine shifts both
sides alike.  Baselines: threading.Lock, asyncio.Lock, readerwriterlock and
aiorwlock (the 'bench' extra), anyio.to_thread.run_sync, and a Starlette app
on locks (the 'examples' extra).  A row whose baseline is not installed says
which extra it needs.  The last rows show the reason to choose RCU: readers'
p99 latency while a writer replaces the data every 10 ms.

  aiorcu bench                  full run (about a minute on 2 CPUs), a table
  aiorcu bench --quick          a fast, noisier run (about 10 seconds)
  aiorcu bench --goals          also each row's goal and whether it was met
  aiorcu bench --wide           full names, baselines and notes
  aiorcu bench --json           one JSON object with every field
  aiorcu bench --only Shared    only the steps whose title contains the text
  aiorcu bench --plot DIR       also PNG plots (needs matplotlib: the 'plot' extra)

Exit status: 0 when the run completed (whatever the figures), 2 for bad
options or when --plot cannot work.
"""

from __future__ import annotations

from .measure import Case, Reporter, Result, Settings
from .plots import write_plots
from .run import CASES, add_arguments, run, validate

__all__ = [
    "CASES",
    "Case",
    "Reporter",
    "Result",
    "Settings",
    "add_arguments",
    "run",
    "validate",
    "write_plots",
]
