"""Deferred reclamation: callbacks that run after a grace period.

``domain.call_after_grace_period(fn, *args)`` (C, in ``_hotpath``) only
appends to a deque: the caller never blocks.  The domain's callback thread
takes everything queued so far as one batch, waits for one grace period that
began after it took them, then runs the batch in order.  Ten thousand
callbacks queued at once thus cost a handful of grace periods, not ten
thousand.

Why one grace period covers the batch: each caller published its change
before queueing (program order); the worker's pop of the entry happens after
the append (the deque is thread-safe), and the grace period's sequence number
is read after a full fence that follows the pop, so that grace period began
after every change the batch retires.

Waking the worker: a producer appends, issues a full fence, then reads the
domain's idle flag; the worker stores the flag (seq_cst, then a full fence)
and then re-reads the queue.  One of the two sees the other, so an entry is
never left in the queue while the worker sleeps.

The thread starts on the first callback, is a daemon, and exits after a few
idle seconds.  A fork child starts with an empty queue and no thread: what
was queued belongs to the parent, which runs it; running it in the child too
would retire the same resources twice.  At interpreter exit `_run_at_exit`
runs what is queued if its grace period completes within about a second and
reports the rest; it never waits longer.
"""

from __future__ import annotations

import atexit
import collections
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, final

logger = logging.getLogger("aiorcu")

IDLE_EXIT_SECONDS = 5.0
EXIT_BUDGET_SECONDS = 1.0
RETRY_SECONDS = (0.1, 5.0)  # first and longest pause after a failed grace period
_NAMED_AT_EXIT = 5  # callbacks named in the exit report; the rest are counted

# A callback with arguments is queued as (fn, args); one without as fn alone,
# which allocates nothing (a tuple is a GC-tracked object: its allocation and
# the collections it triggers would double the cost of queueing).
Entry = Callable[..., Any] | tuple[Callable[..., Any], tuple[Any, ...]]

_state = threading.local()
_workers: weakref.WeakSet[CallbackWorker] = weakref.WeakSet()


def in_callback() -> bool:
    """Whether the calling thread is running an RCU callback right now."""
    # The thread's own dict: getattr() with a default costs an exception here.
    return bool(_state.__dict__.get("running", False))


