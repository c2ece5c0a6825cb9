"""Property tests: `GuardedMemory` agrees with a bytearray.

Random reads, ``read_into`` (into a window of a larger buffer) and writes,
with random pages accessible, each against a plain bytearray: an access
either moves exactly the model's bytes, or raises `AccessDenied` naming the
first inaccessible page (or `IndexError` outside the memory) and moves no
byte at all.

Example counts are small by default; ``AIORCU_HYPOTHESIS_SCALE=10`` runs ten
times as many examples (see ``strategies.py``).
"""

from __future__ import annotations

from array import array
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aiorcu

from .strategies import SYNCS, Sync, make_tx, scaled_settings

pytestmark = pytest.mark.fallback

PAGE_SIZES = st.sampled_from([1, 2, 3, 7, 8, 63, 64, 100]) | st.integers(1, 130)


@st.composite
def spans(draw: st.DrawFn, size: int, page_size: int) -> tuple[int, int]:
    """An in-bounds ``(offset, length)``, often starting or ending on a page edge."""
    pages = size // page_size
    edge = st.integers(0, pages).map(lambda p: p * page_size)
    near_edge = st.tuples(edge, st.integers(-1, 1)).map(lambda t: min(size, max(0, t[0] + t[1])))
    offset = draw(st.integers(0, size) | near_edge)
    end = draw(st.integers(offset, size) | near_edge.map(lambda e: max(e, offset)))
    return offset, end - offset


Action = tuple[str, Any]


@scaled_settings(200)
@given(
    pages=st.integers(1, 24),
    page_size=PAGE_SIZES,
    initial=st.booleans(),
    data=st.data(),
)
def test_guarded_memory_agrees_with_a_bytearray(
    pages: int, page_size: int, initial: bool, data: st.DataObject
) -> None:
    mem = aiorcu.GuardedMemory(pages, page_size, domain=aiorcu.Domain(name="mem"), initial=initial)
    size = pages * page_size
    assert mem.size == size
    model = bytearray(size)
    allowed = set(range(pages)) if initial else set()

    def set_access(new: set[int], sync: Sync = "auto") -> None:
        ops = [("revoke", 0, pages)] + [("grant", p, 1) for p in sorted(new)]
        mem.bitmap.commit_blocking(make_tx(ops, sync))  # type: ignore[arg-type]

    def check_contents() -> None:
        # Every byte, by opening every page for a moment.
        set_access(set(range(pages)), "never")
        assert mem.read(0, size) == model
        set_access(allowed, "never")

    def first_denied(offset: int, length: int) -> int | None:
        if not length:
            return None
        touched = range(offset // page_size, (offset + length - 1) // page_size + 1)
        return next((p for p in touched if p not in allowed), None)

    def denied_message(what: str, offset: int, length: int, page: int) -> str:
        return (
            f"{what} of {length} bytes at offset {offset} denied: page {page} (bytes "
            f"{page * page_size}..{(page + 1) * page_size - 1}) is not accessible; "
            "no byte was moved"
        )

    # Random contents first, written while every page is open.
    set_access(set(range(pages)), "never")
    model[:] = data.draw(st.binary(min_size=size, max_size=size), label="contents")
    mem.write(0, model)
    set_access(allowed, "never")

    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        action = data.draw(st.sampled_from(["access", "read", "read_into", "write", "bad_span"]))
        if action == "access":
            allowed = set(data.draw(st.sets(st.integers(0, pages - 1)), label="allowed"))
            set_access(allowed, data.draw(st.sampled_from(SYNCS)))
            continue
        if action == "bad_span":
            offset = data.draw(st.integers(-(2**40), 2 * size + 2))
            length = data.draw(st.integers(0, size + 2))
            if offset >= 0 and offset + length <= size:
                offset = -1 - length
            where = (
                f"bytes {offset}..{offset + length - 1} are outside the memory (0..{size - 1})"
                if length
                else f"offset {offset} is outside the memory (0..{size})"
            )
            with pytest.raises(IndexError) as info:
                mem.read(offset, length)
            assert str(info.value) == f"GuardedMemory.read: {where}"
            with pytest.raises(IndexError) as info:
                mem.write(offset, b"x" * length)
            assert str(info.value) == f"GuardedMemory.write: {where}"
            with pytest.raises(IndexError) as info:
                mem.read_into(offset, bytearray(length))
            assert str(info.value) == f"GuardedMemory.read_into: {where}"
            with pytest.raises(ValueError, match="length must not be negative"):
                mem.read(0, -1 - length)
            check_contents()
            continue
        offset, length = data.draw(spans(size, page_size), label="span")
        denied = first_denied(offset, length)
        if action == "read":
            if denied is None:
                assert mem.read(offset, length) == model[offset : offset + length]
            else:
                with pytest.raises(aiorcu.AccessDenied) as info:
                    mem.read(offset, length)
                assert info.value.page == denied
                assert str(info.value) == denied_message("read", offset, length, denied)
        elif action == "read_into":
            # A window into a larger buffer: bytes outside it must not change either.
            pad = data.draw(st.integers(0, 3))
            backing = bytearray(b"\xa5" * (length + 2 * pad))
            window = memoryview(backing)[pad : pad + length]
            if denied is None:
                assert mem.read_into(offset, window) == length
                assert backing == b"\xa5" * pad + model[offset : offset + length] + b"\xa5" * pad
            else:
                with pytest.raises(aiorcu.AccessDenied) as info:
                    mem.read_into(offset, window)
                assert info.value.page == denied
                assert str(info.value) == denied_message("read", offset, length, denied)
                assert backing == b"\xa5" * (length + 2 * pad)
        else:
            payload = data.draw(st.binary(min_size=length, max_size=length), label="payload")
            source: Any = payload
            if length % 2 == 0 and data.draw(st.booleans()):
                source = array("H", payload)  # any buffer, counted in bytes
            if denied is None:
                mem.write(offset, source)
                model[offset : offset + length] = payload
            else:
                with pytest.raises(aiorcu.AccessDenied) as info:
                    mem.write(offset, source)
                assert info.value.page == denied
                assert str(info.value) == denied_message("write", offset, length, denied)
            check_contents()
    check_contents()
