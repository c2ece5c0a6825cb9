"""Read sections: the per-thread reader object and per-task section records.

``domain.read()`` returns the calling thread's `ReadSection`, one per
(domain, thread), made once and reused, so a ``with`` section allocates
nothing.  It keeps the thread's open-section counts as Python ints (they never
wrap) and mirrors only their 0 <-> non-zero transitions into the flag bytes of
the thread's C slot, which writers scan.

Thread sections (``with``) nest the way liburcu's do: the outermost takes the
phase, inner ones join it, so they may close in any order (generators) without
confusing the per-phase counts.  Task sections (``async with``) each take the
current phase and remember it in a `_Section` kept in a context
variable, so overlapping tasks on one loop never hold a grace period open
forever (SRCU's two-index scheme).  A task section nested in an open one of
the same context joins its phase, for the same reason as the thread case.

Only the owner thread touches a reader's counts.  Where another thread must
close something (a section collected on another thread, a section left on the
wrong thread) it queues the request in ``orphans``; the owner applies it at
its next enter or task exit.  ``list.append``/``pop`` are atomic, with or
without the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import sys
import threading
import weakref
from _thread import get_ident
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final

from . import _lowlevel
from ._errors import RcuUsageError

if TYPE_CHECKING:
    from ._domain import Domain

logger = logging.getLogger("aiorcu")

_WAITING: Final = _lowlevel.CTL_WAITING  # ctl[_WAITING + p]: a writer sleeps on phase p
_TASK: Final = _lowlevel.FLAG_TASK  # flags[_TASK + p]: task sections open in phase p
assert _TASK == 2 and _WAITING == 2  # the hot paths index with the literal
assert _lowlevel.FLAG_THREAD == 0 and _lowlevel.CTL_PHASE == 0  # the hot path indexes directly

_ATTENTION: Final = -1  # ReadSection.ident when releases are queued for the owner
_THREAD_SECTION: Final = -1  # an orphan entry that closes one `with` section


def _make_ready() -> Awaitable[None]:
    # A completed asyncio Future is the cheapest awaitable there is: its
    # __await__ is C code that returns at once without suspending, under
    # asyncio or trio alike.  Two coroutine objects per section cost ~60 ns
    # more.  Made once, from a loop that is closed right away.
    loop = asyncio.new_event_loop()
    try:
        fut = loop.create_future()
        fut.set_result(None)
    finally:
        loop.close()
    return fut


_READY: Final = _make_ready()


def tasks_inside(var: contextvars.ContextVar[_Section | None], reader: ReadSection) -> list[str]:
    """Names of the tasks whose context holds an open section of ``reader``.

    Diagnostic path for stall warnings: scans the heap for asyncio and trio
    tasks and reads each one's context, so the read path never has to record
    which task entered.
    """
    trio = sys.modules.get("trio")
    trio_task = trio.lowlevel.Task if trio is not None else ()
    names = []
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance falls back to obj.__class__,
        # which on a threading.local would create this thread's reader.
        kind = type(obj)
        if issubclass(kind, asyncio.Task):
            get_context = getattr(obj, "get_context", None)  # Python 3.12+
            contexts = (
                [get_context()]
                if get_context is not None
                else [c for c in gc.get_referents(obj) if isinstance(c, contextvars.Context)]
            )
        elif trio_task and issubclass(kind, trio_task):
            contexts = [obj.context]
        else:
            continue
        for context in contexts:
            node = context.get(var)
            while node is not None:
                if node.open and node.reader is reader:
                    names.append(task_name(obj))
                    break
                node = node.prev
    return sorted(names)


def task_name(task: object) -> str:
    name = getattr(task, "get_name", None)
    if callable(name):
        return str(name())
    return str(getattr(task, "name", repr(task)))


class _Section:
    """One open ``async with`` section: the phase it counts in, its context.

    Built without ``__init__`` (the attributes are stored by the caller):
    a Python-level constructor call would cost more than the section itself.
    """

    __slots__ = ("open", "phase", "prev", "reader")
    open: bool
    phase: int
    prev: _Section | None
    reader: ReadSection

    def __del__(self) -> None:
        # The context that held this record is gone (task or async generator
        # dropped mid-section, loop closed): the section can never be left
        # normally, so release it instead of blocking grace periods forever.
        if self.open:
            # At interpreter shutdown modules may already be half gone.
            with contextlib.suppress(Exception):
                self.reader._collected(self)


class ReadSection:
    """A read section of one domain on one thread.

    Returned by `Domain.read()`; use it at once with ``with`` (thread
    code) or ``async with`` (task code), never keep it for another thread.
    Entering costs a few plain stores to memory only this thread writes: no
    lock, no system call, no allocation for ``with``.
    """

    __slots__ = (
        "__weakref__",
        "_core",
        "_var",
        "ctl",
        "depth",
        "domain_name",
        "flags",
        "flags_ptr",
        "ident",
        "orphans",
        "owner",
        "phase",
        "pid",
        "slot",
        "tasks",
        "thread",
        "thread_name",
    )

    def __init__(self, domain: Domain, slot: int) -> None:
        core = domain._core
        self._core = core
        self._var: contextvars.ContextVar[_Section | None] = domain._var
        self.domain_name = domain.name
        self.slot = slot
        self.flags = core.slot_flags(slot)
        self.flags_ptr = core.slot_flags_address(slot)
        self.ctl = core.ctl
        self.owner = get_ident()  # the owner thread, fixed
        # `ident` is the owner while all is well; _ATTENTION when another
        # thread queued a release; None once the owner exited.  The hot path
        # compares it with get_ident() anyway, so the slow path costs nothing.
        self.ident: int | None = self.owner
        self.thread = weakref.ref(threading.current_thread())
        self.thread_name = threading.current_thread().name  # reports, once the Thread is gone
        self.pid = os.getpid()
        self.depth = 0  # open `with` sections on this thread
        self.phase = 0  # the phase they count in (valid while depth > 0)
        self.tasks = [0, 0]  # open `async with` sections per phase
        self.orphans: list[int] = []  # releases queued by other threads, see module doc

    # -- thread sections ---------------------------------------------------
    def __enter__(self) -> None:
        if self.ident != get_ident():
            return self._enter_slow()
        depth = self.depth
        if depth:
            self.depth = depth + 1
            return None
        p = self.ctl[0]
        # The flag store is the reader's publication; the data loads that
        # follow it are ordered by the writer's M1 membarrier (F1 is only a
        # compiler barrier, and Python code between is opaque to the compiler).
        self.flags[p] = 1
        self.phase = p
        self.depth = 1
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.depth == 1 and self.ident == get_ident():
            p = self.phase
            self.depth = 0
            # F2 is the compiler barrier before this store; M3 pairs with it.
            self.flags[p] = 0
            if self.ctl[2 + p]:  # CTL_WAITING + p: a writer sleeps on phase p
                self._core.wake()
            return
        self._exit_slow()

    def _enter_slow(self) -> None:
        self._attend()
        self.__enter__()

    def _exit_slow(self) -> None:
        me = get_ident()
        if self.owner != me and self.ident is not None:
            # Left on a foreign thread (a generator resumed elsewhere): the
            # owner closes the section at its next one; the caller learns.
            if self.depth > 0:
                self._queue_release(_THREAD_SECTION)
            self._wrong_thread()
        self._attend()
        if self.depth <= 0:
            raise RcuUsageError(
                "a read section was left that was never entered on this thread; "
                "use `with domain.read():` rather than calling __exit__ by hand"
            )
        self.depth -= 1

    def _attend(self) -> None:
        """Slow path: applies queued releases, or raises for a foreign thread."""
        me = get_ident()
        if self.ident == _ATTENTION and self.owner == me:
            # Restore first, then drain: a release queued after the drain
            # re-marks the reader (see _queue_release).
            self.ident = me
            self._drain_orphans()
            return
        if self.ident != me:
            self._wrong_thread()

    def _queue_release(self, phase: int) -> None:
        """Asks the owner thread to release one section (any thread may call)."""
        if self.ident is None:
            return  # the slot went with its thread
        self.orphans.append(phase)
        self.ident = _ATTENTION

    def _wrong_thread(self) -> None:
        owner = self.thread()
        raise RcuUsageError(
            f"a read section of domain {self.domain_name!r} was used on thread "
            f"{threading.current_thread().name!r} but belongs to thread "
            f"{owner.name if owner is not None else '<exited>'!r}; sections are per thread: "
            "call domain.read() on the thread that reads, and leave the section there"
        )

    # -- task sections ------------------------------------------------------
    def __aenter__(self) -> Awaitable[None]:
        if self.ident != get_ident():
            self._attend()
        var = self._var
        prev = var.get()
        while prev is not None and not prev.open:
            prev = prev.prev
        # Nested in an open section of this context: join its phase.
        p = self.ctl[0] if prev is None else prev.phase
        node = _Section()
        node.open = True
        node.phase = p
        node.prev = prev
        node.reader = self
        var.set(node)
        # No calls from here to the flag store: under the GIL nothing else
        # can run in between (see _collected).
        counts = self.tasks
        c = counts[p]
        counts[p] = c + 1
        if not c:
            self.flags[2 + p] = 1  # FLAG_TASK + p
        return _READY

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        # The context keeps pointing at the closed record until its next
        # section: "inside" tests skip closed records, and setting the
        # variable back would cost more than the walk.
        node = self._var.get()
        while node is not None and not node.open:
            node = node.prev
        if node is None or node.reader is not self or self.ident != get_ident():
            self._aexit_slow(node, exc_type)
            return _READY
        node.open = False
        p = node.phase
        counts = self.tasks
        c = counts[p] - 1
        counts[p] = c
        if not c:
            self.flags[2 + p] = 0
            if self.ctl[2 + p]:
                self._core.wake()
        return _READY

    def _aexit_slow(self, node: _Section | None, exc_type: type[BaseException] | None) -> None:
        if self.ident == _ATTENTION and self.owner == get_ident():
            self._attend()
            self.__aexit__(exc_type, None, None)
            return
        if (
            node is None
            and exc_type is not None
            and issubclass(exc_type, GeneratorExit)
            and self.ident == get_ident()
        ):
            # A dropped coroutine or async generator is being closed by the
            # collector or an event loop's finalizer, in a context that is
            # not the one holding its record.  The record is released (and
            # reported) when that context is freed; raising here would only
            # make an unraisable error.
            logger.warning(
                "an `async with` section of domain %r was closed outside the task that "
                "entered it (a task or async generator was dropped while inside); it stays "
                "open until that task's context is freed. Close async generators with "
                "aclose() (contextlib.aclosing) and await tasks before dropping them.",
                self.domain_name,
            )
            return
        if node is not None and node.open and node.reader is self and self.ident != get_ident():
            # Left on a foreign thread: the owner must release it, and the
            # caller learns of the misuse.
            node.open = False
            self._queue_release(node.phase)
            self._wrong_thread()
        if self.ident != get_ident():
            self._wrong_thread()
        raise RcuUsageError(
            f"`async with` section of domain {self.domain_name!r} left with no open section "
            "in this task's context; enter and leave a section in the same task"
        )

    def _release_task(self, p: int) -> None:
        counts = self.tasks
        c = counts[p] - 1
        counts[p] = c
        if not c:
            self.flags[2 + p] = 0
            if self.ctl[2 + p]:
                self._core.wake()

    # -- releases requested by other threads ----------------------------------
    def _collected(self, node: _Section) -> None:
        node.open = False
        owner = self.thread()
        logger.warning(
            "an async read section of domain %r on thread %r was garbage-collected while "
            "open (its task or async generator was dropped); releasing it. Leave sections "
            "before dropping a task or generator.",
            self.domain_name,
            owner.name if owner is not None else "<exited>",
        )
        if self.ident is not None and self.owner == get_ident() and self.ident != _ATTENTION:
            # On the owner thread a finalizer runs only at a call or an
            # allocation, and the count updates above contain neither.
            self._release_task(node.phase)
        else:
            self._queue_release(node.phase)

    def _drain_orphans(self) -> None:
        orphans = self.orphans
        while orphans:
            p = orphans.pop()
            if p >= 0:
                self._release_task(p)
            elif self.depth > 0:
                self.depth -= 1
                if not self.depth:
                    self._release_thread()

    def _release_thread(self) -> None:
        self.flags[self.phase] = 0
        if self.ctl[2 + self.phase]:
            self._core.wake()

    # -- introspection (any thread; a moment's snapshot) -----------------------
    def open_sections(self) -> int:
        return self.depth + self.tasks[0] + self.tasks[1]

    def inside_on_thread(self) -> bool:
        return bool(self.depth or self.tasks[0] or self.tasks[1])

    def thread_exited(self) -> int:
        """Marks the owner gone; returns how many sections it left open."""
        left = self.open_sections()
        self.ident = None
        self.depth = 0
        self.tasks[0] = self.tasks[1] = 0
        self.orphans.clear()
        return left

    def __repr__(self) -> str:
        owner = self.thread()
        return (
            f"<aiorcu.ReadSection domain={self.domain_name!r} "
            f"thread={owner.name if owner is not None else None!r} "
            f"open={self.open_sections()}>"
        )


class _FenceReadSection(ReadSection):
    """Fence fallback: F1 after the flag store, F2/F3 around each clear (in C)."""

    __slots__ = ()

    def __enter__(self) -> None:
        if self.ident != get_ident():
            return self._enter_slow()
        depth = self.depth
        if depth:
            self.depth = depth + 1
            return None
        p = self.ctl[0]
        self.flags[p] = 1
        _lowlevel.fence()  # F1: pairs with the writer's M1 (a fence in this mode)
        self.phase = p
        self.depth = 1
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.depth == 1 and self.ident == get_ident():
            self.depth = 0
            self._release_thread()
            return
        self._exit_slow()

    def __aenter__(self) -> Awaitable[None]:
        ready = ReadSection.__aenter__(self)
        _lowlevel.fence()  # F1: pairs with the writer's M1 (a fence in this mode)
        return ready

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        node = self._var.get()
        while node is not None and not node.open:
            node = node.prev
        if node is None or node.reader is not self or self.ident != get_ident():
            self._aexit_slow(node, exc_type)
            return _READY
        node.open = False
        self._release_task(node.phase)
        return _READY

    def _release_task(self, p: int) -> None:
        counts = self.tasks
        c = counts[p] - 1
        counts[p] = c
        if not c:
            # F2, clear, F3 and the waiting check, in one C call.
            self._core.fence_flag_clear(self.flags_ptr, _TASK + p)

    def _release_thread(self) -> None:
        self._core.fence_flag_clear(self.flags_ptr, self.phase)


READER_CLASS: type[ReadSection] = ReadSection if _lowlevel.MEMBARRIER else _FenceReadSection


def delayed_reader_class(delay: Callable[[], None]) -> type[ReadSection]:
    """Debug variant of READER_CLASS that calls ``delay`` in `with` entries.

    The call comes between the phase load and the flag store, which lets
    tests build the straggler of "why wait twice": a reader that loaded the
    old phase and publishes its flag only after the writer flipped.
    """
    base = READER_CLASS

    def __enter__(self: ReadSection) -> None:
        if self.depth or self.ident != get_ident():
            return base.__enter__(self)
        p = self.ctl[0]
        delay()
        self.flags[p] = 1
        if not _lowlevel.MEMBARRIER:
            _lowlevel.fence()  # F1
        self.phase = p
        self.depth = 1
        return None

    # Same slots as the base, so existing readers can switch class in place.
    return type("DelayedReadSection", (base,), {"__slots__": (), "__enter__": __enter__})
