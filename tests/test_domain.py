"""Domains, thread read sections and blocking grace periods."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import aiorcu
from aiorcu import _testing

pytestmark = pytest.mark.fallback


def _hold_section(
    domain: aiorcu.Domain, seconds: float
) -> tuple[threading.Thread, threading.Event]:
    entered = threading.Event()

    def reader() -> None:
        with domain.read():
            entered.set()
            time.sleep(seconds)

    thread = threading.Thread(target=reader, name="holder")
    thread.start()
    assert entered.wait(5)
    return thread, entered


def test_public_names_and_exception_hierarchy() -> None:
    assert issubclass(aiorcu.RcuUsageError, aiorcu.AiorcuError)
    assert issubclass(aiorcu.RcuUsageError, RuntimeError)
    assert issubclass(aiorcu.GracePeriodTimeout, TimeoutError)
    assert issubclass(aiorcu.TransactionRejected, ValueError)
    assert issubclass(aiorcu.AccessDenied, PermissionError)
    assert aiorcu.Domain.__module__ == "aiorcu"
    assert aiorcu.global_domain() is aiorcu.global_domain()
    assert aiorcu.global_domain().name == "global"


def test_backend_info_is_a_frozen_record() -> None:
    info = aiorcu.backend_info()
    assert info.mechanism in ("membarrier-private-expedited", "fence")
    assert info.membarrier == (info.mechanism != "fence")
    assert (info.reason is None) == info.membarrier
    with pytest.raises(AttributeError):
        info.membarrier = False  # type: ignore[misc]


def test_sections_nest_and_inside_is_per_thread() -> None:
    d = aiorcu.Domain(name="nest")
    assert not d._inside()
    with d.read():
        with d.read():
            assert d._inside()
            seen = []
            t = threading.Thread(target=lambda: seen.append(d._inside()))
            t.start()
            t.join()
            assert seen == [False]  # another thread is not inside
        assert d._inside()
    assert not d._inside()
    assert d.stats().readers_active == 0


def test_synchronize_waits_for_a_reader_that_began_before() -> None:
    d = aiorcu.Domain(name="wait")
    thread, _ = _hold_section(d, 0.3)
    d.synchronize_blocking(timeout=10)
    # The reader slept inside its section; the grace period could only end after it left.
    assert not thread.is_alive() or d.stats().readers_active == 0
    thread.join()
    assert d.stats().grace_periods >= 1


def test_busted_grace_period_does_not_wait() -> None:
    """Negative control for the test above."""
    d = aiorcu.Domain(name="busted")
    _testing.set_busted(d)
    thread, _ = _hold_section(d, 0.5)
    d.synchronize_blocking(timeout=10)
    assert thread.is_alive()  # returned while the reader was still inside
    thread.join()


def test_synchronize_inside_own_section_raises() -> None:
    d = aiorcu.Domain(name="self")
    with d.read(), pytest.raises(aiorcu.RcuUsageError, match="would wait for itself"):
        d.synchronize_blocking()
    d.synchronize_blocking(timeout=5)


def test_timeout_then_next_grace_period_still_waits() -> None:
    d = aiorcu.Domain(name="timeout")
    release = threading.Event()
    entered = threading.Event()

    def reader() -> None:
        with d.read():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=reader, name="stuck-reader")
    t.start()
    assert entered.wait(5)
    with pytest.raises(aiorcu.GracePeriodTimeout, match=r"did not complete within 0\.05 s") as info:
        d.synchronize_blocking(timeout=0.05)
    assert "stuck-reader" in str(info.value)
    with pytest.raises(TimeoutError):
        d.synchronize_blocking(timeout=0.05)  # still inside: the abandoned flip did not help it
    assert d.stats().timeouts >= 2
    done = threading.Event()

    def writer() -> None:
        d.synchronize_blocking(timeout=10)
        done.set()

    w = threading.Thread(target=writer)
    w.start()
    assert not done.wait(0.2)  # must still wait for the reader that began before
    release.set()
    assert done.wait(10)
    w.join()
    t.join()


def test_negative_timeout_rejected() -> None:
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        aiorcu.Domain().synchronize_blocking(timeout=-1)


def test_leaving_on_another_thread_raises() -> None:
    d = aiorcu.Domain(name="move")

    def gen():  # type: ignore[no-untyped-def]
        with d.read():
            yield

    g = gen()
    next(g)
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            next(g)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=finish, name="other")
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], aiorcu.RcuUsageError)
    assert "belongs to thread 'MainThread'" in str(errors[0])
    # The owner applies the queued release at its next section; grace periods finish.
    with d.read():
        pass
    assert not d._inside()
    d.synchronize_blocking(timeout=5)


def test_stored_section_used_on_another_thread_raises() -> None:
    d = aiorcu.Domain(name="stored")
    with d.read():
        pass
    section = d.read()  # this thread's own reader from now on
    errors: list[BaseException] = []

    def use() -> None:
        try:
            with section:
                pass
        except aiorcu.RcuUsageError as exc:
            errors.append(exc)

    t = threading.Thread(target=use)
    t.start()
    t.join()
    assert errors and "sections are per thread" in str(errors[0])
    assert d.stats().readers_active == 0


def test_exit_without_enter_raises() -> None:
    d = aiorcu.Domain(name="unbalanced")
    with pytest.raises(aiorcu.RcuUsageError, match="never entered"):
        d.read().__exit__(None, None, None)


def test_thread_exit_releases_slot(caplog: pytest.LogCaptureFixture) -> None:
    d = aiorcu.Domain(name="exit")

    def leaker() -> None:
        d.read().__enter__()  # leaves without __exit__: thread ends inside

    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        t = threading.Thread(target=leaker, name="leaky-thread")
        t.start()
        t.join()
    assert "leaky-thread" in caplog.text and "exited inside 1 read section" in caplog.text
    d.synchronize_blocking(timeout=5)
    assert d.stats().threads_registered == 0


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
    assert d.stats().threads_registered == 0


def test_stall_warning_names_the_reader(caplog: pytest.LogCaptureFixture) -> None:
    d = aiorcu.Domain(name="stall")
    thread, _ = _hold_section(d, 0.45)
    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        d.synchronize_blocking(timeout=10)
    thread.join()
    stalls = [r for r in caplog.records if "has waited" in r.getMessage()]
    assert len(stalls) >= 2  # 100 ms, then 200 ms later
    assert "thread 'holder'" in stalls[0].getMessage()
    assert "inside for at least" in stalls[0].getMessage()
    assert d.stats().stall_warnings == len(stalls)


def test_membarrier_calls_counted_and_elided_when_alone() -> None:
    d = aiorcu.Domain(name="count")
    d.synchronize_blocking()
    s0 = d.stats()
    assert s0.membarrier_calls == 0 and s0.barriers_elided == 2  # nobody else has a slot
    ready, stop = threading.Event(), threading.Event()

    def idle_reader() -> None:
        with d.read():
            pass
        ready.set()
        stop.wait(10)

    t = threading.Thread(target=idle_reader)
    t.start()
    assert ready.wait(5)
    d.synchronize_blocking()
    s1 = d.stats()
    stop.set()
    t.join()
    if aiorcu.backend_info().membarrier:
        assert s1.membarrier_calls - s0.membarrier_calls == 2  # M1 and M3
    assert s1.barriers_elided == s0.barriers_elided


def test_runtime_membarrier_failure_falls_back_or_raises() -> None:
    if not aiorcu.backend_info().membarrier:
        pytest.skip("membarrier not in use")
    d = aiorcu.Domain(name="faults")
    ready, stop = threading.Event(), threading.Event()

    def other() -> None:
        with d.read():
            pass
        ready.set()
        stop.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert ready.wait(5)
    try:
        _testing.fail_membarrier(1)
        d.synchronize_blocking(timeout=5)
        assert d.stats().barrier_fallbacks == 1  # GLOBAL used, never skipped
        _testing.fail_membarrier(1000)
        with pytest.raises(aiorcu.AiorcuError, match="nothing was skipped"):
            d.synchronize_blocking(timeout=5)
    finally:
        _testing.fail_membarrier(0)
        stop.set()
        t.join()
    d.synchronize_blocking(timeout=5)


def test_straggler_is_waited_for_by_the_next_grace_period() -> None:
    """A reader loads the old phase, the writer flips, then the reader publishes."""
    d = aiorcu.Domain(name="straggler")
    loaded, go_on, entered, leave = (threading.Event() for _ in range(4))
    d.read()  # the main thread owns a slot too, so barriers are not elided

    def delay() -> None:
        if threading.current_thread().name == "straggler":
            loaded.set()
            go_on.wait(10)

    def reader() -> None:
        with d.read():
            entered.set()
            leave.wait(10)

    with _testing.reader_delay(d, delay):
        t = threading.Thread(target=reader, name="straggler")
        t.start()
        assert loaded.wait(5)
        phase_before = d._core.ctl[0]
        d.synchronize_blocking(timeout=5)  # flips; the reader has not published yet
        assert d._core.ctl[0] != phase_before
        go_on.set()
        assert entered.wait(5)  # now inside, counted in the old phase
        done = threading.Event()
        w = threading.Thread(target=lambda: (d.synchronize_blocking(timeout=10), done.set()))
        w.start()
        assert not done.wait(0.3)  # the next grace period waits for the straggler
        leave.set()
        assert done.wait(10)
        w.join()
        t.join()


def test_no_lost_wakeups_under_load() -> None:
    d = aiorcu.Domain(name="wakeups")
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with d.read():
                time.sleep(0.0005)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for _ in range(60):
            d.synchronize_blocking(timeout=10)
    finally:
        stop.set()
        for t in readers:
            t.join()
    stats = d.stats()
    assert stats.grace_periods == 60
    assert stats.backstop_timeouts == 0
