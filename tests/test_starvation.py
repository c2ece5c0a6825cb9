"""No writer starvation: overlapping readers that enter after a phase flip never delay it.

A thread (or an event loop's tasks) that keeps *some* section open at every
instant, with sections that overlap instead of nesting, would block a grace
period forever if the reader state were one nesting counter per thread, or
if a section joined the phase of a section it was started inside.  Every
section counts in the phase current at its own entry, so a grace period
waits only for the sections that began before it.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import aiorcu


async def _relay(domain: aiorcu.Domain, stop: asyncio.Event, hold: float) -> None:
    """Tasks whose sections overlap: each enters before the previous leaves."""

    async def reader(entered: asyncio.Event) -> None:
        async with domain.read():
            entered.set()
            await asyncio.sleep(hold)

    pending: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        entered = asyncio.Event()
        task = asyncio.create_task(reader(entered))
        pending.add(task)
        task.add_done_callback(pending.discard)
        await entered.wait()
        await asyncio.sleep(hold / 2)  # the next one enters while this one is inside
    await asyncio.gather(*pending)


def _run_relay(domain: aiorcu.Domain, started: threading.Event, stop_flag: threading.Event) -> None:
    async def main() -> None:
        stop = asyncio.Event()

        async def watch() -> None:
            started.set()
            while not stop_flag.is_set():
                await asyncio.sleep(0.005)
            stop.set()

        await asyncio.gather(_relay(domain, stop, hold=0.02), watch())

    asyncio.run(main())


@pytest.mark.fallback
def test_overlapping_task_sections_do_not_starve_the_writer() -> None:
    domain = aiorcu.Domain(name="relay")
    started, stop_flag = threading.Event(), threading.Event()
    loop_thread = threading.Thread(target=_run_relay, args=(domain, started, stop_flag))
    loop_thread.start()
    try:
        assert started.wait(5)
        time.sleep(0.05)
        before = domain.stats()
        assert before.readers_active >= 1  # the relay always has a section open
        for _ in range(5):
            # Each grace period waits only for sections that began before it;
            # with a per-thread nesting counter this would raise the timeout.
            domain.synchronize_blocking(timeout=10)
        after = domain.stats()
        assert after.grace_periods - before.grace_periods == 5
        assert after.readers_active >= 1  # still overlapping while we finished
    finally:
        stop_flag.set()
        loop_thread.join(10)
    assert not loop_thread.is_alive()


def test_nested_sections_close_in_any_order() -> None:
    """Each section counts in its own phase, so nested sections may close in any order."""
    domain = aiorcu.Domain(name="nest")

    def gen():  # type: ignore[no-untyped-def]
        with domain.read():
            yield

    first, second = gen(), gen()
    next(first)
    next(second)
    # Close the outer generator's section first: the inner one stays inside.
    first.close()
    assert domain._inside()
    second.close()
    assert not domain._inside()
    domain.synchronize_blocking(timeout=5)


def test_overlapping_with_sections_on_one_thread_do_not_starve_the_writer() -> None:
    """Defect: interleaved generators always hold *some* `with` section open on one
    thread; a per-thread nesting count never dropped to zero."""
    domain = aiorcu.Domain(name="interleaved")
    stop = threading.Event()
    running = threading.Event()

    def gen():  # type: ignore[no-untyped-def]
        while True:
            with domain.read():
                yield
                yield

    def interleave() -> None:
        a, b = gen(), gen()
        next(a)  # a enters
        next(b)  # b enters while a is inside: overlapping, not nested
        running.set()
        while not stop.is_set():
            # Each step leaves one section and re-enters it while the other
            # one is still open: the thread is never outside.
            next(a)
            next(a)
            next(b)
            next(b)
            time.sleep(0)

    t = threading.Thread(target=interleave, name="interleaver")
    t.start()
    try:
        assert running.wait(5)
        for _ in range(5):
            domain.synchronize_blocking(timeout=10)
        assert domain.stats().readers_active >= 1
    finally:
        stop.set()
        t.join(10)


def test_with_sections_held_across_awaits_in_many_tasks_do_not_starve_the_writer() -> None:
    """Defect: `with` sections held across an await by tasks of one loop, each
    entering before the previous one leaves: the thread is never outside."""
    domain = aiorcu.Domain(name="with-across-await")
    started, stop_flag = threading.Event(), threading.Event()

    async def reader(entered: asyncio.Event) -> None:
        with domain.read():  # held across the await: other tasks run meanwhile
            entered.set()
            await asyncio.sleep(0.01)

    async def main() -> None:
        pending: set[asyncio.Task[None]] = set()
        while not stop_flag.is_set():
            entered = asyncio.Event()
            task = asyncio.create_task(reader(entered))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await entered.wait()
            started.set()
            await asyncio.sleep(0.005)  # the next one enters while this one is inside
        await asyncio.gather(*pending)

    loop_thread = threading.Thread(target=asyncio.run, args=(main(),), name="loop")
    loop_thread.start()
    try:
        assert started.wait(5)
        for _ in range(5):
            domain.synchronize_blocking(timeout=10)
        assert domain.stats().readers_active >= 1
    finally:
        stop_flag.set()
        loop_thread.join(10)
    assert not loop_thread.is_alive()


def test_a_relay_of_tasks_started_inside_sections_does_not_starve_the_writer() -> None:
    """Defect: each task starts its successor inside its section, so the successor's
    context inherits an open record; children joined that record's phase."""
    domain = aiorcu.Domain(name="inherit-relay")
    started, stop_flag = threading.Event(), threading.Event()

    async def runner(entered_previous: asyncio.Event | None) -> None:
        async with domain.read():
            if stop_flag.is_set():
                return
            successor_entered = asyncio.Event()
            # Started inside this section: the successor's context holds
            # this section's record while it enters its own.
            asyncio.get_running_loop().create_task(runner(None)).add_done_callback(
                lambda _: successor_entered.set()
            )
            started.set()
            await asyncio.sleep(0.005)  # overlap: the successor enters meanwhile

    async def main() -> None:
        await runner(None)
        while not stop_flag.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the last runners return

    loop_thread = threading.Thread(target=asyncio.run, args=(main(),), name="relay-loop")
    loop_thread.start()
    try:
        assert started.wait(5)
        time.sleep(0.05)
        for _ in range(5):
            domain.synchronize_blocking(timeout=10)
        assert domain.stats().readers_active >= 1  # the relay never stopped
    finally:
        stop_flag.set()
        loop_thread.join(10)
    assert not loop_thread.is_alive()
