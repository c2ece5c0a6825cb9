"""Hooks for testing code that uses aiorcu, and aiorcu itself.

Each hook breaks or slows the machinery on purpose, so that a test can build
the rare interleavings RCU must survive, and can show that it would catch a
broken grace period.  The most useful one is `set_busted()`: a domain whose
grace periods stop waiting for readers.  A concurrency test of your own that
still passes against a busted domain tests nothing; keep it as a negative
control next to the real test (the testing how-to shows the pattern).

Each hook that takes a domain takes a `Domain` or a `SharedDomain`; for a
shared domain it acts in the calling process only (`set_busted()` makes the
grace periods *this process* runs stop waiting).

None of these belong in production code.  They are stable and documented
(``aiorcu.testing``), unlike the underscore modules.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator

from . import _lowlevel
from ._domain import Domain
from ._shared import SharedDomain

__all__ = [
    "completed_sequence",
    "current_phase",
    "fail_membarrier",
    "raw_stats",
    "reader_delay",
    "set_busted",
    "set_stall_interval",
    "set_wait_mode",
    "writer_jitter",
]


def set_busted(domain: Domain | SharedDomain, busted: bool = True) -> None:
    """Negative control: the domain's grace periods stop waiting for readers."""
    domain._grace.busted = busted


@contextlib.contextmanager
def reader_delay(domain: Domain | SharedDomain, delay: Callable[[], None]) -> Iterator[None]:
    """Calls ``delay()`` in section entries between the phase load and the increment.

    Applies to every section of the domain entered until the block ends.
    Builds the straggler of "why wait twice".
    """
    domain._set_reader_delay(delay)
    try:
        yield
    finally:
        domain._set_reader_delay(None)


@contextlib.contextmanager
def writer_jitter(max_seconds: float) -> Iterator[None]:
    """Writers sleep a random 0..``max_seconds`` at some steps of each grace period.

    The sleeps come between the C writer's steps (the counter increment, M1,
    the two waits, the phase flip, M3, the release of ``completed``), with
    the writer mutex held, in every domain of the process.  For the torture
    run's ``--jitter``.
    """
    previous = _lowlevel.debug_set_writer_jitter(int(max_seconds * 1e9))
    try:
        yield
    finally:
        _lowlevel.debug_set_writer_jitter(previous)


def completed_sequence(domain: Domain | SharedDomain) -> Callable[[], int]:
    """A cheap callable returning the domain's last completed grace-period number."""
    return domain._grace.core.completed


def current_phase(domain: Domain | SharedDomain) -> int:
    """The domain's current phase, 0 or 1 (a moment's view)."""
    return domain._grace.core.phase()


def fail_membarrier(count: int, err: int = errno.EINVAL) -> None:
    """The next ``count`` membarrier attempts fail with ``err`` (fault injection)."""
    _lowlevel.debug_fail_membarrier(count, err)


def set_stall_interval(domain: Domain | SharedDomain, first: float, maximum: float) -> None:
    """Sets the stall-warning schedule (defaults: the domain's stall_warning doubling to 60 s)."""
    domain._grace.core.set_stall(int(first * 1e9), int(maximum * 1e9))


def set_wait_mode(domain: Domain | SharedDomain, mode: str) -> None:
    """``"futex"`` (readers wake the writer) or ``"poll"`` (writer backs off)."""
    domain._grace.core.set_wait_mode(mode)


def raw_stats(domain: Domain | SharedDomain) -> dict[str, int]:
    """The C core's counters, unabridged."""
    return domain._grace.core.stats()
