"""Readers never see an object retired after a grace period that began after they entered.

The same run against a grace period that does not wait (the negative
control) must find violations: otherwise this test could not fail.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import aiorcu
from aiorcu import testing

from .conftest import STRESS_SECONDS


class Box:
    __slots__ = ("generation", "retired")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.retired = False


def _run(domain: aiorcu.Domain, seconds: float) -> tuple[int, int, int]:
    """Returns (reads, grace periods, violations)."""
    current = [Box(0)]
    stop = threading.Event()
    reads = [0]
    violations = [0]

    def check(box: Box) -> None:
        if box.retired:
            violations[0] += 1

    def thread_reader() -> None:
        n = 0
        while not stop.is_set():
            with domain.read():
                box = current[0]
                check(box)
                for _ in range(50):  # hold the object across a short stretch
                    pass
                time.sleep(0)
                check(box)
            n += 1
        reads[0] += n

    async def task_reader() -> None:
        n = 0
        while not stop.is_set():
            async with domain.read():
                box = current[0]
                check(box)
                await asyncio.sleep(0)  # other tasks run while this one is inside
                check(box)
            n += 1
        reads[0] += n

    def loop_thread() -> None:
        async def main() -> None:
            await asyncio.gather(*(task_reader() for _ in range(4)))

        asyncio.run(main())

    def writer() -> None:
        generation = 0
        while not stop.is_set():
            generation += 1
            old, current[0] = current[0], Box(generation)
            domain.synchronize_blocking(timeout=30)
            old.retired = True

    threads = [threading.Thread(target=thread_reader) for _ in range(2)]
    threads.append(threading.Thread(target=loop_thread))
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return reads[0], domain.stats().grace_periods, violations[0]


@pytest.mark.stress
@pytest.mark.fallback
def test_no_reader_sees_a_retired_object() -> None:
    domain = aiorcu.Domain(name="stress")
    reads, grace_periods, violations = _run(domain, STRESS_SECONDS)
    assert reads > 100 and grace_periods > 10
    assert violations == 0
    assert domain.stats().backstop_timeouts == 0


@pytest.mark.stress
@pytest.mark.fallback
def test_negative_control_busted_grace_period_is_caught() -> None:
    domain = aiorcu.Domain(name="stress-busted")
    testing.set_busted(domain)
    _reads, _grace_periods, violations = _run(domain, min(STRESS_SECONDS, 2.0))
    assert violations > 0
