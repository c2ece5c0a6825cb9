"""Cancellation at random points under load leaves a clean domain.

Thirty tasks call ``synchronize()`` and ``barrier()`` (and queue callbacks)
and are cancelled after random delays, under asyncio and trio, while thread
and task readers run.  Afterwards no thread, waiter, callback or reader slot
is left behind, and a publish/retire run on the same domain sees no retired
object; its negative control, with a busted domain, does.

Waits are hang guards only (see conftest).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from _thread import get_ident

import anyio
import pytest

import aiorcu
from aiorcu import testing

from .conftest import HANG_GUARD


class Box:
    __slots__ = ("generation", "retired")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.retired = False


def _start_thread_readers(
    d: aiorcu.Domain, current: list[Box], stop: threading.Event, violations: list[int], n: int = 2
) -> list[threading.Thread]:
    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            with d.read():
                box = current[0]
                if box.retired:
                    violations[0] += 1
                time.sleep(rng.uniform(0, 0.001))
                if box.retired:
                    violations[0] += 1

    threads = [
        threading.Thread(target=reader, args=(i,), name=f"chaos-reader-{i}") for i in range(n)
    ]
    for t in threads:
        t.start()
    return threads


async def _task_reader(
    d: aiorcu.Domain, current: list[Box], violations: list[int], rng: random.Random
) -> None:
    while True:
        async with d.read():
            box = current[0]
            if box.retired:
                violations[0] += 1
            await anyio.sleep(rng.choice((0, 0, 0.0005)))
            if box.retired:
                violations[0] += 1
        await anyio.sleep(0)


async def _cancel_at_random(d: aiorcu.Domain, seconds: float, seed: int) -> tuple[int, int]:
    """Many tasks call synchronize()/barrier() and get cancelled after random delays.

    Returns (completed calls, cancelled calls).
    """
    rng = random.Random(seed)
    completed = cancelled = 0
    deadline = time.monotonic() + seconds
    callbacks_ran = [0]

    async def caller() -> None:
        nonlocal completed, cancelled
        while time.monotonic() < deadline:
            which = rng.random()
            delay = rng.choice((0.0, rng.uniform(0, 0.002), rng.uniform(0, 0.02)))
            finished = False
            with anyio.move_on_after(delay):
                if which < 0.45:
                    await d.synchronize()
                elif which < 0.9:
                    await d.barrier()
                else:
                    d.call_after_grace_period(callbacks_ran.__setitem__, 0, 1)
                    await d.synchronize()
                finished = True
            if finished:
                completed += 1
            else:
                cancelled += 1
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(caller)
    return completed, cancelled


async def _publish_and_check(d: aiorcu.Domain, seconds: float, seed: int) -> tuple[int, int, int]:
    """publish / synchronize / retire with readers on threads and tasks.

    Some writers' waits are cancelled at random; a writer retires only what a
    completed grace period covers.  Returns (generations, retired, violations).
    """
    rng = random.Random(seed)
    current = [Box(0)]
    violations = [0]
    stop = threading.Event()
    threads = _start_thread_readers(d, current, stop, violations)
    generation = retired = 0
    try:
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(_task_reader, d, current, violations, random.Random(seed + i))
            unretired: list[Box] = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                generation += 1
                unretired.append(current[0])
                current[0] = Box(generation)
                finished = False
                with anyio.move_on_after(rng.choice((None, None, 0.0, 0.001))):
                    await d.synchronize()
                    finished = True
                if finished:  # covers every box unpublished before the call
                    for box in unretired:
                        box.retired = True
                    retired += len(unretired)
                    unretired = []
                await anyio.sleep(0)
            tg.cancel_scope.cancel()
    finally:
        stop.set()
        for t in threads:
            t.join(HANG_GUARD)
    return generation, retired, violations[0]


def _new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Threads alive now that were not in ``before``.

    Trio's own thread cache does not count: anyio's test runner drives trio
    in guest mode, which waits for I/O on "Trio thread N" workers.
    """
    return {
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    }


async def _chaos(d: aiorcu.Domain, seed: int) -> None:
    """Random cancellations under load, then checks that nothing was left behind."""
    threads_before = set(threading.enumerate())
    current = [Box(0)]
    violations = [0]
    stop = threading.Event()
    readers = _start_thread_readers(d, current, stop, violations)
    try:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(_task_reader, d, current, violations, random.Random(seed + i))
                completed, cancelled = await _cancel_at_random(d, 1.0, seed)
                tg.cancel_scope.cancel()
    finally:
        stop.set()
        for t in readers:
            t.join(HANG_GUARD)
    assert completed > 0 and cancelled > 0, (completed, cancelled)
    with anyio.fail_after(HANG_GUARD):
        await d.barrier()  # every callback queued by a cancelled barrier() runs
    stats = d.stats()
    assert stats.readers_active == 0
    assert stats.callbacks_pending == 0
    assert d._worker.pending == 0  # every cancelled waiter withdrew
    owners = d._threads.owners()
    assert {i.ident for i in owners} <= {get_ident()}  # only this (loop) thread keeps a slot
    assert stats.threads_registered == len(owners)
    assert stats.grace_periods > 0
    gc.collect()
    domain_threads = {d._worker.thread(), d._callbacks._thread}
    leaked = _new_threads(threads_before) - domain_threads
    assert not leaked, leaked  # one grace-period thread and one callback thread at most


@pytest.mark.anyio
@pytest.mark.fallback
async def test_random_cancellation_under_load_leaves_a_clean_domain() -> None:
    d = aiorcu.Domain(name="chaos")
    seed = random.randrange(1 << 30)
    await _chaos(d, seed)
    generations, retired, violations = await _publish_and_check(d, 1.0, seed)
    assert generations > 10 and retired > 0, (generations, retired, seed)
    assert violations == 0, f"seed {seed}"
    assert d.stats().backstop_timeouts == 0
    assert d.stats().readers_active == 0


@pytest.mark.anyio
@pytest.mark.fallback
async def test_negative_control_busted_domain_after_cancellation_is_caught() -> None:
    d = aiorcu.Domain(name="chaos-busted")
    seed = random.randrange(1 << 30)
    await _chaos(d, seed)
    testing.set_busted(d)
    _generations, _retired, violations = await _publish_and_check(d, 1.0, seed)
    assert violations > 0, f"a grace period that does not wait went unnoticed (seed {seed})"
