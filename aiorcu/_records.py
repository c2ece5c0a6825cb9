"""Frozen value records returned by the core: statistics and backend facts."""

from __future__ import annotations

import dataclasses
from typing import final


@final
@dataclasses.dataclass(frozen=True)
class DomainStatistics:
    """A snapshot of one domain's counters, from `Domain.stats()`.

    Counters only grow, except the gauges ``threads_registered``,
    ``readers_active`` and ``callbacks_pending``.  ``readers_active`` is read
    without stopping the readers, so it is a moment's estimate.
    """

    grace_periods: int
    """Grace periods completed."""
    membarrier_calls: int
    """``membarrier(2)`` calls issued by writers (0 in fence mode)."""
    threads_registered: int
    """Threads that own a reader slot in this domain now."""
    readers_active: int
    """Read sections open now (each ``with`` and each ``async with``)."""
    offloaded_waits: int
    """``await synchronize()`` calls handed to the domain's worker thread."""
    stall_warnings: int
    """Stall warnings logged."""
    callbacks_pending: int
    """Callbacks queued by ``call_after_grace_period`` and not yet run."""
    dead_readers_released: int = 0
    """Threads that exited, and (`SharedDomain`) processes proven dead, with a
    section still open, whose slots were released so grace periods stop
    waiting for them; each thread or process counted once."""
    processes_attached: int = 1
    """Processes taking part in the domain (1 for a `Domain`)."""
    barriers_elided: int = 0
    """Heavy barriers replaced by a fence because no other thread had a slot."""
    barrier_fallbacks: int = 0
    """PRIVATE_EXPEDITED failures that fell back to a slower correct barrier."""
    writer_sleeps: int = 0
    """Times a waiting writer went to sleep instead of spinning."""
    reader_wakeups: int = 0
    """Times a leaving reader woke a sleeping writer."""
    backstop_timeouts: int = 0
    """Writer sleeps that ended by their backstop timer with the readers gone.

    Non-zero means a lost wake-up; the test suite asserts it stays zero."""
    timeouts: int = 0
    """Grace periods abandoned because the caller's timeout passed."""
    completed_sequence: int = 0
    """Sequence number of the last completed grace period."""
    writer_recoveries: int = 0
    """Times a writer found the writer lock held by a process that died
    (a `SharedDomain`; always 0 for a `Domain`) and took it over."""


@final
@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """Which barrier mechanism readers rely on, from `backend_info()`."""

    membarrier: bool
    """True when writers use membarrier(2) and readers run no fences."""
    mechanism: str
    """``"membarrier-private-expedited"`` or ``"fence"``."""
    reason: str | None
    """Why the fence fallback was chosen (``None`` when membarrier is used)."""
