"""The cross-process torture run's shared board: what its processes read, write and count.

One ``multiprocessing.shared_memory`` block holds a `GuardedMemory` (the
pages the memory lanes revoke, scribble on and grant again) followed by the
board, a table of 64-bit words:

- the stop word, set by the parent to end the run, and the go word, set
  once the first children are all ready (children wait for it, so that
  every figure counts from one start);
- one word per child slot: the child's pid once it has attached, 0 before
  (a child whose parent died uses them to wake siblings left stopped);
- cells: each writer process owns two cells (its ``sync`` and ``async``
  lanes), each a pointer to the element readers should read, and the
  serial number of the next element;
- the pool: a ring of elements per cell, each one cache line: serial,
  state (live or freed), a check word derived from the serial, the grace
  period completed when it was published (its generation), and the token
  of the grace period that had to wait for its readers once replaced;
- one dead flag per page, set while a memory lane reuses the page;
- counter rows, one per reader thread, per reader process's event loop and
  per writer lane, kept in shared memory so that a killed child's work
  still counts, and next to them the first error message of each row.

Every word has one writing thread at a time (a row belongs to one thread,
a cell and its pool to one writer lane, a page's flag to one memory lane),
so plain loads and stores are enough: an 8-byte aligned store is atomic,
and the grace period, not the board, orders what a reader may see.  Only
the element a cell points to may be read; a writer frees an element only
after a grace period that started once the element was out of its cell.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final, final

from .state import AGES

POOL: Final = 16  # elements per cell
PAGES_PER_WRITER: Final = 8
PAGE_SIZE: Final = 256
LANES: Final = 3  # per writer process: sync, async, memory
CELLS_PER_WRITER: Final = 2  # the sync and async lanes' cells
MESSAGE_BYTES: Final = 256
LIVE: Final = 0x4556494C  # "LIVE"
FREED: Final = 0xDEADDEADDEADDEAD
POISON: Final = 0xBADBADBADBADBAD0
_MIX: Final = 0x9E3779B97F4A7C15
_MASK: Final = 2**64 - 1
_ELEMENT: Final = 8  # words per element: one cache line
_COLUMNS: Final = 32


class Lane(enum.IntEnum):
    """A writer process's lanes: which row counts them, which cell they own."""

    SYNC = 0
    ASYNC = 1
    MEMORY = 2


class Col(enum.IntEnum):
    """The columns of a counter row."""

    READS = 0
    ERRORS = 1
    INSIDE = 2  # gauge: read sections open on this row's thread now
    WAITING = 3  # gauge: grace-period waits in progress on this row now
    MEMORY_READS = 4
    MEMORY_DENIED = 5
    LONG_SECTIONS = 6  # sections that lasted BACKSTOP_NS or more
    MAX_SPAN_NS = 7
    PUBLISHED = 8
    RETIRED = 9
    CALLBACKS_QUEUED = 10
    CALLBACKS_RUN = 11  # written by the writer process's callback thread only
    REVOKES = 12
    FIRST_ERROR_NS = 13  # time.monotonic_ns() of the row's first error
    PIPELINE = 14  # 3 columns: still current, replaced, replaced and its grace period over
    AGES = 17  # AGES + 1 columns: the age histogram


assert Col.AGES + AGES + 1 <= _COLUMNS


def check_word(serial: int) -> int:
    """The check word of a live element with this serial number."""
    return (serial * _MIX) & _MASK


