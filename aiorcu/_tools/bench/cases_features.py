"""Features built on the read path: Bitmap, GuardedMemory, RcuCell, callbacks.

Each row appears when this aiorcu has the feature.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import aiorcu

from .measure import Result, Settings, best_of, stmt


def bench_bitmap(s: Settings) -> list[Result]:
    bitmap_cls = getattr(aiorcu, "Bitmap", None)
    tx_cls = getattr(aiorcu, "BitmapTransaction", None)
    if bitmap_cls is None or tx_cls is None:
        return []
    domain = aiorcu.Domain(name="bench-bitmap")
    bitmap = bitmap_cls(4096, domain=domain, initial=True)
    data = bytearray(4096)
    lock = threading.Lock()
    with domain.read():
        ns = best_of(
            {
                "check": stmt("check(100, 1)", check=bitmap.check_range),
                "locked": stmt("with lock: data[100]", lock=lock, data=data),
            },
            s.number,
            s.repeat,
        )
    ns.update(
        best_of(
            {
                "protected": stmt(
                    "with domain.read(): check(100, 1)", domain=domain, check=bitmap.check_range
                ),
                "locked2": stmt("with lock: data[100]", lock=lock, data=data),
            },
            s.number,
            s.repeat,
        )
    )
    results = [
        Result(
            "bitmap.check_range(p, 1) in an open section",
            ns["check"],
            "with threading.Lock(): bytearray[p]",
            ns["locked"],
            label="bitmap.check_range(), open section",
            baseline_label="Lock + bytearray[p]",
        ),
        Result(
            "with domain.read(): bitmap.check_range(p, 1)",
            ns["protected"],
            "with threading.Lock(): bytearray[p]",
            ns["locked2"],
            goal="<= 1.3x",
            goal_ratio=1.3,
            label="read + bitmap.check_range()",
            baseline_label="Lock + bytearray[p]",
        ),
    ]
    memory_cls = getattr(aiorcu, "GuardedMemory", None)
    if memory_cls is not None:
        mem = memory_cls(16, page_size=4096, domain=domain, initial=True)
        ns = best_of(
            {
                "read": stmt("read(100, 64)", read=mem.read),
                "slice": stmt("with lock: bytes(data[100:164])", lock=lock, data=data),
            },
            s.number // 2,
            s.repeat,
        )
        results.append(
            Result(
                "GuardedMemory.read(offset, 64)",
                ns["read"],
                "with threading.Lock(): bytes(bytearray[a:a+64])",
                ns["slice"],
                goal="<= 2x",
                goal_ratio=2.0,
                baseline_label="Lock + bytes slice",
            )
        )
    ops = [{"op": "grant", "start": i * 64, "count": 8} for i in range(64)]
    commit = bitmap.commit_blocking
    ns = best_of(
        {"commit": stmt("commit(tx(ops=ops))", commit=commit, tx=tx_cls, ops=ops)},
        max(20, s.number // 2000),
        s.repeat,
    )
    results.append(
        Result(
            "64-op commit, no restriction (validation included)",
            ns["commit"],
            goal="<= 100 us",
            goal_ns=100_000,
            label="64-op bitmap commit",
        )
    )
    big = bitmap_cls(1_000_000, domain=domain, initial=False)
    grant = tx_cls(ops=[{"op": "grant", "start": 0, "count": 1_000_000}], sync="never")
    revoke = tx_cls(ops=[{"op": "revoke", "start": 0, "count": 1_000_000}], sync="never")
    ns = best_of(
        {
            "flip": stmt(
                "commit(grant); commit(revoke)",
                commit=big.commit_blocking,
                grant=grant,
                revoke=revoke,
            )
        },
        max(5, s.number // 20000),
        s.repeat,
    )
    results.append(
        Result(
            "grant or revoke of 1,000,000 pages in one op",
            ns["flip"] / 2,
            goal="<= 1 ms",
            goal_ns=1_000_000,
            note='sync="never", so the figure is the word-level update alone',
            label="grant or revoke of 1M pages",
        )
    )
    return results


def bench_cell_callbacks(s: Settings) -> list[Result]:
    results: list[Result] = []
    domain = aiorcu.Domain(name="bench-cell")
    cell_cls = getattr(aiorcu, "RcuCell", None)
    if cell_cls is not None:

        class Box:
            value = 1

        cell = cell_cls(Box(), domain=domain)
        ns = best_of(
            {
                "cell": stmt("with domain.read(): get()", domain=domain, get=cell.get),
                "lock": stmt("with lock: box.value", lock=threading.Lock(), box=Box()),
            },
            s.number,
            s.repeat,
        )
        results.append(
            Result(
                "with domain.read(): cell.get()",
                ns["cell"],
                "with threading.Lock(): obj.attr",
                ns["lock"],
                goal="<= 1.3x",
                goal_ratio=1.3,
                baseline_label="Lock + attribute",
            )
        )
    if hasattr(domain, "call_after_grace_period") and hasattr(domain, "barrier_blocking"):

        def nothing() -> None:
            return None

        queue: deque[Callable[[], None]] = deque()
        number = max(1000, s.number // 10)

        def queue_rcu(n: int) -> float:
            call = domain.call_after_grace_period
            t0 = time.perf_counter()
            for _ in range(n):
                call(nothing)
            elapsed = time.perf_counter() - t0
            domain.barrier_blocking()
            return elapsed

        def queue_deque(n: int) -> float:
            append, popleft = queue.append, queue.popleft
            t0 = time.perf_counter()
            for _ in range(n):
                append(nothing)
                popleft()()
            return time.perf_counter() - t0

        ns = best_of({"rcu": queue_rcu, "deque": queue_deque}, number, s.repeat)
        results.append(
            Result(
                "domain.call_after_grace_period(fn)",
                ns["rcu"],
                "deque.append(fn); deque.popleft()()",
                ns["deque"],
                goal="<= 1.5x",
                goal_ratio=1.5,
                baseline_label="deque append+call",
            )
        )
        total = 100_000

        def end_to_end() -> float:
            done = [0]

            def count() -> None:
                done[0] += 1

            t0 = time.perf_counter()
            for _ in range(total):
                domain.call_after_grace_period(count)
            domain.barrier_blocking()
            elapsed = time.perf_counter() - t0
            if done[0] != total:
                raise RuntimeError(f"{done[0]} of {total} callbacks ran before the barrier")
            return elapsed

        best = min(end_to_end() for _ in range(1 if s.quick else 3))
        results.append(
            Result(
                "100,000 callbacks queued and run, end to end",
                best * 1e9,
                goal="<= 1 s",
                goal_ns=1e9,
                unit="ns total",
                label="100k callbacks, end to end",
            )
        )
    return results
