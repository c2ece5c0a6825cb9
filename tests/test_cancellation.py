"""Every event loop's own cancellation against a revoking commit.

A commit that revoked a page must not return, normally or by cancellation,
while a reader that saw the page accessible is still inside.  anyio's
shielded scopes stop anyio's and trio's cancellation, but not asyncio's own
``Task.cancel()``, which ``asyncio.wait_for``, ``asyncio.timeout`` and
``TaskGroup`` use: these tests drive plain asyncio, without anyio's runner.
While a commit still waits for the bitmap lock, cancellation withdraws it
at once and nothing is ever applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import aiorcu

from .conftest import HANG_GUARD

pytestmark = pytest.mark.fallback

PAUSE = 0.2  # long enough to see that a waiter is still waiting


def _revoke(page: int) -> aiorcu.BitmapTransaction:
    return aiorcu.BitmapTransaction(ops=[aiorcu.Revoke(start=page, count=1)])


class Reader:
    """A thread inside a read section that saw page 7 accessible and still uses it."""

    def __init__(self, bitmap: aiorcu.Bitmap) -> None:
        self.bitmap = bitmap
        self.entered, self.leave = threading.Event(), threading.Event()
        self.left = threading.Event()
        self.saw: bool | None = None
        self.thread = threading.Thread(target=self._main, name="page-user")
        self.thread.start()
        assert self.entered.wait(5)

    def _main(self) -> None:
        with self.bitmap.domain.read():
            self.saw = self.bitmap.is_set(7)
            self.entered.set()
            self.leave.wait(HANG_GUARD)
        self.left.set()

    def release(self) -> None:
        self.leave.set()
        self.thread.join(HANG_GUARD)


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), HANG_GUARD))


def _setup() -> tuple[aiorcu.Bitmap, Reader]:
    bitmap = aiorcu.Bitmap(64, domain=aiorcu.Domain(name="cancel-commit"), initial=True)
    reader = Reader(bitmap)
    assert reader.saw is True
    return bitmap, reader


def _applied(bitmap: aiorcu.Bitmap) -> bool:
    with bitmap.domain.read():
        return not bitmap.is_set(7)


def test_task_cancel_is_held_until_the_revocation_is_flushed() -> None:
    bitmap, reader = _setup()
    outcome: list[object] = []

    async def committer() -> None:
        try:
            await bitmap.commit(_revoke(7))
        except asyncio.CancelledError as exc:
            # What the commit raised, seen before asyncio wraps it (3.10 makes
            # a new error for whoever awaits the task).
            outcome.append(exc.args)
            outcome.append(reader.left.is_set())
            raise
        outcome.append("returned normally")

    async def main() -> None:
        task = asyncio.create_task(committer())
        await asyncio.sleep(0.05)
        assert _applied(bitmap)  # applied, now waiting for the reader
        task.cancel("first")
        await asyncio.sleep(0.02)
        task.cancel("second")  # a later cancel is absorbed
        await asyncio.sleep(PAUSE)
        # Still waiting: the reader that saw the page is inside.
        outcome.append(task.done())
        outcome.append(reader.left.is_set())
        threading.Timer(0.05, reader.leave.set).start()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        outcome.append(task.cancelled())
        if sys.version_info >= (3, 11):
            outcome.append(task.cancelling())  # uncancel() was never called

    try:
        _run(main)
    finally:
        reader.release()
    assert outcome[:2] == [False, False]
    assert outcome[2] == ("first",)  # the held CancelledError, unchanged
    assert outcome[3] is True  # delivered only after the reader left
    assert outcome[4] is True  # and the task ended cancelled, not normally
    if sys.version_info >= (3, 11):
        assert outcome[5] == 2


def test_wait_for_timeout_is_held_until_the_revocation_is_flushed() -> None:
    bitmap, reader = _setup()
    outcome: list[object] = []

    async def main() -> None:
        threading.Timer(PAUSE, reader.leave.set).start()
        try:
            await asyncio.wait_for(bitmap.commit(_revoke(7)), 0.05)
        except asyncio.TimeoutError:
            outcome.append(reader.left.is_set())
        else:
            outcome.append("returned normally")

    try:
        _run(main)
    finally:
        reader.release()
    assert outcome == [True]
    assert _applied(bitmap)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_asyncio_timeout_is_held_until_the_revocation_is_flushed() -> None:
    bitmap, reader = _setup()
    outcome: list[object] = []

    async def main() -> None:
        threading.Timer(PAUSE, reader.leave.set).start()
        try:
            async with asyncio.timeout(0.05):  # type: ignore[attr-defined]
                await bitmap.commit(_revoke(7))
        except TimeoutError:  # the held CancelledError became the timeout's error
            outcome.append(reader.left.is_set())
        else:
            outcome.append("returned normally")

    try:
        _run(main)
    finally:
        reader.release()
    assert outcome == [True]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is new in 3.11")
def test_task_group_cancellation_is_held_until_the_revocation_is_flushed() -> None:
    bitmap, reader = _setup()
    outcome: list[object] = []

    async def fail_soon() -> None:
        await asyncio.sleep(0.05)
        raise KeyError("sibling failed")

    async def main() -> None:
        threading.Timer(PAUSE, reader.leave.set).start()
        try:
            async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]
                tg.create_task(bitmap.commit(_revoke(7)))
                tg.create_task(fail_soon())
        except BaseException as exc:  # ExceptionGroup (3.11+)
            outcome.append(type(exc).__name__)
            outcome.append(reader.left.is_set())

    try:
        _run(main)
    finally:
        reader.release()
    assert outcome == ["ExceptionGroup", True]


def test_transaction_block_holds_cancellation_back_too() -> None:
    bitmap, reader = _setup()
    outcome: list[object] = []

    async def commit_in_block() -> None:
        async with bitmap.transaction() as tx:
            tx.revoke(7, 1)

    async def main() -> None:
        task = asyncio.create_task(commit_in_block())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(PAUSE)
        outcome.append(task.done())
        reader.leave.set()
        try:
            await task
        except asyncio.CancelledError:
            outcome.append(reader.left.is_set())

    try:
        _run(main)
    finally:
        reader.release()
    assert outcome == [False, True]


def test_cancel_while_waiting_for_the_lock_withdraws_the_commit() -> None:
    """Defect: the commit went to a worker thread, which applied it after the caller
    had been told "cancelled", with no grace period."""
    bitmap = aiorcu.Bitmap(64, domain=aiorcu.Domain(name="withdraw"), initial=True)
    bitmap._lock.acquire_blocking()  # another commit holds the lock
    outcome: list[object] = []

    async def main() -> None:
        task = asyncio.create_task(bitmap.commit(_revoke(7)))
        await asyncio.sleep(0.05)
        task.cancel()
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await task
        except asyncio.CancelledError:
            outcome.append(loop.time() - start < HANG_GUARD / 2)  # prompt
        bitmap._lock.release()
        await asyncio.sleep(PAUSE)  # nothing applies it later either
        outcome.append(_applied(bitmap))
        # The lock is free again: a new commit goes through.
        report = await bitmap.commit(_revoke(8))
        outcome.append(report.pages_revoked)

    _run(main)
    assert outcome == [True, False, 1]


def test_cancel_racing_the_lock_hand_over_never_loses_the_lock() -> None:
    """Cancelled as the lock is handed to it: the waiter passes the lock on."""
    bitmap = aiorcu.Bitmap(64, domain=aiorcu.Domain(name="hand-over"), initial=True)

    async def main() -> None:
        for delay in (0.0, 0.0001, 0.001) * 20:
            bitmap._lock.acquire_blocking()
            task = asyncio.create_task(bitmap.commit(_revoke(9)))
            await asyncio.sleep(0)
            threading.Timer(delay, bitmap._lock.release).start()
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.002)
            assert not bitmap._lock.locked, "the lock was lost"
            # Re-grant page 9 for the next round.
            await bitmap.commit(aiorcu.BitmapTransaction(ops=[aiorcu.Grant(start=9, count=1)]))

    _run(main)
