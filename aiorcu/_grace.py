"""One domain's grace-period runner: the single path from Python to the C writer.

Every wait goes through `GraceRunner.run`: blocking callers, the async
grace-period worker, the callback worker and the polled API.  It owns the C
core and the thread registry, and maps the core's results to exceptions;
the core's stall callbacks go to its `StallReporter`.
"""

from __future__ import annotations

import contextvars
import math
import weakref
from collections.abc import Callable
from typing import Final, final

from . import _lowlevel
from ._errors import AiorcuError
from ._registry import ThreadRegistry
from ._stall import StallReporter

STALL_MAX_SECONDS: Final = 60.0
"""Stall warnings repeat at doubling intervals up to this."""
_NO_DEADLINE_SECONDS: Final = 2.0**62 / 1e9  # about 146 years: further is "never"


def timeout_ns(timeout: float | None) -> int:
    """A caller's timeout in ns for the core; -1 means no deadline.

    ``None``, infinity and values too large for the clock all mean no
    deadline; negative or NaN values are refused.
    """
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    if timeout >= _NO_DEADLINE_SECONDS:
        return -1
    return int(timeout * 1e9)


def stall_seconds(value: float | None) -> float | None:
    """Checks a ``stall_warning`` setting: positive seconds, or None for never."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"stall_warning must be a number of seconds or None, not {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(
            f"stall_warning must be a positive number of seconds, or None to never warn; "
            f"not {value!r}"
        )
    return float(value)


def _weak(method: Callable[[int, int, int], None]) -> Callable[[int, int, int], None]:
    """Calls ``method`` while its object lives: the core must not keep it alive."""
    ref = weakref.WeakMethod(method)

    def call(waited_ns: int, stage: int, phase: int) -> None:
        bound = ref()
        if bound is not None:
            bound(waited_ns, stage, phase)

    return call


@final
class GraceRunner:
    """Runs one domain's grace periods for every kind of waiter.

    Args:
        name: The domain's name, for messages.
        var: The domain's context variable of task sections (for reports).
        stall_warning: Seconds before the first stall warning, or None.
        segment: For a shared domain, its mapped segment and name.
    """

    def __init__(
        self,
        name: str,
        var: contextvars.ContextVar[object],
        stall_warning: float | None,
        segment: tuple[object, str] | None = None,
    ) -> None:
        self.name = name
        self._var = var
        self.core = _lowlevel.CoreDomain(_weak(self._on_stall), segment)
        self.registry = ThreadRegistry(name, self.core)
        self.stalls = StallReporter(name, self.core, self.registry, var)
        self.busted = False
        """Negative control: grace periods stop waiting for readers."""
        self.set_stall_warning(stall_warning)

    def _on_stall(self, waited_ns: int, stage: int, phase: int) -> None:
        self.stalls.report(waited_ns, stage, phase)

    def set_stall_warning(self, seconds: float | None) -> None:
        """First warning after ``seconds`` (None: never), doubling up to 60 s."""
        if seconds is None:
            first = maximum = 2**63 - 1
        else:
            first = int(seconds * 1e9)
            maximum = max(first, int(STALL_MAX_SECONDS * 1e9))
        self.core.set_stall(first, maximum)

    def run(
        self, target: int, timeout_ns: int = -1, *, try_only: bool = False, caller_slot: int = -1
    ) -> bool:
        """Makes grace period ``target`` complete.

        Returns True when it has, False when ``timeout_ns`` passed first or
        (``try_only``) a reader would have to be waited for.

        Raises:
            AiorcuError: No correct memory barrier could be issued.
        """
        flags = _lowlevel.SYNC_BUSTED if self.busted else 0
        if try_only:
            flags |= _lowlevel.SYNC_TRY
            timeout_ns = 0
        rc = self.core.synchronize(target, timeout_ns, flags, caller_slot)
        if rc == _lowlevel.OK:
            return True
        if rc in (_lowlevel.TIMEDOUT, _lowlevel.BUSY):
            return False
        if rc == _lowlevel.EBARRIER:
            raise AiorcuError(
                f"grace period of domain {self.name!r} failed: membarrier(2) failed and its "
                "MEMBARRIER_CMD_GLOBAL fallback failed too, so readers could not be ordered; "
                "nothing was skipped. Run with AIORCU_MEMBARRIER=off to use fences"
            )
        raise AiorcuError(f"grace period of domain {self.name!r} failed with code {rc}")

    def run_for_worker(self, target: int) -> BaseException | None:
        """`run` for the async worker thread: the error to hand to waiters, if any."""
        try:
            self.run(target)
        except AiorcuError as exc:
            return exc
        return None

    def run_for_callbacks(self, timeout_ns: int) -> bool:
        """One grace period that starts now, for the callback worker.

        ``snapshot()`` fences after the batch was taken (see _callbacks).
        """
        return self.run(self.core.snapshot(), timeout_ns)
