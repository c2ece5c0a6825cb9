"""RcuCell: published references with grace-period retirement."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

import aiorcu
from aiorcu import testing

from .conftest import STRESS_SECONDS


class Resource:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_get_only_inside_a_section() -> None:
    d = aiorcu.Domain(name="cell")
    cell = aiorcu.RcuCell(Resource("a"), domain=d)
    with pytest.raises(
        aiorcu.RcuUsageError, match=r"RcuCell.get\(\) called outside a read section"
    ):
        cell.get()
    with d.read():
        assert cell.get().name == "a"
    assert aiorcu.RcuCell(1).domain is aiorcu.global_domain()


def test_publish_replace_update() -> None:
    d = aiorcu.Domain(name="cell-w")
    cell = aiorcu.RcuCell(Resource("a"), domain=d)
    b = Resource("b")
    old = cell.publish(b)
    assert old.name == "a" and not old.closed
    old = cell.replace_blocking(Resource("c"), retire=Resource.close)
    assert old is b and b.closed
    new = cell.update(lambda r: Resource(r.name + "d"), retire=Resource.close)
    assert new.name == "cd"
    d.barrier_blocking()
    with d.read():
        assert cell.get() is new

    def fail(_: Resource) -> Resource:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        cell.update(fail)
    with d.read():
        assert cell.get() is new  # nothing changed


def test_replace_waits_for_readers() -> None:
    d = aiorcu.Domain(name="cell-wait")
    first = Resource("a")
    cell = aiorcu.RcuCell(first, domain=d)
    entered, leave = threading.Event(), threading.Event()
    saw_closed: list[bool] = []

    def reader() -> None:
        with d.read():
            r = cell.get()
            entered.set()
            leave.wait(10)
            saw_closed.append(r.closed)

    t = threading.Thread(target=reader)
    t.start()
    assert entered.wait(5)
    threading.Timer(0.1, leave.set).start()
    cell.replace_blocking(Resource("b"), retire=Resource.close)
    t.join()
    assert saw_closed == [False] and first.closed


@pytest.mark.anyio
async def test_async_replace_and_cancellation_hands_retire_to_callbacks() -> None:
    d = aiorcu.Domain(name="cell-async")
    a = Resource("a")
    cell = aiorcu.RcuCell(a, domain=d)
    old = await cell.replace(Resource("b"), retire=Resource.close)
    assert old is a and a.closed
    entered, leave = anyio.Event(), anyio.Event()

    async def reader() -> None:
        async with d.read():
            entered.set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        with d.read():
            b = cell.get()
        with anyio.move_on_after(0.05) as scope:
            await cell.replace(Resource("c"), retire=Resource.close)
        assert scope.cancelled_caught
        assert not b.closed  # the reader is still inside
        assert d.stats().callbacks_pending == 1  # retire handed to the callbacks
        leave.set()
    await d.barrier()
    assert b.closed
    async with d.read():
        assert cell.get().name == "c"
        with pytest.raises(
            aiorcu.RcuUsageError,
            match=r"await RcuCell.replace\(\) called inside a read section of domain "
            "'cell-async' held by this task",
        ):
            await cell.replace(Resource("x"))
        assert cell.get().name == "c"  # nothing was published


def test_replace_blocking_inside_a_section_raises_and_publishes_nothing() -> None:
    d = aiorcu.Domain(name="cell-inside")
    cell = aiorcu.RcuCell("a", domain=d)
    with d.read():
        with pytest.raises(
            aiorcu.RcuUsageError,
            match=r"RcuCell.replace_blocking\(\) called inside a `with domain.read\(\):` "
            r"section on this thread",
        ):
            cell.replace_blocking("b")
        assert cell.get() == "a"


def test_concurrent_updates_lose_nothing() -> None:
    d = aiorcu.Domain(name="cell-update")
    cell: aiorcu.RcuCell[tuple[int, ...]] = aiorcu.RcuCell((), domain=d)
    retired: list[tuple[int, ...]] = []

    def writer(k: int) -> None:
        for i in range(200):

            def add(old: tuple[int, ...], v: int = k * 1000 + i) -> tuple[int, ...]:
                return (*old, v)

            cell.update(add, retire=retired.append)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d.barrier_blocking()
    with d.read():
        final = cell.get()
    assert sorted(final) == sorted(k * 1000 + i for k in range(4) for i in range(200))
    assert len(retired) == 800  # every old version retired exactly once


def _stress(d: aiorcu.Domain, seconds: float) -> int:
    cell = aiorcu.RcuCell(Resource("0"), domain=d)
    stop = threading.Event()
    violations = [0]

    def reader() -> None:
        while not stop.is_set():
            with d.read():
                r = cell.get()
                time.sleep(0)
                if r.closed:
                    violations[0] += 1

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            cell.replace_blocking(Resource(str(i)), retire=Resource.close)

    threads = [threading.Thread(target=reader) for _ in range(2)] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return violations[0]


@pytest.mark.stress
def test_readers_never_see_a_retired_object() -> None:
    assert _stress(aiorcu.Domain(name="cell-stress"), min(STRESS_SECONDS, 2.0)) == 0


@pytest.mark.stress
def test_negative_control_busted_cell_is_caught() -> None:
    d = aiorcu.Domain(name="cell-busted")
    testing.set_busted(d)
    assert _stress(d, min(STRESS_SECONDS, 2.0)) > 0


async def _async_stress(d: aiorcu.Domain, seconds: float) -> int:
    """Tasks hold the object across awaits while a writer task replaces it."""
    cell = aiorcu.RcuCell(Resource("0"), domain=d)
    violations = [0]
    stop = anyio.Event()

    async def reader() -> None:
        while not stop.is_set():
            async with d.read():
                r = cell.get()
                await anyio.sleep(0)
                if r.closed:
                    violations[0] += 1

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await cell.replace(Resource(str(i)), retire=Resource.close)
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(reader)
        tg.start_soon(writer)
        await anyio.sleep(seconds)
        stop.set()
    return violations[0]


@pytest.mark.stress
@pytest.mark.anyio
async def test_tasks_never_see_a_retired_object() -> None:
    assert await _async_stress(aiorcu.Domain(name="cell-async-stress"), 0.5) == 0


@pytest.mark.stress
@pytest.mark.anyio
async def test_negative_control_busted_cell_is_caught_by_tasks() -> None:
    d = aiorcu.Domain(name="cell-async-busted")
    testing.set_busted(d)
    assert await _async_stress(d, 0.5) > 0
