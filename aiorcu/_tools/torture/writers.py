"""The cross-process torture run's writer processes.

A writer process runs three lanes, each with a row of the board and (but
the memory lane) a cell and pool of elements of its own:

- ``sync`` (thread): publish, then in turn ``synchronize_blocking()``,
  ``wait_blocking(start_grace_period())`` and polling ``poll()``, then free;
- ``async`` (the main thread's event loop): publish, then ``await
  synchronize()`` and free, or every third time free in a
  ``call_after_grace_period()`` callback;
- ``memory`` (thread): revoke one of its pages (a commit, or a
  ``transaction()`` block), mark it dead, scribble on it through the raw
  buffer, clean it, clear the mark, grant it again.

A writer process that replaces a killed one takes the lanes over: one
grace period, then it frees every element of its pools that is out of its
cell but still live, and cleans and grants every page left revoked.
``--busted`` is set here, in the writer processes: it is their grace
periods that stop waiting.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from typing import Final

import aiorcu
from aiorcu import testing

from .board import PAGE_SIZE, Board, Col, Lane
from .children import Child, ChildConfig, attached, guarded, jitter

MAX_CALLBACKS: Final = 4  # an async lane's elements waiting for their callbacks
CLEAN: Final = bytes(PAGE_SIZE)
SCRIBBLE: Final = b"\xa5" * PAGE_SIZE


def _allocate(board: Board, cell: int, cursor: list[int]) -> int | None:
    """A free element of the cell's pool, round the ring from ``cursor``."""
    pool = board.pool(cell)
    for i in range(len(pool)):
        element = pool[(cursor[0] + i) % len(pool)]
        if board.is_free(element):
            cursor[0] += i + 1
            return element
    return None


def recover(child: Child, writer: int) -> None:
    """Takes over a writer slot, whatever its last owner was doing when it died."""
    board, layout, domain = child.board, child.layout, child.domain
    cells = [layout.cell(writer, Lane.SYNC), layout.cell(writer, Lane.ASYNC)]
    current = [board.current(cell) for cell in cells]
    # Every element out of its cell now left it before this grace period.
    domain.synchronize_blocking()
    for cell, kept in zip(cells, current, strict=True):
        for element in board.pool(cell):
            if element != kept and not board.is_free(element):
                board.free(element)
    bitmap = child.memory.bitmap
    for page in layout.writer_pages(writer):
        with domain.read():
            granted = bitmap.is_set(page)
        if not granted:  # revoked, and the grace period above is over
            child.scribble(page, CLEAN)
            board.set_dead(page, False)
            bitmap.commit_blocking(
                aiorcu.BitmapTransaction(ops=[aiorcu.Grant(start=page, count=1)])
            )


def _publish(child: Child, cell: int, row: int, cursor: list[int]) -> int | None:
    """Puts a new element in the cell; returns the one it replaced (or None: pool empty)."""
    board = child.board
    new = _allocate(board, cell, cursor)
    if new is None:
        return None
    board.init_element(new, board.next_serial(cell), child.completed())
    old = board.publish(cell, new)
    board.add(row, Col.PUBLISHED)
    return old


def _sync_lane(child: Child) -> None:
    board, domain, writer = child.board, child.domain, child.config.writer
    cell, row = child.layout.cell(writer, Lane.SYNC), child.layout.writer_row(writer, Lane.SYNC)
    rng = random.Random(child.config.seed * 3001)
    cursor = [0]
    n = 0
    while not child.stop.is_set():
        n += 1
        old = _publish(child, cell, row, cursor)
        if old is None:
            time.sleep(0.001)
            continue
        board.put(row, Col.WAITING, 1)
        if n % 3 == 0:
            board.set_replaced(old, domain.snapshot())  # after the publication, never before
            domain.synchronize_blocking()
        else:
            token = domain.start_grace_period()
            board.set_replaced(old, token)
            if n % 3 == 1:
                domain.wait_blocking(token)
            else:
                while not domain.poll(token):
                    time.sleep(0.0002)
        board.put(row, Col.WAITING, 0)
        board.free(old)
        board.add(row, Col.RETIRED)
        if n % 4 == 0:
            time.sleep(rng.random() * 0.001)


async def _async_lane(child: Child) -> None:
    board, domain, writer = child.board, child.domain, child.config.writer
    cell, row = child.layout.cell(writer, Lane.ASYNC), child.layout.writer_row(writer, Lane.ASYNC)
    rng = random.Random(child.config.seed * 3023)
    room = threading.Semaphore(MAX_CALLBACKS)

    def retire(element: int) -> None:  # on the process's callback thread
        board.free(element)
        board.add(row, Col.CALLBACKS_RUN)
        room.release()

    cursor = [0]
    n = 0
    while not child.stop.is_set():
        n += 1
        old = _publish(child, cell, row, cursor)
        if old is None:
            await asyncio.sleep(0.001)
            continue
        board.set_replaced(old, domain.snapshot())
        if n % 3 == 0 and room.acquire(blocking=False):
            board.add(row, Col.CALLBACKS_QUEUED)
            domain.call_after_grace_period(retire, old)
        else:
            board.put(row, Col.WAITING, 1)
            await domain.synchronize()
            board.put(row, Col.WAITING, 0)
            board.free(old)
            board.add(row, Col.RETIRED)
        await asyncio.sleep(rng.random() * 0.001)


def _memory_lane(child: Child) -> None:
    board, writer = child.board, child.config.writer
    row = child.layout.writer_row(writer, Lane.MEMORY)
    pages = child.layout.writer_pages(writer)
    bitmap = child.memory.bitmap
    rng = random.Random(child.config.seed * 3037)
    n = 0
    while not child.stop.is_set():
        page = pages[n % len(pages)]
        n += 1
        board.put(row, Col.WAITING, 1)
        if n % 2:
            bitmap.commit_blocking(
                aiorcu.BitmapTransaction(ops=[aiorcu.Revoke(start=page, count=1)])
            )
        else:
            with bitmap.transaction() as tx:
                tx.revoke(page, 1)
        board.put(row, Col.WAITING, 0)
        # Reuse the page past the guard: only safe because the revocation waited.
        board.set_dead(page, True)
        child.scribble(page, SCRIBBLE)
        time.sleep(0)
        child.scribble(page, CLEAN)
        board.set_dead(page, False)
        bitmap.commit_blocking(aiorcu.BitmapTransaction(ops=[aiorcu.Grant(start=page, count=1)]))
        board.add(row, Col.REVOKES)
        time.sleep(rng.random() * 0.002)


def writer_main(config: ChildConfig) -> None:
    """A writer process: the sync and memory lanes on threads, the async lane on the loop."""
    with attached(config) as child, jitter(child, reader=False):
        if config.busted:
            testing.set_busted(child.domain)
        recover(child, config.writer)
        child.ready()
        child.board.set_ready(config.slot, True)
        lanes = [
            threading.Thread(
                target=guarded(f"writer {config.writer} {name} lane", functools.partial(fn, child)),
                name=f"torture-{name}-lane",
                daemon=True,
            )
            for name, fn in (("sync", _sync_lane), ("memory", _memory_lane))
        ]
        for t in lanes:
            t.start()
        guarded(f"writer {config.writer} async lane", lambda: asyncio.run(_async_lane(child)))()
        for t in lanes:
            t.join()
