"""Polled grace periods: snapshot, start_grace_period, poll, wait."""

from __future__ import annotations

import time

import anyio
import pytest

import aiorcu

from .conftest import hold_section


def test_snapshot_starts_nothing_and_tokens_stay_complete() -> None:
    d = aiorcu.Domain(name="poll")
    token = d.snapshot()
    assert isinstance(token, int)
    time.sleep(0.05)
    assert not d.poll(token)  # nothing ran a grace period
    d.wait_blocking(token)
    assert d.poll(token)
    for _ in range(3):
        d.synchronize_blocking()
    assert d.poll(token)  # complete forever
    assert d.snapshot() > token


def test_start_grace_period_runs_one_without_a_waiter() -> None:
    d = aiorcu.Domain(name="start")
    token = d.start_grace_period()
    deadline = time.monotonic() + 10
    while not d.poll(token) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d.poll(token)


def test_wait_blocking_timeout_and_misuse() -> None:
    d = aiorcu.Domain(name="poll-timeout")
    t, leave = hold_section(d, "poll-reader")
    token = d.snapshot()
    with pytest.raises(
        aiorcu.GracePeriodTimeout,
        match=r"grace period of domain 'poll-timeout' did not complete within 0.05 s; "
        r"still inside: thread 'poll-reader'.*The domain is consistent",
    ):
        d.wait_blocking(token, timeout=0.05)
    assert not d.poll(token)
    leave.set()
    t.join()
    d.wait_blocking(token, timeout=10)
    with (
        d.read(),
        pytest.raises(
            aiorcu.RcuUsageError,
            match=r"wait_blocking\(\) called inside a `with domain.read\(\):` section on this "
            r"thread; it would wait",
        ),
    ):
        d.wait_blocking(d.snapshot())


@pytest.mark.anyio
async def test_async_wait_and_cancellation() -> None:
    d = aiorcu.Domain(name="poll-async")
    token = d.snapshot()
    await d.wait(token)
    assert d.poll(token)
    entered, leave = anyio.Event(), anyio.Event()

    async def reader() -> None:
        async with d.read():
            entered.set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        token = d.snapshot()
        with anyio.move_on_after(0.05) as scope:
            await d.wait(token)
        assert scope.cancelled_caught
        assert d._worker.pending == 0
        leave.set()
        await d.wait(token)
    assert d.poll(token)
    async with d.read():
        with pytest.raises(
            aiorcu.RcuUsageError,
            match=r"await wait\(\) called inside a read section of domain 'poll-async' "
            "held by this task",
        ):
            await d.wait(d.snapshot())


def test_tokens_order_and_share_grace_periods() -> None:
    d = aiorcu.Domain(name="poll-order")
    tokens = [d.snapshot() for _ in range(100)]
    assert tokens == sorted(tokens)
    before = d.stats().grace_periods
    d.wait_blocking(tokens[-1])
    assert all(d.poll(t) for t in tokens)  # one grace period served them all
    assert d.stats().grace_periods - before == 1


def test_tokens_are_checked() -> None:
    """Defect: poll(-1) and poll(1.5) returned True, wait_blocking(2**64) overflowed."""
    d = aiorcu.Domain(name="poll-check")
    d.synchronize_blocking()
    latest = d.snapshot()
    for bad in (1.5, "1", None, True, False):
        with pytest.raises(TypeError, match="a grace-period token is an int"):
            d.poll(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            d.wait_blocking(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace-period tokens are never negative; got -1"):
        d.poll(-1)
    for beyond in (latest + 1, 2**64, 2**200):
        with pytest.raises(ValueError, match=rf"token {beyond} was never issued"):
            d.poll(beyond)
        with pytest.raises(ValueError, match="was never issued"):
            d.wait_blocking(beyond)
    assert d.poll(0) and d.poll(1)  # issued and complete
    assert not d.poll(latest)  # issued, not complete
    d.wait_blocking(latest, timeout=float("inf"))
    assert d.poll(latest)


@pytest.mark.anyio
async def test_async_wait_checks_tokens() -> None:
    d = aiorcu.Domain(name="poll-check-async")
    with pytest.raises(TypeError):
        await d.wait(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="was never issued"):
        await d.wait(d.snapshot() + 1)
