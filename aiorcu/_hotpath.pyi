"""Type stub of the C extension ``aiorcu._hotpath`` (csrc/hotpath.c): the read path."""

import contextvars
import sys
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, final

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer
if sys.version_info >= (3, 11):
    from typing import TypeVarTuple, Unpack
else:
    from typing_extensions import TypeVarTuple, Unpack

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

def configure(
    thread_serial_address: int,
    usage_error: type[BaseException],
    iscoroutinefunction: Callable[[object], bool],
) -> None: ...
def thread_serial() -> int: ...

READY: Awaitable[None]

@final
class ReadSection:
    """One read section of a domain, from `Domain.read()`.

    Enter it once, at once: ``with domain.read():`` in thread code,
    ``async with domain.read():`` in task code.  It counts in the
    grace-period phase current when it entered, and its exit closes exactly
    this section, wherever the exit runs.  Leaving it on another thread than
    the one that entered it releases it and raises `RcuUsageError`; a
    section garbage-collected while open is released and reported on the
    ``aiorcu`` logger.
    """

    @property
    def open(self) -> bool:
        """Entered and not yet left."""
    @property
    def counted(self) -> bool:
        """Open, and its count still stands (its slot was not released)."""
    @property
    def kind(self) -> Literal["thread", "task"] | None:
        """``"thread"`` (``with``), ``"task"`` (``async with``), or None before entry."""
    @property
    def domain(self) -> DomainBase: ...
    @property
    def _prev(self) -> ReadSection | None: ...
    @property
    def _thread(self) -> int: ...
    def __enter__(self) -> None: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def __aenter__(self) -> Awaitable[None]: ...
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]: ...

class DomainBase:
    _callbacks_idle: bool
    def read(self) -> ReadSection:
        """Returns a new read section of this domain, to enter at once.

        ``with domain.read():`` protects thread code; ``async with
        domain.read():`` protects task code and may await inside.  Sections
        nest and overlap freely, on one thread or across tasks: each is its
        own object and closes exactly itself.  Inside, readers may use
        whatever the domain protects; a writer's grace period waits for
        every section that began before it.

        Costs a few stores to memory only the reading thread writes: no
        lock, no system call, and no memory barrier when membarrier(2) is
        available.

        Returns:
            A new `ReadSection`, entered by the ``with``/``async with``.
        """
    def call_after_grace_period(
        self, fn: Callable[[Unpack[_Ts]], object], /, *args: Unpack[_Ts]
    ) -> None:
        """Runs ``fn(*args)`` on the domain's callback thread after a grace period.

        The way to retire an object without blocking a writer: publish the
        change, then queue its clean-up.  Queueing only appends to a queue
        and never waits.  Callbacks queued together share one grace period
        and run in the order queued, one at a time, on a daemon thread the
        domain starts on first use.  An exception in a callback is logged
        with its traceback on the ``aiorcu`` logger and the others still
        run; a callback that returns an awaitable has it closed and
        reported.  A callback must not wait for a grace period or a barrier
        of its domain (it would wait for itself); it may queue more
        callbacks.

        At interpreter exit, queued callbacks run if their grace period
        completes within about a second; the rest are reported on the logger
        and exit goes on.  A fork child starts with an empty queue.

        Args:
            fn: Called as ``fn(*args)`` on the callback thread.
            *args: Passed to ``fn``; kept alive until it ran.

        Raises:
            TypeError: ``fn`` is not callable, or is a coroutine function
                (the callback thread has no event loop); nothing was queued.
        """
    def _bind(
        self,
        owner: object,
        var: contextvars.ContextVar[Any],
        ctl: int,
        core: int,
        wake: int,
        release: int,
        fence: bool,
        shared: bool = False,
        /,
    ) -> None: ...
    def _inside(self) -> bool: ...
    def _task_inside(self) -> bool: ...
    def _thread_counts(self) -> tuple[int, int]: ...
    def _set_reader_delay(self, fn: Callable[[], None] | None, /) -> None: ...
    def _set_callbacks(
        self, append: Callable[[Any], None], wake: Callable[[], None], /
    ) -> None: ...
    def _fork_child(self) -> None: ...
    def _fork_counts(self) -> tuple[tuple[int, int, int, int], int, int, int]: ...
    def _adopted(self, line: int, parent_line: int, task_gen: int, epoch: int, /) -> None: ...
    def _fork_epoch(self) -> int: ...
    def _unbind(self) -> None: ...

class CellBase(Generic[_T]):
    def __init__(self, domain: DomainBase, value: _T, /) -> None: ...
    def get(self) -> _T:
        """Returns the published object; only inside a read section of the cell's domain.

        The object stays safe to use until the section ends: a writer retires
        it only after a grace period that waits for this section.

        Raises:
            RcuUsageError: The caller is outside any read section of the
                domain (this thread's ``with`` or this task's ``async with``).
        """
    def _swap(self, value: _T, /) -> _T: ...
    @property
    def _domain(self) -> DomainBase: ...
    @property
    def _current(self) -> _T: ...

class BitmapBase:
    def is_set(self, page: int, /) -> bool:
        """Whether ``page`` is accessible; only inside a read section of the domain.

        The answer holds until the section ends: a commit that revokes the
        page waits for this section before it returns.

        Args:
            page: ``0 <= page < pages``.

        Raises:
            RcuUsageError: The caller is outside any read section of the
                bitmap's domain (this thread's ``with`` or this task's
                ``async with``).
            IndexError: ``page`` is outside the bitmap.
        """
    def check_range(self, start: int, count: int, /) -> bool:
        """Whether every page in ``[start, start + count)`` is accessible.

        Only inside a read section of the domain; ``count=0`` gives True.

        Raises:
            RcuUsageError: The caller is outside any read section of the domain.
            IndexError: The range is not inside the bitmap.
        """
    def first_clear(self, start: int, count: int, /) -> int | None:
        """The first inaccessible page in ``[start, start + count)``, or None.

        Only inside a read section of the domain.

        Raises:
            RcuUsageError: The caller is outside any read section of the domain.
            IndexError: The range is not inside the bitmap.
        """
    def _bind_words(
        self, domain: DomainBase, owner: object, address: int, pages: int, /
    ) -> None: ...
    def _unbind_words(self) -> None: ...

class MemoryBase:
    def read(self, offset: int, length: int, /) -> bytes:
        """Returns ``length`` bytes from ``offset``, if every page they touch is accessible.

        Raises:
            AccessDenied: A touched page is not accessible; nothing was read.
            IndexError: The span is outside the memory.
            ValueError: ``length`` is negative.
        """
    def read_into(self, offset: int, buffer: Buffer, /) -> int:
        """Fills ``buffer`` with the bytes from ``offset``; returns how many.

        Like `read()` without making a new bytes object.

        Raises:
            AccessDenied: A touched page is not accessible; ``buffer`` is unchanged.
            IndexError: The span is outside the memory.
            TypeError: ``buffer`` is not a writable buffer.
        """
    def write(self, offset: int, data: Buffer, /) -> None:
        """Writes ``data`` at ``offset``, if every page it touches is accessible.

        Raises:
            AccessDenied: A touched page is not accessible; nothing was written.
            IndexError: The span is outside the memory.
            TypeError: ``data`` is not a bytes-like object.
        """
    def _bind_memory(
        self, bitmap: BitmapBase, owner: object, address: int, size: int, page_size: int, /
    ) -> None: ...
    def _unbind_memory(self) -> None: ...
