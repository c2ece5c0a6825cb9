"""Thread read sections: nesting, ownership, wide counts, thread exit."""

from __future__ import annotations

import contextvars
import gc
import logging
import threading
from collections.abc import Iterator

import pytest

import aiorcu

from .conftest import HANG_GUARD, Background, background_synchronize, hold_section

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
    section = d.read()
    contexts = [contextvars.copy_context() for _ in range(300)]
    for ctx in contexts:
        ctx.run(section.__aenter__)
    assert d.stats().readers_active == 300
    for ctx in contexts[:-1]:
        ctx.run(section.__aexit__, None, None, None)
    assert d.stats().readers_active == 1
    writer = background_synchronize(d)
    assert not writer.done.wait(0.2)
    contexts[-1].run(section.__aexit__, None, None, None)
    writer.result()


# -- ownership ------------------------------------------------------------------


def test_leaving_on_another_thread_raises() -> None:
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
    assert "was used on thread 'other' but belongs to thread 'MainThread'" in message
    assert "sections are per thread" in message
    # The owner applies the queued release at its next section; grace periods finish.
    with d.read():
        pass
    assert not d._inside()
    assert d.stats().readers_active == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_leaving_on_a_thread_that_never_read_raises() -> None:
    """The first section of a thread, left on a thread that never entered one."""
    d = aiorcu.Domain(name="stranger")
    holder, leave = hold_section(d, "bystander")  # a second open reader: ambiguous owner
    entered, finish = threading.Event(), threading.Event()
    box: list[Iterator[None]] = []

    def gen() -> Iterator[None]:
        with d.read():
            yield

    def starter() -> None:
        g = gen()
        next(g)
        box.append(g)
        entered.set()
        finish.wait(HANG_GUARD)

    owner = threading.Thread(target=starter, name="owner")
    owner.start()
    try:
        assert entered.wait(5)
        stranger = Background(lambda: next(box[0]), name="stranger")
        assert stranger.finished()
        assert isinstance(stranger.error, aiorcu.RcuUsageError)
        assert "was left on thread 'stranger', which never entered one" in str(stranger.error)
    finally:
        finish.set()
        leave.set()
        owner.join()
        holder.join()
        box.clear()
        gc.collect()


def test_stored_section_used_on_another_thread_raises() -> None:
    d = aiorcu.Domain(name="stored")
    with d.read():
        pass
    section = d.read()  # this thread's own reader from now on
    other = Background(section.__enter__, name="borrower")
    assert other.finished()
    assert isinstance(other.error, aiorcu.RcuUsageError)
    assert "belongs to thread 'MainThread'" in str(other.error)
    assert "call domain.read() on the thread that reads" in str(other.error)
    assert d.stats().readers_active == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_exit_without_enter_raises() -> None:
    d = aiorcu.Domain(name="unbalanced")
    with d.read():
        pass
    with pytest.raises(
        aiorcu.RcuUsageError,
        match=r"a read section was left that was never entered on this thread; "
        r"use `with domain.read\(\):`",
    ):
        d.read().__exit__(None, None, None)
    assert d.stats().readers_active == 0


# -- thread exit ------------------------------------------------------------------


def test_thread_exit_inside_a_section_releases_its_slot(caplog: pytest.LogCaptureFixture) -> None:
    d = aiorcu.Domain(name="exit")

    def leaker() -> None:
        d.read().__enter__()  # returns without __exit__: the thread ends inside

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
    d.synchronize_blocking(timeout=HANG_GUARD)
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_thread_exit_inside_a_section_releases_a_waiting_writer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="exit-while-waiting")
    entered, go = threading.Event(), threading.Event()

    def leaker() -> None:
        d.read().__enter__()
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
