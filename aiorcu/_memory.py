"""Guarded memory: a buffer whose every access checks a page bitmap."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, final

from ._bitmap import Bitmap
from ._domain import Domain
from ._errors import AccessDenied

if TYPE_CHECKING:
    from typing_extensions import Buffer


@final
class GuardedMemory:
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

    __slots__ = ("_bitmap", "_buffer", "_domain", "_page_size", "_size", "_view")

    def __init__(
        self,
        pages: int,
        page_size: int = 4096,
        domain: Domain | None = None,
        initial: bool = False,
    ) -> None:
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            raise TypeError(f"GuardedMemory page_size must be an int, not {type(page_size)}")
        if page_size < 1:
            raise ValueError(f"GuardedMemory page_size must be at least 1, not {page_size}")
        self._bitmap = Bitmap(pages, domain=domain, initial=initial)
        self._domain = self._bitmap.domain
        self._page_size = page_size
        self._size = pages * page_size
        self._buffer = bytearray(self._size)
        self._view = memoryview(self._buffer)

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

    def read(self, offset: int, length: int) -> bytes:
        """Returns ``length`` bytes from ``offset``, if every page they touch is accessible.

        Raises:
            AccessDenied: A touched page is not accessible; nothing was read.
            IndexError: The span is outside the memory.
            ValueError: ``length`` is negative.
        """
        end = self._span(offset, length, "read")
        with self._domain.read():
            self._check(offset, end, "read")
            return bytes(self._view[offset:end])

    def read_into(self, offset: int, buffer: Buffer) -> int:
        """Fills ``buffer`` with the bytes from ``offset``; returns how many.

        Like `read()` without making a new bytes object.

        Raises:
            AccessDenied: A touched page is not accessible; ``buffer`` is unchanged.
            IndexError: The span is outside the memory.
            TypeError: ``buffer`` is not a writable buffer.
        """
        out = memoryview(buffer).cast("B")
        end = self._span(offset, out.nbytes, "read_into")
        with self._domain.read():
            self._check(offset, end, "read")
            out[:] = self._view[offset:end]
        return out.nbytes

    def write(self, offset: int, data: Buffer) -> None:
        """Writes ``data`` at ``offset``, if every page it touches is accessible.

        Raises:
            AccessDenied: A touched page is not accessible; nothing was written.
            IndexError: The span is outside the memory.
            TypeError: ``data`` is not a bytes-like object.
        """
        source = memoryview(data).cast("B")
        end = self._span(offset, source.nbytes, "write")
        with self._domain.read():
            self._check(offset, end, "write")
            self._view[offset:end] = source

    def _span(self, offset: int, length: int, what: str) -> int:
        offset, length = operator.index(offset), operator.index(length)
        if length < 0:
            raise ValueError(f"GuardedMemory.{what}: length must not be negative, not {length}")
        end = offset + length
        if offset < 0 or end > self._size:
            raise IndexError(
                f"GuardedMemory.{what}: bytes {offset}..{end - 1} are outside the memory "
                f"(0..{self._size - 1})"
            )
        return end

    def _check(self, offset: int, end: int, what: str) -> None:
        """Raises AccessDenied unless every page of ``[offset, end)`` is accessible.

        Runs inside the caller's read section.
        """
        if end == offset:
            return
        first = offset // self._page_size
        denied = self._bitmap._first_clear(
            first, (end - 1) // self._page_size - first + 1, "check_range"
        )
        if denied >= 0:
            raise AccessDenied(
                f"{what} of {end - offset} bytes at offset {offset} denied: page {denied} "
                f"(bytes {denied * self._page_size}..{(denied + 1) * self._page_size - 1}) "
                "is not accessible; no byte was moved",
                page=denied,
            )
