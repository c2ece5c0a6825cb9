"""Shared pages: worker processes serve pages from one guarded shared memory.

Run several of these under uvicorn (``--workers 4``): every worker attaches,
at startup, to the `aiorcu.SharedDomain` and to the `GuardedMemory` in the
shared-memory segment whose names the launcher put in its environment
(see `pages.py`).  Any worker can revoke or grant pages; a revoke returns
only when no reader in *any* worker can still be using the page.

Endpoints:

- ``GET /pages/{n}``: the page's bytes, read through the guard in
  `CHUNKS` reads inside one read section (403 if the page is revoked, 404
  if there is no such page).
- ``POST /control/revoke``, ``POST /control/grant``: a JSON body
  ``{"pages": [3, 7], "label": "..."}`` (422 if malformed), applied as one
  `BitmapTransaction`; the answer is its `CommitReport` (409 if a page is
  past the end: nothing applied).  A revoke with ``"wipe": true``
  overwrites the pages with `SCRIBBLE` as soon as the commit has returned,
  as a pool does before it hands freed pages to a new tenant; the answer
  then also says ``"pages_wiped"``.
- ``GET /stats``: this worker's pid and counters, and the domain's.

Every answer carries the worker's pid in ``x-worker-pid`` and its
sentinel's counters in ``x-sentinel`` (below).  Page answers also carry
``x-page-intact``: the worker's own check, "1" if the page's bytes in shared
memory were still the bytes it served just before its section ended.

The sentinel is the tight form of that check.  A request's section lasts a
few microseconds per chunk, too short for a broken grace period to show up
reliably; the sentinel, a task in each worker, reads every accessible page
inside one section, stays in it for `SENTINEL_HOLD_SECONDS` (like a slow
request) and, still inside, compares what it read with the pages' bytes in
shared memory.  Nobody may change a page a reader has seen until the reader
leaves its section: a revoke that returned early, followed by the wipe,
shows up as a changed page.

    python -m uvicorn --app-dir examples/shared_pages app:app --workers 4

needs the launcher's names; `demo.py` (``make demo-shared``) sets them up,
runs this under load and checks the invariant.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pydantic
from pages import (
    CHUNK,
    CHUNKS,
    DATA_OFFSET,
    ENV_BUSTED,
    ENV_DOMAIN,
    ENV_MEMORY,
    PAGE_SIZE,
    PAGES,
    SCRIBBLE,
    attach_shared_memory,
    view,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import aiorcu
from aiorcu import testing  # for the launcher's --busted only

SENTINEL_HOLD_SECONDS = 0.005  # how long the sentinel stays in each section


class PagesRequest(pydantic.BaseModel):
    """The body of ``POST /control/revoke`` and ``/control/grant``."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    pages: list[Annotated[int, pydantic.Field(strict=True, ge=0)]] = pydantic.Field(
        min_length=1, max_length=4096
    )
    label: str | None = None
    wipe: bool = False  # revoke only: overwrite the pages once nobody can read them

    def transaction(self, op: type[aiorcu.Grant | aiorcu.Revoke]) -> aiorcu.BitmapTransaction:
        """One transaction, one op per run of consecutive pages: one grace period in all."""
        ops: list[aiorcu.Grant | aiorcu.Revoke] = []
        pages = sorted(set(self.pages))
        start = previous = pages[0]
        for page in [*pages[1:], -1]:
            if page != previous + 1:
                ops.append(op(start=start, count=previous - start + 1))
                start = page
            previous = page
        return aiorcu.BitmapTransaction(ops=ops, label=self.label)


