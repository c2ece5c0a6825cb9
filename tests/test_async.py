"""Task read sections and ``await synchronize()`` under asyncio and trio."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator

import anyio
import pytest

import aiorcu
from aiorcu import _worker, testing

from .conftest import (
    DOMAIN_KINDS,
    HANG_GUARD,
    Background,
    background_synchronize,
    domain_of_kind,
    hold_section,
)

pytestmark = [pytest.mark.anyio, pytest.mark.fallback]

MEMBARRIER = aiorcu.backend_info().membarrier


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads alive now that were not in ``before`` (threads that exited meanwhile don't count)."""
    return [t for t in threading.enumerate() if t not in before]


async def _task_holding_section(
    d: aiorcu.Domain, tg: anyio.abc.TaskGroup, name: str = "holder-task"
) -> anyio.Event:
    """Starts a task inside a section of ``d``; it leaves when the returned event is set."""
    entered, leave = anyio.Event(), anyio.Event()

    async def reader() -> None:
        async with d.read():
            entered.set()
            await leave.wait()

    tg.start_soon(reader, name=name)
    await entered.wait()
    return leave


# -- sections -----------------------------------------------------------------


async def test_async_section_may_await_inside() -> None:
    d = aiorcu.Domain(name="await")
    async with d.read():
        assert d._inside()
        await anyio.sleep(0)
        assert d._inside()
        async with d.read():  # nestable
            await anyio.sleep(0)
        assert d._inside()
    assert not d._inside()
    assert d.stats().readers_active == 0
    await d.synchronize()


async def test_async_section_left_when_the_body_raises() -> None:
    d = aiorcu.Domain(name="async-raises")
    with pytest.raises(KeyError):
        async with d.read():
            await anyio.sleep(0)
            raise KeyError("x")
    assert not d._inside()
    assert d.stats().readers_active == 0
    with anyio.fail_after(HANG_GUARD):
        await d.synchronize()


async def test_other_tasks_sections_do_not_count_for_this_task() -> None:
    d = aiorcu.Domain(name="others")
    async with anyio.create_task_group() as tg:
        leave = await _task_holding_section(d, tg)
        assert d.stats().readers_active == 1
        assert not d._inside()  # same loop thread, another task's section
        async with d.read():
            assert d._inside()
        assert not d._inside()
        leave.set()


async def test_task_created_inside_section_is_not_inside_after_it_closed() -> None:
    d = aiorcu.Domain(name="child")
    closed = anyio.Event()
    seen: list[bool] = []

    async def child() -> None:
        seen.append(d._inside())  # inherited the context while the parent was inside
        await closed.wait()
        seen.append(d._inside())  # the parent's section has closed since
        with anyio.fail_after(HANG_GUARD):
            await d.synchronize()  # and so it may wait for a grace period

    async with anyio.create_task_group() as tg:
        async with d.read():
            tg.start_soon(child)
            await anyio.sleep(0.01)
        assert not d._inside()
        closed.set()
    assert seen == [True, False]


async def test_overlapping_non_nested_task_sections() -> None:
    d = aiorcu.Domain(name="overlap")
    steps: list[str] = []
    a_in, b_in, a_out = anyio.Event(), anyio.Event(), anyio.Event()

    async def a() -> None:
        async with d.read():
            a_in.set()
            await b_in.wait()
        a_out.set()
        steps.append("a out")
        assert not d._inside()

    async def b() -> None:
        await a_in.wait()
        async with d.read():
            b_in.set()
            await a_out.wait()
            assert d._inside()  # a's exit did not close b's section
        steps.append("b out")

    async with anyio.create_task_group() as tg:
        tg.start_soon(a)
        tg.start_soon(b)
    assert steps == ["a out", "b out"]
    assert d.stats().readers_active == 0
    await d.synchronize()


async def test_inside_after_nested_section_closed() -> None:
    d = aiorcu.Domain(name="nested-async")
    async with d.read():
        async with d.read():
            pass
        assert d._inside()  # the outer section is still open
        with pytest.raises(aiorcu.RcuUsageError, match="held by this task"):
            await d.synchronize()
    assert not d._inside()
    await d.synchronize()


