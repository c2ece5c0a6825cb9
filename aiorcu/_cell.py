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

    Readers call `get()` inside a read section of the cell's domain and
    may use the object until the section ends.  Writers `publish()` a new
    object (readers that start afterwards see it at once) and retire the old
    one only after a grace period, when no reader can still hold it:
    `replace_blocking()`, ``await`` `replace()`, or `update()`,
    which defers the retirement to the domain's callback thread.

    ``get()`` costs one check that the caller is inside a section and an
    attribute load; writers are serialized by a lock of their own, so
    concurrent ``update`` calls never lose each other's changes.

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
        self._by_ident = self._domain._by_ident
        self._var = self._domain._var

    @property
    def domain(self) -> Domain:
        """The domain whose read sections protect the cell."""
        return self._domain

    def get(self) -> T:
        """Returns the published object; only inside a read section of the cell's domain.

        Raises:
            RcuUsageError: The caller is outside any read section of the
                domain (this thread's ``with`` or this task's ``async with``).
        """
        reader = self._by_ident.get(get_ident())
        if reader is not None and reader.depth:
            return self._value
        node = self._var.get()
        while node is not None:
            if node.open:
                return self._value
            node = node.prev
        self._domain._require_inside("RcuCell.get()")
        return self._value  # pragma: no cover - _require_inside raised

    def publish(self, new: T) -> T:
        """Publishes ``new`` without waiting and returns the old object.

        The old object may still be in use by readers: retire it only after
        a grace period (or use `replace_blocking()`/`replace()`).
        """
        with self._lock:
            old = self._value
            self._value = new
        return old

    def replace_blocking(self, new: T, retire: Callable[[T], object] | None = None) -> T:
        """Publishes ``new``, waits for a grace period, then calls ``retire(old)``.

        Returns:
            The old object, which no reader holds any more.

        Raises:
            RcuUsageError: Called inside a read section (it would wait for itself).
            GracePeriodTimeout: Never: the wait has no timeout.
        """
        self._domain._check_blocking_allowed("RcuCell.replace_blocking()")
        old = self.publish(new)
        self._domain.synchronize_blocking()
        if retire is not None:
            retire(old)
        return old

    async def replace(self, new: T, retire: Callable[[T], object] | None = None) -> T:
        """Publishes ``new``, awaits a grace period, then calls ``retire(old)``.

        Cancellation: if cancelled while waiting, the new object stays
        published and ``retire(old)`` is handed to
        ``call_after_grace_period``, so the old object is still retired, only
        later; the cancellation then propagates.
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
        """Replaces the object with ``fn(old)`` under the cell's writer lock.

        Never waits: ``retire(old)`` is deferred with ``call_after_grace_period``.
        If ``fn`` raises, nothing changes.

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
