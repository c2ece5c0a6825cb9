"""No writer starvation: overlapping readers that enter after a phase flip never delay it.

A single event-loop thread whose tasks keep *some* section open at every
instant (overlapping, never nested) would block a grace period forever if the
reader state were one nesting counter per thread.  With per-phase counts the
grace period waits only for the sections that began before it.
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


def test_thread_nesting_joins_the_outer_phase() -> None:
    """Nested `with` sections count in the outermost one's phase, closing in any order."""
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
