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
from collections.abc import Awaitable, Callable
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


class _FirstSection:
    """What ``domain.read()`` returns on a thread that has no reader yet.

    Registers the thread's reader, then behaves as it: only the first
    section on each thread goes through here.  Every method acts on the
    *calling* thread's reader, so one instance serves all threads.
    """

    __slots__ = ("_domain",)

    def __init__(self, domain: Domain) -> None:
        self._domain = domain

    def _reader(self) -> ReadSection:
        local = self._domain._local
        reader: ReadSection | None = getattr(local, "reader", None)
        if reader is None:
            reader = self._domain._register_reader()
            local.reader = reader
            local.sentinel = _ThreadSentinel(self._domain, reader)
        return reader

    def __enter__(self) -> None:
        self._reader().__enter__()

    def _entered(self) -> ReadSection:
        """The reader a section was entered with, for leaving it.

        A section entered here and left on another thread must reach the
        entering thread's reader, which reports the misuse; registering a
        reader for the leaving thread would hide it.
        """
        domain = self._domain
        node = domain._var.get()
        while node is not None and not node.open:
            node = node.prev
        if node is not None:
            return node.reader
        reader: ReadSection | None = getattr(domain._local, "reader", None)
        if reader is None:
            # Left on a thread that never read: the section belongs to some
            # other thread; if only one has a `with` section open, it is it.
            with domain._registry_lock:
                open_readers = [r for r in domain._readers.values() if r.depth]
            if len(open_readers) == 1:
                return open_readers[0]
            raise RcuUsageError(
                f"a read section of domain {domain.name!r} was left on thread "
                f"{threading.current_thread().name!r}, which never entered one; sections are "
                "per thread: leave the section on the thread that entered it"
            )
        return reader

    def __exit__(self, *exc: Any) -> None:
        reader: ReadSection | None = getattr(self._domain._local, "reader", None)
        (reader if reader is not None else self._entered()).__exit__(*exc)

    def __aenter__(self) -> Awaitable[None]:
        return self._reader().__aenter__()

    def __aexit__(self, *exc: Any) -> Awaitable[None]:
        return self._entered().__aexit__(*exc)


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
        self._local = threading.local()
        # The read path is the hot path: an instance attribute that is a C
        # partial of getattr on a plain threading.local costs no Python frame
        # (a local subclass with __getattr__ would cost ~70 ns more).  Threads
        # without a reader get the shared _FirstSection.  `read` documents it.
        self.__dict__["read"] = functools.partial(
            getattr, self._local, "reader", _FirstSection(self)
        )
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
        return self.__dict__["read"]()  # type: ignore[no-any-return]

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
        # The thread's exit hook and a stall warning that finds the thread dead
        # may both get here, in either order.  Only the call that unregisters
        # the reader frees its slot: by the second call the slot may already
        # belong to a new thread.
        with self._registry_lock:
            if self._readers.get(reader.slot) is not reader:
                return
            del self._readers[reader.slot]
            if self._by_ident.get(reader.owner) is reader:
                del self._by_ident[reader.owner]
        left = reader.thread_exited()
        self._core.slot_release(reader.slot)
        if left:
            thread = reader.thread()
            logger.warning(
                "thread %r (id %s) exited inside %d read section(s) of domain %r; "
                "its reader slot was released",
                thread.name if thread is not None else reader.thread_name,
                reader.owner,
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
        self._check_not_in_callback("synchronize_blocking()")
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
        self._check_not_in_callback("await synchronize()")
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
        self._check_not_in_callback(what)
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
        self._check_not_in_callback(what)
        reader = self._current_reader()
        if self._task_inside() or (reader is not None and reader.inside_on_thread()):
            raise RcuUsageError(
                f"{what} called inside a read section on this thread; it would wait for "
                "itself. Leave the section first or use call_after_grace_period()"
            )

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
        name = thread.name if thread is not None else reader.thread_name
        text = f"thread {name!r} (id {reader.owner})"
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
        # Only a thread known to have stopped, outside interpreter shutdown
        # (when even live daemon threads may look stopped), is released.  A
        # collected Thread object means stopped too: threading keeps the
        # object of every running thread alive.
        if (
            release_dead
            and (thread is None or not thread.is_alive())
            and threading.main_thread().is_alive()
        ):
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
        # Emptied in place: RcuCell keeps a reference to _by_ident.
        self._readers.clear()
        self._by_ident.clear()
        if keep is not None:
            self._readers[keep.slot] = keep
            self._by_ident[ident] = keep
        if keep is not None:
            keep.pid = os.getpid()
            keep.orphans.clear()
        self._core.after_fork(keep.slot if keep is not None else -1)
        self._worker.after_fork()
        self._callbacks.after_fork()

    # -- deferred reclamation and polling --------------------------------------
    def call_after_grace_period(self, fn: Callable[..., Any], /, *args: Any) -> None:
        """Runs ``fn(*args)`` on the domain's callback thread after a grace period.

        The way to retire an object without blocking a writer: publish the
        change, then queue its clean-up.  Queueing only appends to a deque
        (about the cost of two Python calls) and never waits.  Callbacks
        queued together share one grace period and run in the order queued,
        one at a time, on a daemon thread the domain starts on first use.  An
        exception in a callback is logged with its traceback on the
        ``aiorcu`` logger and the others still run.  A callback must not wait
        for a grace period or a barrier of its domain (it would wait for
        itself); it may queue more callbacks.

        At interpreter exit, queued callbacks run if their grace period
        completes within about a second; the rest are reported on the logger
        and exit goes on.  A fork child starts with an empty queue.

        Args:
            fn: Called as ``fn(*args)`` on the callback thread.
            *args: Passed to ``fn``; kept alive until it ran.
        """
        callbacks = self._callbacks
        # Append first, then read `idle`: pairs with the worker's store of
        # `idle` followed by its re-check of the queue (_callbacks._main).
        callbacks.append((fn, args) if args else fn)  # see _callbacks.Entry
        if callbacks.idle:
            callbacks.wake()

    def barrier_blocking(self) -> None:
        """Blocks until every callback queued before the call has run.

        Use it before tearing down what callbacks touch, or in tests.  It
        queues a marker callback and waits for it, so it costs at least one
        grace period.

        Raises:
            RcuUsageError: Called from a callback (the callback thread would
                wait for itself), or on a thread that is inside a read section
                of the domain (the callbacks' grace period would wait for it).
        """
        self._check_barrier_allowed("barrier_blocking()", self._check_thread_inside())
        done = threading.Event()
        self.call_after_grace_period(done.set)
        done.wait()

    async def barrier(self) -> None:
        """Waits, without blocking the event loop, until every callback queued before ran.

        Other tasks' read sections on this loop do not count: they close while
        this task waits.

        Cancellation: a cancelled call returns promptly; the callbacks it
        waited for still run.

        Raises:
            RcuUsageError: Called from a callback, or inside a read section
                held by the calling task (or this thread's ``with`` code).
        """
        reader = self._current_reader()
        self._check_barrier_allowed("await barrier()", reader is not None and reader.depth > 0)
        event = anyio.Event()
        self.call_after_grace_period(threadsafe_setter(event))
        await event.wait()

    def _check_barrier_allowed(self, what: str, thread_inside: bool) -> None:
        self._check_not_in_callback(what)
        if thread_inside or self._task_inside():
            raise RcuUsageError(
                f"{what} called inside a read section of domain {self.name!r}; the "
                "callbacks wait for a grace period that waits for this section. "
                "Leave the section first"
            )

    def _check_thread_inside(self) -> bool:
        reader = self._current_reader()
        return reader is not None and reader.inside_on_thread()

    def _check_not_in_callback(self, what: str) -> None:
        """Raises if the caller is an RCU callback: it would wait for its own thread.

        Writers' waits (synchronize*, wait*, barrier*) call this first.
        """
        if _callbacks.in_callback():
            raise RcuUsageError(
                f"{what} called from an RCU callback of domain {self.name!r}; callbacks "
                "run on the domain's callback thread, which would wait for itself. Queue "
                "more work with call_after_grace_period() instead"
            )

    def _grace_period_for_callbacks(self, timeout_ns: int) -> bool:
        # The callback thread owns no reader slot; stall warnings still apply.
        # snapshot() fences after the batch was taken (see _callbacks' doc).
        flags = _lowlevel.SYNC_BUSTED if self._busted else 0
        rc = self._core.synchronize(self._core.snapshot(), timeout_ns, flags, -1)
        if rc == _lowlevel.TIMEDOUT:
            return False
        self._raise_for(rc)
        return True

    def snapshot(self) -> int:
        """Returns a token naming the first grace period that starts after this call.

        For writers that can do other work before retiring something: take a
        token right after publishing, and later `poll()` it, or wait for it
        with `wait_blocking()` or ``await`` `wait()`.  Starts nothing
        and costs one fence, so a token nobody waits for completes only when
        some other writer runs a grace period; see `start_grace_period()`.

        Returns:
            A Python int; it never wraps, and once complete a token stays
            complete.
        """
        return self._core.snapshot()

    def start_grace_period(self) -> int:
        """Like `snapshot()`, and makes sure that grace period will run.

        The domain's grace-period thread runs it even if nobody waits, so a
        later `poll()` turns true on its own.  Costs a thread wake-up when
        the grace period is not already complete.

        Returns:
            The token, as from `snapshot()`.
        """
        token = self._core.snapshot()
        if self._core.completed() < token:
            self._worker.submit(Waiter(token, lambda: None))
        return token

    def poll(self, token: int) -> bool:
        """Whether the grace period named by ``token`` has completed.

        Never waits and starts nothing: one atomic load.  Once true, true
        forever.

        Args:
            token: From `snapshot()` or `start_grace_period()`.
        """
        return self._core.completed() >= token

    def wait_blocking(self, token: int, timeout: float | None = None) -> None:
        """Blocks until the grace period named by ``token`` completed.

        Returns at once if it already has; otherwise runs (or shares) grace
        periods like `synchronize_blocking()`.

        Args:
            token: From `snapshot()` or `start_grace_period()`.
            timeout: Seconds to wait at most; ``None`` waits as long as needed.

        Raises:
            RcuUsageError: The grace period is not complete and the caller is
                inside a read section on this thread, or is a callback.
            GracePeriodTimeout: ``timeout`` passed first; the token stays valid.
        """
        self._wait_blocking(token, timeout, "wait_blocking()")

    async def wait(self, token: int) -> None:
        """Waits, without blocking the event loop, until ``token`` completed.

        Like ``await`` `synchronize()`, for a token taken earlier.

        Cancellation: a cancelled call returns promptly and leaves nothing
        behind; the grace period may still complete for others.

        Args:
            token: From `snapshot()` or `start_grace_period()`.

        Raises:
            RcuUsageError: The calling task (its context) or this thread's
                ``with`` code is inside a read section of the domain, or the
                caller is a callback.
        """
        await self._wait(token, "await wait()")


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
