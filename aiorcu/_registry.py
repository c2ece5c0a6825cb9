"""Which thread owns which reader slot of a domain.

A thread gets a slot the first time it enters a section of a domain (the
C read path asks `ThreadRegistry.thread_slot`).  The registration lives in a
`threading.local`, so it is dropped when the thread exits; its finalizer
then releases the slot, reporting sections the thread left open.  A thread
whose registration never ran its finalizer is caught by proof, not by a
guess: the core marks a thread's record dead when the thread has exited
(see ``csrc/thread.c``), and stall handling releases such slots.

The registry also names slots for stall reports (thread name and id, and
the tasks whose context holds a section there), and keeps the forking
thread's registration in a fork child.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import gc
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import final

from . import _hotpath
from ._lowlevel import KIND_TASK, KIND_THREAD, CoreDomain

logger = logging.getLogger("aiorcu")

_NAMES_KEPT = 1024


@final
@dataclasses.dataclass(frozen=True)
class ThreadInfo:
    """What a report says of a slot's owner thread."""

    slot: int
    serial: int
    """The thread's serial (``aiorcu_thread_serial``): names it in messages."""
    token: int
    """The slot's owner word while this thread owns it."""
    ident: int
    native_id: int | None
    name: str
    thread: weakref.ref[threading.Thread]


@final
class _Registration:
    """A thread's slot in one domain; lives only in that thread's local storage."""

    __slots__ = ("line", "pid", "registry", "slot", "token")

    def __init__(self, registry: ThreadRegistry, slot: int, line: int, token: int) -> None:
        self.registry = weakref.ref(registry)
        self.slot = slot
        self.line = line
        self.token = token
        self.pid = os.getpid()

    def __del__(self) -> None:
        # The thread exited (its local storage is being cleared), or the
        # registry replaced this registration.  In a fork child the core's
        # fork handler released every other thread's slot already.
        try:
            registry = self.registry()
            if registry is not None and self.pid == os.getpid():
                registry.release(self.slot, self.token, "exited")
        except Exception:  # interpreter shutdown: modules may be half gone
            pass