async def test_many_task_sections_on_one_loop() -> None:
    """300 tasks inside at once on one thread: the count must not wrap at 256."""
    d = aiorcu.Domain(name="many-tasks")
    entered = 0
    all_in, release_most, release_last = anyio.Event(), anyio.Event(), anyio.Event()

    async def reader(last: bool) -> None:
        nonlocal entered
        async with d.read():
            entered += 1
            if entered == 300:
                all_in.set()
            await (release_last if last else release_most).wait()

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(reader, i == 0)
        await all_in.wait()
        assert d.stats().readers_active == 300
        release_most.set()
        while d.stats().readers_active > 1:
            await anyio.sleep(0.01)
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.2):
                await d.synchronize()  # one section is still open
        release_last.set()
    with anyio.fail_after(HANG_GUARD):
        await d.synchronize()


# -- synchronize --------------------------------------------------------------


async def test_synchronize_returns_inline_without_readers() -> None:
    d = aiorcu.Domain(name="inline")
    await d.synchronize()
    await d.synchronize()
    stats = d.stats()
    assert stats.grace_periods == 2
    assert stats.offloaded_waits == 0  # decided on the loop, no thread hop
    assert d._worker.thread() is None


async def test_synchronize_waits_for_another_task() -> None:
    d = aiorcu.Domain(name="other-task")
    entered = anyio.Event()
    order: list[str] = []

    async def reader() -> None:
        async with d.read():
            entered.set()
            await anyio.sleep(0.1)
            order.append("reader left")

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        await d.synchronize()
        order.append("grace period done")
    assert order == ["reader left", "grace period done"]
    assert d.stats().offloaded_waits == 1


async def test_busted_synchronize_does_not_wait() -> None:
    """Negative control for the test above."""
    d = aiorcu.Domain(name="busted-async")
    testing.set_busted(d)
    entered = anyio.Event()
    order: list[str] = []

    async def reader() -> None:
        async with d.read():
            entered.set()
            await anyio.sleep(0.1)
            order.append("reader left")

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        await d.synchronize()
        order.append("grace period done")
    assert order == ["grace period done", "reader left"]


async def test_synchronize_waits_for_a_thread_reader() -> None:
    d = aiorcu.Domain(name="thread-reader")
    holder, leave = hold_section(d)
    try:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.2):
                await d.synchronize()
        assert d._worker.pending == 0
        threading.Timer(0.05, leave.set).start()
        with anyio.fail_after(HANG_GUARD):
            await d.synchronize()
        assert not holder.is_alive() or d.stats().readers_active == 0
    finally:
        leave.set()
        holder.join()


async def test_timed_out_await_then_next_still_waits() -> None:
    d = aiorcu.Domain(name="async-timeout")
    async with anyio.create_task_group() as tg:
        leave = await _task_holding_section(d, tg)
        for _ in range(2):
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.05):
                    await d.synchronize()
        done = anyio.Event()

        async def waiter() -> None:
            await d.synchronize()
            done.set()

        tg.start_soon(waiter)
        await anyio.sleep(0.2)
        assert not done.is_set()  # still waits for the reader that began before
        leave.set()
        with anyio.fail_after(HANG_GUARD):
            await done.wait()


async def test_concurrent_awaits_share_grace_periods() -> None:
    d = aiorcu.Domain(name="share")
    done = 0

    async def waiter() -> None:
        nonlocal done
        await d.synchronize()
        done += 1

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            leave = await _task_holding_section(d, tg)
            threads_before = set(threading.enumerate())
            before = d.stats().grace_periods
            for _ in range(1000):
                tg.start_soon(waiter)
            await anyio.sleep(0.05)
            assert done == 0  # all wait for the reader
            # One worker thread, the domain's own, not one per waiter.
            assert _new_threads(threads_before) == [d._worker.thread()]
            leave.set()
    assert done == 1000
    assert d.stats().grace_periods - before <= 10
    assert d._worker.pending == 0


async def test_synchronize_inside_own_section_raises() -> None:
    d = aiorcu.Domain(name="own")
    message = (
        r"await synchronize\(\) called inside a read section of domain 'own' held by this "
        r"task; it would wait for itself\. Leave the section first"
    )
    async with d.read():
        with pytest.raises(aiorcu.RcuUsageError, match=message):
            await d.synchronize()
    # This thread's `with` section counts too, but it may be another task's
    # (held across an await): the message does not blame this task.
    with d.read(), pytest.raises(aiorcu.RcuUsageError) as caught:
        await d.synchronize()
    assert "this thread has a `with domain.read():` section of domain 'own' open" in str(
        caught.value
    )
    assert "this task" not in str(caught.value)
    await d.synchronize()


