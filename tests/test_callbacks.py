"""Deferred reclamation: call_after_grace_period and barriers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import anyio
import pytest

import aiorcu
from aiorcu import _testing


def _hold(domain: aiorcu.Domain) -> tuple[threading.Thread, threading.Event]:
    entered, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with domain.read():
            entered.set()
            leave.wait(10)

    t = threading.Thread(target=reader, name="cb-reader")
    t.start()
    assert entered.wait(5)
    return t, leave


def test_callbacks_run_after_readers_leave_in_fifo_order() -> None:
    d = aiorcu.Domain(name="cb")
    t, leave = _hold(d)
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
    _testing.set_busted(d)
    t, leave = _hold(d)
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
        for call in (d.barrier_blocking, d.synchronize_blocking):
            try:
                call()
            except aiorcu.RcuUsageError as exc:
                errors.append(str(exc))

    d.call_after_grace_period(nested)
    d.barrier_blocking()
    assert len(errors) == 2
    assert all("called from an RCU callback" in e for e in errors)
    with d.read(), pytest.raises(aiorcu.RcuUsageError, match="inside a read section"):
        d.barrier_blocking()


@pytest.mark.anyio
async def test_async_barrier_and_its_cancellation() -> None:
    d = aiorcu.Domain(name="cb-async")
    ran: list[int] = []
    d.call_after_grace_period(ran.append, 1)
    await d.barrier()
    assert ran == [1]
    t, leave = _hold(d)
    d.call_after_grace_period(ran.append, 2)
    with anyio.move_on_after(0.05) as scope:
        await d.barrier()
    assert scope.cancelled_caught  # returned promptly; the callback still runs later
    leave.set()
    await anyio.to_thread.run_sync(t.join)
    await d.barrier()
    assert ran == [1, 2]
    async with d.read():
        with pytest.raises(aiorcu.RcuUsageError, match="inside a read section"):
            await d.barrier()


def test_callbacks_survive_fork() -> None:
    d = aiorcu.Domain(name="cb-fork")
    d.call_after_grace_period(lambda: None)
    d.barrier_blocking()
    t, leave = _hold(d)
    ran: list[int] = []
    d.call_after_grace_period(ran.append, 1)  # queued, blocked by the reader
    pid = os.fork()
    if pid == 0:
        try:
            d.barrier_blocking()  # the child has a fresh worker; the reader is a phantom
            os._exit(0 if ran == [1] else 3)
        except BaseException:
            os._exit(2)
    leave.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    d.barrier_blocking()
    assert ran == [1]


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
    assert "did not run before exit" in out.stderr and "'stuck'" in out.stderr
