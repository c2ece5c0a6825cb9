"""What the torture run's workers share: the objects read, per-reader tallies, the run.

Each object records the number of the last completed grace period when it
was published (its generation) and, once replaced, the token of the first
grace period that starts after its replacement.  `Run.check` judges every
read at the end of its section: reading a retired object, or one whose
replacement's grace period has completed, is an error.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from typing import Final, final

import aiorcu
from aiorcu import testing

AGES: Final = 10  # histogram buckets 0..9, then "10+"
BACKSTOP_NS: Final = 50_000_000  # BACKSTOP_NS in csrc/grace.c
STALL_WARNING_S: Final = 1.0  # first stall warning (the domain's default is 0.1 s)
STALL_S: Final = 20.0  # no grace period for this long while writers run: failure
HANG_S: Final = 30.0  # joins and the final callback flush give up after this
RSS_LIMIT: Final = 5 * 1024 * 1024
RSS_JUDGED_FROM_S: Final = 60.0  # shorter runs report RSS growth without judging it
MAX_CALLBACKS: Final = 512  # the deferred writer's callbacks in flight
POLL_PIPELINE: Final = 8  # the polling writer's tokens in flight
READER_JITTER_S: Final = 0.001
WRITER_JITTER_S: Final = 0.0002
KEPT_ERRORS: Final = 5


@final
class Object:
    """What readers read.  ``payload`` goes away when the object is retired."""

    __slots__ = ("gen", "payload", "replaced", "retired", "serial")

    def __init__(self, serial: int, gen: int) -> None:
        self.serial = serial
        self.gen = gen
        self.payload: tuple[int, int] | None = (serial, serial * 7919)
        self.replaced: int | None = None  # snapshot() token taken after the replacement
        self.retired = False


@final
class Tally:
    """Counts of one reader thread, or of all tasks of the loop: one writer thread each."""

    __slots__ = ("ages", "long_sections", "max_span_ns", "pipeline", "reads")

    def __init__(self) -> None:
        self.reads = 0
        self.ages = [0] * (AGES + 1)
        # At the end of the section: [still current, replaced but its grace
        # period pending, its grace period completed (an error)].
        self.pipeline = [0, 0, 0]
        self.max_span_ns = 0
        self.long_sections = 0  # sections that lasted BACKSTOP_NS or more

    def span(self, ns: int) -> None:
        self.max_span_ns = max(self.max_span_ns, ns)
        if ns >= BACKSTOP_NS:
            self.long_sections += 1


@final
class Run:
    """State shared by the workers of one run."""

    def __init__(self, domain: aiorcu.Domain, seed: int, jitter: bool) -> None:
        self.domain = domain
        self.seed = seed
        self.jitter = jitter
        self.completed = testing.completed_sequence(domain)
        self.cell: aiorcu.RcuCell[Object] = aiorcu.RcuCell(self._new(0), domain)
        self._serials = itertools.count(1)
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.errors = 0
        self.messages: list[str] = []
        self.first_error_at: float | None = None
        self.failures: list[str] = []  # failures that are not reader errors
        self.published: dict[str, int] = {}
        self.retired = 0
        self.callbacks_queued = 0
        self.callbacks_run = 0
        self.callback_room = threading.Semaphore(MAX_CALLBACKS)

    def _new(self, serial: int) -> Object:
        return Object(serial, self.completed())

    def new(self) -> Object:
        return self._new(next(self._serials))

    def retire(self, obj: Object) -> None:
        obj.retired = True
        obj.payload = None
        with self.lock:
            self.retired += 1

    def retire_callback(self, obj: Object) -> None:
        self.retire(obj)
        self.callbacks_run += 1  # only the callback thread writes it
        self.callback_room.release()

    def error(self, message: str) -> None:
        with self.lock:
            self.errors += 1
            if self.first_error_at is None:
                self.first_error_at = time.monotonic() - self.started
            if len(self.messages) < KEPT_ERRORS:
                self.messages.append(message)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)
        self.stop.set()

    def check(self, tally: Tally, obj: Object, who: str) -> None:
        """Called at the end of a read section, still inside it."""
        now = self.completed()
        tally.reads += 1
        age = now - obj.gen
        tally.ages[min(max(age, 0), AGES)] += 1
        token = obj.replaced
        late = token is not None and now >= token
        tally.pipeline[0 if token is None else 2 if late else 1] += 1
        payload = obj.payload
        if late or obj.retired or payload is None or payload[0] != obj.serial or age < 0:
            self.error(
                f"{who} read object #{obj.serial} (generation {obj.gen}) at completed grace "
                f"period {now}: "
                + (
                    "it was retired"
                    if obj.retired or payload is None
                    else f"the grace period {token} of its replacement had completed"
                    if late
                    else "its payload or generation is wrong"
                )
            )

    def reader_delay(self) -> None:
        """``--jitter``: between a ``with`` entry's phase load and its count update."""
        r = random.random()
        if r < 0.01:
            time.sleep(r * 100 * READER_JITTER_S)
        elif r < 0.02:
            time.sleep(0)


def guarded(run: Run, name: str, fn: Callable[[], None]) -> Callable[[], None]:
    def main() -> None:
        try:
            fn()
        except BaseException as exc:
            run.fail(f"{name} raised {exc!r}")

    return main
