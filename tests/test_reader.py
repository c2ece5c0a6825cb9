"""Thread read sections: nesting, ownership, wide counts, thread exit."""

from __future__ import annotations

import contextvars
import gc
import logging
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import aiorcu
from aiorcu import testing

from .conftest import (
    DOMAIN_KINDS,
    HANG_GUARD,
    STRESS_SECONDS,
    Background,
    background_synchronize,
    domain_of_kind,
    hold_section,
)

pytestmark = pytest.mark.fallback


def test_sections_nest_and_inside_is_per_thread() -> None:
    d = aiorcu.Domain(name="nest")
    assert not d._inside()
    with d.read():
        assert d._inside()
        with d.read():
            assert d._inside()
            seen: list[bool] = []
            t = threading.Thread(target=lambda: seen.append(d._inside()))
            t.start()
            t.join()
            assert seen == [False]  # another thread is not inside
            assert d.stats().readers_active == 2
        assert d._inside()  # the outer section is still open
    assert not d._inside()
    assert d.stats().readers_active == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_section_is_left_when_the_body_raises() -> None:
    d = aiorcu.Domain(name="raises")
    with pytest.raises(KeyError), d.read():
        raise KeyError("x")
    assert not d._inside()
    assert d.stats().readers_active == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_sections_of_one_thread_may_close_in_any_order() -> None:
    """Two generators on one thread hold sections that close out of order."""
    d = aiorcu.Domain(name="order")

    def gen() -> Iterator[None]:
        with d.read():
            yield

    first, second = gen(), gen()
    next(first)
    next(second)
    assert d.stats().readers_active == 2
    next(first, None)  # the outer one closes first
    assert d._inside()  # the second is still open
    writer = background_synchronize(d)
    assert not writer.done.wait(0.2)  # and still waited for
    next(second, None)
    assert not d._inside()
    writer.result()


def test_deeply_nested_sections_do_not_wrap() -> None:
    """Counts the writer reads never wrap: 300 open sections are not 44."""
    d = aiorcu.Domain(name="deep")
    sections = [d.read() for _ in range(300)]
    for s in sections:
        s.__enter__()
    for s in sections[:-1]:
        s.__exit__(None, None, None)
    assert d._inside()
    writer = background_synchronize(d)
    assert not writer.done.wait(0.2)  # one section is still open
    sections[-1].__exit__(None, None, None)
    writer.result()


def test_many_task_sections_on_one_thread_do_not_wrap() -> None:
    """257+ concurrent task sections on one thread: a byte count would read 0."""
    d = aiorcu.Domain(name="wide")
    sections = [d.read() for _ in range(300)]
    contexts = [contextvars.copy_context() for _ in range(300)]
    for ctx, section in zip(contexts, sections, strict=True):
        ctx.run(section.__aenter__)
    assert d.stats().readers_active == 300
    for ctx, section in zip(contexts[:-1], sections[:-1], strict=True):
        ctx.run(section.__aexit__, None, None, None)
    assert d.stats().readers_active == 1
    writer = background_synchronize(d)
    assert not writer.done.wait(0.2)
    contexts[-1].run(sections[-1].__aexit__, None, None, None)
    writer.result()


# -- section identity -------------------------------------------------------------


def test_read_returns_a_new_section_each_time() -> None:
    d = aiorcu.Domain(name="fresh")
    a, b = d.read(), d.read()
    assert a is not b
    assert isinstance(a, aiorcu.ReadSection)
    assert (a.open, a.kind) == (False, None)
    with a:
        assert (a.open, a.kind, a.counted) == (True, "thread", True)
        with b:
            pass
        assert not b.open and a.open  # b closed exactly itself
    assert not a.open and "closed" in repr(a)


def test_a_section_is_entered_once_and_left_once() -> None:
    d = aiorcu.Domain(name="once")
    section = d.read()
    with section:
        with pytest.raises(aiorcu.RcuUsageError, match="entered already"):
            section.__enter__()
        assert d.stats().readers_active == 1  # the refused entry counted nothing
    with pytest.raises(aiorcu.RcuUsageError, match="was left already; a section closes exactly"):
        section.__exit__(None, None, None)
    assert d.stats().readers_active == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


