"""The cross-process torture run's reader processes.

A reader process runs ``--threads`` reader threads (``with d.read():``)
and ``--tasks`` asyncio tasks on its main thread (``async with
d.read():``; half of them await inside their sections).  Each section
loads a cell's pointer, checks the element it points to, sometimes reads a
page of the guarded memory, dwells, and checks again before it leaves:

- the element must still be live and unchanged: a writer frees it only
  after a grace period that began once it left its cell, and that grace
  period waits for this section ("reader outlived a grace period");
- the grace period recorded when the element was replaced must not have
  completed;
- the page read must hold no scribbles, and must not be marked dead: a
  memory lane marks and scribbles on a page only after its revocation
  returned, which waits for this section.

Each thread, and the event loop's tasks together, count on a row of the
board of their own, with a gauge of the sections open now: the parent
reads it while a victim is stopped, before it kills it.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from typing import Final, final

import aiorcu

from .board import LIVE, PAGE_SIZE, Col, check_word
from .children import Child, ChildConfig, attached, guarded, jitter
from .state import AGES, BACKSTOP_NS

DWELL_S: Final = 0.0005  # the longest sleep inside a read section
CLEAN: Final = bytes(PAGE_SIZE)

Held = tuple[int, int, int, int]  # cell, element, serial, generation at entry


@final
class Reader:
    """The reads and checks of one reader thread, or of one process's tasks; a row counts them."""

    def __init__(self, child: Child, row: int, seed: int) -> None:
        self.child = child
        self.board = child.board
        self.row = row
        self.rng = random.Random(seed)
        self.cells = child.layout.cells
        self.pages = child.layout.pages

    def error(self, who: str, message: str) -> None:
        text = f"reader process {self.child.config.slot} {who}: {message}"
        self.board.error(self.row, text, time.monotonic_ns())

    def enter(self, n: int, who: str) -> Held | None:
        """Inside a section: loads a cell's pointer and checks the element it points to."""
        cell = n % self.cells
        element = self.board.current(cell)
        serial, state, check, generation, _ = self.board.element(element)
        if state != LIVE or check != check_word(serial):
            self.error(who, f"element {element} of cell {cell} was already freed when read")
            return None
        return cell, element, serial, generation

    def access(self, who: str) -> int | None:
        """Inside a section: reads a random page; its number when the read was allowed."""
        page = self.rng.randrange(self.pages)
        try:
            data = self.child.memory.read(page * PAGE_SIZE, PAGE_SIZE)
        except aiorcu.AccessDenied:
            self.board.add(self.row, Col.MEMORY_DENIED)
            return None
        self.board.add(self.row, Col.MEMORY_READS)
        if data != CLEAN:
            self.error(who, f"read page {page} with scribbles on it: its revocation had returned")
        return page

    def leave(self, held: Held | None, page: int | None, who: str) -> None:
        """Still inside the section: is what it read still there?"""
        board = self.board
        if held is not None:
            now = self.child.completed()
            cell, element, serial, generation = held
            board.add(self.row, Col.READS)
            age = now - generation
            board.add(self.row, Col.AGES + min(max(age, 0), AGES))
            now_serial, state, check, _, replaced = board.element(element)
            if state != LIVE or now_serial != serial or check != check_word(serial):
                board.add(self.row, Col.PIPELINE + 2)
                self.error(
                    who,
                    f"reader outlived a grace period: element {element} (serial {serial}, "
                    f"cell {cell}) was freed while the section that read it was open "
                    f"(completed grace period {now})",
                )
            elif replaced and now >= replaced:
                board.add(self.row, Col.PIPELINE + 2)
                self.error(
                    who,
                    f"element {element} (serial {serial}, cell {cell}): grace period "
                    f"{replaced} of its replacement completed while the section was open",
                )
            else:
                board.add(self.row, Col.PIPELINE + (1 if replaced else 0))
                if age < 0:
                    self.error(who, f"element {element} has generation {generation} > {now}")
        if page is not None and board.dead(page):
            self.error(
                who,
                f"page {page} was marked dead (revoked and reused) while the section that "
                "read it was open",
            )


def _thread_reader(child: Child, index: int) -> None:
    row = child.layout.reader_rows(child.config.slot)[index]
    reader = Reader(child, row, child.config.seed * 1009 + index)
    domain, board, stop, rng = child.domain, child.board, child.stop, reader.rng
    who = f"thread {index}"
    clock = time.monotonic_ns
    n = index * 7
    while not stop.is_set():
        n += 1
        t0 = clock()
        with domain.read():
            board.put(row, Col.INSIDE, 1)
            held = reader.enter(n, who)
            if n % 16 == 0:
                with domain.read():  # nested: joins the outer section's phase
                    reader.leave(reader.enter(n + 1, who), None, who)
            page = reader.access(who) if n % 4 == 0 else None
            if n % 8 == 0:
                time.sleep(rng.random() * DWELL_S)
            elif n % 64 == 0:
                time.sleep(0)
            reader.leave(held, page, who)
            board.put(row, Col.INSIDE, 0)
        board.span(row, clock() - t0, BACKSTOP_NS)


async def _task_reader(child: Child, reader: Reader, index: int) -> None:
    domain, board, stop, rng, row = child.domain, child.board, child.stop, reader.rng, reader.row
    awaits = index % 2 == 0
    who = f"task {index}"
    clock = time.monotonic_ns
    n = index * 7
    while not stop.is_set():
        n += 1
        t0 = clock()
        async with domain.read():
            board.add(row, Col.INSIDE, 1)
            held = reader.enter(n, who)
            page = reader.access(who) if n % 4 == 0 else None
            if awaits:
                # Other tasks run meanwhile, some of them entering and leaving.
                await asyncio.sleep(rng.random() * DWELL_S if n % 8 == 0 else 0)
            reader.leave(held, page, who)
            board.add(row, Col.INSIDE, -1)
        board.span(row, clock() - t0, BACKSTOP_NS)
        if not awaits:
            await asyncio.sleep(0)


def reader_main(config: ChildConfig) -> None:
    """A reader process: reader threads, and reader tasks on the main thread's loop."""
    with attached(config) as child, jitter(child, reader=True):
        child.ready()
        threads = [
            threading.Thread(
                target=guarded(f"reader thread {i}", functools.partial(_thread_reader, child, i)),
                name=f"torture-reader-{i}",
                daemon=True,
            )
            for i in range(config.layout.threads)
        ]
        for t in threads:
            t.start()
        loop_row = config.layout.reader_rows(config.slot)[-1]
        reader = Reader(child, loop_row, config.seed * 2003)

        async def tasks() -> None:
            await asyncio.gather(*(_task_reader(child, reader, i) for i in range(config.tasks)))

        guarded("reader tasks", lambda: asyncio.run(tasks()))()
        for t in threads:
            t.join()
