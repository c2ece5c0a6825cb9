"""Deferred reclamation: callbacks that run after a grace period.

``domain.call_after_grace_period(fn, *args)`` only appends to a deque: the
caller never blocks and never enters C.  The domain's callback thread takes
everything queued so far as one batch, waits for one grace period that began
after it took them, then runs the batch in order.  Ten thousand callbacks
queued at once thus cost a handful of grace periods, not ten thousand.

Why one grace period covers the batch: each caller published its change
before queueing (program order); the worker's pop of the entry happens after
the append (the deque is thread-safe), and the grace period's sequence number
is read after a full fence that follows the pop, so that grace period began
after every change the batch retires.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, final

logger = logging.getLogger("aiorcu")

IDLE_EXIT_SECONDS = 5.0
EXIT_BUDGET_SECONDS = 1.0

_state = threading.local()
_workers: weakref.WeakSet[CallbackWorker] = weakref.WeakSet()


def in_callback() -> bool:
    """Whether the calling thread is running an RCU callback right now."""
    return bool(getattr(_state, "running", False))


@final
class CallbackWorker:
    """Queues and runs one domain's callbacks on a lazily started daemon thread."""

    def __init__(self, name: str, grace_period: Callable[[], None]) -> None:
        self._name = name
        self._grace_period = grace_period
        self._queue: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._reset()
        _workers.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._idle = True

    def after_fork(self) -> None:
        """The child keeps what was queued and starts its own thread on demand."""
        self._reset()
        if self._queue:
            self._start()

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._queue.append((fn, args))
        if self._idle:
            self._start()

    def _start(self) -> None:
        with self._lock:
            self._idle = False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name=f"aiorcu-callbacks-{self._name}", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _main(self) -> None:
        me = threading.current_thread()
        queue = self._queue
        while True:
            if not queue:
                with self._lock:
                    self._idle = True
                # A producer that saw _idle False before we set it appended
                # first, so re-check after publishing _idle.
                if not queue and not self._wake.wait(IDLE_EXIT_SECONDS):
                    with self._lock:
                        if not queue and self._thread is me:
                            self._thread = None
                            return
                self._wake.clear()
                with self._lock:
                    if self._thread is not me:
                        return  # replaced after fork
                    self._idle = False
                continue
            batch = []
            while queue:
                batch.append(queue.popleft())
            self._in_flight = len(batch)
            try:
                self._grace_period()
            except Exception:
                logger.exception(
                    "aiorcu: grace period for %d callback(s) of domain %r failed; they stay queued",
                    len(batch),
                    self._name,
                )
                queue.extendleft(reversed(batch))
                self._in_flight = 0
                time.sleep(0.1)
                continue
            self._run(batch)

    def _run(self, batch: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
        _state.running = True
        try:
            for fn, args in batch:
                try:
                    fn(*args)
                except Exception:
                    logger.exception(
                        "aiorcu: callback %r of domain %r raised; the worker goes on",
                        fn,
                        self._name,
                    )
                finally:
                    self._in_flight -= 1
        finally:
            _state.running = False

    def drain(self, deadline: float) -> int:
        """Waits until everything queued ran or ``deadline`` passed; returns what is left."""
        if self.pending and self._thread is None:
            self._start()
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.pending


@atexit.register
def _run_at_exit() -> None:
    deadline = time.monotonic() + EXIT_BUDGET_SECONDS
    for worker in list(_workers):
        left = worker.drain(deadline)
        if left:
            logger.warning(
                "aiorcu: %d callback(s) of domain %r did not run before exit: their grace "
                "period did not complete within %.1f s (a reader is still inside)",
                left,
                worker._name,
                EXIT_BUDGET_SECONDS,
            )
