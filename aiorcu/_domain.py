"""RCU domains: independent grace periods, their readers and their writers."""

from __future__ import annotations

import contextvars
import functools
import itertools
import logging
import os
import threading
import weakref
from _thread import get_ident
from collections.abc import Callable
from typing import Any, Final, final

import anyio

from . import _callbacks, _lowlevel
from ._errors import AiorcuError, GracePeriodTimeout, RcuUsageError
from ._reader import READER_CLASS, ReadSection, _Section, tasks_inside
from ._records import BackendInfo, DomainStatistics
from ._worker import GraceWorker, Waiter, threadsafe_setter

logger = logging.getLogger("aiorcu")

_STAGES: Final = {
    _lowlevel.STAGE_STRAGGLERS: "readers that entered before the last phase flip",
    _lowlevel.STAGE_CLOSED: "readers of the phase this grace period closed",
}
_names = itertools.count(1)
_domains: weakref.WeakSet[Domain] = weakref.WeakSet()


class _ThreadSentinel:
    """Lives only in a thread's local storage: dropped when the thread exits."""

    __slots__ = ("domain", "reader")

    def __init__(self, domain: Domain, reader: ReadSection) -> None:
        self.domain = weakref.ref(domain)
        self.reader = reader

    def __del__(self) -> None:
        try:
            domain = self.domain()
            if domain is not None and self.reader.pid == os.getpid():
                domain._thread_exited(self.reader)
        except Exception:  # interpreter shutdown: modules may be half gone
            pass


class _ReaderLocal(threading.local):
    """Per-thread reader of one domain, registered on a thread's first read."""

    reader: ReadSection
    sentinel: _ThreadSentinel

    def __init__(self, domain_ref: weakref.ref[Domain]) -> None:
        # threading.local runs this in every thread that touches the object,
        # including the constructing one: it must not register a reader.
        self.domain_ref = domain_ref

    def __getattr__(self, name: str) -> ReadSection:
        # Only reached while this thread has no reader yet.
        if name != "reader":
            raise AttributeError(name)
        domain = self.domain_ref()
        if domain is None:
            raise AiorcuError("the domain was garbage-collected")
        reader = domain._register_reader()
        self.reader = reader
        self.sentinel = _ThreadSentinel(domain, reader)
        return reader


