"""Bitmaps and guarded memory in a caller's buffer, in one process.

The header is validated on attach and never trusted again; a wrong domain,
a foreign, corrupt or short buffer, a misaligned one, each gets its own
clear error; close() lets the caller close its mapping.  Cross-process
use is in test_shared_faults.py.
"""

from __future__ import annotations

import asyncio
import mmap
import random
import threading

import pytest

import aiorcu
from aiorcu import _lowlevel

from .children import shared_domain


def _tx(*ops: tuple[str, int, int], sync: aiorcu.SyncMode = "auto") -> aiorcu.BitmapTransaction:
    return aiorcu.BitmapTransaction(
        ops=[{"op": op, "start": start, "count": count} for op, start, count in ops], sync=sync
    )


def _bits(bitmap: aiorcu.Bitmap) -> list[bool]:
    with bitmap.domain.read():
        return [bitmap.is_set(page) for page in range(bitmap.pages)]


def test_a_bitmap_in_a_callers_mmap_is_seen_by_every_attached_bitmap() -> None:
    domain = aiorcu.Domain("buffers")
    buf = mmap.mmap(-1, aiorcu.Bitmap.buffer_size(200))
    made = aiorcu.Bitmap(200, domain=domain, buffer=buf, initial=True)
    again = aiorcu.Bitmap.attach(buf, domain=domain)
    assert again.pages == 200 and again.domain is domain
    report = made.commit_blocking(_tx(("revoke", 10, 5)))
    assert report.pages_revoked == 5 and report.synchronized
    assert _bits(again) == [not 10 <= page < 15 for page in range(200)]
    again.commit_blocking(_tx(("grant", 12, 1)))
    assert _bits(made)[12]
    made.close()
    again.close()
    buf.close()  # no export left: the caller may close its mapping


def test_guarded_memory_in_a_callers_buffer_keeps_the_bytes_that_were_there() -> None:
    size = aiorcu.GuardedMemory.buffer_size(4, page_size=128)
    buf = mmap.mmap(-1, size)
    buf[size - 512 :] = b"x" * 512  # the pages' bytes, written before formatting
    mem = aiorcu.GuardedMemory(4, page_size=128, buffer=buf, initial=True)
    assert mem.size == 512 and mem.read(0, 512) == b"x" * 512
    mem.write(128, b"hello")
    other = aiorcu.GuardedMemory.attach(buf)
    assert other.read(128, 5) == b"hello" and other.page_size == 128
    with other.bitmap.transaction() as tx:
        tx.revoke(1, 1)
    with pytest.raises(aiorcu.AccessDenied) as denied:
        mem.read(130, 1)
    assert denied.value.page == 1
    with mem, other:
        pass
    assert mem.closed and other.closed
    buf.close()


def test_buffer_sizes_grow_with_pages_and_are_checked() -> None:
    small, large = aiorcu.Bitmap.buffer_size(64), aiorcu.Bitmap.buffer_size(65)
    assert large == small + 8 or large > small
    assert aiorcu.GuardedMemory.buffer_size(2, 100) >= 200 + small
    with pytest.raises(ValueError, match=r"pages must be between 1 and 2\*\*48, not 0"):
        aiorcu.Bitmap.buffer_size(0)
    with pytest.raises(TypeError, match="page_size must be an int, not float"):
        aiorcu.GuardedMemory.buffer_size(1, 4096.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not fit in memory"):
        aiorcu.GuardedMemory.buffer_size(2**48, 2**40)


def test_bad_buffers_get_clear_errors_and_leave_nothing_behind() -> None:
    need = aiorcu.Bitmap.buffer_size(100)
    big = mmap.mmap(-1, need + 128)
    with pytest.raises(ValueError, match="at least"):
        aiorcu.Bitmap(100, buffer=memoryview(big)[: need - 8])
    with pytest.raises(ValueError, match="64-byte aligned address"):
        aiorcu.Bitmap(100, buffer=memoryview(big)[8:])
    with pytest.raises(TypeError, match="writable, C-contiguous buffer"):
        aiorcu.Bitmap(100, buffer=bytes(need))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="writable, C-contiguous buffer"):
        aiorcu.Bitmap(100, buffer="not a buffer")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Domain or aiorcu\.SharedDomain"):
        aiorcu.Bitmap(100, domain="global", buffer=big)  # type: ignore[arg-type]
    big.close()  # every refusal released the buffer