@final
class ThreadRegistry:
    """The slots of one domain's reader threads.

    Args:
        name: The domain's name, for messages.
        core: The domain's C core.
    """

    def __init__(self, name: str, core: CoreDomain) -> None:
        self._name = name
        self._core = core
        self.before_claim: Callable[[], None] = lambda: None
        """Runs before a thread claims a slot (a shared domain joins lazily)."""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._threads: dict[int, ThreadInfo] = {}  # slot -> owner
        # serial -> thread name, also for threads gone since (messages about
        # their sections); the oldest names are forgotten first.
        self._names: collections.OrderedDict[int, str] = collections.OrderedDict()

    def thread_slot(self, create: bool) -> int | None:
        """The calling thread's reader line address; registers it when ``create``.

        Called by the C read path when its thread-local cache misses.
        """
        reg: _Registration | None = getattr(self._local, "reg", None)
        if reg is not None and self._core.slot_counts(reg.slot)[0] == reg.token:
            return reg.line
        if not create:
            return None
        if reg is not None:
            reg.slot = -1  # its slot was released: its finalizer must not touch the new one
        self.before_claim()
        return self._register(self._core.slot_alloc(threading.get_native_id()))

    def adopt(self, slot: int) -> None:
        """Makes ``slot`` (already this thread's in the core) the calling thread's."""
        self._register(slot)

    def _register(self, slot: int) -> int:
        serial = _hotpath.thread_serial()
        thread = threading.current_thread()
        token = self._core.slot_counts(slot)[0]
        info = ThreadInfo(
            slot=slot,
            serial=serial,
            token=token,
            ident=threading.get_ident(),
            native_id=threading.get_native_id(),
            name=thread.name,
            thread=weakref.ref(thread),
        )
        with self._lock:
            self._threads[slot] = info
            self._names[serial] = thread.name
            while len(self._names) > _NAMES_KEPT:
                self._names.popitem(last=False)
        if self._core.shared:
            self._core.slot_set_name(slot, thread.name)
        reg = _Registration(self, slot, self._core.slot_line(slot), token)
        self._local.reg = reg
        return reg.line

    def current_slot(self) -> int:
        """The calling thread's slot, or -1 (never registers)."""
        reg: _Registration | None = self._local.__dict__.get("reg")
        if reg is not None and self._core.slot_counts(reg.slot)[0] == reg.token:
            return reg.slot
        return -1

    def release(self, slot: int, token: int, how: str) -> int | None:
        """Releases ``slot`` if ``token`` still owns it; the sections dropped, or None."""
        dropped = self._core.slot_release(slot, token)
        if dropped is None:
            return None
        self._forget(slot, token, dropped, how)
        return dropped

    def release_if_dead(self, slot: int) -> bool:
        """Releases ``slot`` when its owner thread has provably exited."""
        released = self._core.slot_release_if_dead(slot)
        if released is None:
            return False
        token, dropped = released
        self._forget(slot, token, dropped, "has exited")
        return True

    def _forget(self, slot: int, token: int, dropped: int, how: str) -> None:
        """The registry's side of a release: the owner is gone; report open sections."""
        with self._lock:
            info = self._threads.get(slot)
            if info is not None and info.token == token:
                del self._threads[slot]
            else:
                info = None
        if dropped:
            logger.warning(
                "thread %s %s inside %d read section(s) of domain %r; its reader slot was "
                "released, so grace periods no longer wait for it",
                _thread_words(info),
                how,
                dropped,
                self._name,
            )

    def name_of(self, serial: int) -> str | None:
        """The name of the thread with this serial, if it registered here."""
        with self._lock:
            return self._names.get(serial)

    def info(self, slot: int) -> ThreadInfo | None:
        with self._lock:
            return self._threads.get(slot)

    def owners(self) -> list[ThreadInfo]:
        with self._lock:
            return list(self._threads.values())

    def describe(self, var: contextvars.ContextVar[object], slot: int, blocked_ns: int) -> str:
        """One slot's owner and open sections, for stall reports and timeouts."""
        _, counts = self._core.slot_counts(slot)
        info = self.info(slot)
        other = self._core.slot_owner_info(slot) if info is None and self._core.shared else None
        if other is not None and other[0] != os.getpid():
            text = f"thread {other[2]!r} (native id {other[1]}) of process {other[0]}"
        else:
            text = f"thread {_thread_words(info)}"
        if blocked_ns:
            text += f" inside for at least {blocked_ns / 1e9:.3f} s"
        details = []
        with_sections = counts[KIND_THREAD * 2] + counts[KIND_THREAD * 2 + 1]
        task_sections = counts[KIND_TASK * 2] + counts[KIND_TASK * 2 + 1]
        if with_sections:
            details.append(f"{with_sections} `with` section(s)")
        if task_sections:
            tasks = tasks_inside(var, info.serial) if info is not None else []
            if tasks:
                details.append("`async with` in task(s) " + ", ".join(repr(t) for t in tasks))
            else:
                details.append(f"{task_sections} `async with` section(s)")
        if details:
            text += " [" + "; ".join(details) + "]"
        return text

    def after_fork(self) -> None:
        """In a fork child: only the forking thread's registration is left.

        A shared domain's child keeps none: the forking thread's slot is
        the parent's, and the child adopts a slot of its own (SharedDomain).
        """
        self._lock = threading.Lock()
        reg: _Registration | None = getattr(self._local, "reg", None)
        if self._core.shared:
            if reg is not None:
                reg.slot = -1  # the parent's slot: never released from here
                self._local.reg = None
            self._threads.clear()
            self._names.clear()
            return
        keep = self._threads.get(reg.slot) if reg is not None else None
        self._threads.clear()
        self._names.clear()
        if reg is not None and keep is not None:
            reg.pid = os.getpid()
            self._threads[reg.slot] = keep
            self._names[keep.serial] = keep.name


def _thread_words(info: ThreadInfo | None) -> str:
    if info is None:
        return "(unknown)"
    thread = info.thread()
    name = thread.name if thread is not None else info.name
    return f"{name!r} (id {info.ident})"


def tasks_inside(var: contextvars.ContextVar[object], owner: int) -> list[str]:
    """Names of the tasks whose context holds an open section entered by thread ``owner``.

    ``owner`` is a thread serial (``aiorcu_thread_serial``).

    Diagnostic path for stall warnings: scans the heap for asyncio and trio
    tasks and reads each one's context, so the read path never has to record
    which task entered.
    """
    trio = sys.modules.get("trio")
    trio_task = trio.lowlevel.Task if trio is not None else ()
    names = []
    for obj in gc.get_objects():
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
            while isinstance(node, _hotpath.ReadSection):
                if node.counted and node._thread == owner:
                    names.append(task_name(obj))
                    break
                node = node._prev
    return sorted(names)


def task_name(task: object) -> str:
    name = getattr(task, "get_name", None)
    if callable(name):
        return str(name())
    return str(getattr(task, "name", repr(task)))
