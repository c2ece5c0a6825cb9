"""RcuCell: a published reference that readers load and writers replace."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, final

from . import _hotpath
from ._domain import Domain, global_domain
from ._worker import current_library

T = TypeVar("T")

logger = logging.getLogger("aiorcu")

Retire = Callable[[T], object]
"""Called with a retired object once no reader can hold it."""


@final
class RcuCell(_hotpath.CellBase[T], Generic[T]):
    """Holds one published object; readers use it, writers swap it.

    The RCU version of an attribute that many readers consult and a writer
    now and then replaces: a configuration, a routing table, a connection
    pool.  Readers call `get()` inside a read section of the cell's domain
    and may use the object until the section ends, without a lock.  Writers
    `publish()` a new object (readers that enter afterwards see it at once)
    and retire the old one only after a grace period, when no reader can
    still hold it: `replace_blocking()`, ``await`` `replace()`, or
    `update()`, which defers the retirement to the domain's callback thread
    and never waits.

    Treat published objects as immutable: a reader may hold one for a whole
    section, so change a copy and publish that.

    `get()` returns the published object, only inside a read section of
    the cell's domain (else `RcuUsageError`); it is C: one check that the
    caller is inside a section and a load.  Writers are serialized by a
    lock of their own, so concurrent `update()` calls never lose each
    other's changes; readers never touch it.

    Args:
        initial: The first published object.
        domain: The domain whose read sections protect it; the global one
            by default.
    """

    __slots__ = ("__weakref__", "_lock")

    def __init__(self, initial: T, domain: Domain | None = None) -> None:
        super().__init__(domain if domain is not None else global_domain(), initial)
        self._lock = threading.Lock()

    @property
    def domain(self) -> Domain:
        """The domain whose read sections protect the cell."""
        return self._domain  # type: ignore[return-value]  # always a Domain

    def publish(self, new: T) -> T:
        """Publishes ``new`` without waiting and returns the old object.

        Readers that enter a section afterwards see ``new``; readers already
        inside may still hold the old object, so retire it only after a
        grace period (`synchronize_blocking()` on the domain, or use
        `replace_blocking()`/`replace()`/`update()`, which do that).

        Args:
            new: The object to publish.

        Returns:
            The object that was published before.
        """
        with self._lock:
            old: T = self._swap(new)
        return old

    def replace_blocking(self, new: T, retire: Retire[T] | None = None) -> T:
        """Publishes ``new``, blocks for a grace period, then calls ``retire(old)``.

        For thread code that may block.  The writer lock is held only to
        publish, not during the wait.

        Args:
            new: The object to publish.
            retire: Called with the old object once no reader can hold it
                (close it, free it, return it to a pool).  A coroutine
                function is refused: use ``await`` `replace()`.

        Returns:
            The old object, which no reader holds any more.

        Raises:
            RcuUsageError: Called inside a read section on this thread, or
                from a callback: the wait could never finish.  Nothing was
                published.
            TypeError: ``retire`` is a coroutine function.  Nothing was
                published.
        """
        _refuse_async_retire(retire, "replace_blocking()")
        self.domain.check_blocking_wait("RcuCell.replace_blocking()")
        old = self.publish(new)
        self.domain.synchronize_blocking()
        if retire is not None:
            retire(old)
        return old

    async def replace(self, new: T, retire: Retire[T] | None = None) -> T:
        """Publishes ``new``, awaits a grace period, then calls ``retire(old)``.

        The event loop keeps running while the grace period completes, as for
        ``await domain.synchronize()``; ``retire`` runs in this task, and is
        awaited if it is a coroutine function.

        Cancellation: ``new`` is published before the first checkpoint, and
        the wait cancels promptly.  If the call is cancelled while waiting,
        ``new`` stays published and ``retire(old)`` still runs after the
        grace period: a plain function on the domain's callback thread
        (``call_after_grace_period``), a coroutine function as a new task on
        this event loop (trio: a system task), reported on the ``aiorcu``
        logger if the loop is gone by then.  The cancellation then
        propagates.

        Args:
            new: The object to publish.
            retire: Called (or awaited) with the old object once no reader
                can hold it.

        Returns:
            The old object, which no reader holds any more.

        Raises:
            RcuUsageError: The calling task (or this thread's ``with`` code)
                is inside a read section of the domain, or the caller is a
                callback.  Nothing was published.
        """
        domain = self.domain
        domain.check_async_wait("await RcuCell.replace()")
        old = self.publish(new)
        try:
            await domain.synchronize()
        except BaseException:
            if retire is not None:
                if inspect.iscoroutinefunction(retire):
                    domain.call_after_grace_period(_loop_spawner(retire, domain.name), old)
                else:
                    domain.call_after_grace_period(retire, old)
            raise
        if retire is not None:
            result = retire(old)
            if inspect.isawaitable(result):
                await result
        return old

    def update(self, fn: Callable[[T], T], retire: Retire[T] | None = None) -> T:
        """Publishes ``fn(old)``, computed under the cell's writer lock; never waits.

        For read-modify-write from any thread or task: concurrent updates
        apply one after another, each to the result of the last.  ``fn`` must
        return a new object (readers may hold the old one) and should be
        quick: other writers of this cell wait for it, readers do not.
        ``retire(old)`` is deferred with ``call_after_grace_period``.

        Args:
            fn: Computes the new object from the current one.  If it raises,
                nothing changes and the exception propagates.
            retire: Called with the old object on the domain's callback
                thread once no reader can hold it.  A coroutine function is
                refused: the callback thread has no event loop.

        Returns:
            The new object.

        Raises:
            TypeError: ``retire`` is a coroutine function.  Nothing was
                published.
        """
        _refuse_async_retire(retire, "update()")
        with self._lock:
            new = fn(self._current)
            old: T = self._swap(new)
        if retire is not None:
            self.domain.call_after_grace_period(retire, old)
        return new

    def __repr__(self) -> str:
        return f"<aiorcu.RcuCell domain={self.domain.name!r}>"


def _refuse_async_retire(retire: object, what: str) -> None:
    if retire is not None and inspect.iscoroutinefunction(retire):
        raise TypeError(
            f"RcuCell.{what} cannot await retire={retire!r}, a coroutine function: "
            "use `await cell.replace(new, retire=...)`, which awaits it, or pass a plain "
            "function"
        )


def _loop_spawner(retire: Callable[[T], Awaitable[object]], domain: str) -> Callable[[T], None]:
    """A plain callback that runs ``await retire(old)`` on the calling task's loop."""
    if current_library() == "trio":
        trio = sys.modules["trio"]
        token = trio.lowlevel.current_trio_token()

        def spawn_trio(old: T) -> None:
            async def run() -> None:
                await retire(old)

            try:
                token.run_sync_soon(trio.lowlevel.spawn_system_task, run)
            except trio.RunFinishedError:
                _report_lost(retire, domain)

        return spawn_trio
    loop = asyncio.get_running_loop()

    def spawn_asyncio(old: T) -> None:
        async def run() -> None:
            await retire(old)

        coro = run()
        try:
            loop.call_soon_threadsafe(loop.create_task, coro)
        except RuntimeError:  # the loop is closed
            coro.close()
            _report_lost(retire, domain)

    return spawn_asyncio


def _report_lost(retire: object, domain: str) -> None:
    logger.warning(
        "retire %r of a cancelled `await RcuCell.replace()` in domain %r did not run: the "
        "event loop it was to run on had finished by the end of the grace period",
        retire,
        domain,
    )
