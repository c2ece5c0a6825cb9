"""Shared guarded memory: a revoke in one process flushes readers in another.

DESIGN.md ("Shared domains"): commits from any process serialize,
``sync="auto"`` holds across processes, and a revoke returns only when no
reader in any process can still act on the old view, whatever cancels the
committer (asyncio's own ``Task.cancel()``, ``wait_for``, ``asyncio.timeout``).
The readers here live in another process that saw the page accessible.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from multiprocessing import shared_memory
from typing import Literal

import pytest

import aiorcu

from .children import Child, children, shared_domain

PAGES = 8
PAGE = 3

# A reader process: attaches the domain and the memory, enters a section
# and reads page PAGE (accessible), says so, and leaves when told.
READER = """
from multiprocessing import resource_tracker, shared_memory
d = aiorcu.SharedDomain(os.environ["NAME"])
shm = shared_memory.SharedMemory(os.environ["SHM"])
resource_tracker.unregister(shm._name, "shared_memory")  # before 3.13: would unlink it
mem = aiorcu.GuardedMemory.attach(shm.buf, domain=d)
page = int(os.environ["PAGE"])
with d.read():
    mem.read(page * 4096, 8)
    say("inside")
    hear()
try:
    mem.read(page * 4096, 8)
    say("after", "allowed")
except aiorcu.AccessDenied:
    say("after", "denied")
hear()
mem.close()
d.close()
"""


@contextmanager
def shared_pages(tag: str) -> Iterator[tuple[aiorcu.SharedDomain, aiorcu.GuardedMemory, str]]:
    size = aiorcu.GuardedMemory.buffer_size(PAGES)
    with shared_domain(tag) as domain:
        shm = shared_memory.SharedMemory(create=True, size=size)
        try:
            mem = aiorcu.GuardedMemory(PAGES, domain=domain, initial=True, buffer=shm.buf)
            yield domain, mem, shm.name
            mem.close()
        finally:
            shm.close()
            shm.unlink()


def _revoke(sync: Literal["auto", "always", "never"] = "auto") -> aiorcu.BitmapTransaction:
    return aiorcu.BitmapTransaction(ops=[aiorcu.Revoke(start=PAGE, count=1)], sync=sync)


def test_a_revoke_here_waits_for_a_reader_there() -> None:
    with shared_pages("revoke-there") as (domain, mem, shm), children() as kids:
        env = {"NAME": domain.name, "SHM": shm, "PAGE": str(PAGE)}
        kids.append(child := Child(READER, env=env))
        child.expect("inside")
        reports: list[aiorcu.CommitReport] = []
        committer = threading.Thread(
            target=lambda: reports.append(mem.bitmap.commit_blocking(_revoke()))
        )
        committer.start()
        time.sleep(0.3)
        assert not reports, "a revoke returned while a reader in another process was inside"
        child.send()
        committer.join(10)
        assert reports and reports[0].pages_revoked == 1 and reports[0].synchronized
        assert reports[0].grace_period_seconds >= 0.25  # it waited from before 0.3 s
        assert child.expect("after") == "denied"
        child.send()
        assert child.finish() == 0


def test_auto_sync_holds_across_processes() -> None:
    """A revoke left unflushed by one process is flushed by the next one's commit."""
    committer_script = """
    from multiprocessing import resource_tracker, shared_memory
    d = aiorcu.SharedDomain(os.environ["NAME"])
    shm = shared_memory.SharedMemory(os.environ["SHM"])
    resource_tracker.unregister(shm._name, "shared_memory")
    mem = aiorcu.GuardedMemory.attach(shm.buf, domain=d)
    tx = aiorcu.BitmapTransaction(ops=[aiorcu.Revoke(start=3, count=1)], sync="auto")
    say("ready")
    hear()
    start = time.monotonic()
    report = mem.bitmap.commit_blocking(tx)
    say("committed", report.pages_revoked, report.synchronized, time.monotonic() - start)
    mem.close()
    d.close()
    """
    with shared_pages("auto-across") as (domain, mem, shm), children() as kids:
        env = {"NAME": domain.name, "SHM": shm, "PAGE": str(PAGE)}
        kids.append(reader := Child(READER, env=env))
        kids.append(committer := Child(committer_script, env=env))
        reader.expect("inside")
        committer.expect("ready")
        # This process revokes without waiting: the reader elsewhere may
        # still use the page.  The other committer asks for the same revoke.
        assert mem.bitmap.commit_blocking(_revoke(sync="never")).pages_revoked == 1
        committer.send()
        time.sleep(0.4)
        assert not any(line.startswith("committed") for line in committer.said)
        reader.send()
        revoked, synchronized, waited = committer.expect("committed").split()
        assert (revoked, synchronized) == ("0", "True")  # nothing new, and it still waited
        assert float(waited) >= 0.3
        assert reader.expect("after") == "denied"
        reader.send()
        assert reader.finish() == 0 and committer.finish() == 0


async def _by_cancel(commit: Awaitable[aiorcu.CommitReport]) -> None:
    task = asyncio.ensure_future(commit)
    await asyncio.sleep(0.1)
    task.cancel()
    await task


async def _by_wait_for(commit: Awaitable[aiorcu.CommitReport]) -> None:
    await asyncio.wait_for(commit, 0.1)


async def _by_timeout(commit: Awaitable[aiorcu.CommitReport]) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout is new in 3.11")
    async with asyncio.timeout(0.1):
        await commit


CANCELS: dict[str, tuple[Callable[[Awaitable[aiorcu.CommitReport]], Awaitable[None]], type]] = {
    "Task.cancel": (_by_cancel, asyncio.CancelledError),
    "wait_for": (_by_wait_for, asyncio.TimeoutError),
    "asyncio.timeout": (_by_timeout, TimeoutError),
}


@pytest.mark.parametrize("how", list(CANCELS))
def test_asyncio_cancellation_does_not_cut_a_shared_revoke_short(how: str) -> None:
    cancel, raised = CANCELS[how]
    tag = "cancel-" + how.rsplit(".", maxsplit=1)[-1]
    with shared_pages(tag) as (domain, mem, shm), children() as kids:
        env = {"NAME": domain.name, "SHM": shm, "PAGE": str(PAGE)}
        kids.append(child := Child(READER, env=env))
        child.expect("inside")
        released: list[float] = []

        def release_later() -> None:
            time.sleep(0.5)
            released.append(time.monotonic())
            child.send()

        async def main() -> None:
            threading.Thread(target=release_later).start()
            with pytest.raises(raised):
                await cancel(mem.bitmap.commit(_revoke()))
            # The cancellation arrives only once the reader elsewhere left.
            assert released and time.monotonic() >= released[0]

        asyncio.run(main())
        assert child.expect("after") == "denied"
        child.send()
        assert child.finish() == 0
        with domain.read():
            assert not mem.bitmap.is_set(PAGE)