async def test_synchronize_in_wait_for_inside_own_section_raises(anyio_backend: str) -> None:
    """On 3.11 asyncio.wait_for runs its coroutine in a new task with a copied context."""
    if anyio_backend != "asyncio":
        pytest.skip("asyncio.wait_for")
    d = aiorcu.Domain(name="wait-for")
    async with d.read():
        with pytest.raises(aiorcu.RcuUsageError, match="held by this task"):
            await asyncio.wait_for(d.synchronize(), HANG_GUARD)
    await asyncio.wait_for(d.synchronize(), HANG_GUARD)


async def test_blocking_synchronize_on_loop_with_other_task_inside_raises() -> None:
    d = aiorcu.Domain(name="loop-block")
    async with anyio.create_task_group() as tg:
        leave = await _task_holding_section(d, tg)
        with pytest.raises(
            aiorcu.RcuUsageError,
            match=r"synchronize_blocking\(\) called on an event-loop thread where another task "
            r"holds an `async with` section of domain 'loop-block'; blocking here would stop "
            r"that task from ever leaving it\. Use `await domain\.synchronize\(\)` instead",
        ):
            d.synchronize_blocking()
        leave.set()
    d.synchronize_blocking(timeout=HANG_GUARD)


@pytest.mark.skipif(not MEMBARRIER, reason="membarrier not in use")
async def test_offloaded_grace_period_error_reaches_the_waiter() -> None:
    d = aiorcu.Domain(name="worker-error")
    holder, leave = hold_section(d)
    try:
        testing.fail_membarrier(1_000_000)
        with anyio.fail_after(HANG_GUARD):
            with pytest.raises(aiorcu.AiorcuError, match="nothing was skipped"):
                await d.synchronize()
    finally:
        testing.fail_membarrier(0)
        leave.set()
        holder.join()
    assert d._worker.pending == 0
    with anyio.fail_after(HANG_GUARD):
        await d.synchronize()


# -- cancellation --------------------------------------------------------------


async def test_cancelled_synchronize_leaves_nothing_behind() -> None:
    d = aiorcu.Domain(name="cancel")
    threads_before = set(threading.enumerate())
    async with anyio.create_task_group() as tg:
        leave = await _task_holding_section(d, tg)
        with anyio.fail_after(HANG_GUARD):
            for _ in range(50):
                with anyio.move_on_after(0.01) as scope:
                    await d.synchronize()
                assert scope.cancelled_caught  # returned promptly, by cancellation
        assert d._worker.pending == 0  # every cancelled waiter withdrew
        assert _new_threads(threads_before) in ([], [d._worker.thread()])  # not 50
        leave.set()
    with anyio.fail_after(HANG_GUARD):
        await d.synchronize()
    assert d._worker.pending == 0


async def test_concurrently_cancelled_waiters_leave_nothing_behind() -> None:
    d = aiorcu.Domain(name="cancel-many")
    threads_before = set(threading.enumerate())
    finished = 0

    async def waiter() -> None:
        nonlocal finished
        await d.synchronize()
        finished += 1

    async with anyio.create_task_group() as outer:
        leave = await _task_holding_section(d, outer)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(waiter)
                await anyio.sleep(0.05)
                assert d._worker.pending == 50
                tg.cancel_scope.cancel()
        assert finished == 0
        assert d._worker.pending == 0
        assert _new_threads(threads_before) in ([], [d._worker.thread()])
        assert d.stats().readers_active == 1
        leave.set()
    with anyio.fail_after(HANG_GUARD):
        await d.synchronize()


async def test_worker_thread_exits_when_idle_and_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_worker, "IDLE_EXIT_SECONDS", 0.05)
    d = aiorcu.Domain(name="idle-worker")
    for _ in range(2):
        async with anyio.create_task_group() as tg:
            leave = await _task_holding_section(d, tg)
            tg.start_soon(d.synchronize)
            await anyio.sleep(0.05)
            worker = d._worker.thread()
            assert worker is not None and worker.is_alive()
            leave.set()
        await anyio.to_thread.run_sync(worker.join, HANG_GUARD)
        assert not worker.is_alive()  # an idle domain holds no thread
        assert d._worker.thread() is None
    assert d.stats().offloaded_waits == 2


# -- sections collected while open ---------------------------------------------------


def _released_and_reported(d: aiorcu.Domain, caplog: pytest.LogCaptureFixture) -> None:
    assert "while open: its task or generator was dropped while inside" in caplog.text
    assert "The section was released" in caplog.text
    assert f"domain {d.name!r}" in caplog.text
    assert d.stats().readers_active == 0


