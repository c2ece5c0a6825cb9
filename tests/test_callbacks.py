"""Deferred reclamation: call_after_grace_period and barriers."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable

import anyio
import pytest

import aiorcu
from aiorcu import _callbacks, testing

from .conftest import hold_section


def test_callbacks_run_after_readers_leave_in_fifo_order() -> None:
    d = aiorcu.Domain(name="cb")
    t, leave = hold_section(d, "cb-reader")
    ran: list[int] = []
    for i in range(100):
        d.call_after_grace_period(ran.append, i)
    time.sleep(0.2)
    assert ran == []  # the reader that began before is still inside
    assert d.stats().callbacks_pending == 100
    leave.set()
    t.join()
    d.barrier_blocking()
    assert ran == list(range(100))
    assert d.stats().callbacks_pending == 0


def test_busted_callbacks_run_under_a_reader() -> None:
    """Negative control for the test above."""
    d = aiorcu.Domain(name="cb-busted")
    testing.set_busted(d)
    t, leave = hold_section(d, "cb-reader")
    ran: list[int] = []
    d.call_after_grace_period(ran.append, 1)
    d.barrier_blocking()
    assert ran == [1]  # ran while the reader was still inside
    leave.set()
    t.join()


def test_many_callbacks_share_grace_periods() -> None:
    d = aiorcu.Domain(name="share-cb")
    ran = [0]

    def bump() -> None:
        ran[0] += 1

    before = d.stats().grace_periods
    for _ in range(10_000):
        d.call_after_grace_period(bump)
    d.barrier_blocking()
    assert ran[0] == 10_000
    assert d.stats().grace_periods - before < 100


def test_callback_exception_is_logged_and_worker_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    d = aiorcu.Domain(name="cb-raise")
    ran: list[str] = []

    def boom() -> None:
        raise ValueError("callback failure")

    with caplog.at_level(logging.ERROR, logger="aiorcu"):
        d.call_after_grace_period(boom)
        d.call_after_grace_period(ran.append, "after")
        d.barrier_blocking()
    assert ran == ["after"]
    assert "raised; the worker goes on" in caplog.text
    assert "callback failure" in caplog.text  # with its traceback


def test_misuse_from_callbacks_and_sections_raises() -> None:
    d = aiorcu.Domain(name="cb-misuse")
    errors: list[str] = []

    def nested() -> None:
        token = d.snapshot()  # not complete: nobody runs a grace period meanwhile
        calls = (
            d.barrier_blocking,
            d.synchronize_blocking,
            lambda: d.wait_blocking(token),
            lambda: asyncio.run(d.synchronize()),
            lambda: asyncio.run(d.barrier()),
            lambda: asyncio.run(d.wait(token)),
            lambda: aiorcu.RcuCell(1, domain=d).replace_blocking(2),
        )
        for call in calls:
            try:
                call()
            except aiorcu.RcuUsageError as exc:
                errors.append(str(exc))
        d.call_after_grace_period(errors.append, "queued from a callback")

    d.call_after_grace_period(nested)
    d.barrier_blocking()
    d.barrier_blocking()  # the callback queued by the callback ran too
    assert len(errors) == 8, errors
    assert errors[-1] == "queued from a callback"
    for e in errors[:-1]:
        assert "called from an RCU callback of domain 'cb-misuse'" in e
        assert "Queue more work with call_after_grace_period() instead" in e
    with (
        d.read(),
        pytest.raises(
            aiorcu.RcuUsageError,
            match=r"barrier_blocking\(\) called inside a read section of domain 'cb-misuse'; "
            "the callbacks wait for a grace period that waits for this section",
        ),
    ):
        d.barrier_blocking()


@pytest.mark.anyio
async def test_async_barrier_and_its_cancellation() -> None:
    d = aiorcu.Domain(name="cb-async")
    ran: list[int] = []
    d.call_after_grace_period(ran.append, 1)
    await d.barrier()
    assert ran == [1]
    t, leave = hold_section(d, "cb-reader")
    d.call_after_grace_period(ran.append, 2)
    with anyio.move_on_after(0.05) as scope:
        await d.barrier()
    assert scope.cancelled_caught  # returned promptly; the callback still runs later
    leave.set()
    await anyio.to_thread.run_sync(t.join)
    await d.barrier()
    assert ran == [1, 2]
    async with d.read():
        with pytest.raises(
            aiorcu.RcuUsageError,
            match=r"await barrier\(\) called inside a read section of domain 'cb-async'",
        ):
            await d.barrier()


@pytest.mark.anyio
async def test_async_barrier_waits_out_other_tasks_sections() -> None:
    """Another task's section on this loop delays the barrier; it is no misuse."""
    d = aiorcu.Domain(name="cb-other-task")
    entered, leave = anyio.Event(), anyio.Event()
    ran: list[int] = []

    async def reader() -> None:
        async with d.read():
            entered.set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        d.call_after_grace_period(ran.append, 1)
        with pytest.raises(aiorcu.RcuUsageError, match="barrier_blocking"):
            d.barrier_blocking()  # would block the loop that must close the section
        with anyio.move_on_after(0.05):
            await d.barrier()
        assert ran == []
        leave.set()
        await d.barrier()
    assert ran == [1]


