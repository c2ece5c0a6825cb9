"""Domains and their writers: blocking grace periods, timeouts, barriers, stragglers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import aiorcu
from aiorcu import testing

from .conftest import HANG_GUARD, Background, background_synchronize, hold_section

pytestmark = pytest.mark.fallback

MEMBARRIER = aiorcu.backend_info().membarrier


def _wait_until(predicate: object, timeout: float = HANG_GUARD) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.001)
    return False


# -- names, records, exceptions -------------------------------------------------


def test_public_names_and_exception_hierarchy() -> None:
    assert issubclass(aiorcu.AiorcuError, Exception)
    assert issubclass(aiorcu.RcuUsageError, aiorcu.AiorcuError)
    assert issubclass(aiorcu.RcuUsageError, RuntimeError)
    assert issubclass(aiorcu.GracePeriodTimeout, aiorcu.AiorcuError)
    assert issubclass(aiorcu.GracePeriodTimeout, TimeoutError)
    assert issubclass(aiorcu.TransactionRejected, ValueError)
    assert issubclass(aiorcu.AccessDenied, PermissionError)
    for name in ("Domain", "DomainStatistics", "BackendInfo", "RcuUsageError"):
        assert getattr(aiorcu, name).__module__ == "aiorcu"
        assert name in aiorcu.__all__


def test_global_domain_is_one_per_process() -> None:
    d = aiorcu.global_domain()
    assert d is aiorcu.global_domain()
    assert isinstance(d, aiorcu.Domain)
    assert d.name == "global"
    with d.read():
        assert d._inside()
    d.synchronize_blocking(timeout=HANG_GUARD)


def test_domain_names() -> None:
    assert aiorcu.Domain(name="pages").name == "pages"
    assert "pages" in repr(aiorcu.Domain(name="pages"))
    a, b = aiorcu.Domain(), aiorcu.Domain()
    assert a.name != b.name  # generated names tell domains apart in logs


def test_backend_info_is_a_frozen_record() -> None:
    info = aiorcu.backend_info()
    assert isinstance(info, aiorcu.BackendInfo)
    assert info.mechanism in ("membarrier-private-expedited", "fence")
    assert info.membarrier == (info.mechanism != "fence")
    assert (info.reason is None) == info.membarrier
    with pytest.raises(AttributeError):
        info.membarrier = False  # type: ignore[misc]


def test_stats_is_a_frozen_record() -> None:
    d = aiorcu.Domain(name="stats")
    s = d.stats()
    assert isinstance(s, aiorcu.DomainStatistics)
    for field in (
        "grace_periods",
        "membarrier_calls",
        "threads_registered",
        "readers_active",
        "offloaded_waits",
        "stall_warnings",
        "callbacks_pending",
    ):
        assert getattr(s, field) == 0, field
    with pytest.raises(AttributeError):
        s.grace_periods = 5  # type: ignore[misc]


# -- grace periods -------------------------------------------------------------


def test_synchronize_without_readers_completes_inline() -> None:
    d = aiorcu.Domain(name="idle")
    for n in range(1, 4):
        d.synchronize_blocking()
        s = d.stats()
        assert s.grace_periods == n
        assert s.completed_sequence == n
    assert s.offloaded_waits == 0
    assert d._worker.thread() is None  # no thread hop for a blocking caller


def test_synchronize_waits_for_a_reader_that_began_before() -> None:
    d = aiorcu.Domain(name="wait")
    holder, leave = hold_section(d)
    writer = background_synchronize(d)
    assert not writer.done.wait(0.2)  # the reader is still inside
    assert d.stats().readers_active == 1
    leave.set()
    writer.result()
    holder.join()
    assert d.stats().grace_periods == 1


def test_busted_grace_period_does_not_wait() -> None:
    """Negative control for the test above: the same check catches a non-waiting writer."""
    d = aiorcu.Domain(name="busted")
    testing.set_busted(d)
    holder, leave = hold_section(d)
    writer = background_synchronize(d)
    try:
        assert writer.finished()  # returned while the reader was still inside
        assert holder.is_alive() and d.stats().readers_active == 1
    finally:
        leave.set()
        holder.join()


@pytest.mark.parametrize("wait", ["synchronize_blocking", "await synchronize"])
def test_readers_that_enter_after_the_flip_do_not_delay_the_grace_period(wait: str) -> None:
    """SRCU's two indexes: only sections that began before the flip are waited for.

    Both waits first try to complete without waiting; a try that flipped and
    gave up made the real grace period wait for the late reader too."""
    d = aiorcu.Domain(name="after-flip")
    first, leave_first = hold_section(d, "early")
    phase = testing.current_phase(d)
    if wait == "synchronize_blocking":
        writer = background_synchronize(d)
    else:
        writer = Background(lambda: asyncio.run(d.synchronize()), name="async-writer")
    assert _wait_until(lambda: testing.current_phase(d) != phase)  # the writer flipped, now waits
    late, leave_late = hold_section(d, "late")  # enters in the new phase
    try:
        assert not writer.done.wait(0.1)
        leave_first.set()
        writer.result()  # finished although "late" is still inside
        assert late.is_alive() and d.stats().readers_active == 1
    finally:
        leave_first.set()
        leave_late.set()
        first.join()
        late.join()


def test_concurrent_blocking_writers_share_grace_periods() -> None:
    d = aiorcu.Domain(name="share-blocking")
    holder, leave = hold_section(d)
    writers = [background_synchronize(d) for _ in range(8)]
    time.sleep(0.1)
    assert not any(w.done.is_set() for w in writers)
    leave.set()
    for w in writers:
        w.result()
    holder.join()
    assert d.stats().grace_periods <= 3


def test_domains_are_independent() -> None:
    a, b = aiorcu.Domain(name="a"), aiorcu.Domain(name="b")
    holder, leave = hold_section(a)
    try:
        b.synchronize_blocking(timeout=HANG_GUARD)  # a's reader does not delay b
        with a.read():
            b.synchronize_blocking(timeout=HANG_GUARD)  # nor does this thread's section of a
        with pytest.raises(aiorcu.GracePeriodTimeout):
            a.synchronize_blocking(timeout=0.05)
    finally:
        leave.set()
        holder.join()


# -- misuse ------------------------------------------------------------------------


def test_synchronize_inside_own_section_raises() -> None:
    d = aiorcu.Domain(name="self")
    message = (
        r"synchronize_blocking\(\) called inside a `with domain\.read\(\):` section on this "
        r"thread; it would wait for itself\. Leave the section first"
    )
    with d.read():
        with pytest.raises(aiorcu.RcuUsageError, match=message):
            d.synchronize_blocking()
        with d.read(), pytest.raises(aiorcu.RcuUsageError, match=message):
            d.synchronize_blocking(timeout=1)
    d.synchronize_blocking(timeout=HANG_GUARD)  # and fine once outside


def test_negative_timeout_rejected() -> None:
    d = aiorcu.Domain()
    with pytest.raises(ValueError, match=r"timeout must be >= 0 seconds or None, not -1"):
        d.synchronize_blocking(timeout=-1)
    with pytest.raises(ValueError, match=r"not nan"):
        d.synchronize_blocking(timeout=float("nan"))
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds or None"):
        d.synchronize_blocking(timeout="1")  # type: ignore[arg-type]
    assert d.stats().grace_periods == 0  # nothing ran


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, 2**64, 1e300])
def test_huge_timeouts_mean_no_deadline(timeout: float) -> None:
    """Defect: inf and 1e10 raised OverflowError; they mean "no deadline"."""
    d = aiorcu.Domain(name="forever")
    d.synchronize_blocking(timeout=timeout)
    holder, leave = hold_section(d)
    writer = Background(lambda: d.synchronize_blocking(timeout=timeout), name="writer")
    try:
        assert not writer.done.wait(0.2)
    finally:
        leave.set()
        holder.join()
    writer.result()


# -- timeouts -------------------------------------------------------------------------


def test_timeout_then_next_grace_period_still_waits_for_the_same_reader() -> None:
    d = aiorcu.Domain(name="timeout")
    holder, leave = hold_section(d, "stuck-reader")
    try:
        with pytest.raises(aiorcu.GracePeriodTimeout, match=r"did not complete within 0\.05 s"):
            d.synchronize_blocking(timeout=0.05)
        with pytest.raises(TimeoutError) as info:  # a GracePeriodTimeout is a TimeoutError
            d.synchronize_blocking(timeout=0.05)
        assert "stuck-reader" in str(info.value) and "The domain is consistent" in str(info.value)
        assert d.stats().timeouts == 2
        assert d.stats().completed_sequence == 0  # an abandoned grace period completes nothing
        writer = background_synchronize(d)
        assert not writer.done.wait(0.2)  # must still wait for the reader that began before
        leave.set()
        writer.result()
    finally:
        leave.set()
        holder.join()


def test_timeout_then_next_grace_period_waits_for_a_reader_that_began_between() -> None:
    """The abandoned grace period flipped the phase; a reader entering after it must
    still be waited for by the next one."""
    d = aiorcu.Domain(name="timeout-between")
    early, leave_early = hold_section(d, "early")
    try:
        with pytest.raises(aiorcu.GracePeriodTimeout):
            d.synchronize_blocking(timeout=0.05)
        late, leave_late = hold_section(d, "late")  # began before the next grace period
        leave_early.set()
        early.join()
        writer = background_synchronize(d)
        assert not writer.done.wait(0.2)
        assert d.stats().readers_active == 1
        leave_late.set()
        writer.result()
        late.join()
        d.synchronize_blocking(timeout=HANG_GUARD)
    finally:
        leave_early.set()
        early.join()


def test_zero_timeout_without_readers_succeeds() -> None:
    d = aiorcu.Domain(name="zero")
    d.synchronize_blocking(timeout=0)
    assert d.stats().grace_periods == 1


# -- the straggler ----------------------------------------------------------------------


def _straggler_waited_for(busted: bool) -> bool:
    """A reader loads the old phase, the writer flips, then the reader publishes.

    Returns whether the next grace period (busted or not) waited for it.
    """
    d = aiorcu.Domain(name="straggler-busted" if busted else "straggler")
    loaded, go_on, entered, leave = (threading.Event() for _ in range(4))
    with d.read():  # the main thread owns a slot too, so barriers are not elided
        pass

    def delay() -> None:
        if threading.current_thread().name == "straggler":
            loaded.set()
            go_on.wait(HANG_GUARD)

    def reader() -> None:
        with d.read():
            entered.set()
            leave.wait(HANG_GUARD)

    with testing.reader_delay(d, delay):
        t = threading.Thread(target=reader, name="straggler")
        t.start()
        try:
            assert loaded.wait(5)
            phase_before = testing.current_phase(d)
            d.synchronize_blocking(timeout=HANG_GUARD)  # flips; the reader has not published
            assert testing.current_phase(d) != phase_before
            go_on.set()
            assert entered.wait(5)  # now inside, counted in the old phase
            testing.set_busted(d, busted)
            writer = background_synchronize(d)
            waited = not writer.done.wait(0.3)
            assert t.is_alive()  # the reader is still inside either way
            leave.set()
            writer.result()
            return waited
        finally:
            go_on.set()
            leave.set()
            t.join()


def test_straggler_is_waited_for_by_the_next_grace_period() -> None:
    """The first grace period may finish without the straggler (M1/F1 make it
    see the new data), but it now counts in the phase that is current when the
    next grace period starts; that one must wait for it."""
    assert _straggler_waited_for(busted=False)


def test_straggler_with_a_busted_grace_period_is_missed() -> None:
    """Negative control: the same check fails against a non-waiting writer."""
    assert not _straggler_waited_for(busted=True)


# -- barriers ------------------------------------------------------------------------------


def _idle_registered_reader(d: aiorcu.Domain) -> tuple[threading.Thread, threading.Event]:
    """A thread that has read once (owns a slot) and now idles outside any section."""
    ready, stop = threading.Event(), threading.Event()

    def idle_reader() -> None:
        with d.read():
            pass
        ready.set()
        stop.wait(HANG_GUARD)

    t = threading.Thread(target=idle_reader, name="idle-reader")
    t.start()
    assert ready.wait(5)
    return t, stop


def test_barriers_elided_when_no_other_thread_has_a_slot() -> None:
    d = aiorcu.Domain(name="alone")
    d.synchronize_blocking()
    s0 = d.stats()
    assert s0.threads_registered == 0
    assert s0.membarrier_calls == 0
    assert s0.barriers_elided == 2  # M1 and M3
    with d.read():  # the caller's own slot does not need a barrier either
        pass
    d.synchronize_blocking()
    s1 = d.stats()
    assert s1.membarrier_calls == 0
    assert s1.barriers_elided == 4


def test_two_membarriers_per_grace_period_with_another_reader() -> None:
    d = aiorcu.Domain(name="count")
    t, stop = _idle_registered_reader(d)
    try:
        assert d.stats().threads_registered == 1
        s0 = d.stats()
        d.synchronize_blocking()
        s1 = d.stats()
        d.synchronize_blocking()
        s2 = d.stats()
    finally:
        stop.set()
        t.join()
    assert s1.barriers_elided == s0.barriers_elided  # another thread has a slot: no skipping
    if MEMBARRIER:
        assert s1.membarrier_calls - s0.membarrier_calls == 2  # M1 and M3
        assert s2.membarrier_calls - s1.membarrier_calls == 2
    else:
        assert s2.membarrier_calls == 0  # the fence fallback never calls membarrier
    assert s2.grace_periods == 2
    # Once the other thread exited, its slot is gone and barriers are elided again.
    assert d.stats().threads_registered == 0
    d.synchronize_blocking()
    assert d.stats().barriers_elided == s2.barriers_elided + 2


@pytest.mark.skipif(not MEMBARRIER, reason="membarrier not in use")
def test_runtime_membarrier_failure_falls_back_or_raises() -> None:
    d = aiorcu.Domain(name="faults")
    t, stop = _idle_registered_reader(d)
    try:
        testing.fail_membarrier(1)
        d.synchronize_blocking(timeout=HANG_GUARD)
        assert d.stats().barrier_fallbacks == 1  # MEMBARRIER_CMD_GLOBAL used, never skipped
        testing.fail_membarrier(1000)
        with pytest.raises(
            aiorcu.AiorcuError,
            match=r"membarrier\(2\) failed and its MEMBARRIER_CMD_GLOBAL fallback failed too.*"
            r"nothing was skipped",
        ):
            d.synchronize_blocking(timeout=HANG_GUARD)
    finally:
        testing.fail_membarrier(0)
        stop.set()
        t.join()
    d.synchronize_blocking(timeout=HANG_GUARD)  # the domain is still usable


# -- waiting: futex wake-ups and polling ---------------------------------------------------


@pytest.mark.parametrize("mode", ["futex", "poll"])
def test_waits_end_under_load(mode: str) -> None:
    d = aiorcu.Domain(name=f"wait-{mode}")
    testing.set_wait_mode(d, mode)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with d.read():
                time.sleep(0.0005)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        for _ in range(50):
            d.synchronize_blocking(timeout=HANG_GUARD)
    finally:
        stop.set()
        for t in readers:
            t.join()
    stats = d.stats()
    assert stats.grace_periods == 50
    # Readers wake a sleeping writer; a sleep that ends by its backstop is a lost wake-up.
    assert stats.backstop_timeouts == 0
    if mode == "futex":
        assert stats.writer_sleeps == 0 or stats.reader_wakeups > 0


def test_futex_writer_sleeps_and_is_woken_by_the_reader() -> None:
    d = aiorcu.Domain(name="futex")
    testing.set_wait_mode(d, "futex")
    holder, leave = hold_section(d)
    writer = background_synchronize(d)
    assert not writer.done.wait(0.2)
    deadline = time.monotonic() + HANG_GUARD  # a loaded machine may start it late
    while d.stats().writer_sleeps < 1:  # it sleeps rather than spins
        assert time.monotonic() < deadline, "the writer never went to sleep"
        time.sleep(0.005)
    leave.set()
    writer.result()
    holder.join()
    stats = d.stats()
    assert stats.reader_wakeups >= 1
    assert stats.backstop_timeouts == 0


def test_many_writers_and_readers_in_threads_do_not_deadlock() -> None:
    d = aiorcu.Domain(name="mixed")
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with d.read(), d.read():
                pass

    def writer() -> None:
        for _ in range(30):
            d.synchronize_blocking(timeout=HANG_GUARD)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    writers = [Background(writer, name=f"w{i}") for i in range(3)]
    try:
        for w in writers:
            w.result()
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert d.stats().readers_active == 0