@final
@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything is on the board; the same in every process of a run."""

    readers: int  # reader processes (child slots 0 .. readers - 1)
    writers: int  # writer processes (child slots readers .. readers + writers - 1)
    threads: int  # reader threads per reader process

    @property
    def slots(self) -> int:
        return self.readers + self.writers

    @property
    def cells(self) -> int:
        return self.writers * CELLS_PER_WRITER

    @property
    def pages(self) -> int:
        return self.writers * PAGES_PER_WRITER

    @property
    def rows(self) -> int:
        return self.readers * (self.threads + 1) + self.writers * LANES

    def reader_rows(self, reader: int) -> range:
        """The rows of reader process ``reader``: one per thread, then its event loop's."""
        first = reader * (self.threads + 1)
        return range(first, first + self.threads + 1)

    def writer_row(self, writer: int, lane: Lane) -> int:
        return self.readers * (self.threads + 1) + writer * LANES + lane

    def writer_rows(self, writer: int) -> range:
        first = self.writer_row(writer, Lane.SYNC)
        return range(first, first + LANES)

    def cell(self, writer: int, lane: Lane) -> int:
        assert lane is not Lane.MEMORY
        return writer * CELLS_PER_WRITER + lane

    def writer_pages(self, writer: int) -> range:
        return range(writer * PAGES_PER_WRITER, (writer + 1) * PAGES_PER_WRITER)

    # -- word offsets ---------------------------------------------------------------
    @property
    def _ready_at(self) -> int:
        return 8  # after the stop and go words, on a cache line of their own

    @property
    def _cells_at(self) -> int:
        return _align(self._ready_at + self.slots)

    @property
    def _pool_at(self) -> int:
        return _align(self._cells_at + 2 * self.cells)

    @property
    def _dead_at(self) -> int:
        return self._pool_at + self.cells * POOL * _ELEMENT

    @property
    def _rows_at(self) -> int:
        return _align(self._dead_at + self.pages)

    @property
    def _words(self) -> int:
        return self._rows_at + self.rows * _COLUMNS

    @property
    def size(self) -> int:
        """Bytes the board takes."""
        return self._words * 8 + self.rows * MESSAGE_BYTES


def _align(words: int) -> int:
    return (words + 7) // 8 * 8


