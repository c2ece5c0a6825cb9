"""What the cross-process torture run's children share: their orders, attaching, leaving.

Each child (a reader process, `readers`, or a writer process, `writers`)
attaches by name to the run's `SharedDomain` and shared memory block (see
`board`), writes its pid in its slot to say it is ready, waits for the go
word, and works until the parent sets the stop word.  The parent may
SIGKILL any child at any moment; whatever the child counted is already on
the board.

A child also watches its parent.  When the parent is gone (killed, say)
the children clean up after it: each one wakes its siblings with SIGCONT
(the parent may have died between stopping a victim and killing it),
removes the names of the domain and of the block (whoever comes first;
the others find them gone), and leaves like at the end of a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from typing import Final, final

import aiorcu
from aiorcu import testing

from .board import PAGE_SIZE, Board, Layout
from .state import READER_JITTER_S, WRITER_JITTER_S

CRASH_STATUS: Final = 3  # a child whose worker raised exits with this status
GONE_STATUS: Final = 4  # a child that found the domain or the block removed exits with this
WATCH_S: Final = 0.01  # how often a child looks at the stop word and its parent


@final
@dataclasses.dataclass(frozen=True)
class ChildConfig:
    """What the parent tells a child (pickled for the forkserver)."""

    domain: str  # the SharedDomain's name
    shm: str  # the shared memory block's name
    layout: Layout
    memory_bytes: int  # the GuardedMemory's buffer: the block's first memory_bytes
    data_offset: int  # where its pages start in the block (for raw scribbles)
    board_offset: int  # where the board starts in the block
    slot: int  # the child slot: readers first, then writers
    seed: int
    tasks: int  # reader tasks per reader process
    busted: bool
    jitter: bool
    parent: int  # the parent's pid: a child stops when it is gone
    parent_started: int  # the parent's start time (see `started`): tells a new pid apart

    @property
    def writer(self) -> int:
        """This writer process's number (slot minus the reader slots)."""
        return self.slot - self.layout.readers


@final
class Child:
    """A child's view of the run: the domain, the board, the memory, its stop event."""

    def __init__(
        self,
        config: ChildConfig,
        domain: aiorcu.SharedDomain,
        *,
        shm: shared_memory.SharedMemory,
        board: Board,
        memory: aiorcu.GuardedMemory,
        raw: memoryview,
    ) -> None:
        self.config = config
        self.layout = config.layout
        self.domain = domain
        self.board = board
        self.memory = memory
        self.raw = raw
        self.stop = threading.Event()
        self._shm = shm
        self.completed = testing.completed_sequence(domain)

    def ready(self) -> None:
        """Says this child is ready, then waits for the go word (or the end)."""
        self.board.set_ready(self.config.slot, os.getpid())
        while not self.board.going and not self.stop.wait(0.001):
            pass

    def watch(self) -> None:
        """The watcher thread: stop when the board says so or the parent is gone."""
        while not self.stop.wait(WATCH_S):
            if self.board.stopping:
                self.stop.set()
            elif not alive(self.config.parent, self.config.parent_started):
                self.orphaned()
                self.stop.set()

    def orphaned(self) -> None:
        """The parent died: wake the siblings it may have left stopped, remove the names."""
        me = os.getpid()
        for pid in self.board.pids():
            if pid != me:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(FileNotFoundError):
            self.domain.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()

    def scribble(self, page: int, data: bytes) -> None:
        """Writes a page through the raw buffer, past the guard (as a device would)."""
        self.raw[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] = data


def started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot); None if it is gone or a zombie.

    A pid alone does not do: a parent that died stays a zombie (``kill(pid,
    0)`` succeeds) until its own parent reaps it, and then its pid may be
    reused.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, start = fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    return None if state in "ZXx" else start


def alive(pid: int, start: int) -> bool:
    """Whether the process that started as ``pid`` at ``start`` is still running."""
    return started(pid) == start


@contextlib.contextmanager
def attached(config: ChildConfig) -> Iterator[Child]:
    """Attaches to the run's domain and memory, with a watcher; detaches on the way out."""
    # The parent ends the run (and kills what is left) on Ctrl-C, which the
    # terminal sends to the whole process group.  The parent's death can
    # orphan the group with a stopped victim in it, and the kernel then sends
    # the group SIGHUP: the watcher notices the death and cleans up instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        shm = shared_memory.SharedMemory(config.shm)
    except FileNotFoundError:
        sys.exit(GONE_STATUS)  # the run ended (or its parent died) as this child started
    buf = shm.buf
    assert buf is not None
    views: list[memoryview] = []
    try:
        try:
            domain = aiorcu.SharedDomain(config.domain)
        except FileNotFoundError:
            sys.exit(GONE_STATUS)
        try:
            memory_view = buf[: config.memory_bytes]
            views.append(memory_view)
            memory = aiorcu.GuardedMemory.attach(memory_view, domain=domain)
            board = Board(buf[config.board_offset :], config.layout)
            raw = buf[config.data_offset : config.data_offset + memory.size]
            views.append(raw)
            child = Child(config, domain, shm=shm, board=board, memory=memory, raw=raw)
            watcher = threading.Thread(target=child.watch, name="torture-watcher", daemon=True)
            watcher.start()
            try:
                yield child
            finally:
                child.stop.set()
                watcher.join()
            # This process's callbacks, which write on the board, before close().
            domain.barrier_blocking()
            memory.close()
            board.release()
        finally:
            domain.close()
    finally:
        for view in views:
            view.release()
        shm.close()


def guarded(who: str, fn: Callable[[], None]) -> Callable[[], None]:
    """A worker that takes its process down when it raises: the parent reports the status."""

    def main() -> None:
        try:
            fn()
        except BaseException:
            print(f"aiorcu torture: {who} raised:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(CRASH_STATUS)

    return main


def _reader_delay() -> None:
    """``--jitter``: between a ``with`` entry's phase load and its count update."""
    r = random.random()
    if r < 0.01:
        time.sleep(r * 100 * READER_JITTER_S)
    elif r < 0.02:
        time.sleep(0)


@contextlib.contextmanager
def jitter(child: Child, reader: bool) -> Iterator[None]:
    """``--jitter``: the reader delay in a reader process, writer jitter in a writer's."""
    if not child.config.jitter:
        yield
    elif reader:
        with testing.reader_delay(child.domain, _reader_delay):
            yield
    else:
        with testing.writer_jitter(WRITER_JITTER_S):
            yield
