"""RCU domains: independent grace periods, their readers and their writers.

A domain is composed of parts, each with one job:

- the read path, in C (`_hotpath.DomainBase`, which this class extends):
  sections, the "inside" test, callback queueing;
- `ThreadRegistry` (``_registry``): which thread owns which reader slot,
  thread exit, fork;
- `GraceRunner` (``_grace``): the one path to the C writer, used by every
  wait and by both workers, with its `StallReporter` (``_stall``);
- `WaitRules` (``_rules``): the checks that refuse a wait that could never
  finish;
- `GraceWorker` (``_worker``): async waiters share grace periods on one thread;
- `CallbackWorker` (``_callbacks``): deferred reclamation.

`ReadWriteDomain` holds the reader and writer API that every kind of domain
shares; `Domain` is the in-process one.
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
import logging
import os
import threading
import weakref
from typing import final

import anyio

from . import _callbacks, _hotpath, _lowlevel
from ._errors import GracePeriodTimeout, RcuUsageError
from ._grace import GraceRunner, stall_seconds, timeout_ns
from ._hotpath import ReadSection
from ._records import BackendInfo, DomainStatistics
from ._rules import WaitRules
from ._worker import GraceWorker, Waiter, loop_on_this_thread, threadsafe_setter

logger = logging.getLogger("aiorcu")

_names = itertools.count(1)
_domains: weakref.WeakSet[ReadWriteDomain] = weakref.WeakSet()

_KINDS = {_lowlevel.KIND_THREAD: "`with`", _lowlevel.KIND_TASK: "`async with`"}

# The C read path names threads as the core does, raises RcuUsageError, and
# refuses coroutine functions as callbacks the way inspect decides them.
_hotpath.configure(_lowlevel.THREAD_SERIAL_ADDRESS, RcuUsageError, inspect.iscoroutinefunction)


class ReadWriteDomain(_hotpath.DomainBase):
    """The reader and writer API every domain shares (`Domain`, `SharedDomain`).

    Subclasses build the parts in ``__init__`` through `_assemble()`.
    """

    name: str
    _var: contextvars.ContextVar[ReadSection | None]

    def _assemble(self, name: str, grace: GraceRunner) -> None:
        """Builds the parts around ``grace`` and binds the C read path to its core."""
        self.name = name
        self._grace = grace
        self._threads = grace.registry
        self._rules = WaitRules(name, self)
        core = grace.core
        self._bind(core, self._var, *core.hotpath_binding())
        self._worker = GraceWorker(name, grace.run_for_worker, core.completed)
        self._warned_loop = False  # blocking on an event-loop thread: warned once
        self._callbacks = _callbacks.CallbackWorker(
            name, grace.run_for_callbacks, self._set_callbacks, self._set_idle
        )
        _domains.add(self)

    # -- read side (the hot path is C: _hotpath.DomainBase) -------------------
    # read() and call_after_grace_period() are inherited C methods; see
    # _hotpath.pyi for their documentation.

    def _thread_slot(self, create: bool) -> int | None:
        # The C read path's slow path: its thread-local cache missed.
        return self._threads.thread_slot(create)

    def _refuse_outside(self, what: str) -> None:
        raise RcuUsageError(
            f"{what} called outside a read section of domain {self.name!r}; wrap the access in "
            "`with domain.read():` (thread code) or `async with domain.read():` (task code). "
            "A worker thread running a copy of a task's context (asyncio.to_thread, "
            "run_in_executor) is not inside that task's section"
        )

    def _section_problem(
        self, what: str, kind: int, thread: int, exc_type: type[BaseException] | None
    ) -> None:
        """Reports a misused section for the C read path; raises or logs."""
        owner = self._threads.name_of(thread)
        entered = f"thread {owner!r}" if owner is not None else "another thread"
        here = threading.current_thread().name
        section = f"a {_KINDS[kind]} read section of domain {self.name!r}"
        if what in ("collected", "dropped"):
            logger.warning(
                "%s entered on %s was %s while open: its task or generator was dropped "
                "while inside, or its event loop closed. The section was released. Leave "
                "sections before dropping a task, and close async generators with aclose() "
                "(contextlib.aclosing)",
                section,
                entered,
                "garbage-collected"
                if what == "collected"
                else "closed outside the task that entered it",
            )
            return
        if what == "kind":
            raise RcuUsageError(
                f"{section} was left with the other protocol; it was released. Leave "
                "`with` sections with `with` and `async with` sections with `async with`"
            )
        message = (
            f"{section} entered on {entered} was left on thread {here!r}; it was released "
            "at once, so grace periods no longer wait for it. Sections are per thread: leave "
            "a section on the thread that entered it"
        )
        if exc_type is not None and issubclass(exc_type, GeneratorExit):
            # A dropped generator closed by the collector or a finalizer on
            # this thread: raising would only make an unraisable error.
            logger.warning("%s (a generator holding it was closed here)", message)
            return
        raise RcuUsageError(message)

    def _set_idle(self, idle: bool) -> None:
        self._callbacks_idle = idle

    # -- writers ----------------------------------------------------------------
    def synchronize_blocking(self, timeout: float | None = None) -> None:
        """Waits for a grace period: every read section that began before this call ends.

        With no reader active this returns in microseconds.  Otherwise it
        spins briefly, then sleeps (without the GIL) until the last such
        reader leaves.  Readers that enter after the call do not delay it.

        Args:
            timeout: Seconds to wait at most.  ``None``, ``float("inf")``
                and values too large for the clock wait as long as needed
                (logging stall warnings after the domain's ``stall_warning``).

        Raises:
            RcuUsageError: This thread is inside a read section of the domain
                (its own, or another task's on this event loop): the wait
                could never finish.
            GracePeriodTimeout: ``timeout`` passed first.  The domain stays
                consistent; later grace periods still wait for every reader.
            ValueError: ``timeout`` is negative or NaN.
        """
        ns = timeout_ns(timeout)
        self._rules.blocking_wait("synchronize_blocking()")
        self._wait_blocking(self._grace.core.snapshot(), ns, timeout)

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
        await self._wait(self._grace.core.snapshot(), "await synchronize()")

    def _wait_blocking(self, target: int, ns: int, timeout: float | None) -> None:
        if self._grace.core.completed() >= target:
            return
        slot = self._threads.current_slot()
        # Nobody to wait for (the common case): done, without the checks below.
        if self._grace.run(target, try_only=True, caller_slot=slot):
            return
        # This thread holds no section (checked before): any open one is
        # another thread's, and an event loop here stops while we wait for it.
        if (
            not self._warned_loop
            and (loop := loop_on_this_thread()) is not None
            and self._grace.core.stats()["sections_open"]
        ):
            self._warned_loop = True
            logger.warning(
                "a blocking grace period of domain %r is waiting for a reader on another "
                "thread while this thread runs %s event loop, which is blocked until "
                "it ends; in async code use `await domain.synchronize()` (warned once "
                "per domain)",
                self.name,
                "an asyncio" if loop == "asyncio" else "a trio",
            )
        if not self._grace.run(target, ns, caller_slot=slot):
            raise GracePeriodTimeout(
                f"grace period of domain {self.name!r} did not complete within {timeout} s; "
                f"still inside: {self._grace.stalls.describe_blocking() or 'nobody now'}. The "
                "domain is consistent: retry, or find the reader that does not leave its section"
            )

    async def _wait(self, target: int, what: str) -> None:
        self._rules.async_wait(what)
        if self._grace.core.completed() >= target:
            return
        if not self._grace.run(target, try_only=True, caller_slot=self._threads.current_slot()):
            await self._worker.wait(target)

    def check_blocking_wait(self, what: str) -> None:
        """Raises `RcuUsageError` if a blocking grace-period wait here could never finish.

        For structures built on a domain (aiorcu's own cells and bitmaps use
        it): call it before changing anything, then wait.  A wait cannot
        finish on a thread inside a read section of this domain (its own
        ``with`` section, or another task's on this event loop), or in one
        of the domain's callbacks.

        Args:
            what: How the caller names itself in the message, e.g.
                ``"Table.replace_blocking()"``.
        """
        self._rules.blocking_wait(what)

    def check_async_wait(self, what: str) -> None:
        """Raises `RcuUsageError` if an awaited grace period here could never finish.

        As `check_blocking_wait()`, for async code: only the calling task's
        own sections (and this thread's ``with`` sections) count; other
        tasks' sections close while this one waits.

        Args:
            what: How the caller names itself in the message.
        """
        self._rules.async_wait(what)

    # -- deferred reclamation --------------------------------------------------
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
        self._rules.barrier("barrier_blocking()", blocking=True)
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
        self._rules.barrier("await barrier()", blocking=False)
        event = anyio.Event()
        self.call_after_grace_period(threadsafe_setter(event))
        await event.wait()

    def _check_open(self) -> None:
        """Raises `RcuUsageError` if this process detached (a closed `SharedDomain`)."""

    # -- polled grace periods -----------------------------------------------------
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
        return self._grace.core.snapshot()

    def start_grace_period(self) -> int:
        """Like `snapshot()`, and makes sure that grace period will run.

        The domain's grace-period thread runs it even if nobody waits, so a
        later `poll()` turns true on its own.  Costs a thread wake-up when
        the grace period is not already complete.

        Returns:
            The token, as from `snapshot()`.
        """
        token = self._grace.core.snapshot()
        if self._grace.core.completed() < token:
            self._worker.submit(Waiter(token, lambda: None))
        return token

    def poll(self, token: int) -> bool:
        """Whether the grace period named by ``token`` has completed.

        Never waits and starts nothing: one atomic load.  Once true, true
        forever.

        Args:
            token: From `snapshot()` or `start_grace_period()`.

        Raises:
            TypeError: ``token`` is not an int (or is a bool).
            ValueError: ``token`` is negative, or was never issued.
        """
        return self._grace.core.completed() >= self._check_token(token)

    def wait_blocking(self, token: int, timeout: float | None = None) -> None:
        """Blocks until the grace period named by ``token`` completed.

        Returns at once if it already has; otherwise runs (or shares) grace
        periods like `synchronize_blocking()`.

        Args:
            token: From `snapshot()` or `start_grace_period()`.
            timeout: Seconds to wait at most; as for `synchronize_blocking()`.

        Raises:
            RcuUsageError: The grace period is not complete and the caller is
                inside a read section on this thread, or is a callback.
            GracePeriodTimeout: ``timeout`` passed first; the token stays valid.
            TypeError: ``token`` is not an int.
            ValueError: ``token`` is negative or was never issued, or
                ``timeout`` is negative or NaN.
        """
        target = self._check_token(token)
        ns = timeout_ns(timeout)
        if self._grace.core.completed() >= target:
            return
        self._rules.blocking_wait("wait_blocking()")
        self._wait_blocking(target, ns, timeout)

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
            TypeError: ``token`` is not an int.
            ValueError: ``token`` is negative or was never issued.
        """
        await self._wait(self._check_token(token), "await wait()")

    def _check_token(self, token: int) -> int:
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(
                "a grace-period token is an int from snapshot() or start_grace_period(), "
                f"not {type(token).__name__}"
            )
        if token < 0:
            raise ValueError(f"grace-period tokens are never negative; got {token}")
        if token > self._grace.core.completed():
            latest = self._grace.core.snapshot()
            if token > latest:
                raise ValueError(
                    f"token {token} was never issued by domain {self.name!r} (the latest "
                    f"is {latest}); take tokens from snapshot() or start_grace_period()"
                )
        return token

    # -- introspection -----------------------------------------------------------
    def stats(self) -> DomainStatistics:
        """Returns a snapshot of the domain's counters."""
        core = self._grace.core.stats()
        return DomainStatistics(
            grace_periods=core["grace_periods"],
            membarrier_calls=core["membarrier_calls"],
            threads_registered=core["slots_live"],
            readers_active=core["sections_open"],
            offloaded_waits=self._worker.offloaded,
            stall_warnings=self._grace.stalls.warnings,
            callbacks_pending=self._callbacks.pending,
            dead_readers_released=core["dead_readers_released"],
            processes_attached=core["processes_attached"],
            barriers_elided=core["barriers_elided"],
            barrier_fallbacks=core["barrier_fallbacks"],
            writer_sleeps=core["futex_sleeps"],
            reader_wakeups=core["wakeups"],
            backstop_timeouts=core["backstop_timeouts"],
            timeouts=core["timeouts"],
            completed_sequence=core["completed"],
            writer_recoveries=core["writer_recoveries"],
        )

    # -- fork ---------------------------------------------------------------------
    def _after_fork_child(self) -> None:
        # The core's fork handler already released every other thread's
        # slot; here the registry forgets them, the C read path keeps only
        # the forking context's own task sections, and workers start anew.
        self._threads.after_fork()
        self._fork_child()
        self._worker.after_fork()
        self._callbacks.after_fork()


@final
class Domain(ReadWriteDomain):
    """An RCU domain: readers that never block, writers that wait for them.

    Readers enter a *read section* with ``with domain.read():`` (threads) or
    ``async with domain.read():`` (tasks).  A section costs a few stores to
    memory that only the reading thread writes: no lock, no system call,
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
        stall_warning: Seconds a grace period may wait for readers before
            a warning on the ``aiorcu`` logger names them; it repeats at
            doubling intervals up to 60 s.  ``None`` never warns.

    Raises:
        ValueError: ``stall_warning`` is zero, negative or NaN.
    """

    def __init__(self, name: str | None = None, *, stall_warning: float | None = 1.0) -> None:
        seconds = stall_seconds(stall_warning)
        name = name if name is not None else f"domain-{next(_names)}"
        self._var: contextvars.ContextVar[ReadSection | None] = contextvars.ContextVar(
            f"aiorcu-section-{name}", default=None
        )
        self._assemble(name, GraceRunner(name, self._var, seconds))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<aiorcu.Domain {self.name!r}>"


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
