"""Page visibility: an HTTP control plane revokes pages while threads and tasks use them.

Worker threads and asyncio tasks read and write an `aiorcu.GuardedMemory`
(every access checks its pages inside a read section).  An HTTP control plane
(Starlette on uvicorn) takes bitmap transactions as JSON, validates them with
pydantic and commits them: a commit that revokes a page returns only after a
grace period, so once it has returned no access to that page is still in
progress.

This file is the service.  Its harness (`harness.py`, next to it) checks that
promise while the service runs, for every successful access, and with
`--demo` drives it with a load generator and prints the verdict (exit status
1 on any violation):

    python examples/page_visibility/service.py --demo    # 5 s run with a load generator
    python examples/page_visibility/service.py           # just serve on 127.0.0.1:8000

Endpoints: POST /transactions (200 with the commit report, 422 with
pydantic's errors for a malformed body, 409 for a transaction that does not
fit the memory), GET /stats, GET /pages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import pydantic
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aiorcu
from aiorcu import testing  # test hooks, for --busted only

PAGES = 16
PAGE_SIZE = 4096
ACCESS_BYTES = 64  # bytes per access, always inside one page
GRACE_SAMPLES = 10_000  # commit waits kept for the percentiles (the latest ones)
SLOW_SECONDS = 0.001  # how long a "slow" accessor stays in its section after the access


@dataclass(eq=False)
class Accessor:
    """One thread's or task's counters.

    Only the accessor writes these; others read them (a stale value is fine
    for statistics).
    """

    name: str
    kind: str  # "thread" or "task"
    accesses: int = 0
    denials: int = 0

    def accessed(self, page: int, done: int) -> None:
        """After a successful access; ``done`` (monotonic ns) was taken inside its section."""
        self.accesses += 1

    def stopped(self) -> None:
        """When the accessor has stopped."""


def percentiles(values: Iterable[float]) -> dict[str, float | int]:
    """Nearest-rank p50 and p99, and the max."""
    ordered = sorted(values)
    if not ordered:
        return {"samples": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"samples": len(ordered), "p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1]}


class PageService:
    """The guarded memory, its accessors and the control plane.

    Args:
        domain: The domain whose grace periods protect the memory; a new one
            by default.
        threads: Worker threads accessing the memory.
        tasks: Asyncio tasks accessing the memory, on the server's loop.
        slow_every: Every this many accesses, an accessor stays in its read
            section for `SLOW_SECONDS` after the access (a slow accessor, which
            a grace period must wait for).
        seed: Seed of the accessors' random choices.
    """

    def __init__(
        self,
        domain: aiorcu.Domain | None = None,
        *,
        threads: int = 2,
        tasks: int = 4,
        slow_every: int = 16,
        seed: int = 1,
    ) -> None:
        self.domain = domain if domain is not None else aiorcu.Domain(name="pages")
        self.memory = aiorcu.GuardedMemory(PAGES, PAGE_SIZE, domain=self.domain, initial=True)
        self.threads, self.tasks, self.slow_every, self.seed = threads, tasks, slow_every, seed
        self.accessors: list[Accessor] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._task_handles: list[asyncio.Task[None]] = []
        self._started = time.monotonic()
        self.commits = self.restricting = self.unsynchronized = 0
        self.rejected = self.malformed = 0
        self.synchronized = 0
        self.grace_seconds: deque[float] = deque(maxlen=GRACE_SAMPLES)

    # -- accessors ------------------------------------------------------------
    def _thread_accessor(self, acc: Accessor, rng: random.Random) -> None:
        mem, section, stop = self.memory, self.domain.read, self._stop
        buf, data = bytearray(ACCESS_BYTES), bytes(range(ACCESS_BYTES))
        slow_every, n = self.slow_every, 0
        while not stop.is_set():
            n += 1
            page = rng.randrange(PAGES)
            offset = page * PAGE_SIZE + rng.randrange(PAGE_SIZE - ACCESS_BYTES + 1)
            with section():
                try:
                    if n & 1:
                        mem.read_into(offset, buf)
                    else:
                        mem.write(offset, data)
                except aiorcu.AccessDenied:
                    acc.denials += 1
                    continue
                if n % slow_every == 0:
                    time.sleep(SLOW_SECONDS)
                # Still inside the section: the access is not over before now.
                done = time.monotonic_ns()
            acc.accessed(page, done)
        acc.stopped()

    async def _task_accessor(self, acc: Accessor, rng: random.Random) -> None:
        mem, domain, stop = self.memory, self.domain, self._stop
        data = bytes(range(ACCESS_BYTES))
        slow_every, n = self.slow_every, 0
        try:
            while not stop.is_set():
                n += 1
                page = rng.randrange(PAGES)
                offset = page * PAGE_SIZE + rng.randrange(PAGE_SIZE - ACCESS_BYTES + 1)
                done = 0
                async with domain.read():
                    try:
                        if n & 1:
                            mem.read(offset, ACCESS_BYTES)
                        else:
                            mem.write(offset, data)
                    except aiorcu.AccessDenied:
                        acc.denials += 1
                    else:
                        if n % slow_every == 0:
                            await asyncio.sleep(SLOW_SECONDS)  # awaits inside its section
                        done = time.monotonic_ns()
                if done:
                    acc.accessed(page, done)
                await asyncio.sleep(0)  # let the control plane have the loop
        finally:
            acc.stopped()

    def _new_accessor(self, name: str, kind: str) -> Accessor:
        acc = Accessor(name, kind)
        self.accessors.append(acc)
        return acc

    async def start(self) -> None:
        self._started = time.monotonic()
        for i in range(self.threads):
            acc = self._new_accessor(f"worker-{i}", "thread")
            thread = threading.Thread(
                target=self._thread_accessor,
                args=(acc, random.Random(self.seed * 1000 + i)),
                name=acc.name,
                daemon=True,
            )
            self._workers.append(thread)
            thread.start()
        for i in range(self.tasks):
            acc = self._new_accessor(f"task-{i}", "task")
            rng = random.Random(self.seed * 1000 + 500 + i)
            self._task_handles.append(
                asyncio.create_task(self._task_accessor(acc, rng), name=acc.name)
            )

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._task_handles)
        for thread in self._workers:
            await asyncio.to_thread(thread.join)

    # -- control plane ----------------------------------------------------------
    def _visible(self) -> list[bool]:
        bitmap = self.memory.bitmap
        with self.domain.read():
            return [bitmap.is_set(page) for page in range(PAGES)]

    async def _commit(self, tx: aiorcu.BitmapTransaction) -> aiorcu.CommitReport:
        """Commits ``tx``; one that revoked access returns only after a grace period."""
        report = await self.memory.bitmap.commit(tx)
        self._count_commit(tx, report)
        return report

    def _count_commit(self, tx: aiorcu.BitmapTransaction, report: aiorcu.CommitReport) -> None:
        self.commits += 1
        self.restricting += report.restricted
        self.unsynchronized += tx.sync == "never"
        if report.synchronized:
            self.synchronized += 1
            self.grace_seconds.append(report.grace_period_seconds)

    async def post_transaction(self, request: Request) -> JSONResponse:
        body = await request.body()
        try:
            tx = aiorcu.BitmapTransaction.model_validate_json(body)
        except pydantic.ValidationError as exc:
            self.malformed += 1
            errors = json.loads(exc.json(include_url=False))  # JSON-safe exc.errors()
            return JSONResponse(
                {"detail": "malformed transaction; nothing applied", "errors": errors},
                status_code=422,
            )
        try:
            report = await self._commit(tx)
        except aiorcu.TransactionRejected as exc:
            self.rejected += 1
            return JSONResponse({"detail": str(exc), "op_index": exc.index}, status_code=409)
        return JSONResponse(report.model_dump(mode="json"))

    def stats(self) -> dict[str, Any]:
        by_kind = Counter[str]()
        for acc in self.accessors:
            by_kind[acc.kind] += acc.accesses
        domain_stats = self.domain.stats()
        return {
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "backend": aiorcu.backend_info().mechanism,
            "accessors": {"threads": self.threads, "tasks": self.tasks},
            "accesses": by_kind["thread"] + by_kind["task"],
            "accesses_by_threads": by_kind["thread"],
            "accesses_by_tasks": by_kind["task"],
            "denials": sum(acc.denials for acc in self.accessors),
            "commits": self.commits,
            "commits_restricting": self.restricting,
            "commits_sync_never": self.unsynchronized,
            "rejected": self.rejected,
            "malformed": self.malformed,
            "grace_periods": domain_stats.grace_periods,
            "commits_synchronized": self.synchronized,
            "grace_period_seconds": percentiles(self.grace_seconds),
        }

    async def get_stats(self, request: Request) -> JSONResponse:
        return JSONResponse(self.stats())

    async def get_pages(self, request: Request) -> JSONResponse:
        visible = self._visible()
        return JSONResponse(
            {
                "pages": PAGES,
                "page_size": PAGE_SIZE,
                "accessible": [p for p in range(PAGES) if visible[p]],
            }
        )

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        return Starlette(
            routes=[
                Route("/transactions", self.post_transaction, methods=["POST"]),
                Route("/stats", self.get_stats, methods=["GET"]),
                Route("/pages", self.get_pages, methods=["GET"]),
            ],
            lifespan=lifespan,
        )


async def serve(host: str, port: int, service: PageService) -> None:
    config = uvicorn.Config(service.app(), host=host, port=port, lifespan="on")
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", action="store_true", help="run the load generator, then exit")
    parser.add_argument("--seconds", type=float, default=5.0, help="demo length (default 5)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="without --demo (default 8000)")
    parser.add_argument("--threads", type=int, default=2, help="accessor threads (default 2)")
    parser.add_argument("--tasks", type=int, default=4, help="accessor tasks (default 4)")
    parser.add_argument(
        "--busted",
        action="store_true",
        help="negative control: grace periods that do not wait; the check must fail",
    )
    args = parser.parse_args(argv)
    domain = aiorcu.Domain(name="pages")
    if args.busted:
        testing.set_busted(domain)
    # The harness checks the promise while the service runs; with --demo it
    # also drives the load and prints the verdict.
    import harness  # noqa: PLC0415 - the file next to this one, which imports it

    service = harness.CheckedPageService(domain, threads=args.threads, tasks=args.tasks)
    if args.demo:
        return harness.demo(service, args.seconds, args.host)
    return harness.serve_checked(service, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
