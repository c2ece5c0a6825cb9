"""Debug hooks for tests and the torture run.  Not part of the public API.

Each hook breaks or slows the machinery on purpose, so that tests can build
the rare interleavings the algorithm must survive, and show that the stress
tests catch a grace period that does not wait (the negative control).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator

from . import _lowlevel
from ._domain import Domain
from ._reader import READER_CLASS, delayed_reader_class


def set_busted(domain: Domain, busted: bool = True) -> None:
    """Negative control: the domain's grace periods stop waiting for readers."""
    domain._busted = busted


@contextlib.contextmanager
def reader_delay(domain: Domain, delay: Callable[[], None]) -> Iterator[None]:
    """Calls ``delay()`` in `with` entries between the phase load and the flag store.

    Applies to the domain's existing readers and to new ones until the block
    ends.  Builds the straggler of "why wait twice".
    """
    cls = delayed_reader_class(delay)
    with domain._registry_lock:
        readers = list(domain._readers.values())
        domain._reader_class = cls
    for reader in readers:
        reader.__class__ = cls
    try:
        yield
    finally:
        with domain._registry_lock:
            domain._reader_class = READER_CLASS
            readers = list(domain._readers.values())
        for reader in readers:
            reader.__class__ = READER_CLASS


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


def completed_sequence(domain: Domain) -> Callable[[], int]:
    """A cheap callable returning the domain's last completed grace-period number."""
    return domain._core.completed


def fail_membarrier(count: int, err: int = errno.EINVAL) -> None:
    """The next ``count`` membarrier attempts fail with ``err`` (fault injection)."""
    _lowlevel.debug_fail_membarrier(count, err)


def set_stall_interval(domain: Domain, first: float, maximum: float) -> None:
    """Shortens the stall-warning schedule (defaults: 100 ms doubling to 10 s)."""
    domain._core.set_stall(int(first * 1e9), int(maximum * 1e9))


def set_wait_mode(domain: Domain, mode: str) -> None:
    """``"futex"`` (readers wake the writer) or ``"poll"`` (writer backs off)."""
    domain._core.set_wait_mode(mode)


def raw_stats(domain: Domain) -> dict[str, int]:
    """The C core's counters, unabridged."""
    return domain._core.stats()