def _leave_racing(
    section: aiorcu.ReadSection, barrier: threading.Barrier, outcomes: list[str]
) -> None:
    barrier.wait()
    try:
        section.__exit__(None, None, None)
        outcomes.append("won")
    except aiorcu.RcuUsageError as exc:
        outcomes.append("already" if "left already" in str(exc) else "foreign")


def test_racing_exits_close_a_section_exactly_once() -> None:
    """Two threads race to leave one section: one wins, the other raises; one decrement."""
    d = aiorcu.Domain(name="race-exit")
    holder, leave = hold_section(d, "bystander")  # a count the losers must not touch
    try:
        for _ in range(200):
            section = d.read()
            section.__enter__()
            barrier = threading.Barrier(2)
            outcomes: list[str] = []
            other = threading.Thread(target=_leave_racing, args=(section, barrier, outcomes))
            other.start()
            _leave_racing(section, barrier, outcomes)
            other.join()
            # This thread's exit either won, or lost to the other thread;
            # the other thread's win is a foreign exit (it raises too).
            assert outcomes.count("already") == 1, outcomes
            assert d.stats().readers_active == 1  # only the bystander
    finally:
        leave.set()
        holder.join()
    assert d.stats().readers_active == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


# -- ownership ------------------------------------------------------------------


def test_leaving_on_another_thread_raises_and_releases_at_once() -> None:
    d = aiorcu.Domain(name="move")

    def gen() -> Iterator[None]:
        with d.read():
            yield

    g = gen()
    next(g)
    other = Background(lambda: next(g), name="other")
    assert other.finished()
    assert isinstance(other.error, aiorcu.RcuUsageError)
    message = str(other.error)
    assert (
        "a `with` read section of domain 'move' entered on thread 'MainThread' was left on "
        "thread 'other'" in message
    )
    assert "it was released at once" in message
    assert "leave a section on the thread that entered it" in message
    # Released at once: this thread (the owner) does nothing more, yet grace
    # periods complete.
    assert not d._inside()
    assert d.stats().readers_active == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_first_section_left_on_another_thread_leaves_that_threads_section_alone() -> None:
    """Defect: the first section of a thread, left on another thread that is inside
    a section of its own, closed that thread's section instead."""
    d = aiorcu.Domain(name="stranger")
    box: list[Iterator[None]] = []

    def gen() -> Iterator[None]:
        with d.read():
            yield

    def starter() -> None:  # this thread's first and only section
        g = gen()
        next(g)
        box.append(g)

    owner = threading.Thread(target=starter, name="owner")
    owner.start()
    owner.join()  # the owner exited inside: its slot was released
    stranger_done, stranger_leave = threading.Event(), threading.Event()
    results: list[object] = []

    def stranger() -> None:
        with d.read():  # the stranger's own section
            try:
                next(box[0])
            except aiorcu.RcuUsageError as exc:
                results.append(exc)
            results.append(d._inside())
            stranger_done.set()
            stranger_leave.wait(HANG_GUARD)

    t = threading.Thread(target=stranger, name="stranger")
    t.start()
    try:
        assert stranger_done.wait(5)
        assert isinstance(results[0], aiorcu.RcuUsageError)
        assert "entered on thread 'owner' was left on thread 'stranger'" in str(results[0])
        assert results[1] is True  # the stranger's own section is still open
        writer = background_synchronize(d)
        assert not writer.done.wait(0.2)  # and still protects it
    finally:
        stranger_leave.set()
        t.join()
        box.clear()
    writer.result()


