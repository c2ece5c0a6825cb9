"""Read sections: an empty ``with`` / ``async with domain.read()`` against locks."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiorcu

from .measure import Result, Settings, best_of, missing, on_loop, optional, stmt

RWLOCK = "readerwriterlock RWLockFairD read lock"
AIORWLOCK = "aiorwlock reader"


def bench_thread_read(s: Settings) -> list[Result]:
    domain = aiorcu.Domain(name="bench")
    candidates = {
        "aiorcu": stmt("with domain.read(): pass", domain=domain),
        "lock": stmt("with lock: pass", lock=threading.Lock()),
    }
    rw = optional("readerwriterlock.rwlock")
    if rw is not None:
        candidates["rwlock"] = stmt("with rlock: pass", rlock=rw.RWLockFairD().gen_rlock())
    ns = best_of(candidates, s.number, s.repeat)
    name = "with domain.read(): pass"
    results = [
        Result(
            name,
            ns["aiorcu"],
            "with threading.Lock(): pass",
            ns["lock"],
            goal="<= 0.85x (stretch 0.7x)",
            goal_ratio=0.85,
            baseline_label="threading.Lock",
        )
    ]
    goal = ">= 8x faster"
    if "rwlock" in ns:
        results.append(
            Result(
                name,
                ns["aiorcu"],
                RWLOCK,
                ns["rwlock"],
                goal=goal,
                goal_ratio=1 / 8,
                baseline_label="readerwriterlock",
            )
        )
    else:
        results.append(
            missing(
                name,
                "bench",
                "readerwriterlock",
                baseline=RWLOCK,
                baseline_label="readerwriterlock",
                goal=goal,
            )
        )
    return results


def bench_async_read(s: Settings) -> list[Result]:
    domain = aiorcu.Domain(name="bench-async")
    aiorwlock = optional("aiorwlock")
    loop = asyncio.new_event_loop()
    try:

        async def make() -> tuple[asyncio.Lock, Any]:
            return asyncio.Lock(), (aiorwlock.RWLock() if aiorwlock is not None else None)

        lock, rwlock = loop.run_until_complete(make())

        async def with_section(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                async with domain.read():
                    pass
            return time.perf_counter() - t0

        async def with_lock(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                async with lock:
                    pass
            return time.perf_counter() - t0

        async def with_rwlock(n: int) -> float:
            reader = rwlock.reader
            t0 = time.perf_counter()
            for _ in range(n):
                async with reader:
                    pass
            return time.perf_counter() - t0

        candidates = {"aiorcu": on_loop(loop, with_section), "lock": on_loop(loop, with_lock)}
        if rwlock is not None:
            candidates["aiorwlock"] = on_loop(loop, with_rwlock)
        ns = best_of(candidates, s.number // 2, s.repeat)
    finally:
        loop.close()
    name = "async with domain.read(): pass"
    results = [
        Result(
            name,
            ns["aiorcu"],
            "async with asyncio.Lock(): pass",
            ns["lock"],
            goal="<= 0.9x (stretch 0.6x)",
            goal_ratio=0.9,
            baseline_label="asyncio.Lock",
        )
    ]
    goal = ">= 12x faster"
    if "aiorwlock" in ns:
        results.append(
            Result(
                name,
                ns["aiorcu"],
                AIORWLOCK,
                ns["aiorwlock"],
                goal=goal,
                goal_ratio=1 / 12,
                baseline_label="aiorwlock",
            )
        )
    else:
        results.append(
            missing(
                name,
                "bench",
                "aiorwlock",
                baseline=AIORWLOCK,
                baseline_label="aiorwlock",
                goal=goal,
            )
        )
    return results
