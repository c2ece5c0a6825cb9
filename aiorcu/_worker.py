"""The domain's grace-period worker: one thread that waits for async callers.

``await domain.synchronize()`` never blocks its event loop.  When a reader
must be waited for, the caller registers a waiter (its target sequence number
and a thread-safe way to wake it) and awaits an event; this thread runs grace
periods until the highest target is complete, then wakes every waiter whose
target is met.  One grace period thus serves every waiter that registered
before it began: a thousand concurrent awaits cost a handful.

A cancelled waiter just withdraws its entry: nothing is left behind and the
thread goes on for the others.  The thread starts lazily, is a daemon, and
exits after a few idle seconds, so an idle domain holds no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable
from typing import final

import anyio

from ._errors import RcuUsageError

IDLE_EXIT_SECONDS = 5.0


@final
class Waiter:
    __slots__ = ("error", "notify", "target")

    def __init__(self, target: int, notify: Callable[[], None]) -> None:
        self.target = target
        self.notify = notify
        self.error: BaseException | None = None


def loop_on_this_thread() -> str | None:
    """``"asyncio"`` or ``"trio"`` when this thread runs an event loop, else None."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
            return "trio"
        except RuntimeError:
            pass
    return "asyncio" if asyncio._get_running_loop() is not None else None


def current_library() -> str:
    """``"trio"`` or ``"asyncio"``: the event loop running the calling task."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
            return "trio"
        except RuntimeError:
            pass
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RcuUsageError(
            "aiorcu's async methods need a running asyncio or trio event loop"
        ) from None
    return "asyncio"


def threadsafe_setter(event: anyio.Event) -> Callable[[], None]:
    """A function any thread may call to set ``event`` on the current loop."""
    if current_library() == "trio":
        trio = sys.modules["trio"]
        token = trio.lowlevel.current_trio_token()

        def notify_trio() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        return notify_trio
    loop = asyncio.get_running_loop()

    def notify_asyncio() -> None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)

    return notify_asyncio


@final
class GraceWorker:
    """Runs grace periods on behalf of async waiters of one domain."""

    def __init__(
        self,
        name: str,
        run_grace_period: Callable[[int], BaseException | None],
        completed: Callable[[], int],
    ) -> None:
        self._name = name
        self._run_grace_period = run_grace_period
        self._completed = completed
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._waiters: list[Waiter] = []
        self._thread: threading.Thread | None = None
        self.offloaded = 0

    def after_fork(self) -> None:
        """In a fork child the thread is gone and the waiters belong to the parent."""
        offloaded = self.offloaded
        self._reset()
        self.offloaded = offloaded

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._waiters)

    def thread(self) -> threading.Thread | None:
        return self._thread

    async def wait(self, target: int) -> None:
        """Waits until grace period ``target`` completed; cancellable at once."""
        event = anyio.Event()
        waiter = Waiter(target, threadsafe_setter(event))
        self.submit(waiter)
        try:
            await event.wait()
        finally:
            if not event.is_set():
                self.withdraw(waiter)
        if waiter.error is not None:
            raise waiter.error

    def submit(self, waiter: Waiter) -> None:
        with self._cond:
            self.offloaded += 1
            self._waiters.append(waiter)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name=f"aiorcu-gp-{self._name}", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()

    def withdraw(self, waiter: Waiter) -> None:
        with self._cond, contextlib.suppress(ValueError):  # ValueError: already served
            self._waiters.remove(waiter)

    def _main(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                if not self._waiters:
                    self._cond.wait(IDLE_EXIT_SECONDS)
                if self._thread is not me:
                    return  # replaced after fork
                if not self._waiters:
                    self._thread = None
                    return
                target = max(w.target for w in self._waiters)
            error = self._run_grace_period(target)
            done = self._completed()
            with self._cond:
                waiters = self._waiters
                if error is None:
                    ready = [w for w in waiters if w.target <= done]
                    self._waiters = [w for w in waiters if w.target > done]
                else:
                    ready, self._waiters = waiters, []
            for w in ready:
                w.error = error
                w.notify()
