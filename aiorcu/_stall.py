"""Stall warnings: which readers hold a grace period open, and for how long.

The C writer calls back (writer mutex held, GIL taken) when a grace period
has waited the domain's ``stall_warning``, then at doubling intervals up to
60 s.  `StallReporter` names the blocking slots' owners: thread name and id,
how long each has blocked, its open ``with`` sections and the tasks whose
context holds an ``async with`` section there.  A slot whose owner thread is
proven dead (see ``csrc/thread.c``) is released on the spot.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Final, final

from . import _lowlevel
from ._registry import ThreadRegistry

logger = logging.getLogger("aiorcu")

_STAGES: Final = {
    _lowlevel.STAGE_STRAGGLERS: "readers that entered before the last phase flip",
    _lowlevel.STAGE_CLOSED: "readers of the phase this grace period closed",
}


@final
class StallReporter:
    """Names the readers that hold one domain's grace periods open.

    Args:
        name: The domain's name.
        core: The domain's C core.
        registry: Its thread registry, which names slots.
        var: Its context variable of task sections, for naming tasks.
    """

    def __init__(
        self,
        name: str,
        core: _lowlevel.CoreDomain,
        registry: ThreadRegistry,
        var: contextvars.ContextVar[object],
    ) -> None:
        self._name = name
        self._core = core
        self._registry = registry
        self._var = var
        self.warnings = 0
        """Stall warnings logged."""

    def report(self, waited_ns: int, stage: int, phase: int) -> None:
        """Logs one stall warning (called by the C writer)."""
        self.warnings += 1
        logger.warning(
            "grace period of domain %r has waited %.3f s for %s: %s",
            self._name,
            waited_ns / 1e9,
            _STAGES.get(stage, "readers"),
            self.describe_blocking(phase, release_dead=True) or "(they just left)",
        )

    def describe_blocking(self, phase: int | None = None, release_dead: bool = False) -> str:
        """Who holds grace periods open now; releases proven-dead owners if asked."""
        phases = (0, 1) if phase is None else (phase,)
        seen: dict[int, int] = {}
        for p in phases:
            for slot, blocked_ns in self._core.blocking_slots(p):
                seen[slot] = max(blocked_ns, seen.get(slot, 0))
        parts = []
        for slot, blocked_ns in seen.items():
            text = self._registry.describe(self._var, slot, blocked_ns)
            if release_dead and self._registry.release_if_dead(slot):
                text += " - the thread has exited; its slot was released"
            parts.append(text)
        return "; ".join(parts)
