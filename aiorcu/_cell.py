"""RcuCell: a published reference that readers load and writers replace."""

from __future__ import annotations

import threading
from _thread import get_ident
from collections.abc import Callable
from typing import Generic, TypeVar, final

from ._domain import Domain, global_domain

T = TypeVar("T")


@final
class RcuCell(Generic[T]):
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

    ``get()`` costs one check that the caller is inside a section and an
    attribute load.  Writers are serialized by a lock of their own, so
    concurrent `update()` calls never lose each other's changes; readers
    never touch it.

    Args:
        initial: The first published object.
        domain: The domain whose read sections protect it; the global one
            by default.
    """

    __slots__ = ("_by_ident", "_domain", "_lock", "_value", "_var")

    def __init__(self, initial: T, domain: Domain | None = None) -> None:
        self._domain = domain if domain is not None else global_domain()
        self._value = initial
        self._lock = threading.Lock()
        # Cached for get(): two attribute loads fewer per call.  A fork child
        # gets new dicts in its domain; this one then only misses threads
        # created in the child, which take the (correct) slow path below.
        self._by_ident = self._domain._by_ident
        self._var = self._domain._var

    @property
    def domain(self) -> Domain:
        """The domain whose read sections protect the cell."""
        return self._domain

    def get(self) -> T:
        """Returns the published object; only inside a read section of the cell's domain.

        The object stays safe to use until the section ends: a writer retires
        it only after a grace period that waits for this section.

        Raises:
            RcuUsageError: The caller is outside any read section of the
                domain (this thread's ``with`` or this task's ``async with``).
        """
        # The object load needs no fence: the writer's grace period orders
        # it (M1 pairs with the section's flag store), as for any RCU read.
        reader = self._by_ident.get(get_ident())
        if reader is not None and reader.depth:
            return self._value
        node = self._var.get()
        while node is not None:
            if node.open:
                return self._value
            node = node.prev
        self._domain._require_inside("RcuCell.get()")
        return self._value  # the thread registered after this cell was made, or after fork

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
            old = self._value
            self._value = new
        return old

    def replace_blocking(self, new: T, retire: Callable[[T], object] | None = None) -> T:
        """Publishes ``new``, blocks for a grace period, then calls ``retire(old)``.

        For thread code that may block.  The writer lock is held only to
        publish, not during the wait.

        Args:
            new: The object to publish.
            retire: Called with the old object once no reader can hold it
                (close it, free it, return it to a pool).

        Returns:
            The old object, which no reader holds any more.

        Raises:
            RcuUsageError: Called inside a read section on this thread, or
                from a callback: the wait could never finish.  Nothing was
                published.
        """
        self._domain._check_blocking_allowed("RcuCell.replace_blocking()")
        old = self.publish(new)
        self._domain.synchronize_blocking()
        if retire is not None:
            retire(old)
        return old

    async def replace(self, new: T, retire: Callable[[T], object] | None = None) -> T:
        """Publishes ``new``, awaits a grace period, then calls ``retire(old)``.

        The event loop keeps running while the grace period completes, as for
        ``await domain.synchronize()``; ``retire`` runs in this task.

        Cancellation: ``new`` is published before the first checkpoint.  If
        the call is cancelled while waiting, ``new`` stays published and
        ``retire(old)`` is handed to ``call_after_grace_period``, so the old
        object is still retired after the grace period (on the domain's
        callback thread); the cancellation then propagates.

        Args:
            new: The object to publish.
            retire: Called with the old object once no reader can hold it.

        Returns:
            The old object, which no reader holds any more.

        Raises:
            RcuUsageError: The calling task (or this thread's ``with`` code)
                is inside a read section of the domain, or the caller is a
                callback.  Nothing was published.
        """
        self._domain._check_async_allowed("await RcuCell.replace()")
        old = self.publish(new)
        try:
            await self._domain.synchronize()
        except BaseException:
            if retire is not None:
                self._domain.call_after_grace_period(retire, old)
            raise
        if retire is not None:
            retire(old)
        return old

    def update(self, fn: Callable[[T], T], retire: Callable[[T], object] | None = None) -> T:
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
                thread once no reader can hold it.

        Returns:
            The new object.
        """
        with self._lock:
            old = self._value
            new = fn(old)
            self._value = new
        if retire is not None:
            self._domain.call_after_grace_period(retire, old)
        return new

    def __repr__(self) -> str:
        return f"<aiorcu.RcuCell domain={self._domain.name!r}>"