def test_stored_section_entered_on_another_thread_is_that_threads_section() -> None:
    """A section object belongs to the thread that enters it, not to read()'s caller."""
    d = aiorcu.Domain(name="stored")
    section = d.read()
    entered, leave = threading.Event(), threading.Event()

    def borrower() -> None:
        with section:
            entered.set()
            leave.wait(HANG_GUARD)

    t = threading.Thread(target=borrower, name="borrower")
    t.start()
    try:
        assert entered.wait(5)
        assert not d._inside()  # this thread is not inside
        writer = background_synchronize(d)
        assert not writer.done.wait(0.2)  # the borrower is
    finally:
        leave.set()
        t.join()
    writer.result()


def test_exit_without_enter_raises() -> None:
    d = aiorcu.Domain(name="unbalanced")
    with d.read():
        pass
    with pytest.raises(
        aiorcu.RcuUsageError,
        match=r"left a read section that was never entered; use `with domain.read\(\):`",
    ):
        d.read().__exit__(None, None, None)
    assert d.stats().readers_active == 0


def test_entering_with_one_protocol_and_leaving_with_the_other_raises() -> None:
    d = aiorcu.Domain(name="mixed")
    section = d.read()
    section.__enter__()
    with pytest.raises(aiorcu.RcuUsageError, match="was left with the other protocol"):
        section.__aexit__(None, None, None)
    assert not section.open
    assert d.stats().readers_active == 0


def test_a_foreign_release_while_the_owner_has_nested_sections() -> None:
    """Defect: releases queued for the owner and applied in its slow exit path
    leaked a flag (grace periods hung).  Now any thread releases at once."""
    d = aiorcu.Domain(name="nested-foreign")
    outer, middle, inner = d.read(), d.read(), d.read()
    outer.__enter__()
    middle.__enter__()
    inner.__enter__()
    with pytest.raises(aiorcu.RcuUsageError):
        Background(lambda: middle.__exit__(None, None, None), name="helper").result()
    assert d.stats().readers_active == 2
    inner.__exit__(None, None, None)
    outer.__exit__(None, None, None)
    assert d.stats().readers_active == 0
    assert not d._inside()
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_foreign_release_does_not_wait_for_an_idle_owner() -> None:
    """Defect: a release queued for an owner thread that sleeps held grace periods."""
    d = aiorcu.Domain(name="idle-owner")
    handed: list[aiorcu.ReadSection] = []
    entered, finish = threading.Event(), threading.Event()

    def owner() -> None:
        section = d.read()
        section.__enter__()
        handed.append(section)
        entered.set()
        finish.wait(HANG_GUARD)  # idle from here on: never enters or leaves again

    t = threading.Thread(target=owner, name="sleeper")
    t.start()
    try:
        assert entered.wait(5)
        with pytest.raises(aiorcu.RcuUsageError):
            handed[0].__exit__(None, None, None)
        d.synchronize_blocking(timeout=HANG_GUARD)  # completes while the owner sleeps
        handed.clear()
    finally:
        finish.set()
        t.join()


def test_collected_section_is_released_on_another_thread_while_the_owner_sleeps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="collected-elsewhere")
    handed: list[aiorcu.ReadSection] = []
    entered, finish = threading.Event(), threading.Event()

    def owner() -> None:
        section = d.read()
        section.__enter__()
        handed.append(section)
        del section
        entered.set()
        finish.wait(HANG_GUARD)

    t = threading.Thread(target=owner, name="sleeper")
    t.start()
    try:
        assert entered.wait(5)
        with caplog.at_level(logging.WARNING, logger="aiorcu"):
            handed.clear()  # the last reference: collected on this thread
        assert "garbage-collected while open" in caplog.text
        assert "entered on thread 'sleeper'" in caplog.text
        d.synchronize_blocking(timeout=HANG_GUARD)
    finally:
        finish.set()
        t.join()


# -- thread exit ------------------------------------------------------------------