def test_fork_child_gets_a_fresh_worker_and_queue() -> None:
    d = aiorcu.Domain(name="cb-fork")
    d.call_after_grace_period(lambda: None)
    d.barrier_blocking()
    t, leave = hold_section(d, "cb-reader")
    ran: list[str] = []
    d.call_after_grace_period(ran.append, "parent")  # queued, blocked by the reader
    pid = os.fork()
    if pid == 0:
        try:
            # The parent's callback belongs to the parent; the reader thread
            # does not exist here, so the child's grace periods do not wait.
            code = 3 if d.stats().callbacks_pending != 0 else 0
            d.call_after_grace_period(ran.append, "child")
            d.barrier_blocking()
            os._exit(code or (0 if ran == ["child"] else 4))
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ran == []  # the parent's reader still holds it back
    leave.set()
    t.join()
    d.barrier_blocking()
    assert ran == ["parent"]


def test_exit_runs_what_it_can_and_reports_the_rest() -> None:
    script = r"""
import threading, time, aiorcu
d = aiorcu.Domain(name="exiting")
d.call_after_grace_period(print, "ran-before-exit")
stuck = aiorcu.Domain(name="stuck")
entered = threading.Event()
def reader():
    with stuck.read():
        entered.set()
        time.sleep(3600)
threading.Thread(target=reader, daemon=True).start()
entered.wait()
stuck.call_after_grace_period(print, "must-not-run")
"""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert time.monotonic() - start < 30  # exit never hangs
    assert "ran-before-exit" in out.stdout
    assert "must-not-run" not in out.stdout
    assert "1 callback(s) of domain 'stuck' did not run before exit" in out.stderr
    assert "<built-in function print>" in out.stderr  # names what could not run
    assert "'exiting'" not in out.stderr


def test_drain_runs_on_the_calling_thread_when_no_worker_thread_lives() -> None:
    """The exit path when the worker thread is gone (or cannot start at exit)."""
    ran: list[tuple[int, bool]] = []
    budgets: list[int] = []

    def grace_period(timeout_ns: int) -> bool:
        budgets.append(timeout_ns)
        return True

    appends: list[Callable[[_callbacks.Entry], None]] = []

    def bind(append: Callable[[_callbacks.Entry], None], wake: Callable[[], None]) -> None:
        appends.append(append)

    worker = _callbacks.CallbackWorker("drain", grace_period, bind, lambda idle: None)
    for i in range(3):
        appends[-1]((lambda i: ran.append((i, _callbacks.in_callback())), (i,)))
    assert worker.drain(time.monotonic() + 5) == []
    assert ran == [(0, True), (1, True), (2, True)]
    assert len(budgets) == 1 and 0 < budgets[0] <= 5e9  # one grace period, bounded
    assert not _callbacks.in_callback()

    stuck = _callbacks.CallbackWorker("drain-stuck", lambda timeout_ns: False, bind, lambda i: None)
    never: list[int] = []
    appends[-1]((never.append, (99,)))
    left = stuck.drain(time.monotonic() + 5)
    assert left == [(never.append, (99,))] and stuck.pending == 1
    assert never == []
