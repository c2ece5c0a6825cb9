"""Task read sections and `await synchronize()` under asyncio and trio."""

from __future__ import annotations

import contextvars
import gc
import logging
import threading

import anyio
import pytest

import aiorcu
from aiorcu import _testing

pytestmark = [pytest.mark.anyio, pytest.mark.fallback]


async def test_async_section_may_await_inside() -> None:
    d = aiorcu.Domain(name="await")
    async with d.read():
        assert d._inside()
        await anyio.sleep(0)
        assert d._inside()
    assert not d._inside()
    await d.synchronize()
    assert d.stats().readers_active == 0


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
    left = anyio.Event()
    entered = anyio.Event()
    order: list[str] = []

    async def reader() -> None:
        async with d.read():
            entered.set()
            await anyio.sleep(0.1)
            order.append("reader left")
        left.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        assert not d._inside()  # another task's section does not count for this one
        await d.synchronize()
        order.append("grace period done")
    assert order == ["reader left", "grace period done"]
    assert d.stats().offloaded_waits == 1


async def test_busted_synchronize_does_not_wait() -> None:
    """Negative control for the test above."""
    d = aiorcu.Domain(name="busted-async")
    _testing.set_busted(d)
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


async def test_synchronize_inside_own_section_raises() -> None:
    d = aiorcu.Domain(name="own")
    message = r"inside a read section .* held by this task"
    async with d.read():
        with pytest.raises(aiorcu.RcuUsageError, match=message):
            await d.synchronize()
    with d.read(), pytest.raises(aiorcu.RcuUsageError, match="would wait for itself"):
        await d.synchronize()


async def test_blocking_synchronize_on_loop_with_other_task_inside_raises() -> None:
    d = aiorcu.Domain(name="loop-block")
    entered, leave = anyio.Event(), anyio.Event()

    async def reader() -> None:
        async with d.read():
            entered.set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        with pytest.raises(aiorcu.RcuUsageError, match="inside a read section on this thread"):
            d.synchronize_blocking()
        leave.set()


async def test_task_created_inside_section_is_not_inside_after_it_closed() -> None:
    d = aiorcu.Domain(name="child")
    closed = anyio.Event()
    seen: list[bool] = []

    async def child() -> None:
        seen.append(d._inside())
        await closed.wait()
        seen.append(d._inside())

    async with anyio.create_task_group() as tg:
        async with d.read():
            tg.start_soon(child)
            await anyio.sleep(0.01)
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

    async def b() -> None:
        await a_in.wait()
        async with d.read():
            b_in.set()
            await a_out.wait()
            assert d._inside()
        steps.append("b out")

    async with anyio.create_task_group() as tg:
        tg.start_soon(a)
        tg.start_soon(b)
    assert steps == ["a out", "b out"]
    assert d.stats().readers_active == 0
    await d.synchronize()


async def test_concurrent_awaits_share_grace_periods() -> None:
    d = aiorcu.Domain(name="share")
    entered, leave = anyio.Event(), anyio.Event()

    async def reader() -> None:
        async with d.read():
            entered.set()
            await leave.wait()

    done = 0

    async def waiter() -> None:
        nonlocal done
        await d.synchronize()
        done += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        before = d.stats().grace_periods
        for _ in range(1000):
            tg.start_soon(waiter)
        await anyio.sleep(0.05)
        leave.set()
    assert done == 1000
    assert d.stats().grace_periods - before <= 5


async def test_cancelled_synchronize_leaves_nothing_behind() -> None:
    d = aiorcu.Domain(name="cancel")
    entered, leave = anyio.Event(), anyio.Event()

    async def reader() -> None:
        async with d.read():
            entered.set()
            await leave.wait()

    threads_before = threading.active_count()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        for _ in range(50):
            with anyio.move_on_after(0.01) as scope:
                await d.synchronize()
            assert scope.cancelled_caught  # returned promptly, by cancellation
        assert d._worker.pending == 0  # every cancelled waiter withdrew
        assert threading.active_count() <= threads_before + 1  # one worker, not 50
        leave.set()
    await d.synchronize()


async def test_collected_open_section_is_reported_and_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="dropped")
    # A task dropped mid-section: its context, the only holder of the
    # section's record, goes away without the section being left.
    ctx = contextvars.copy_context()
    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        ctx.run(lambda: d.read().__aenter__())
        assert d.stats().readers_active == 1
        assert not d._inside()  # that context is not this task's
        del ctx
        gc.collect()
    assert "garbage-collected while open" in caplog.text
    assert d.stats().readers_active == 0
    with anyio.fail_after(5):
        await d.synchronize()


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

    await anyio.to_thread.run_sync(leave_elsewhere)
    assert errors and "sections are per thread" in str(errors[0])
    # The owner releases it at its next section.
    async with d.read():
        pass
    assert d.stats().readers_active == 0


async def test_stall_warning_names_the_task(caplog: pytest.LogCaptureFixture) -> None:
    d = aiorcu.Domain(name="task-stall")
    entered = anyio.Event()

    async def slow_reader() -> None:
        async with d.read():
            entered.set()
            await anyio.sleep(0.3)

    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_reader, name="slow-reader-task")
            await entered.wait()
            await d.synchronize()
    text = caplog.text
    assert "has waited" in text and "slow-reader-task" in text
    assert d.stats().stall_warnings >= 1


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