def test_thread_exit_inside_a_section_releases_its_slot(caplog: pytest.LogCaptureFixture) -> None:
    d = aiorcu.Domain(name="exit")
    kept: list[aiorcu.ReadSection] = []

    def leaker() -> None:
        section = d.read()
        section.__enter__()  # the thread ends inside; the object lives on
        kept.append(section)

    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        t = threading.Thread(target=leaker, name="leaky-thread")
        t.start()
        t.join()
        gc.collect()
    records = [r for r in caplog.records if r.name == "aiorcu"]
    assert any(
        "thread 'leaky-thread'" in r.getMessage()
        and "exited inside 1 read section(s) of domain 'exit'" in r.getMessage()
        and "its reader slot was released" in r.getMessage()
        for r in records
    ), caplog.text
    assert all(r.levelno == logging.WARNING for r in records)
    assert d.stats().threads_registered == 0
    assert d.stats().readers_active == 0
    assert d.stats().dead_readers_released == 1
    assert kept[0].open and not kept[0].counted
    d.synchronize_blocking(timeout=HANG_GUARD)
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_late_exit_after_the_slot_was_released_changes_nothing() -> None:
    """Defect: after a slot was released and reused, a late exit of an old section
    decremented the new owner's counts."""
    d = aiorcu.Domain(name="late-exit")
    kept: list[aiorcu.ReadSection] = []

    def leaker() -> None:
        section = d.read()
        section.__enter__()
        kept.append(section)

    t = threading.Thread(target=leaker)
    t.start()
    t.join()  # slot released; the next thread reuses it
    holder, leave = hold_section(d, "new-owner")
    try:
        assert d.stats().threads_registered == 1
        # Leaving the old section from this thread (a foreign exit) raises and
        # must not touch the new owner's count.
        with pytest.raises(aiorcu.RcuUsageError):
            kept[0].__exit__(None, None, None)
        assert d.stats().readers_active == 1
        writer = background_synchronize(d)
        assert not writer.done.wait(0.2)  # the new owner's section still protects
    finally:
        leave.set()
        holder.join()
    writer.result()


def test_collecting_an_old_section_after_the_slot_was_reused_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="late-collect")
    kept: list[aiorcu.ReadSection] = []

    def leaker() -> None:
        section = d.read()
        section.__enter__()
        kept.append(section)

    t = threading.Thread(target=leaker)
    t.start()
    t.join()
    holder, leave = hold_section(d, "new-owner")
    try:
        with caplog.at_level(logging.WARNING, logger="aiorcu"):
            kept.clear()
            gc.collect()
        assert "garbage-collected" not in caplog.text  # it held nothing any more
        assert d.stats().readers_active == 1
        writer = background_synchronize(d)
        assert not writer.done.wait(0.2)
    finally:
        leave.set()
        holder.join()
    writer.result()


def test_thread_exit_inside_a_section_releases_a_waiting_writer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="exit-while-waiting")
    entered, go = threading.Event(), threading.Event()
    kept: list[aiorcu.ReadSection] = []

    def leaker() -> None:
        section = d.read()
        section.__enter__()
        kept.append(section)
        entered.set()
        go.wait(HANG_GUARD)  # then ends inside its section

    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        t = threading.Thread(target=leaker, name="dying-reader")
        t.start()
        assert entered.wait(5)
        writer = background_synchronize(d)
        assert not writer.done.wait(0.2)
        go.set()
        t.join()
        writer.result()  # the exited thread's slot no longer holds the grace period
    assert "dying-reader" in caplog.text