def test_attach_refuses_foreign_corrupt_and_short_buffers() -> None:
    need = aiorcu.GuardedMemory.buffer_size(8, 64)
    buf = mmap.mmap(-1, need)
    with pytest.raises(aiorcu.AiorcuError, match="not an aiorcu bitmap"):
        aiorcu.Bitmap.attach(buf)  # all zeros: never formatted
    buf.write(b"\x00junk" * 100)
    with pytest.raises(aiorcu.AiorcuError, match="not an aiorcu bitmap"):
        aiorcu.GuardedMemory.attach(buf)
    aiorcu.GuardedMemory(8, 64, buffer=buf).close()
    with pytest.raises(aiorcu.AiorcuError, match="holds guarded memory, not a bare bitmap"):
        aiorcu.Bitmap.attach(buf)
    with pytest.raises(aiorcu.AiorcuError, match=r"the buffer is .* bytes; its header needs"):
        aiorcu.GuardedMemory.attach(memoryview(buf)[: need - 1])
    with pytest.raises(aiorcu.AiorcuError, match="smaller than the header"):
        aiorcu.GuardedMemory.attach(memoryview(buf)[:16])
    with pytest.raises(ValueError, match="64-byte aligned"):
        aiorcu.GuardedMemory.attach(memoryview(buf)[64 + 8 :])
    bitmap_buf = mmap.mmap(-1, aiorcu.Bitmap.buffer_size(8))
    aiorcu.Bitmap(8, buffer=bitmap_buf).close()
    with pytest.raises(aiorcu.AiorcuError, match="holds a bare bitmap, not guarded memory"):
        aiorcu.GuardedMemory.attach(bitmap_buf)
    buf.close()
    bitmap_buf.close()


def test_no_corrupted_header_crashes_attach_or_sends_it_outside_the_buffer() -> None:
    """Flip bytes of a valid header: attach refuses or works within the buffer."""
    rng = random.Random(1234)
    need = aiorcu.GuardedMemory.buffer_size(100, 64)
    pristine = mmap.mmap(-1, need)
    aiorcu.GuardedMemory(100, 64, buffer=pristine).close()
    header = bytes(pristine[:256])
    refused = attached = 0
    buf = mmap.mmap(-1, need)
    for _ in range(400):
        corrupt = bytearray(header)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(0, 120)] = rng.randrange(256)  # the numbers, not the lock
        buf[:256] = bytes(corrupt)
        try:
            mem = aiorcu.GuardedMemory.attach(buf)
        except aiorcu.AiorcuError:
            refused += 1
            continue
        attached += 1
        # Whatever it accepted fits the buffer: every byte of it can be read.
        assert aiorcu.GuardedMemory.buffer_size(mem.bitmap.pages, mem.page_size) <= need
        mem.bitmap.commit_blocking(_tx(("grant", 0, mem.bitmap.pages)))
        assert len(mem.read(0, mem.size)) == mem.size
        mem.close()
    assert refused > 100 and attached > 0, (refused, attached)
    buf.close()
    pristine.close()


def test_a_private_domain_buffer_attached_by_another_private_domain() -> None:
    """Any plain Domain may attach; its first commit that needs a flush waits afresh."""
    first, second = aiorcu.Domain("buf-first"), aiorcu.Domain("buf-second")
    buf = mmap.mmap(-1, aiorcu.Bitmap.buffer_size(16))
    made = aiorcu.Bitmap(16, domain=first, buffer=buf, initial=True)
    assert not made.commit_blocking(_tx(("revoke", 3, 1), sync="never")).synchronized
    attached = aiorcu.Bitmap.attach(buf, domain=second)
    # Page 3 was revoked by a commit whose flush this domain cannot know.
    report = attached.commit_blocking(_tx(("revoke", 3, 1)))
    assert report.pages_revoked == 0 and report.synchronized
    assert not attached.commit_blocking(_tx(("revoke", 3, 1))).synchronized
    made.close()
    attached.close()
    buf.close()


