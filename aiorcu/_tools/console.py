"""The tools' one console reporter: progress as "n of N" and the time left.

Plain text (a line per step, or a line every few seconds) for logs and
pipes; a rich progress bar when rich (the "cli" extra) is installed and the
output is a terminal.  ``aiorcu bench`` reports steps, each with a rough
estimate of its wall time; ``aiorcu torture`` reports seconds of a fixed run.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TextIO, final


def _rich(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def use_rich(stream: TextIO) -> bool:
    """Rich output: rich is installed and ``stream`` is a terminal."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty()) and _rich("rich") is not None


def escape(text: str) -> str:
    """``text`` with rich markup escaped (unchanged without rich)."""
    markup = _rich("rich.markup")
    return text if markup is None else str(markup.escape(text))


def fmt_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 10 s"``, ``"1 h 05 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(s, 3600)
    return f"{h} h {rem // 60:02d} min"


@final
class Progress:
    """How far a run is: ``n`` of ``total`` (steps, or seconds) and the time left.

    Step runs call `step()` at the start of each step; the time left is the
    sum of the remaining steps' ``estimates`` scaled by how long the
    finished ones really took against their estimates (without estimates:
    the mean time per finished step).  Timed runs call `update()` with the
    units done so far; a plain reporter prints a line every ``every`` units.
    """

    def __init__(
        self,
        name: str,
        total: float,
        *,
        unit: str = "",
        estimates: Sequence[float] | None = None,
        every: float = 0.0,
        stream: TextIO | None = None,
        fancy: bool | None = None,
        transient: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if estimates is not None and len(estimates) != total:
            raise ValueError(f"{len(estimates)} estimates for {total:g} steps")
        self.name = name
        self.total = total
        self.unit = unit
        self.estimates = list(estimates) if estimates is not None else None
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started = clock()
        self.done = 0.0  # steps finished, or units done
        self._next_line = every
        self._bar: Any = None
        self._task: Any = None
        if fancy if fancy is not None else use_rich(self.stream):
            self._start_rich(transient)

    # -- the figures -----------------------------------------------------------
    def where(self) -> str:
        """``"bench 3/12"`` or ``"torture 5.0/10 s"``."""
        if self.unit:
            return f"{self.name} {self.done:.1f}/{self.total:g} {self.unit}"
        return f"{self.name} {int(self.done)}/{self.total:g}"

    def seconds_left(self) -> float | None:
        """Estimated seconds until the run ends, or None when there is nothing to go on."""
        elapsed = self.clock() - self.started
        if self.unit:  # a timed run: units are seconds
            return max(0.0, self.total - self.done)
        finished = max(0, int(self.done) - 1)  # the current step is under way
        if self.estimates is not None:
            # Scale the estimates by how long the finished steps really took,
            # damped by a prior of a fifth of the whole run at face value, so
            # that one slow step early on does not swing the estimate.
            prior = 0.2 * sum(self.estimates)
            spent = sum(self.estimates[:finished])
            scale = (elapsed + prior) / (spent + prior) if spent + prior > 0 else 1.0
            return sum(self.estimates[finished:]) * scale
        if not finished:
            return None
        return elapsed / finished * (self.total - finished)

    def left(self) -> str:
        seconds = self.seconds_left()
        if seconds is None or math.isnan(seconds):
            return ""
        return f"about {fmt_duration(seconds)} left"

    # -- reporting -------------------------------------------------------------
    def step(self, label: str) -> None:
        """The next step starts."""
        self.done = min(self.total, self.done + 1)
        left = self.left()
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=self.done - 1,
                description=escape(label),
                where=self.where(),
                left=left,
            )
            return
        suffix = f" ({left})" if left else ""
        print(f"[{self.where()}] {label}{suffix}", file=self.stream, flush=True)

    def update(self, done: float, status: str) -> None:
        """A timed run reached ``done`` of ``total`` units."""
        self.done = min(self.total, done)
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=self.done,
                description=escape(status),
                where=self.where(),
                left=self.left(),
            )
            return
        if done < self._next_line:
            return
        while self._next_line <= done:
            self._next_line += max(self.every, 1e-9)
        print(f"[{self.where()}] {status}  ({self.left()})", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start_rich(self, transient: bool) -> None:
        rp = _rich("rich.progress")
        rc = _rich("rich.console")
        self._bar = rp.Progress(
            rp.TextColumn("[bold]{task.fields[where]}[/]"),
            rp.BarColumn(bar_width=20),
            rp.TextColumn("{task.fields[left]}"),
            rp.TextColumn("{task.description}"),
            console=rc.Console(file=self.stream),
            transient=transient,
        )
        self._task = self._bar.add_task("", total=self.total, where=self.where(), left="")
        self._bar.start()