def test_idle_threads_release_slots() -> None:
    d = aiorcu.Domain(name="slots")

    def read_once() -> None:
        with d.read():
            pass

    threads = [threading.Thread(target=read_once) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert d.stats().threads_registered == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


def _enter_and_leave(d: aiorcu.Domain) -> None:
    with d.read():
        pass


def test_slots_are_reused_by_new_threads() -> None:
    d = aiorcu.Domain(name="reuse")
    for _ in range(200):  # more threads over time than any fixed table would hold
        t = threading.Thread(target=_enter_and_leave, args=(d,))
        t.start()
        t.join()
    assert d.stats().threads_registered == 0
    holder, leave = hold_section(d)
    writer = background_synchronize(d)
    assert not writer.done.wait(0.1)  # a reused slot is still scanned
    leave.set()
    writer.result()
    holder.join()


# -- code that runs between two bytecodes ----------------------------------------------


class _Box:
    __slots__ = ("retired",)

    def __init__(self) -> None:
        self.retired = False


def _retire(box: _Box) -> None:
    box.retired = True


def _signal_storm(d: aiorcu.Domain, seconds: float, busted: bool) -> tuple[int, int]:
    """Signal handlers open sections and read an RcuCell while the main thread does
    the same and a writer replaces and retires the object.  Returns (reads,
    violations): reads of an object already retired."""
    cell: aiorcu.RcuCell[_Box] = aiorcu.RcuCell(_Box(), domain=d)
    if busted:
        testing.set_busted(d)
    stop = threading.Event()
    reads, violations = [0], [0]

    def read_once() -> None:
        with d.read():
            box = cell.get()
            if box.retired:
                violations[0] += 1
            reads[0] += 1
            if box.retired:
                violations[0] += 1

    def handler(signum: int, frame: object) -> None:
        read_once()

    def writer() -> None:
        while not stop.is_set():
            cell.replace_blocking(_Box(), retire=_retire)

    # Claim this thread's reader slot before the storm: the claim is a
    # one-time Python path that is not re-entrant, and a handler every
    # 0.2 ms on a loaded machine can nest claims until the recursion limit.
    # The storm is about section entry and exit.
    read_once()
    old = signal.signal(signal.SIGALRM, handler)
    w = threading.Thread(target=writer, name="replacer")
    w.start()
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (busted and violations[0]):
            for _ in range(1000):
                read_once()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        stop.set()
        w.join(HANG_GUARD)
    return reads[0], violations[0]


@pytest.mark.stress
@pytest.mark.parametrize("kind", DOMAIN_KINDS)
def test_signal_handlers_that_open_sections_leave_no_reader_unprotected(kind: str) -> None:
    """Defect (fence mode): a handler that opened a section between a section's flag
    store and its bookkeeping left sections unprotected, or a flag leaked."""
    with domain_of_kind(kind, "signals") as d:
        reads, violations = _signal_storm(d, min(STRESS_SECONDS, 5), busted=False)
        assert reads > 10_000 and violations == 0, (reads, violations)
        assert d.stats().readers_active == 0  # nothing leaked
        d.synchronize_blocking(timeout=HANG_GUARD)


@pytest.mark.stress
@pytest.mark.parametrize("kind", DOMAIN_KINDS)
def test_negative_control_busted_signal_storm_is_caught(kind: str) -> None:
    with domain_of_kind(kind, "signals-busted") as d:
        _reads, violations = _signal_storm(d, max(STRESS_SECONDS, 30), busted=True)
        assert violations > 0


def test_finalizers_that_open_sections_during_section_entry_leave_counts_right() -> None:
    """Garbage collection runs finalizers at allocations: here inside read() and
    `async with` entry, and each finalizer opens sections of its own."""
    d = aiorcu.Domain(name="finalizers")
    opened = [0]

    class Opens:
        def __init__(self) -> None:
            self.me = self  # a cycle: freed by the collector, at an allocation

        def __del__(self) -> None:
            with d.read():
                opened[0] += 1
            ctx = contextvars.copy_context()
            section = d.read()
            ctx.run(section.__aenter__)
            ctx.run(section.__aexit__, None, None, None)

    threshold = gc.get_threshold()
    gc.set_threshold(10, 1, 1)
    try:
        for _ in range(20_000):
            Opens()
            with d.read():
                ctx = contextvars.copy_context()
                section = d.read()
                ctx.run(section.__aenter__)
                ctx.run(section.__aexit__, None, None, None)
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    assert opened[0] > 1000
    assert d.stats().readers_active == 0
    assert not d._inside()
    d.synchronize_blocking(timeout=HANG_GUARD)