def test_domain_mismatches_are_usage_errors() -> None:
    buf = mmap.mmap(-1, aiorcu.Bitmap.buffer_size(16))
    aiorcu.Bitmap(16, buffer=buf).close()
    with shared_domain("buf-mismatch") as shared:
        with pytest.raises(aiorcu.RcuUsageError, match="made under a process-private Domain"):
            aiorcu.Bitmap.attach(buf, domain=shared)
        with pytest.raises(aiorcu.RcuUsageError, match="needs memory that other processes map"):
            aiorcu.Bitmap(16, domain=shared)
        shared_buf = mmap.mmap(-1, aiorcu.Bitmap.buffer_size(16))
        aiorcu.Bitmap(16, domain=shared, buffer=shared_buf).close()
        with pytest.raises(
            aiorcu.RcuUsageError, match=f"domain=aiorcu.SharedDomain\\({shared.name!r}\\)"
        ):
            aiorcu.Bitmap.attach(shared_buf)
        with pytest.raises(aiorcu.RcuUsageError, match="cannot be used with the process-private"):
            aiorcu.Bitmap.attach(shared_buf, domain=aiorcu.Domain("private"))
        with (
            shared_domain("buf-other") as other,
            pytest.raises(aiorcu.RcuUsageError, match=f"shared domain {other.name!r}"),
        ):
            aiorcu.Bitmap.attach(shared_buf, domain=other)
        aiorcu.Bitmap.attach(shared_buf, domain=shared).close()
        shared_buf.close()
    buf.close()


def test_close_refuses_during_a_commit_and_later_use_is_a_usage_error() -> None:
    bitmap = aiorcu.Bitmap(64, initial=True)
    core = bitmap._core
    assert core is not None
    assert core.lock(try_only=False) == _lowlevel.LOCK_OK  # as another process would
    applied = threading.Event()
    thread = threading.Thread(
        target=lambda: (bitmap.commit_blocking(_tx(("revoke", 1, 1))), applied.set())
    )
    thread.start()
    try:
        # The commit holds this process's lock while it waits for the buffer's.
        _wait_locked(bitmap)
        with pytest.raises(aiorcu.RcuUsageError, match="while a commit of this bitmap"):
            bitmap.close()
    finally:
        core.unlock()
    thread.join(10)
    assert applied.is_set()
    bitmap.close()
    bitmap.close()  # again: nothing
    with pytest.raises(aiorcu.RcuUsageError, match="closed"):
        bitmap.commit_blocking(_tx(("grant", 1, 1)))
    with bitmap.domain.read(), pytest.raises(aiorcu.RcuUsageError, match="closed"):
        bitmap.is_set(0)
    with pytest.raises(aiorcu.RcuUsageError, match="closed"), bitmap:
        pass


def _wait_locked(bitmap: aiorcu.Bitmap) -> None:
    for _ in range(10_000):
        if bitmap._lock.locked:
            return
        threading.Event().wait(0.001)
    raise AssertionError("the commit never took the bitmap's lock")


def test_an_async_commit_waiting_for_another_process_lock_cancels_promptly() -> None:
    """While the buffer's lock is held elsewhere, cancellation withdraws the commit."""
    bitmap = aiorcu.Bitmap(8, initial=True)
    core = bitmap._core
    assert core is not None
    assert core.lock(try_only=False) == _lowlevel.LOCK_OK

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bitmap.commit(_tx(("revoke", 2, 1))), 0.2)
        task = asyncio.create_task(bitmap.commit(_tx(("revoke", 3, 1))))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        core.unlock()
    assert all(_bits(bitmap))  # nothing applied, then or later
    assert not bitmap._lock.locked
    assert bitmap.commit_blocking(_tx(("revoke", 2, 1))).pages_revoked == 1