class Worker:
    """One worker process's view of the shared pages, its sentinel and its endpoints."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.served = self.denied = self.changed = self.commits = 0
        self.sentinel_rounds = self.sentinel_pages = self.sentinel_changed = 0
        self._sentinel: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Attaches to the domain and the memory the launcher named."""
        self.domain = aiorcu.SharedDomain(os.environ[ENV_DOMAIN])
        if os.environ.get(ENV_BUSTED) == "1":
            testing.set_busted(self.domain)  # a negative control: revokes stop waiting
        self.shm = attach_shared_memory(os.environ[ENV_MEMORY])
        self.mem = aiorcu.GuardedMemory.attach(view(self.shm), domain=self.domain)
        # The pages' bytes without the guard, for the checks only.
        self.shared_bytes = view(self.shm)[DATA_OFFSET : DATA_OFFSET + self.mem.size]
        self._sentinel = asyncio.create_task(self.sentinel(), name="sentinel")

    async def stop(self) -> None:
        """Detaches: no request is in progress any more (uvicorn drained them)."""
        if self._sentinel is not None:
            self._sentinel.cancel()  # leaves its section on the way out
            with contextlib.suppress(asyncio.CancelledError):
                await self._sentinel
        self.shared_bytes.release()
        self.mem.close()
        self.domain.close()  # releases this process's reader slot and entry
        self.shm.close()  # the launcher, which created it, unlinks it

    def headers(self) -> dict[str, str]:
        return {
            "x-worker-pid": str(self.pid),
            "x-sentinel": f"{self.sentinel_rounds} {self.sentinel_pages} {self.sentinel_changed}",
        }

    async def sentinel(self) -> None:
        """Reads every accessible page, stays a while, checks that none changed meanwhile."""
        while True:
            seen = {}
            async with self.domain.read():
                for page in range(PAGES):
                    with contextlib.suppress(aiorcu.AccessDenied):
                        seen[page] = self.mem.read(page * PAGE_SIZE, PAGE_SIZE)
                await asyncio.sleep(SENTINEL_HOLD_SECONDS)
                for page, data in seen.items():
                    base = page * PAGE_SIZE
                    self.sentinel_changed += (
                        bytes(self.shared_bytes[base : base + PAGE_SIZE]) != data
                    )
            self.sentinel_rounds += 1
            self.sentinel_pages += len(seen)
            await asyncio.sleep(0)  # between sections, so that a revoke can end

    async def get_page(self, request: Request) -> Response:
        page: int = request.path_params["page"]
        if page >= PAGES:
            return JSONResponse(
                {"detail": f"no page {page}: there are {PAGES} (0..{PAGES - 1})"},
                status_code=404,
                headers=self.headers(),
            )
        base = page * PAGE_SIZE
        chunks = []
        try:
            # One section for the whole page: a revoke that starts meanwhile
            # denies the chunks still to read, and its commit does not return
            # (so nobody rewrites the page) until the section has ended.
            async with self.domain.read():
                for k in range(CHUNKS):
                    chunks.append(self.mem.read(base + k * CHUNK, CHUNK))
                    if k + 1 < CHUNKS:
                        await asyncio.sleep(0)  # other requests run between chunks
                body = b"".join(chunks)
                # Still inside: the page in shared memory must be what we read.
                intact = bytes(self.shared_bytes[base : base + PAGE_SIZE]) == body
        except aiorcu.AccessDenied as exc:
            self.denied += 1
            return JSONResponse(
                {"detail": str(exc), "page": exc.page}, status_code=403, headers=self.headers()
            )
        self.served += 1
        self.changed += not intact
        return Response(
            body,
            media_type="application/octet-stream",
            headers={**self.headers(), "x-page-intact": "1" if intact else "0"},
        )

    async def _control(self, request: Request, op: type[aiorcu.Grant | aiorcu.Revoke]) -> Response:
        try:
            body = PagesRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as exc:
            errors = json.loads(exc.json(include_url=False))
            return JSONResponse(
                {"detail": "malformed request; nothing applied", "errors": errors},
                status_code=422,
                headers=self.headers(),
            )
        if body.wipe and op is not aiorcu.Revoke:
            return JSONResponse(
                {"detail": "only a revoke can wipe pages; nothing applied"},
                status_code=422,
                headers=self.headers(),
            )
        try:
            # A revoke returns after a grace period of the shared domain: every
            # section, in every worker, that could have seen the pages has ended.
            report = await self.mem.bitmap.commit(body.transaction(op))
        except aiorcu.TransactionRejected as exc:
            return JSONResponse(
                {"detail": str(exc), "op_index": exc.index}, status_code=409, headers=self.headers()
            )
        self.commits += 1
        answer = report.model_dump(mode="json")
        if body.wipe:
            # Nobody can be reading these pages now, so they are free to reuse
            # (here, at once: the tightest test of the grace period there is).
            for page in set(body.pages):
                self.shared_bytes[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] = SCRIBBLE
            answer["pages_wiped"] = len(set(body.pages))
        return JSONResponse(answer, headers=self.headers())

    async def post_revoke(self, request: Request) -> Response:
        return await self._control(request, aiorcu.Revoke)

    async def post_grant(self, request: Request) -> Response:
        return await self._control(request, aiorcu.Grant)

    async def get_stats(self, request: Request) -> Response:
        stats: dict[str, Any] = {
            "pid": self.pid,
            "served": self.served,
            "denied": self.denied,
            "changed_under_section": self.changed,
            "commits": self.commits,
            "sentinel": {
                "rounds": self.sentinel_rounds,
                "pages_checked": self.sentinel_pages,
                "pages_changed": self.sentinel_changed,
            },
            "backend": self.domain.backend_info().mechanism,
            "domain": dataclasses.asdict(self.domain.stats()),
        }
        return JSONResponse(stats, headers=self.headers())


def create_app() -> Starlette:
    """The ASGI app of one worker process."""
    worker = Worker()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await worker.start()
        try:
            yield
        finally:
            await worker.stop()

    return Starlette(
        routes=[
            Route("/pages/{page:int}", worker.get_page, methods=["GET"]),
            Route("/control/revoke", worker.post_revoke, methods=["POST"]),
            Route("/control/grant", worker.post_grant, methods=["POST"]),
            Route("/stats", worker.get_stats, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


app = create_app()
