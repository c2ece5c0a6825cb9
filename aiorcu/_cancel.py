"""Waits that cancellation must not cut short, and a commit lock that it may.

Only one kind of wait in aiorcu holds cancellation back: the grace-period
wait that follows an applied change (a bitmap commit that revoked pages).
Its caller must not go on while a reader may still act on the old view, so
a cancellation that arrives during the wait is held and delivered when the
wait ends.  Every event loop's own cancellation is covered: anyio's and
trio's cancel scopes through a shielded scope, and asyncio's
``Task.cancel()`` (which ``wait_for``, ``asyncio.timeout`` and ``TaskGroup``
use, and which a shielded anyio scope does not stop) by catching its
``CancelledError``, waiting on, and re-raising that same exception
afterwards.  ``uncancel()`` is never called: the task's cancellation count
stays as the canceller left it, so ``asyncio.timeout`` still turns the
re-raised error into ``TimeoutError``.

Waiting for the commit lock is the opposite case: nothing is applied yet,
so a cancelled waiter withdraws at once and the commit never happens.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable
from typing import final

import anyio
import anyio.lowlevel

from ._worker import threadsafe_setter


async def wait_holding_cancellation(wait: Callable[[], Awaitable[None]]) -> None:
    """Awaits ``wait()`` to its end, then delivers any cancellation that came meanwhile.

    ``wait`` is called again after each asyncio cancellation it absorbed,
    so it must wait for the same thing every time (a grace-period token).
    """
    held: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while True:
            try:
                await wait()
                break
            except asyncio.CancelledError as exc:
                # asyncio's own cancellation, which the shield does not stop:
                # keep the first one to re-raise unchanged, absorb the rest.
                if held is None:
                    held = exc
    if held is not None:
        raise held
    await anyio.lowlevel.checkpoint_if_cancelled()


@final
class _Waiter:
    __slots__ = ("granted", "notify")

    def __init__(self, notify: Callable[[], None]) -> None:
        self.notify = notify
        self.granted = False


@final
class CommitLock:
    """A FIFO lock for threads and for tasks of any event loop, handed over on release.

    Held only while a commit applies its ops (no await inside), so a
    blocking waiter waits for an apply, never for a grace period.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: collections.deque[_Waiter] = collections.deque()

    def acquire_blocking(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            event = threading.Event()
            self._waiters.append(_Waiter(event.set))
        event.wait()

    def try_acquire(self) -> bool:
        """Takes the lock if nobody holds it or waits for it."""
        with self._mutex:
            if self._held:
                return False
            self._held = True
            return True

    async def acquire(self) -> None:
        """Takes the lock; a cancelled call returns promptly without it."""
        with self._mutex:
            if not self._held:
                self._held = True
                return
            event = anyio.Event()
            waiter = _Waiter(threadsafe_setter(event))
            self._waiters.append(waiter)
        try:
            await event.wait()
        except BaseException:
            with self._mutex:
                granted = waiter.granted
                if not granted:
                    self._waiters.remove(waiter)
            if granted:  # handed over as the cancellation arrived: pass it on
                self.release()
            raise

    def release(self) -> None:
        with self._mutex:
            if not self._waiters:
                self._held = False
                return
            waiter = self._waiters.popleft()
            waiter.granted = True
        waiter.notify()

    @property
    def locked(self) -> bool:
        return self._held