def split(entry: Entry) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The function and arguments of a queued entry."""
    if type(entry) is tuple:  # functions are never tuples: tuples are not callable
        return entry
    return entry, ()  # type: ignore[return-value]


@final
class CallbackWorker:
    """Queues and runs one domain's callbacks on a lazily started daemon thread.

    Args:
        name: The domain's name, for the thread name and log messages.
        grace_period: Runs one grace period that starts after the call and
            returns True, or False if ``timeout_ns`` (-1: none) passed first;
            raises if the grace period failed.
        bind: Gives the domain's C queueing path the queue's ``append`` and
            a function that wakes this worker.
        set_idle: Stores the domain's idle flag (see the module doc).
    """

    __slots__ = (
        "__weakref__",
        "_batch",
        "_bind",
        "_grace_period",
        "_in_flight",
        "_lock",
        "_queue",
        "_set_idle",
        "_thread",
        "_wake",
        "name",
    )

    def __init__(
        self,
        name: str,
        grace_period: Callable[[int], bool],
        bind: Callable[[Callable[[Entry], None], Callable[[], None]], None],
        set_idle: Callable[[bool], None],
    ) -> None:
        self.name = name
        self._grace_period = grace_period
        self._bind = bind
        self._set_idle = set_idle
        self._fresh()
        _workers.add(self)

    def _fresh(self) -> None:
        self._queue: collections.deque[Entry] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch: list[Entry] = []  # taken from the queue by the running batch
        self._in_flight = 0  # entries at the end of _batch not yet started
        self._set_idle(True)  # no thread is awake to see new entries
        self._bind(self._queue.append, self.wake)

    def after_fork(self) -> None:
        """In a fork child: an empty queue and no thread (see the module doc)."""
        self._fresh()

    @property
    def pending(self) -> int:
        """Callbacks queued and not yet started."""
        return len(self._queue) + self._in_flight

    def wake(self) -> None:
        """Makes sure a thread will see what was appended (starts one if needed)."""
        with self._lock:
            self._set_idle(False)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name=f"aiorcu-callbacks-{self.name}", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _main(self) -> None:
        me = threading.current_thread()
        queue = self._queue
        pause = RETRY_SECONDS[0]
        while True:
            if not queue:
                with self._lock:
                    self._set_idle(True)  # seq_cst store and fence (module doc)
                if not queue and not self._wake.wait(IDLE_EXIT_SECONDS):
                    with self._lock:
                        if self._thread is not me or not queue:
                            if self._thread is me:
                                self._thread = None
                            return
                self._wake.clear()
                with self._lock:
                    if self._thread is not me:
                        return  # the exit handler took over
                    self._set_idle(False)
                continue
            batch = self._take()
            try:
                self._grace_period(-1)
            except Exception:
                logger.exception(
                    "grace period for %d callback(s) of domain %r failed; they stay "
                    "queued and the worker retries in %.1f s",
                    len(batch),
                    self.name,
                    pause,
                )
                self._put_back(batch)
                time.sleep(pause)
                pause = min(pause * 2, RETRY_SECONDS[1])
                continue
            pause = RETRY_SECONDS[0]
            self._run(batch)

    def _take(self) -> list[Entry]:
        queue = self._queue
        batch = []
        while queue:
            batch.append(queue.popleft())
        self._batch = batch
        self._in_flight = len(batch)
        return batch

    def _put_back(self, batch: list[Entry]) -> None:
        self._queue.extendleft(reversed(batch))
        self._in_flight = 0

    def _run(self, batch: list[Entry]) -> None:
        _state.running = True
        try:
            for entry in batch:
                self._in_flight -= 1
                fn, args = split(entry)
                try:
                    result = fn(*args)
                except Exception:
                    logger.exception(
                        "callback %r of domain %r raised; the worker goes on", fn, self.name
                    )
                    continue
                if result is not None and inspect.isawaitable(result):
                    _drop_awaitable(fn, result, self.name)
        finally:
            _state.running = False

    def drain(self, deadline: float) -> list[Entry]:
        """Runs what is queued until ``deadline``; returns what could not run.

        Waits for the worker thread while it lives; otherwise (it exited idle,
        or threads can no longer start at interpreter exit) runs the batches
        on the calling thread, with grace periods bounded by the deadline.
        """
        me = threading.current_thread()
        while self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._lock:
                thread = self._thread
                if thread is None or not thread.is_alive():
                    self._thread = me  # new callbacks must not start a thread now
                    thread = None
            if thread is not None:
                time.sleep(min(0.005, remaining))
                continue
            batch = self._take()
            try:
                done = self._grace_period(int(remaining * 1e9))
            except Exception:
                logger.exception("grace period of domain %r failed at exit", self.name)
                done = False
            if not done:
                self._put_back(batch)
                break
            self._run(batch)
        with self._lock:
            if self._thread is me:
                self._thread = None
        return self._left()

    def _left(self) -> list[Entry]:
        """What has not started: the rest of the running batch, then the queue.

        Read from another thread while the worker may still move on, so it is
        a moment's snapshot, good for a report.
        """
        batch, in_flight = self._batch, self._in_flight
        started = len(batch) - in_flight if 0 < in_flight <= len(batch) else len(batch)
        return batch[started:] + list(self._queue)


def _drop_awaitable(fn: object, result: object, domain: str) -> None:
    """A callback returned an awaitable, which no thread here can await."""
    close = getattr(result, "close", None)
    if callable(close):
        close()  # a coroutine: closed, so it never warns "was never awaited"
    logger.warning(
        "callback %r of domain %r returned an awaitable (%r), which was closed without "
        "running: callbacks run on a thread with no event loop. Schedule the coroutine on "
        "your loop instead (asyncio.run_coroutine_threadsafe), or retire with "
        "`await cell.replace(new, retire=...)`, which awaits it",
        fn,
        domain,
        type(result).__name__,
    )


AFTER_EXIT_DRAIN: list[Callable[[], None]] = []
"""Run at exit once callbacks had their chance (shared domains detach here)."""


@atexit.register
def _run_at_exit() -> None:
    try:
        _drain_at_exit()
    finally:
        for hook in AFTER_EXIT_DRAIN:
            try:
                hook()
            except Exception:
                logger.exception("aiorcu exit hook %r failed", hook)


def _drain_at_exit() -> None:
    deadline = time.monotonic() + EXIT_BUDGET_SECONDS
    for worker in list(_workers):
        left = worker.drain(deadline)
        if not left:
            continue
        names = ", ".join(repr(split(entry)[0]) for entry in left[:_NAMED_AT_EXIT])
        more = len(left) - _NAMED_AT_EXIT
        logger.warning(
            "%d callback(s) of domain %r did not run before exit: their grace period did "
            "not complete within %.1f s (a reader stayed inside its section, or an earlier "
            "callback was still running): %s%s",
            len(left),
            worker.name,
            EXIT_BUDGET_SECONDS,
            names,
            f" and {more} more" if more > 0 else "",
        )
