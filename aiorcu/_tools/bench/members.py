"""Helper processes for the SharedDomain rows: spawned, attached by name, always cleaned up.

A `SharedDomain` row needs other processes attached to the domain, each
registered for its barrier and owning a reader slot, the way a pool of
workers would be.  `Members` spawns them (a fresh interpreter each, as
`multiprocessing`'s "spawn" start method does), lets each attach when the
row says so, and on leaving its block, however the row ended, stops them,
joins them and kills any that do not leave.  A member also leaves by itself
when the bench process disappears, so an interrupted run leaves no process
behind.

Roles:

- ``"idle"``: attaches, runs one read section (so it owns a slot and is
  registered), then waits outside any section until stopped.
- ``"reader"``: attaches the domain and a `GuardedMemory` formatted in a
  pages file, then times its own ``mem.read()`` calls (never of page 0,
  which the writer revokes) with short random pauses between them, until
  stopped; it then sends each read's start time and duration back.

`scratch_names()` gives the row a domain name and a pages file no other run
uses; `pages_file()` makes that file and removes it on exit.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import mmap
import multiprocessing
import os
import queue
import random
import secrets
import signal
import time
from collections.abc import Iterator, Sequence
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from types import TracebackType
from typing import Literal, final

import aiorcu

from .measure import READ_PAUSE

Role = Literal["idle", "reader"]
PAGE_SIZE = 4096
PAGES = 16
READ_BYTES = 64
START_TIMEOUT = 120.0
"""Seconds a member may take to start (a spawned interpreter imports aiorcu) or attach."""
JOIN_TIMEOUT = 10.0
"""Seconds a stopped member may take to leave before it is terminated, then killed."""
_POLL = 0.2  # seconds between a waiting member's checks that the bench process still exists

Message = tuple[str, int, object, object]
"""(what, member index, payload, payload): "started", "ready", "samples" or "error"."""


def scratch_names() -> tuple[str, str]:
    """A shared domain name and a pages file (in /dev/shm) that no other run uses."""
    name = f"bench-{os.getpid()}-{secrets.token_hex(4)}"
    return name, os.path.join("/dev/shm", f"aiorcu-{name}.pages")


@contextlib.contextmanager
def pages_file(path: str, size: int) -> Iterator[mmap.mmap]:
    """A new file of ``size`` bytes mapped shared (page aligned); closed and removed on exit.

    Close whatever was attached to the mapping (a `GuardedMemory`) before
    the block ends: a mapping with live views cannot close.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        buf = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    try:
        yield buf
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        buf.close()


@final
class Members:
    """Spawned processes taking part in one shared domain; a context manager.

    Args:
        domain: The shared domain's name (the members attach by name).
        pages: The pages file readers attach their `GuardedMemory` from.
    """

    def __init__(self, domain: str, pages: str | None = None) -> None:
        self._domain = domain
        self._pages = pages
        self._ctx = multiprocessing.get_context("spawn")
        self._events: Queue[Message] = self._ctx.Queue()
        self._procs: list[SpawnProcess] = []
        self._go: list[Event] = []
        self._stop: list[Event] = []

    def __enter__(self) -> Members:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, role: Role, count: int) -> list[int]:
        """Spawns ``count`` members; returns once each runs (not yet attached)."""
        first = len(self._procs)
        indices = list(range(first, first + count))
        for index in indices:
            go, stop = self._ctx.Event(), self._ctx.Event()
            job = Job(role, index, self._domain, self._pages, go, stop, self._events, os.getpid())
            proc = self._ctx.Process(
                target=member_main,
                args=(job,),
                name=f"aiorcu-bench-{role}-{index}",
                daemon=True,
            )
            proc.start()
            self._go.append(go)
            self._stop.append(stop)
            self._procs.append(proc)
        self._expect("started", indices)
        return indices

    def attach(self, indices: Sequence[int]) -> None:
        """Lets members attach; returns once each has (and, reading, has begun)."""
        for index in indices:
            self._go[index].set()
        self._expect("ready", indices)

    def collect(self, indices: Sequence[int]) -> dict[int, tuple[list[int], list[int]]]:
        """Stops readers; each one's (read start times, read durations) in ns."""
        for index in indices:
            self._stop[index].set()
        return {
            index: (_ints(stamps), _ints(durations))
            for index, stamps, durations in self._expect("samples", indices)
        }

    def close(self) -> None:
        """Stops every member and waits for it; terminates, then kills, a stuck one.

        A member never let attach is terminated at once: it has nothing to
        leave, and one still starting would take seconds to notice.

        Messages still coming are read and dropped meanwhile: a reader
        stopped by an error elsewhere still sends its samples, and a member
        cannot exit before what it sent has left through the pipe.
        """
        for proc, go, stop in zip(self._procs, self._go, self._stop, strict=True):
            stop.set()
            if not go.is_set():
                proc.terminate()  # never attached: nothing to leave, and it may still be starting
        deadline = time.monotonic() + JOIN_TIMEOUT
        while any(p.is_alive() for p in self._procs) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self._events.get(timeout=0.05)
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._events.close()
        self._events.join_thread()

    def _expect(self, what: str, indices: Sequence[int]) -> list[tuple[int, object, object]]:
        """Waits for message ``what`` from each member; raises if one fails or dies."""
        waiting = set(indices)
        got: list[tuple[int, object, object]] = []
        deadline = time.monotonic() + START_TIMEOUT
        while waiting:
            try:
                kind, index, first, second = self._events.get(timeout=_POLL)
            except queue.Empty:
                for index in waiting:
                    code = self._procs[index].exitcode
                    if code is not None:
                        raise RuntimeError(
                            f"bench helper process {index} exited (code {code}) before "
                            f"reporting {what!r}"
                        ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"bench helper processes {sorted(waiting)} did not report {what!r} "
                        f"within {START_TIMEOUT:g} s"
                    ) from None
                continue
            if kind == "error":
                raise RuntimeError(f"bench helper process {index} failed: {first}")
            if kind == what and index in waiting:
                waiting.discard(index)
                got.append((index, first, second))
        return got


