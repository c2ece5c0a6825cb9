"""GuardedMemory: every access checks its pages inside a section it opens itself."""

from __future__ import annotations

import ctypes
import functools
import threading
import time

import pytest

import aiorcu
from aiorcu import testing

from .conftest import STRESS_SECONDS, run_race

pytestmark = pytest.mark.fallback


def _revoke(mem: aiorcu.GuardedMemory, start: int, count: int = 1) -> aiorcu.CommitReport:
    return mem.bitmap.commit_blocking(
        aiorcu.BitmapTransaction(ops=[aiorcu.Revoke(start=start, count=count)])
    )


def _grant(mem: aiorcu.GuardedMemory, start: int, count: int = 1) -> aiorcu.CommitReport:
    return mem.bitmap.commit_blocking(
        aiorcu.BitmapTransaction(ops=[aiorcu.Grant(start=start, count=count)])
    )


def test_pages_start_inaccessible_unless_initial() -> None:
    mem = aiorcu.GuardedMemory(4, page_size=16)
    assert (mem.bitmap.pages, mem.page_size, mem.size) == (4, 16, 64)
    with pytest.raises(aiorcu.AccessDenied) as info:
        mem.read(0, 1)
    assert info.value.page == 0
    assert isinstance(info.value, PermissionError)
    _grant(mem, 0, 4)
    assert mem.read(0, 4) == b"\0" * 4
    assert aiorcu.GuardedMemory(2, page_size=8, initial=True).read(0, 16) == bytes(16)


def test_read_write_read_into_round_trip_across_pages() -> None:
    mem = aiorcu.GuardedMemory(8, page_size=100, initial=True)
    data = bytes(range(250))
    mem.write(50, data)  # pages 0..2
    assert mem.read(50, 250) == data
    out = bytearray(10)
    assert mem.read_into(295, out) == 10
    assert out == data[245:] + bytes(5)
    assert mem.read(0, 0) == b""
    mem.write(799, memoryview(b"z"))
    assert mem.read(799, 1) == b"z"


def test_denied_access_names_the_first_page_and_moves_no_byte() -> None:
    mem = aiorcu.GuardedMemory(8, page_size=100, initial=True)
    mem.write(0, b"a" * 800)
    _revoke(mem, 3)
    _revoke(mem, 5)
    with pytest.raises(aiorcu.AccessDenied) as info:
        mem.write(250, b"b" * 400)  # pages 2..6
    assert str(info.value) == (
        "write of 400 bytes at offset 250 denied: page 3 (bytes 300..399) is not "
        "accessible; no byte was moved"
    )
    assert info.value.page == 3
    _grant(mem, 3)
    assert mem.read(0, 500) == b"a" * 500  # the write moved nothing, not even page 2
    out = bytearray(b"x" * 300)
    with pytest.raises(aiorcu.AccessDenied, match="page 5"):
        mem.read_into(400, out)
    assert out == b"x" * 300
    with pytest.raises(aiorcu.AccessDenied, match="read of 1 bytes at offset 599 denied: page 5"):
        mem.read(599, 1)


def test_bad_spans_and_arguments() -> None:
    mem = aiorcu.GuardedMemory(2, page_size=10, initial=True)
    with pytest.raises(IndexError, match=r"bytes 15..24 are outside the memory \(0..19\)"):
        mem.read(15, 10)
    with pytest.raises(IndexError, match="outside"):
        mem.write(-1, b"x")
    with pytest.raises(
        IndexError, match=r"GuardedMemory.read: offset 99999 is outside the memory \(0..20\)"
    ):
        mem.read(99999, 0)
    assert mem.read(20, 0) == b""  # an empty span at the end is inside
    with pytest.raises(ValueError, match="must not be negative"):
        mem.read(0, -1)
    with pytest.raises(TypeError):
        mem.write(0, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mem.read(0.5, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="page_size must be between 1 and 2\\*\\*40, not 0"):
        aiorcu.GuardedMemory(2, page_size=0)
    with pytest.raises(TypeError, match="page_size must be an int"):
        aiorcu.GuardedMemory(2, page_size=True)
    with pytest.raises(
        ValueError, match=r"GuardedMemory pages must be between 1 and 2\*\*48, not 0"
    ):
        aiorcu.GuardedMemory(0)


def test_access_inside_a_callers_own_section_and_from_tasks() -> None:
    mem = aiorcu.GuardedMemory(2, page_size=10, initial=True)
    with mem.bitmap.domain.read():  # nests with the section read() opens
        mem.write(0, b"x")
        assert mem.read(0, 1) == b"x"


def _raw_pages(mem: aiorcu.GuardedMemory) -> ctypes.Array[ctypes.c_char]:
    """The pages' bytes without the guard: what a device or another tenant would write."""
    core = mem.bitmap._core
    assert core is not None
    return (ctypes.c_char * mem.size).from_address(core.data_address)


def _revocation_race(busted: bool, seconds: float) -> int:
    """Accessors read pages; a writer revokes one, then reuses it.

    Reuse means scribbling on the page (as a device or another tenant would)
    and marking it dead.  An accessor whose read saw the scribble, or that
    finds its page dead while still inside the section of a successful read,
    overlapped a revocation that had already returned.
    """
    domain = aiorcu.Domain(name="memory-race")
    if busted:
        testing.set_busted(domain)
    pages, size = 32, 64
    mem = aiorcu.GuardedMemory(pages, page_size=size, domain=domain, initial=True)
    violations = [0]
    stop = threading.Event()
    clean = bytes(size)
    dead = bytearray(pages)
    raw = _raw_pages(mem)

    def accessor(seed: int) -> None:
        page, n = seed, 0
        while not stop.is_set():
            page = (page * 13 + 7) % pages
            n += 1
            try:
                if n % 8 == 0:
                    # A slow access: the caller's section keeps the page in
                    # use while it yields, as a long copy would.
                    with domain.read():
                        data = mem.read(page * size, size)
                        time.sleep(0)
                        if dead[page]:
                            violations[0] += 1
                else:
                    data = mem.read(page * size, size)
            except aiorcu.AccessDenied:
                continue
            if data != clean:
                violations[0] += 1

    def writer() -> None:
        page = 0
        while not stop.is_set():
            page = (page + 5) % pages
            _revoke(mem, page)
            # Reuse the page outside the guard, as a device or another
            # tenant would: only safe because the commit waited.
            dead[page] = 1
            raw[page * size : (page + 1) * size] = b"\xff" * size
            time.sleep(0)
            raw[page * size : (page + 1) * size] = clean
            dead[page] = 0
            _grant(mem, page)

    readers = [functools.partial(accessor, i) for i in range(3)]
    run_race(readers, writer, stop, seconds, lambda: busted and violations[0] > 0)
    return violations[0]


@pytest.mark.stress
def test_no_access_sees_a_page_after_its_revocation_returned() -> None:
    assert _revocation_race(busted=False, seconds=STRESS_SECONDS) == 0


@pytest.mark.stress
def test_negative_control_busted_revocation_is_caught() -> None:
    # Ends as soon as it is caught; the budget is for a loaded machine.
    assert _revocation_race(busted=True, seconds=max(STRESS_SECONDS, 30)) > 0
