"""Where a bitmap's (and guarded memory's) memory comes from, and who may use it.

`Bitmap` and `GuardedMemory` keep their words, and their pages, in a
`CoreBuffer`: an anonymous mapping of their own, or a caller's buffer
(``buffer=`` to format one, ``attach()`` to use one formatted elsewhere).
This module checks the arguments, the recorded domain, and keeps the
"which grace period flushes the last revoke" token where every committer of
the buffer finds it.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from . import _lowlevel
from ._domain import ReadWriteDomain, global_domain
from ._errors import AiorcuError, RcuUsageError
from ._lowlevel import CoreBuffer, describe_size
from ._shared import SharedDomain

logger = logging.getLogger("aiorcu")

Kind = Literal["Bitmap", "GuardedMemory"]

MAX_PAGES = 1 << 48
MAX_PAGE_SIZE = 1 << 40


def check_int(owner: Kind, what: str, value: object, low: int, high: int) -> int:
    """``value`` as an int within ``[low, high]``, or TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner} {what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        shown = {MAX_PAGES: "2**48", MAX_PAGE_SIZE: "2**40"}.get(high, f"{high:,}")
        raise ValueError(f"{owner} {what} must be between {low} and {shown}, not {value}")
    return value


def size_of(owner: Kind, pages: int, page_size: int) -> int:
    """Bytes of a buffer for ``pages`` (of ``page_size`` bytes; 0 for a bitmap)."""
    check_int(owner, "pages", pages, 1, MAX_PAGES)
    if owner == "GuardedMemory":
        check_int(owner, "page_size", page_size, 1, MAX_PAGE_SIZE)
    size = CoreBuffer.size(pages, page_size)
    if not size:  # pages * page_size beyond the address space
        raise ValueError(
            f"{owner} of {pages:,} pages of {page_size:,} bytes does not fit in memory "
            f"({describe_size(pages * page_size)})"
        )
    return size


def domain_for(owner: Kind, domain: ReadWriteDomain | None) -> ReadWriteDomain:
    if domain is None:
        return global_domain()
    if not isinstance(domain, ReadWriteDomain):
        raise TypeError(
            f"{owner} domain must be an aiorcu.Domain or aiorcu.SharedDomain, "
            f"not {type(domain).__name__}"
        )
    return domain


def recorded_name(domain: ReadWriteDomain) -> str:
    """What a buffer records: a shared domain's name, "" for a process-private one."""
    return domain.name if isinstance(domain, SharedDomain) else ""


def create(
    owner: Kind, pages: int, page_size: int, domain: ReadWriteDomain, buffer: Any | None
) -> CoreBuffer:
    """A new buffer: the caller's ``buffer`` formatted, or an anonymous mapping."""
    size_of(owner, pages, page_size)
    if buffer is None and isinstance(domain, SharedDomain):
        raise RcuUsageError(
            f"a {owner} of shared domain {domain.name!r} needs memory that other processes "
            f"map too: pass buffer= (for example SharedMemory(create=True, "
            f"size={owner}.buffer_size(...)).buf)"
        )
    return CoreBuffer.create(pages, page_size, recorded_name(domain), buffer)


def attach(owner: Kind, buffer: Any, domain: ReadWriteDomain | None) -> CoreBuffer:
    """Opens a buffer formatted by ``Bitmap``/``GuardedMemory`` (here or in another process)."""
    try:
        core = CoreBuffer.open(buffer)
    except _lowlevel.SegmentError as exc:
        raise AiorcuError(f"cannot attach this buffer as a {owner}: {exc}") from None
    try:
        want_memory = owner == "GuardedMemory"
        if core.page_size and not want_memory:
            raise AiorcuError(
                "this buffer holds guarded memory, not a bare bitmap: attach it with "
                "GuardedMemory.attach() and use its .bitmap"
            )
        if want_memory and not core.page_size:
            raise AiorcuError(
                "this buffer holds a bare bitmap, not guarded memory: attach it with "
                "Bitmap.attach()"
            )
        if domain is None and core.domain_name:
            raise RcuUsageError(
                f"this buffer belongs to shared domain {core.domain_name!r}: attach it with "
                f"domain=aiorcu.SharedDomain({core.domain_name!r})"
            )
        chosen = domain_for(owner, domain)
        mine = recorded_name(chosen)
        if mine != core.domain_name:
            made = (
                f"shared domain {core.domain_name!r}"
                if core.domain_name
                else "a process-private Domain"
            )
            given = (
                f"shared domain {mine!r}" if mine else f"the process-private domain {chosen.name!r}"
            )
            raise RcuUsageError(
                f"this buffer was made under {made}; it cannot be used with {given}: its "
                "commits would not wait for that domain's readers"
            )
    except BaseException:
        core.close()
        raise
    return core


class FlushState:
    """The token of the grace period that flushes the latest revoke of a buffer.

    A shared domain's tokens mean the same in every process, so they live in
    the buffer's header, where every committer finds them.  A private
    domain's tokens mean nothing to another domain, so they live here; a
    buffer attached (rather than made) under a private domain starts
    "unknown", and its first commit that needs a flush waits a fresh grace
    period.  A commit lock recovered from a dead committer also makes it
    unknown.  Used with the commit locks held.
    """

    __slots__ = ("_core", "_domain", "_local", "_shared", "_unknown")

    def __init__(self, core: CoreBuffer, domain: ReadWriteDomain, attached: bool) -> None:
        self._core = core
        self._domain = domain
        self._shared = isinstance(domain, SharedDomain)
        self._local: int | None = None
        self._unknown = attached and not self._shared

    def recovered(self, what: str) -> None:
        """The commit lock came back from a committer that died holding it."""
        logger.warning(
            "aiorcu: a process died while committing to %s; its changes are kept (no word is "
            "torn) and treated as revoked but not flushed: the next commit that needs a flush "
            "waits a fresh grace period",
            what,
        )
        self._unknown = True

    def token(self) -> int | None:
        """The token to wait for before acting on a revoked page, or None."""
        if self._core.take_unflushed() or self._unknown:
            self._unknown = False
            self.set(self._domain.snapshot())
        if self._shared:
            return self._core.flush_token() or None
        return self._local

    def set(self, token: int) -> None:
        if self._shared:
            self._core.set_flush_token(token)
        else:
            self._local = token
