"""Guarded memory: a buffer whose every access checks a page bitmap."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, final

from . import _buffers, _hotpath
from ._bitmap import Bitmap
from ._domain import ReadWriteDomain
from ._errors import AccessDenied
from ._lowlevel import CoreBuffer

if TYPE_CHECKING:
    if sys.version_info >= (3, 12):
        from collections.abc import Buffer
    else:
        from typing_extensions import Buffer


@final
class GuardedMemory(_hotpath.MemoryBase):
    """A buffer of pages that can be read and written only while accessible.

    Every `read()`, `read_into()` and `write()` opens its own read section
    of the bitmap's domain, checks every page it touches and only then
    moves bytes, so no caller can forget the check or race a revocation:
    once a commit that revokes a page has returned, no access to that page
    is still in progress and none can start.  A touched page that is not
    accessible raises `AccessDenied`, naming the first such page, and no
    byte moves.

    Change access through ``mem.bitmap`` (transactions).  Pages start
    inaccessible unless ``initial=True``.

    Memory: a header, the bitmap and the pages, in an anonymous mapping of
    its own (zero-filled) or in the caller's ``buffer`` (see `buffer_size()`
    and `attach()`): ``SharedMemory.buf`` under a `SharedDomain` lets
    worker processes share the pages, each access checked against the same
    bitmap.

    Args:
        pages: Number of pages.
        page_size: Bytes per page.
        domain: The domain for the bitmap; the global one by default.  A
            `SharedDomain` needs ``buffer``.
        initial: Whether every page starts accessible.
        buffer: Memory to format and keep everything in: any writable,
            C-contiguous buffer of at least ``buffer_size(pages, page_size)``
            bytes, starting at a 64-byte aligned address.  The header and
            bitmap are overwritten; the pages' bytes are left as they are.

    Raises:
        TypeError: ``pages`` or ``page_size`` is not an int, or ``buffer`` is
            not a writable buffer.
        ValueError: ``pages`` or ``page_size`` is out of range, or ``buffer``
            is too small or misaligned.
        MemoryError: The memory could not be allocated (the message says
            how much was asked for).
        RcuUsageError: ``domain`` is a `SharedDomain` and no ``buffer`` was
            given.
    """

    __slots__ = ("__weakref__", "_bitmap", "_domain", "_page_size", "_size")

    def __init__(
        self,
        pages: int,
        page_size: int = 4096,
        domain: ReadWriteDomain | None = None,
        initial: bool = False,
        buffer: Buffer | None = None,
    ) -> None:
        chosen = _buffers.domain_for("GuardedMemory", domain)
        chosen._check_open()
        core = _buffers.create("GuardedMemory", pages, page_size, chosen, buffer)
        if initial:
            core.apply([(0, pages, True)])  # nobody can read it yet
        self._setup(core, chosen, attached=False)

    @staticmethod
    def buffer_size(pages: int, page_size: int = 4096) -> int:
        """Bytes a caller's buffer needs for ``pages`` pages of ``page_size`` bytes.

        Raises:
            TypeError: ``pages`` or ``page_size`` is not an int.
            ValueError: ``pages`` or ``page_size`` is out of range.
        """
        return _buffers.size_of("GuardedMemory", pages, page_size)

    @classmethod
    def attach(cls, buffer: Buffer, domain: ReadWriteDomain | None = None) -> GuardedMemory:
        """The guarded memory a `GuardedMemory` (here or elsewhere) made in ``buffer``.

        As `Bitmap.attach()`: the header is read once and checked, the bits
        and bytes are used as they are.

        Raises:
            AiorcuError: The buffer is not guarded memory, is corrupt, of
                another layout version, or smaller than its header says.
            RcuUsageError: ``domain`` is not the domain the buffer records.
            ValueError: ``buffer`` does not start at a 64-byte aligned address.
            TypeError: ``buffer`` is not a writable buffer.
        """
        core = _buffers.attach("GuardedMemory", buffer, domain)
        self = cls.__new__(cls)
        self._setup(core, _buffers.domain_for("GuardedMemory", domain), attached=True)
        return self

    def _setup(self, core: CoreBuffer, domain: ReadWriteDomain, attached: bool) -> None:
        self._bitmap = Bitmap._over(core, domain, attached)
        self._domain = domain
        self._page_size = core.page_size
        self._size = core.data_len
        self._bind_memory(self._bitmap, core, core.data_address, core.data_len, core.page_size)

    def __repr__(self) -> str:
        state = " closed" if self._bitmap.closed else ""
        return (
            f"<aiorcu.GuardedMemory pages={self._bitmap.pages} page_size={self._page_size} "
            f"domain={self._domain.name!r}{state}>"
        )

    @property
    def bitmap(self) -> Bitmap:
        """The bitmap that says which pages are accessible."""
        return self._bitmap

    @property
    def page_size(self) -> int:
        """Bytes per page."""
        return self._page_size

    @property
    def size(self) -> int:
        """Bytes in all: ``pages * page_size``."""
        return self._size

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (on this memory or its bitmap)."""
        return self._bitmap.closed

    def close(self) -> None:
        """Releases the memory and its bitmap; the caller may then close its buffer.

        Later accesses raise `RcuUsageError`; closing again does nothing.

        Raises:
            RcuUsageError: A commit of the bitmap is in progress in this
                process (close after it returns).
        """
        self._bitmap.close()  # refuses first, while a commit applies
        self._unbind_memory()

    def __enter__(self) -> GuardedMemory:
        self._bitmap._open_core()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # read(offset, length), read_into(offset, buffer) and write(offset, data)
    # are C methods (_hotpath.MemoryBase, documented in _hotpath.pyi): each
    # opens its own read section, checks every page it touches, and only
    # then moves bytes; a denial is raised through _denied().

    def _denied(self, what: str, offset: int, length: int, page: int) -> NoReturn:
        """Raises the AccessDenied of a refused access (called by the C path)."""
        raise AccessDenied(
            f"{what} of {length} bytes at offset {offset} denied: page {page} "
            f"(bytes {page * self._page_size}..{(page + 1) * self._page_size - 1}) "
            "is not accessible; no byte was moved",
            page=page,
        )