@final
class Board:
    """Typed access to the board in a shared buffer (see the module's docstring)."""

    def __init__(self, buffer: memoryview, layout: Layout) -> None:
        if len(buffer) < layout.size:
            raise ValueError(f"the board needs {layout.size} bytes, the buffer has {len(buffer)}")
        self.layout = layout
        self._bytes = buffer[: layout.size]
        self._words = self._bytes[: layout._words * 8].cast("Q")
        self._messages = self._bytes[layout._words * 8 :]
        self._ready_at = layout._ready_at
        self._cells_at = layout._cells_at
        self._pool_at = layout._pool_at
        self._dead_at = layout._dead_at
        self._rows_at = layout._rows_at

    def release(self) -> None:
        """Drops the views of the buffer, so that its owner can close it."""
        self._words.release()
        self._messages.release()
        self._bytes.release()

    def format(self, generation: int) -> None:
        """Parent, before any child starts: every cell points to a fresh element."""
        self._bytes[:] = bytes(len(self._bytes))
        for cell in range(self.layout.cells):
            for e in self.pool(cell):
                self.free(e)
            self._words[self._cells_at + 2 * cell + 1] = 1  # next serial
            first = self.pool(cell)[0]
            self.init_element(first, self.next_serial(cell), generation)
            self.publish(cell, first)

    # -- run control ---------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._words[0] != 0

    def stop(self) -> None:
        self._words[0] = 1

    @property
    def going(self) -> bool:
        return self._words[1] != 0

    def go(self) -> None:
        self._words[1] = 1

    def set_ready(self, slot: int, pid: int) -> None:
        """Marks the child in ``slot`` ready (its pid) or not (0)."""
        self._words[self._ready_at + slot] = pid

    def ready(self, slot: int) -> bool:
        return self._words[self._ready_at + slot] != 0

    def pids(self) -> list[int]:
        """The pids of the children that said they were ready (some may be dead)."""
        words = (self._words[self._ready_at + slot] for slot in range(self.layout.slots))
        return [pid for pid in words if pid]

    # -- cells and elements (a cell and its pool: one writer lane) -------------------
    def current(self, cell: int) -> int:
        """The element cell ``cell`` points to now."""
        return self._words[self._cells_at + 2 * cell]

    def publish(self, cell: int, element: int) -> int:
        """Points cell ``cell`` to ``element`` (initialized first); returns the old one."""
        at = self._cells_at + 2 * cell
        old = self._words[at]
        self._words[at] = element
        return old

    def next_serial(self, cell: int) -> int:
        at = self._cells_at + 2 * cell + 1
        serial = self._words[at]
        self._words[at] = serial + 1
        return serial

    def pool(self, cell: int) -> range:
        """The elements of cell ``cell``'s pool (global element numbers)."""
        return range(cell * POOL, (cell + 1) * POOL)

    def init_element(self, element: int, serial: int, generation: int) -> None:
        """Fills an element that no reader can reach; the state word goes last."""
        at = self._pool_at + element * _ELEMENT
        w = self._words
        w[at] = serial
        w[at + 2] = check_word(serial)
        w[at + 3] = generation
        w[at + 4] = 0
        w[at + 1] = LIVE

    def free(self, element: int) -> None:
        """Retires an element: only after a grace period that began once it left its cell."""
        at = self._pool_at + element * _ELEMENT
        self._words[at + 1] = FREED
        self._words[at + 2] = POISON

    def is_free(self, element: int) -> bool:
        return self._words[self._pool_at + element * _ELEMENT + 1] != LIVE

    def element(self, element: int) -> tuple[int, int, int, int, int]:
        """``(serial, state, check, generation, replaced)`` of an element."""
        at = self._pool_at + element * _ELEMENT
        w = self._words
        return w[at], w[at + 1], w[at + 2], w[at + 3], w[at + 4]

    def set_replaced(self, element: int, token: int) -> None:
        """Records the grace period that must wait for the element's readers."""
        self._words[self._pool_at + element * _ELEMENT + 4] = token

    # -- pages ---------------------------------------------------------------------
    def set_dead(self, page: int, dead: bool) -> None:
        self._words[self._dead_at + page] = int(dead)

    def dead(self, page: int) -> bool:
        return self._words[self._dead_at + page] != 0

    # -- counter rows (a row: one thread) -------------------------------------------
    def add(self, row: int, col: int, n: int = 1) -> None:
        at = self._rows_at + row * _COLUMNS + col
        self._words[at] = self._words[at] + n

    def put(self, row: int, col: int, value: int) -> None:
        self._words[self._rows_at + row * _COLUMNS + col] = value

    def get(self, row: int, col: int) -> int:
        return self._words[self._rows_at + row * _COLUMNS + col]

    def span(self, row: int, ns: int, long_ns: int) -> None:
        """Records how long a read section lasted."""
        at = self._rows_at + row * _COLUMNS
        self._words[at + Col.MAX_SPAN_NS] = max(self._words[at + Col.MAX_SPAN_NS], ns)
        if ns >= long_ns:
            self._words[at + Col.LONG_SECTIONS] += 1

    def error(self, row: int, message: str, now_ns: int) -> None:
        """Counts an error; the row's first one keeps its time and message."""
        if self.get(row, Col.ERRORS) == 0:
            self.put(row, Col.FIRST_ERROR_NS, now_ns)
            data = message.encode(errors="replace")[:MESSAGE_BYTES]
            start = row * MESSAGE_BYTES
            self._messages[start : start + MESSAGE_BYTES] = data.ljust(MESSAGE_BYTES, b"\0")
        self.add(row, Col.ERRORS)

    def total(self, col: int, rows: range | None = None) -> int:
        return sum(self.get(r, col) for r in rows or range(self.layout.rows))

    def most(self, col: int) -> int:
        return max((self.get(r, col) for r in range(self.layout.rows)), default=0)

    def first_errors(self) -> list[tuple[int, str]]:
        """``(time.monotonic_ns(), message)`` of each row's first error, earliest first."""
        found = []
        for row in range(self.layout.rows):
            if self.get(row, Col.ERRORS):
                start = row * MESSAGE_BYTES
                text = bytes(self._messages[start : start + MESSAGE_BYTES]).rstrip(b"\0")
                found.append((self.get(row, Col.FIRST_ERROR_NS), text.decode(errors="replace")))
        return sorted(found)
