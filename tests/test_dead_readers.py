"""A thread that exits inside a read section: dead readers and their slots.

A thread that ends without leaving its section must not hold grace periods
up forever: the stall warning names it, proves it dead and releases its
slot, exactly once, even when the thread's own exit hook runs too (late, or
racing the stall scan); later grace periods complete and still wait for the
readers that are alive.

Waits are hang guards only (see conftest): where a test shows that a grace
period keeps waiting, it checks that it has not finished after a short pause
and that it does finish once the reader leaves.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import pytest

import aiorcu
from aiorcu import testing

from .conftest import (
    HANG_GUARD,
    assert_waits_for_a_reader,
    background_synchronize,
    hold_section,
    still_waiting,
)


def _die_inside(d: aiorcu.Domain, name: str, keep: list[object]) -> threading.Thread:
    """A thread that enters a section and ends without leaving it.

    It hands its section and its exit hook (the thread-local registration)
    to ``keep``: the hook then runs only when the test drops it, as when a
    thread's locals are torn down late.  Only then does the stall warning's
    own check for dead threads (the core's proof of death) have anything to do.
    """

    def body() -> None:
        section = d.read()
        section.__enter__()
        keep.append(section)
        keep.append(d._threads._local.reg)

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join()
    return thread


@pytest.mark.fallback
def test_stall_warning_names_a_dead_reader_and_releases_its_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="dead-reader")
    testing.set_stall_interval(d, 0.02, 0.05)
    kept: list[object] = []
    dead = _die_inside(d, "dies-inside", kept)
    assert d.stats().threads_registered == 1 and d.stats().readers_active == 1
    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        d.synchronize_blocking(timeout=HANG_GUARD)  # must complete: the slot is reclaimed
    warnings = [r.getMessage() for r in caplog.records if r.name == "aiorcu"]
    assert any(
        "grace period of domain 'dead-reader' has waited" in m
        and f"thread 'dies-inside' (id {dead.ident})" in m
        and "the thread has exited; its slot was released" in m
        for m in warnings
    ), warnings
    stats = d.stats()
    assert stats.stall_warnings >= 1
    assert stats.threads_registered == 0 and stats.readers_active == 0
    # Later grace periods complete, and still wait for live readers.
    d.synchronize_blocking(timeout=HANG_GUARD)
    assert_waits_for_a_reader(d, "live-reader")
    kept.clear()  # the late exit hook runs now; nothing is left for it to do
    gc.collect()
    assert d.stats().threads_registered == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


@pytest.mark.fallback
@pytest.mark.parametrize("first", ["stall-warning", "exit-hook"])
def test_a_dead_readers_slot_is_released_once(first: str) -> None:
    """Both ways to release a dead thread's slot may run; only one may free it.

    "stall-warning": the stall warning releases the slot, a new thread takes
    it, then the dead thread's exit hook runs late.  "exit-hook": the natural
    race: a stall warning looks the dead thread's reader up, the thread's exit
    hook releases the slot and a new thread takes it, then the warning finds
    the thread dead.  Either way the new thread's section must still hold up
    grace periods.
    """
    d = aiorcu.Domain(name=f"release-once-{first}")
    testing.set_stall_interval(d, 0.02, 0.05)
    newcomer: list[tuple[threading.Thread, threading.Event]] = []
    if first == "stall-warning":
        kept: list[object] = []
        dead = _die_inside(d, "dies-inside", kept)
        slot = _slot_of(d, dead)
        d.synchronize_blocking(timeout=HANG_GUARD)  # the stall warning releases it
        newcomer.append(hold_section(d, "newcomer"))
        kept.clear()  # the exit hook runs late
        gc.collect()
    else:
        entered, go = threading.Event(), threading.Event()

        kept_sections: list[aiorcu.ReadSection] = []

        def dies() -> None:
            section = d.read()
            section.__enter__()
            kept_sections.append(section)
            entered.set()
            go.wait(HANG_GUARD)

        dead = threading.Thread(target=dies, name="dies-while-reported")
        dead.start()
        assert entered.wait(5)
        slot = _slot_of(d, dead)
        registry = d._threads
        describe = registry.describe

        def racing(var: Any, slot: int, blocked_ns: int) -> str:
            text = describe(var, slot, blocked_ns)
            if not newcomer:  # between the report and the proof of death:
                go.set()
                dead.join()  # the thread exits; its exit hook frees the slot
                newcomer.append(hold_section(d, "newcomer"))
            return text

        registry.describe = racing  # type: ignore[method-assign]
        d.synchronize_blocking(timeout=HANG_GUARD)
        del registry.describe
    thread, leave = newcomer[0]
    try:
        assert _slot_of(d, thread) == slot  # the slot was reused
        assert d.stats().threads_registered == 1  # the newcomer's slot is still live
        writer = background_synchronize(d)
        assert still_waiting(writer)  # and its section still counts
    finally:
        leave.set()
        thread.join()
    writer.result()
    assert not dead.is_alive()


@pytest.mark.fallback
def test_stall_warning_releases_a_dead_reader_whose_thread_object_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="dead-reader-gone")
    testing.set_stall_interval(d, 0.02, 0.05)
    kept: list[object] = []
    ident = _die_inside(d, "dies-forgotten", kept).ident
    gc.collect()  # nothing refers to the finished Thread object any more
    try:
        with caplog.at_level(logging.WARNING, logger="aiorcu"):
            d.synchronize_blocking(timeout=2)  # would wait forever otherwise
        assert f"thread 'dies-forgotten' (id {ident})" in caplog.text
        assert d.stats().threads_registered == 0
    finally:
        kept.clear()
        gc.collect()


def _slot_of(d: aiorcu.Domain, thread: threading.Thread) -> int:
    return next(i.slot for i in d._threads.owners() if i.ident == thread.ident)