def _ints(data: object) -> list[int]:
    values = array.array("q")
    values.frombytes(data if isinstance(data, bytes) else b"")
    return values.tolist()


# -- in the member process --------------------------------------------------------------


@final
@dataclasses.dataclass(frozen=True)
class Job:
    """What one member is told (pickled to the spawned process)."""

    role: Role
    index: int
    domain: str
    pages: str | None
    go: Event
    stop: Event
    events: Queue[Message]
    parent: int
    """The bench process's pid: a member whose parent changes leaves."""


def member_main(job: Job) -> None:
    """A member's life: report, wait for "go", attach, do the role, leave when stopped."""
    # Ctrl-C reaches the whole process group: the bench process stops its
    # members itself, and a member's traceback would only garble the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        job.events.put(("started", job.index, None, None))
        if not _wait(job.go, job.stop, job.parent):
            return
        with aiorcu.SharedDomain(job.domain) as domain:
            if job.role == "idle":
                with domain.read():
                    pass  # this process now owns a slot and takes the domain's barrier
                job.events.put(("ready", job.index, None, None))
                _wait(job.stop, None, job.parent)
            else:
                _read(job, domain)
    except BaseException as exc:
        job.events.put(("error", job.index, f"{type(exc).__name__}: {exc}", None))
        raise


def _wait(event: Event, stop: Event | None, parent: int) -> bool:
    """Waits for ``event``; False when stopped first or the bench process is gone."""
    while not event.wait(_POLL):
        if (stop is not None and stop.is_set()) or os.getppid() != parent:
            return False
    return True


def _read(job: Job, domain: aiorcu.SharedDomain) -> None:
    assert job.pages is not None
    fd = os.open(job.pages, os.O_RDWR | os.O_CLOEXEC)
    try:
        buf = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    mem = aiorcu.GuardedMemory.attach(buf, domain=domain)
    try:
        read, stop = mem.read, job.stop
        read(PAGE_SIZE, READ_BYTES)  # this thread's slot exists before "ready"
        job.events.put(("ready", job.index, None, None))
        rng = random.Random(job.index)
        stamps, durations = array.array("q"), array.array("q")
        clock = time.perf_counter_ns
        n = 0
        while not stop.is_set():
            offset = rng.randrange(1, PAGES) * PAGE_SIZE
            t0 = clock()
            read(offset, READ_BYTES)
            durations.append(clock() - t0)
            stamps.append(t0)
            time.sleep(rng.uniform(0, 2 * READ_PAUSE))
            n += 1
            if n % 256 == 0 and os.getppid() != job.parent:
                return
        job.events.put(("samples", job.index, stamps.tobytes(), durations.tobytes()))
    finally:
        mem.close()
        buf.close()