@final
class Domain:
    """An RCU domain: readers that never block, writers that wait for them.

    Readers enter a *read section* with ``with domain.read():`` (threads) or
    ``async with domain.read():`` (tasks).  A section costs a few plain stores
    to memory that only the reading thread writes: no lock, no system call,
    and no memory barrier when membarrier(2) is available.

    A writer publishes a change, then waits for a *grace period* with
    `synchronize_blocking()` or ``await`` `synchronize()`: once it
    returns, every read section that began before the call has ended, so no
    reader can still be using what the change removed.

    Domains are independent: a long reader in one never delays grace periods
    of another.  Most programs need one per kind of shared state, or just
    `global_domain()`.

    Args:
        name: Shown in logs, stall warnings and reprs.  Defaults to
            ``"domain-N"``.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name: str = name if name is not None else f"domain-{next(_names)}"
        self._core = _lowlevel.CoreDomain(self._on_stall)
        self._var: contextvars.ContextVar[_Section | None] = contextvars.ContextVar(
            f"aiorcu-section-{self.name}", default=None
        )
        self._reader_class: type[ReadSection] = READER_CLASS
        self._registry_lock = threading.Lock()
        self._readers: dict[int, ReadSection] = {}  # slot -> reader
        self._by_ident: dict[int, ReadSection] = {}  # thread ident -> reader
        self._stall_warnings = 0
        self._busted = False
        self._worker = GraceWorker(self.name, self._run_for_worker, self._core.completed)
        self._callbacks = _callbacks.CallbackWorker(self.name, self._grace_period_for_callbacks)
        self._local = _ReaderLocal(weakref.ref(self))
        # The read path is the hot path: an instance attribute that is a C
        # partial of getattr costs no Python frame.  `read` below documents it.
        self.__dict__["read"] = functools.partial(getattr, self._local, "reader")
        _domains.add(self)

    def read(self) -> ReadSection:
        """Returns this thread's read section of this domain, to enter at once.

        ``with domain.read():`` protects thread code; sections nest.
        ``async with domain.read():`` protects task code and may await inside;
        it pins the section to the event loop's thread, and many tasks may
        hold overlapping sections.  Inside, readers may use whatever the
        domain protects; a writer's grace period waits for the section to end.

        Returns:
            The calling thread's reusable section object.  Use it right away;
            never hand it to another thread.
        """
        return self._local.reader

    # -- registry -----------------------------------------------------------
    def _register_reader(self) -> ReadSection:
        ident = get_ident()
        slot = self._core.slot_alloc(ident)
        reader = self._reader_class(self, slot)
        with self._registry_lock:
            self._readers[slot] = reader
            self._by_ident[ident] = reader
        return reader

    def _thread_exited(self, reader: ReadSection) -> None:
        ident = reader.ident
        left = reader.thread_exited()
        with self._registry_lock:
            if self._readers.get(reader.slot) is reader:
                del self._readers[reader.slot]
            if ident is not None and self._by_ident.get(ident) is reader:
                del self._by_ident[ident]
        self._core.slot_release(reader.slot)
        if left:
            thread = reader.thread()
            logger.warning(
                "thread %r (id %s) exited inside %d read section(s) of domain %r; "
                "its reader slot was released",
                thread.name if thread is not None else "<unknown>",
                ident,
                left,
                self.name,
            )

    def _current_reader(self) -> ReadSection | None:
        """This thread's reader, if it has one (never registers one)."""
        return self._by_ident.get(get_ident())

    def _inside(self) -> bool:
        """Whether the caller is inside a read section of this domain.

        True when this thread has an open ``with`` section, or this task's
        context has an open ``async with`` section.
        """
        reader = self._by_ident.get(get_ident())
        return (reader is not None and reader.depth > 0) or self._task_inside()

    def _task_inside(self) -> bool:
        """Whether this context has an open ``async with`` section of the domain.

        Closed records stay in the context until its next section, so walk
        past them to the innermost open one.
        """
        node = self._var.get()
        while node is not None:
            if node.open:
                return True
            node = node.prev
        return False

    def _require_inside(self, what: str) -> None:
        if not self._inside():
            raise RcuUsageError(
                f"{what} called outside a read section of domain {self.name!r}; "
                f"wrap the access in `with {self.name}.read():` (thread) or "
                f"`async with {self.name}.read():` (task)"
            )

    # -- writers ----------------------------------------------------------------
    def synchronize_blocking(self, timeout: float | None = None) -> None:
        """Waits for a grace period: every read section that began before this call ends.

        With no reader active this returns in microseconds.  Otherwise it
        spins briefly, then sleeps (without the GIL) until the last such
        reader leaves.  Readers that enter after the call do not delay it.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as needed
                (logging stall warnings from 100 ms on).

        Raises:
            RcuUsageError: This thread is inside a read section of the domain
                (its own, or another task's on this event loop): the wait
                could never finish.
            GracePeriodTimeout: ``timeout`` passed first.  The domain stays
                consistent; later grace periods still wait for every reader.
        """
        self._wait_blocking(self._core.snapshot(), timeout, "synchronize_blocking()")

    async def synchronize(self) -> None:
        """Waits for a grace period without blocking the event loop.

        Decides on the loop whether any reader must be waited for; with none
        it completes the grace period inline in microseconds.  Otherwise the
        domain's grace-period thread waits, and concurrent callers share its
        grace periods.  Works under asyncio and trio.

        Cancellation: a cancelled call returns promptly and leaves nothing
        behind; the grace period it asked for may still run for others.

        Raises:
            RcuUsageError: The calling task (its context) or this thread's
                ``with`` code is inside a read section of the domain.
        """
        await self._wait(self._core.snapshot(), "await synchronize()")

    def _wait_blocking(self, target: int, timeout: float | None, what: str) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
        if self._core.completed() >= target:
            return
        self._check_blocking_allowed(what)
        reader = self._current_reader()
        timeout_ns = -1 if timeout is None else int(timeout * 1e9)
        rc = self._core.synchronize(
            target,
            timeout_ns,
            _lowlevel.SYNC_BUSTED if self._busted else 0,
            reader.slot if reader is not None else -1,
        )
        if rc == _lowlevel.TIMEDOUT:
            raise GracePeriodTimeout(
                f"grace period of domain {self.name!r} did not complete within {timeout} s; "
                f"still inside: {self._describe_blocking() or 'nobody now'}. The domain is "
                "consistent: retry, or find the reader that does not leave its section"
            )
        self._raise_for(rc)

    def _check_async_allowed(self, what: str) -> None:
        """Raises if an async wait would wait for the calling task's own section.

        Other tasks' sections on this loop do not count: they close while
        this task waits.
        """
        if _callbacks.in_callback():
            raise RcuUsageError(self._in_callback_message(what))
        reader = self._current_reader()
        if self._task_inside() or (reader is not None and reader.depth):
            raise RcuUsageError(
                f"{what} called inside a read section of domain {self.name!r} "
                "held by this task; it would wait for itself. Leave the section first, "
                "or use call_after_grace_period()"
            )

    async def _wait(self, target: int, what: str) -> None:
        self._check_async_allowed(what)
        reader = self._current_reader()
        if self._core.completed() >= target:
            return
        flags = _lowlevel.SYNC_TRY | (_lowlevel.SYNC_BUSTED if self._busted else 0)
        rc = self._core.synchronize(target, 0, flags, reader.slot if reader is not None else -1)
        if rc == _lowlevel.BUSY:
            await self._worker.wait(target)
            return
        self._raise_for(rc)

    def _in_callback_message(self, what: str) -> str:
        return (
            f"{what} called from an RCU callback of domain {self.name!r}; callbacks run on "
            "the domain's callback thread, which would wait for itself. Queue more work "
            "with call_after_grace_period() instead"
        )

    def _run_for_worker(self, target: int) -> BaseException | None:
        flags = _lowlevel.SYNC_BUSTED if self._busted else 0
        rc = self._core.synchronize(target, -1, flags, -1)
        try:
            self._raise_for(rc)
        except AiorcuError as exc:
            return exc
        return None

    def _raise_for(self, rc: int) -> None:
        if rc == _lowlevel.EBARRIER:
            raise AiorcuError(
                f"grace period of domain {self.name!r} failed: membarrier(2) failed and its "
                "MEMBARRIER_CMD_GLOBAL fallback failed too, so readers could not be ordered; "
                "nothing was skipped. Run with AIORCU_MEMBARRIER=off to use fences"
            )
        if rc != _lowlevel.OK:
            raise AiorcuError(f"grace period failed with code {rc}")

    def _check_blocking_allowed(self, what: str) -> None:
        if _callbacks.in_callback():
            raise RcuUsageError(self._in_callback_message(what))
        reader = self._current_reader()
        if self._task_inside() or (reader is not None and reader.inside_on_thread()):
            raise RcuUsageError(
                f"{what} called inside a read section on this thread; it would wait for "
                "itself. Leave the section first or use call_after_grace_period()"
            )

    # -- deferred reclamation and polling --------------------------------------
    def call_after_grace_period(self, fn: Callable[..., Any], /, *args: Any) -> None:
        """Runs ``fn(*args)`` on the domain's callback thread after a grace period.

        The way to retire an object without blocking: publish the change,
        then queue its clean-up.  Queueing only appends to a deque; callbacks
        queued together share one grace period and run in the order queued.
        An exception in a callback is logged on the ``aiorcu`` logger and the
        others still run.  At interpreter exit, queued callbacks run if their
        grace period completes within about a second; the rest are reported.
        """
        self._callbacks.call(fn, args)

    def barrier_blocking(self) -> None:
        """Returns once every callback queued before the call has run.

        Raises:
            RcuUsageError: Called from a callback, or inside a read section.
        """
        self._check_barrier_allowed("barrier_blocking()")
        done = threading.Event()
        self._callbacks.call(done.set, ())
        done.wait()

    async def barrier(self) -> None:
        """Waits, without blocking the loop, until every callback queued before ran.

        Cancellation: a cancelled call returns promptly; the callbacks still run.

        Raises:
            RcuUsageError: Called from a callback, or inside a read section.
        """
        self._check_barrier_allowed("await barrier()")
        event = anyio.Event()
        self._callbacks.call(threadsafe_setter(event), ())
        await event.wait()

    def _check_barrier_allowed(self, what: str) -> None:
        if _callbacks.in_callback():
            raise RcuUsageError(self._in_callback_message(what))
        if self._inside() or self._check_thread_inside():
            raise RcuUsageError(
                f"{what} called inside a read section of domain {self.name!r}; callbacks "
                "wait for a grace period that waits for this section. Leave the section first"
            )

    def _check_thread_inside(self) -> bool:
        reader = self._current_reader()
        return reader is not None and reader.inside_on_thread()

    def _grace_period_for_callbacks(self) -> None:
        # The callback thread owns no reader slot; stall warnings still apply.
        self._raise_for(
            self._core.synchronize(
                self._core.snapshot(), -1, _lowlevel.SYNC_BUSTED if self._busted else 0, -1
            )
        )

    def snapshot(self) -> int:
        """Returns a token for the first grace period that starts after this call.

        Starts nothing and costs a fence.  Tokens are Python ints that never
        wrap; once `poll()` says a token is complete it stays complete.
        """
        return self._core.snapshot()

    def start_grace_period(self) -> int:
        """Like `snapshot()`, and makes sure that grace period will run.

        The domain's grace-period thread runs it even if nobody waits.
        """
        token = self._core.snapshot()
        if self._core.completed() < token:
            self._worker.submit(Waiter(token, _nothing))
        return token

    def poll(self, token: int) -> bool:
        """Whether the grace period named by ``token`` has completed."""
        return self._core.completed() >= token

    def wait_blocking(self, token: int, timeout: float | None = None) -> None:
        """Blocks until the grace period named by ``token`` completed.

        Raises:
            RcuUsageError: Called inside a read section or from a callback.
            GracePeriodTimeout: ``timeout`` seconds passed first.
        """
        self._wait_blocking(token, timeout, "wait_blocking()")

    async def wait(self, token: int) -> None:
        """Waits, without blocking the loop, until ``token`` completed.

        Cancellation: as for `synchronize()`.
        """
        await self._wait(token, "await wait()")

    # -- stalls ---------------------------------------------------------------
    def _on_stall(self, waited_ns: int, stage: int, phase: int) -> None:
        # Called by the C writer with the writer mutex held and the GIL taken.
        self._stall_warnings += 1
        logger.warning(
            "grace period of domain %r has waited %.3f s for %s: %s",
            self.name,
            waited_ns / 1e9,
            _STAGES.get(stage, "readers"),
            self._describe_blocking(phase, release_dead=True) or "(they just left)",
        )

    def _describe_blocking(self, phase: int | None = None, release_dead: bool = False) -> str:
        phases = (0, 1) if phase is None else (phase,)
        seen: dict[int, int] = {}
        for p in phases:
            for slot, blocked_ns in self._core.blocking_slots(p):
                seen[slot] = max(blocked_ns, seen.get(slot, 0))
        parts = []
        for slot, blocked_ns in seen.items():
            with self._registry_lock:
                reader = self._readers.get(slot)
            if reader is None:
                parts.append(f"slot {slot} (not a Python thread)")
                continue
            parts.append(self._describe_reader(reader, blocked_ns, release_dead))
        return "; ".join(parts)

    def _describe_reader(self, reader: ReadSection, blocked_ns: int, release_dead: bool) -> str:
        thread = reader.thread()
        name = thread.name if thread is not None else "<exited>"
        text = f"thread {name!r} (id {reader.ident})"
        if blocked_ns:
            text += f" inside for at least {blocked_ns / 1e9:.3f} s"
        details = []
        if reader.depth:
            details.append(f"{reader.depth} `with` section(s)")
        tasks = tasks_inside(self._var, reader) if reader.tasks[0] or reader.tasks[1] else []
        if tasks:
            details.append("`async with` in task(s) " + ", ".join(repr(t) for t in tasks))
        elif reader.tasks[0] or reader.tasks[1]:
            details.append(f"{reader.tasks[0] + reader.tasks[1]} `async with` section(s)")
        if reader.orphans:
            details.append(f"{len(reader.orphans)} release(s) queued for this thread")
        if details:
            text += " [" + "; ".join(details) + "]"
        if release_dead and (thread is None or not thread.is_alive()):
            self._thread_exited(reader)
            text += " - the thread has exited; its slot was released"
        return text

    # -- introspection -----------------------------------------------------------
    def stats(self) -> DomainStatistics:
        """Returns a snapshot of the domain's counters."""
        core = self._core.stats()
        with self._registry_lock:
            readers = list(self._readers.values())
        return DomainStatistics(
            grace_periods=core["grace_periods"],
            membarrier_calls=core["membarrier_calls"],
            threads_registered=core["slots_live"],
            readers_active=sum(r.open_sections() for r in readers),
            offloaded_waits=self._worker.offloaded,
            stall_warnings=self._stall_warnings,
            callbacks_pending=self._callbacks.pending,
            barriers_elided=core["barriers_elided"],
            barrier_fallbacks=core["barrier_fallbacks"],
            writer_sleeps=core["futex_sleeps"],
            reader_wakeups=core["wakeups"],
            backstop_timeouts=core["backstop_timeouts"],
            timeouts=core["timeouts"],
            completed_sequence=core["completed"],
        )

    def __repr__(self) -> str:
        return f"<aiorcu.Domain {self.name!r}>"

    # -- fork ---------------------------------------------------------------------
    def _after_fork_child(self) -> None:
        ident = get_ident()
        keep = self._by_ident.get(ident)
        for reader in list(self._readers.values()):
            if reader is not keep:
                reader.thread_exited()
        self._registry_lock = threading.Lock()
        self._readers = {keep.slot: keep} if keep is not None else {}
        self._by_ident = {ident: keep} if keep is not None else {}
        if keep is not None:
            keep.pid = os.getpid()
            keep.orphans.clear()
        self._core.after_fork(keep.slot if keep is not None else -1)
        self._worker.after_fork()
        self._callbacks.after_fork()


def _nothing() -> None:
    pass


def _after_fork_child() -> None:
    for domain in list(_domains):
        domain._after_fork_child()


os.register_at_fork(after_in_child=_after_fork_child)

_global_lock = threading.Lock()
_global: Domain | None = None


def global_domain() -> Domain:
    """Returns the process-wide default domain, created on first use."""
    global _global
    if _global is None:
        with _global_lock:
            if _global is None:
                _global = Domain(name="global")
    return _global


def backend_info() -> BackendInfo:
    """Says which barrier mechanism this process uses, and why."""
    return BackendInfo(
        membarrier=_lowlevel.MEMBARRIER,
        mechanism="membarrier-private-expedited" if _lowlevel.MEMBARRIER else "fence",
        reason=_lowlevel.FALLBACK_REASON,
    )
