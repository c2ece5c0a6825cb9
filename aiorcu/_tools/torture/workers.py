"""The torture run's readers and writers, and the threads that carry them.

Readers on threads (``with``) and on asyncio tasks (``async with``; half of
them await inside their sections), the tasks on an event loop of their own
thread, read an object published in an `RcuCell`.  Writers replace it in a
pipeline, each retiring what it replaced another way:

- ``sync`` (thread): publish, ``synchronize_blocking()``, retire; every
  fourth time ``RcuCell.replace_blocking()``;
- ``deferred`` (thread): publish, retire with ``call_after_grace_period()``;
- ``poll`` (thread): publish, ``start_grace_period()``, retire once ``poll()``
  says its token completed;
- ``async`` (task): publish, ``await synchronize()``, retire; every other
  time ``await RcuCell.replace()``.

``--jitter`` adds random delays inside read sections, in ``with`` entries
between the phase load and the count update, and between the C writer's
grace-period steps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from aiorcu import testing

from .state import (
    POLL_PIPELINE,
    READER_JITTER_S,
    WRITER_JITTER_S,
    Object,
    Run,
    Tally,
    guarded,
)


# -- readers -------------------------------------------------------------------
def thread_reader(run: Run, tally: Tally, index: int) -> None:
    domain, cell, stop = run.domain, run.cell, run.stop
    rng = random.Random(run.seed * 1009 + index)
    who = f"reader thread {index}"
    clock = time.monotonic_ns
    n = 0
    while not stop.is_set():
        n += 1
        t0 = clock()
        with domain.read():
            obj = cell.get()
            if n % 16 == 0:
                with domain.read():  # nested: joins the outer section's phase
                    run.check(tally, cell.get(), who)
            if run.jitter and rng.random() < 0.02:
                time.sleep(rng.random() * READER_JITTER_S)
            elif n % 64 == 0:
                time.sleep(0)  # let the writers run while this section is open
            run.check(tally, obj, who)
        tally.span(clock() - t0)


async def task_reader(run: Run, tally: Tally, index: int) -> None:
    domain, cell, stop = run.domain, run.cell, run.stop
    rng = random.Random(run.seed * 2003 + index)
    awaits = index % 2 == 0
    who = f"reader task {index}"
    clock = time.monotonic_ns
    while not stop.is_set():
        t0 = clock()
        async with domain.read():
            obj = cell.get()
            if awaits:
                await asyncio.sleep(0)  # other tasks, and the async writer, run meanwhile
                if run.jitter and rng.random() < 0.05:
                    await asyncio.sleep(rng.random() * READER_JITTER_S)
            run.check(tally, obj, who)
        tally.span(clock() - t0)
        if not awaits:
            await asyncio.sleep(0)


# -- writers -------------------------------------------------------------------
def sync_writer(run: Run) -> None:
    domain, cell = run.domain, run.cell
    rng = random.Random(run.seed * 3001)
    published = 0
    while not run.stop.is_set():
        if published % 4 == 3:
            cell.replace_blocking(run.new(), run.retire)
        else:
            old = cell.publish(run.new())
            old.replaced = domain.snapshot()  # after the publication, never before
            if run.jitter and rng.random() < 0.1:
                time.sleep(rng.random() * READER_JITTER_S)
            domain.synchronize_blocking()
            run.retire(old)
        published += 1
        run.published["sync"] = published


def deferred_writer(run: Run) -> None:
    domain, cell = run.domain, run.cell
    rng = random.Random(run.seed * 3011)
    published = 0
    while not run.stop.is_set():
        if not run.callback_room.acquire(timeout=0.1):
            continue
        old = cell.publish(run.new())
        old.replaced = domain.snapshot()
        run.callbacks_queued += 1
        domain.call_after_grace_period(run.retire_callback, old)
        published += 1
        run.published["deferred"] = published
        time.sleep(rng.random() * 0.0002)


def poll_writer(run: Run) -> None:
    domain, cell = run.domain, run.cell
    rng = random.Random(run.seed * 3019)
    pending: collections.deque[tuple[int, Object]] = collections.deque()
    published = 0
    while not run.stop.is_set():
        old = cell.publish(run.new())
        old.replaced = domain.start_grace_period()
        pending.append((old.replaced, old))
        published += 1
        run.published["poll"] = published
        while pending and domain.poll(pending[0][0]):
            run.retire(pending.popleft()[1])
        if len(pending) >= POLL_PIPELINE:
            domain.wait_blocking(pending[0][0])
        time.sleep(rng.random() * 0.001)
    if pending:
        domain.wait_blocking(pending[-1][0])
        for _, obj in pending:
            run.retire(obj)


async def async_writer(run: Run) -> None:
    domain, cell = run.domain, run.cell
    rng = random.Random(run.seed * 3023)
    published = 0
    while not run.stop.is_set():
        if published % 2:
            await cell.replace(run.new(), run.retire)
        else:
            old = cell.publish(run.new())
            old.replaced = domain.snapshot()
            await domain.synchronize()
            run.retire(old)
        published += 1
        run.published["async"] = published
        await asyncio.sleep(rng.random() * 0.002)


def loop_main(run: Run, tally: Tally, tasks: int) -> None:
    async def main() -> None:
        async def guarded(name: str, coro: Any) -> None:
            try:
                await coro
            except BaseException as exc:
                run.fail(f"{name} raised {exc!r}")

        workers = [asyncio.create_task(guarded("async writer", async_writer(run)), name="writer")]
        workers += [
            asyncio.create_task(
                guarded(f"reader task {i}", task_reader(run, tally, i)), name=f"reader-{i}"
            )
            for i in range(tasks)
        ]
        await asyncio.gather(*workers)

    asyncio.run(main())


@contextlib.contextmanager
def jitter(run: Run, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with (
        testing.reader_delay(run.domain, run.reader_delay),
        testing.writer_jitter(WRITER_JITTER_S),
    ):
        yield


def make_workers(
    state: Run, thread_tallies: list[Tally], task_tally: Tally, tasks: int
) -> list[threading.Thread]:
    """The reader threads, the three writer threads and the event loop's thread (not started)."""
    workers = [
        threading.Thread(
            target=guarded(
                state, f"reader thread {i}", functools.partial(thread_reader, state, t, i)
            ),
            name=f"torture-reader-{i}",
            daemon=True,
        )
        for i, t in enumerate(thread_tallies)
    ]
    writers = {"sync": sync_writer, "deferred": deferred_writer, "poll": poll_writer}
    for name, fn in writers.items():
        workers.append(
            threading.Thread(
                target=guarded(state, f"{name} writer", functools.partial(fn, state)),
                name=f"torture-{name}-writer",
                daemon=True,
            )
        )
    workers.append(
        threading.Thread(
            target=functools.partial(loop_main, state, task_tally, tasks),
            name="torture-event-loop",
            daemon=True,
        )
    )
    return workers
