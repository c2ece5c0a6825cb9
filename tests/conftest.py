"""Shared fixtures and helpers.

Async tests run under asyncio and trio through anyio's pytest plugin: mark
them ``@pytest.mark.anyio`` and they are collected once per backend of the
``anyio_backend`` fixture below.

Timing is never asserted: waits below are hang guards, generous because the
machine is shared.  Where a test must show that something *keeps waiting*,
it checks that it has not finished after a short pause, and that it does
finish once the reason to wait is gone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import aiorcu

from .children import shared_domain, wait_until

STRESS_SECONDS = float(os.environ.get("AIORCU_STRESS_SECONDS", "2"))
HANG_GUARD = 30.0  # seconds; only ever reached when something is broken
PAUSE = 0.2  # "still waiting after this long" checks; never a timing assertion


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def hold_section(
    domain: aiorcu.Domain, name: str = "holder"
) -> tuple[threading.Thread, threading.Event]:
    """Starts a thread that stays inside a read section until the event is set."""
    entered, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with domain.read():
            entered.set()
            leave.wait(HANG_GUARD)

    thread = threading.Thread(target=reader, name=name)
    thread.start()
    assert entered.wait(5)
    return thread, leave


class Background:
    """Runs ``fn`` on a thread; records when it finished and what it raised."""

    def __init__(self, fn: Callable[[], object], name: str = "background") -> None:
        self.done = threading.Event()
        self.finished_at: float | None = None  # time.monotonic() when fn returned or raised
        self.error: BaseException | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._main, name=name)
        self.thread.start()

    def _main(self) -> None:
        try:
            self._fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.done.set()

    def finished(self, timeout: float = HANG_GUARD) -> bool:
        ok = self.done.wait(timeout)
        if ok:
            self.thread.join()
        return ok

    def result(self) -> None:
        """Joins (with the hang guard) and re-raises what ``fn`` raised."""
        assert self.finished(), "background call did not finish"
        if self.error is not None:
            raise self.error


def still_waiting(call: Background) -> bool:
    """``call`` has not finished after a short pause (a hang check, not a timing one)."""
    return not call.done.wait(PAUSE)


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Polls until ``predicate()`` is true; fails with ``what`` after the hang guard."""
    wait_until(predicate, HANG_GUARD, f"hang guard: {what}")


def assert_waits_for_a_reader(domain: aiorcu.Domain, name: str = "reader") -> None:
    """A grace period started while a thread is inside waits until it leaves."""
    holder, leave = hold_section(domain, name)
    writer = background_synchronize(domain)
    try:
        assert still_waiting(writer), "the grace period did not wait for the reader"
    finally:
        leave.set()
        holder.join()
    writer.result()


def background_synchronize(domain: aiorcu.Domain, timeout: float = HANG_GUARD) -> Background:
    """``domain.synchronize_blocking(timeout)`` on a writer thread of its own."""
    return Background(lambda: domain.synchronize_blocking(timeout=timeout), name="writer")


def run_race(
    readers: list[Callable[[], None]],
    writer: Callable[[], None],
    stop: threading.Event,
    seconds: float,
    caught: Callable[[], bool],
) -> None:
    """Runs reader threads and a writer thread for ``seconds``, or until ``caught()``.

    The threads loop until ``stop`` is set; a negative control ends as soon
    as it has caught what it looks for.
    """
    threads = [threading.Thread(target=fn) for fn in readers]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not caught():
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()


DOMAIN_KINDS = ["Domain", "SharedDomain"]


@contextmanager
def domain_of_kind(kind: str, name: str) -> Iterator[aiorcu.Domain]:
    """A private `Domain`, or a new `SharedDomain` (its sections take the same
    C path, over slots in a segment), for tests that attack both."""
    if kind == "Domain":
        yield aiorcu.Domain(name=name)
        return
    with shared_domain(name) as d:
        yield d  # type: ignore[misc]  # the same reader and writer API
