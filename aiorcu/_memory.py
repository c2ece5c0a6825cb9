"""Guarded memory: a buffer whose every access checks a page bitmap."""

from __future__ import annotations

from typing import NoReturn, final

from . import _hotpath
from ._bitmap import Bitmap
from ._domain import Domain
from ._errors import AccessDenied
from ._lowlevel import describe_size


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

    Args:
        pages: Number of pages.
        page_size: Bytes per page.
        domain: The domain for the bitmap; the global one by default.
        initial: Whether every page starts accessible.

    Raises:
        TypeError: ``pages`` or ``page_size`` is not an int.
        ValueError: ``pages`` or ``page_size`` is below 1.
    """

    __slots__ = ("__weakref__", "_bitmap", "_buffer", "_domain", "_page_size", "_size")

    def __init__(
        self,
        pages: int,
        page_size: int = 4096,
        domain: Domain | None = None,
        initial: bool = False,
    ) -> None:
        for what, value in (("pages", pages), ("page_size", page_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"GuardedMemory {what} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"GuardedMemory {what} must be at least 1, not {value}")
        size = pages * page_size
        try:
            buffer = bytearray(size)
        except MemoryError:
            raise MemoryError(
                f"GuardedMemory of {pages:,} pages of {page_size:,} bytes needs "
                f"{describe_size(size)}, which could not be allocated"
            ) from None
        self._bitmap = Bitmap(pages, domain=domain, initial=initial)
        self._domain = self._bitmap.domain
        self._page_size = page_size
        self._size = size
        self._buffer = buffer
        self._bind_memory(self._bitmap, buffer, page_size)

    def __repr__(self) -> str:
        return (
            f"<aiorcu.GuardedMemory pages={self._bitmap.pages} page_size={self._page_size} "
            f"domain={self._domain.name!r}>"
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