async def test_collected_context_releases_its_section(caplog: pytest.LogCaptureFixture) -> None:
    d = aiorcu.Domain(name="dropped-context")
    # A context, the only holder of the section, goes away without the
    # section being left.
    ctx = contextvars.copy_context()
    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        ctx.run(lambda: d.read().__aenter__())
        assert d.stats().readers_active == 1
        assert not d._inside()  # that context is not this task's
        del ctx
        gc.collect()
    _released_and_reported(d, caplog)
    assert "garbage-collected while open" in caplog.text
    with anyio.fail_after(HANG_GUARD):
        await d.synchronize()


async def _body(d: aiorcu.Domain) -> None:
    async with d.read():
        await asyncio.sleep(0)  # a bare yield: works when driven by hand
        await asyncio.sleep(0)


async def test_collected_coroutine_releases_its_section(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coroutine driven by hand into a section in its own context, then dropped.

    The collector closes it in another context: the section closes itself,
    is reported, and nothing is raised as unraisable.
    """
    d = aiorcu.Domain(name="dropped-coroutine")
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    ctx = contextvars.copy_context()
    coro = _body(d)
    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        ctx.run(coro.send, None)
        assert d.stats().readers_active == 1
        del coro, ctx
        gc.collect()
    _released_and_reported(d, caplog)
    assert "closed outside the task that entered it" in caplog.text
    assert unraisable == []
    with anyio.fail_after(HANG_GUARD):
        await d.synchronize()


@pytest.mark.filterwarnings("ignore:Async generator .* was garbage collected:ResourceWarning")
async def test_collected_async_generator_releases_its_section(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """Dropped mid-section: asyncio's and trio's finalizers close it in another task.

    The section closes itself there at once, instead of waiting for the
    iterating task to end.  trio closes it in a system task, outside the
    context that entered it, which is reported; asyncio closes it in a task
    that copied the iterating task's context, which is an ordinary close.
    """
    d = aiorcu.Domain(name="dropped-agen")

    async def agen() -> AsyncIterator[int]:
        async with d.read():
            yield 1
            yield 2

    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        g = agen()
        assert await g.__anext__() == 1
        assert d._inside()  # the generator runs in this task's context
        del g
        gc.collect()
        with anyio.fail_after(HANG_GUARD):
            while d.stats().readers_active:  # the loop finalizes dropped async generators
                await anyio.sleep(0.01)
        assert not d._inside()
        # The iterating task is still running: the grace period does not wait for it.
        with anyio.fail_after(HANG_GUARD):
            await d.synchronize()
    if anyio_backend == "trio":
        _released_and_reported(d, caplog)
    assert d.stats().readers_active == 0


async def test_dropped_asyncio_task_releases_its_section_quietly(
    anyio_backend: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("asyncio tasks")
    d = aiorcu.Domain(name="dropped-task")
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    loop = asyncio.get_running_loop()

    async def reader(never: asyncio.Future[None]) -> None:
        async with d.read():
            await never

    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        # Neither the task nor the future it awaits is referenced afterwards.
        loop.create_task(reader(loop.create_future()))  # noqa: RUF006 - dropped on purpose
        await asyncio.sleep(0.01)
        assert d.stats().readers_active == 1
        gc.collect()
    _released_and_reported(d, caplog)
    await asyncio.wait_for(d.synchronize(), HANG_GUARD)
    assert unraisable == []


# -- ownership -------------------------------------------------------------------


async def test_leaving_async_section_on_another_thread_raises() -> None:
    d = aiorcu.Domain(name="hop")
    section = d.read()
    await section.__aenter__()
    errors: list[BaseException] = []

    def leave_elsewhere() -> None:
        try:
            section.__aexit__(None, None, None)
        except aiorcu.RcuUsageError as exc:
            errors.append(exc)

    async with d.read():  # this task's own section: not touched by the foreign exit
        await anyio.to_thread.run_sync(leave_elsewhere)
        assert len(errors) == 1
        message = str(errors[0])
        assert "a `async with` read section of domain 'hop' entered on thread 'MainThread'" in (
            message
        )
        assert "it was released at once" in message and "leave a section on the thread" in message
        # Released at once, whatever this thread does next; this section still counts.
        assert d.stats().readers_active == 1
        assert d._inside()
    assert d.stats().readers_active == 0
    with anyio.fail_after(HANG_GUARD):
        await d.synchronize()


async def test_async_exit_without_open_section_raises() -> None:
    d = aiorcu.Domain(name="async-unbalanced")
    async with d.read():
        pass
    with pytest.raises(
        aiorcu.RcuUsageError,
        match=r"left a read section that was never entered; use `with domain\.read\(\):`",
    ):
        await d.read().__aexit__(None, None, None)
    assert d.stats().readers_active == 0


# -- sections and contexts -------------------------------------------------------------


@pytest.mark.parametrize("kind", DOMAIN_KINDS)
async def test_async_generator_finished_in_another_task_closes_only_its_own_section(
    kind: str,
) -> None:
    """Defect: the generator's exit closed the innermost section of the *finishing*
    task's context, so a grace period completed while that task was inside."""
    with domain_of_kind(kind, "agen-elsewhere") as d:
        await _generator_finished_elsewhere(d)


async def _generator_finished_elsewhere(d: aiorcu.Domain) -> None:

    async def agen() -> AsyncIterator[int]:
        async with d.read():
            yield 1

    g = agen()
    outcome: list[object] = []

    async def starter() -> None:
        assert await g.__anext__() == 1  # the generator's section, in this task

    async def finisher() -> None:
        async with d.read():  # the finishing task's own section
            await g.aclose()  # the generator's section closes here
            outcome.append(d._inside())
            outcome.append(d.stats().readers_active)
            writer = background_synchronize(d)
            outcome.append(writer.done.wait(0.2))  # must still wait for this section
        outcome.append(writer)

    async with anyio.create_task_group() as tg:
        tg.start_soon(starter)
    async with anyio.create_task_group() as tg:  # a sibling, not a child of starter
        tg.start_soon(finisher)
    assert outcome[:3] == [True, 1, False]
    writer = outcome[3]
    assert isinstance(writer, Background)
    writer.result()
    assert not d._inside() and d.stats().readers_active == 0


async def test_a_task_started_inside_a_section_is_inside_until_it_closes() -> None:
    d = aiorcu.Domain(name="inherit")
    seen: list[bool] = []
    outer_left, check_again = anyio.Event(), anyio.Event()

    async def child() -> None:
        seen.append(d._inside())  # the parent's section is open
        await outer_left.wait()
        seen.append(d._inside())  # and now it is not
        check_again.set()

    async with anyio.create_task_group() as tg:
        async with d.read():
            tg.start_soon(child)
            await anyio.sleep(0.01)
        outer_left.set()
        await check_again.wait()
    assert seen == [True, False]


@pytest.mark.parametrize("kind", DOMAIN_KINDS)
async def test_worker_thread_running_a_copy_of_the_context_is_not_inside(
    anyio_backend: str, kind: str
) -> None:
    """Defect: a worker thread running a copy of a task's context counted as inside
    that task's section, so RcuCell.get() succeeded there unprotected."""
    with domain_of_kind(kind, "copied-context") as d:
        await _copied_context(d, anyio_backend)


async def _copied_context(d: aiorcu.Domain, anyio_backend: str) -> None:
    cell = aiorcu.RcuCell("table", domain=d)
    async with d.read():
        assert cell.get() == "table"
        with pytest.raises(aiorcu.RcuUsageError, match="not inside that task's section"):
            await anyio.to_thread.run_sync(cell.get)
        assert not await anyio.to_thread.run_sync(d._inside)
        if anyio_backend == "asyncio":
            with pytest.raises(aiorcu.RcuUsageError):
                await asyncio.to_thread(cell.get)
            loop = asyncio.get_running_loop()
            ctx = contextvars.copy_context()
            with pytest.raises(aiorcu.RcuUsageError):
                await loop.run_in_executor(None, ctx.run, cell.get)
        # ... and a grace period from such a worker waits for the task, not for itself.
        writer = background_synchronize(d)
        assert not writer.done.wait(0.1)
    writer.result()


async def test_blocking_grace_period_on_a_loop_thread_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="loop-blocker")
    d.synchronize_blocking()  # nobody to wait for: no warning
    for _ in range(2):
        holder, leave = hold_section(d, "other-thread")
        threading.Timer(0.05, leave.set).start()
        with caplog.at_level(logging.WARNING, logger="aiorcu"):
            d.synchronize_blocking(timeout=HANG_GUARD)  # blocks this loop until it leaves
        holder.join()
    warnings = [r.getMessage() for r in caplog.records if "event loop" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "use `await domain.synchronize()`" in warnings[0]
