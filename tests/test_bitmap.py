"""Page bitmaps: reads only inside sections, transactions, commits that flush readers."""

from __future__ import annotations

import functools
import itertools
import random
import threading
import time
from typing import Any

import anyio
import pydantic
import pytest

import aiorcu
from aiorcu import testing

from .conftest import HANG_GUARD, STRESS_SECONDS, Background, hold_section, run_race

pytestmark = pytest.mark.fallback


def _tx(*ops: tuple[str, int, int], sync: Any = "auto", label: str | None = None) -> Any:
    return aiorcu.BitmapTransaction(
        ops=[{"op": op, "start": start, "count": count} for op, start, count in ops],
        sync=sync,
        label=label,
    )


def _accessible(bitmap: aiorcu.Bitmap) -> set[int]:
    with bitmap.domain.read():
        return {p for p in range(bitmap.pages) if bitmap.is_set(p)}


# -- construction and reads ----------------------------------------------------------


def test_new_bitmap_and_public_attributes() -> None:
    d = aiorcu.Domain(name="pages")
    closed = aiorcu.Bitmap(100, domain=d)
    assert closed.domain is d and closed.pages == 100
    assert _accessible(closed) == set()
    opened = aiorcu.Bitmap(100, domain=d, initial=True)
    assert _accessible(opened) == set(range(100))
    assert aiorcu.Bitmap(5).domain is aiorcu.global_domain()
    assert "pages=100" in repr(closed)


@pytest.mark.parametrize(
    ("pages", "error", "match"),
    [
        (0, ValueError, "between 1 and 2\\*\\*48"),
        (2**48 + 1, ValueError, "between"),
        (True, TypeError, "int, not bool"),
        ("8", TypeError, "int, not str"),
    ],
)
def test_bad_sizes_are_refused(pages: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        aiorcu.Bitmap(pages)  # type: ignore[arg-type]


def test_reads_refuse_to_run_outside_a_section() -> None:
    bitmap = aiorcu.Bitmap(64, domain=aiorcu.Domain(name="guarded"), initial=True)
    for call, name in [
        (lambda: bitmap.is_set(0), "is_set"),
        (lambda: bitmap.check_range(0, 1), "check_range"),
        (lambda: bitmap.first_clear(0, 64), "first_clear"),
    ]:
        with pytest.raises(aiorcu.RcuUsageError, match=rf"Bitmap.{name}\(\) called outside"):
            call()
    other = aiorcu.Domain(name="other")
    with other.read(), pytest.raises(aiorcu.RcuUsageError, match="domain 'guarded'"):
        bitmap.is_set(0)  # a section of another domain does not count


def test_another_threads_section_does_not_count() -> None:
    bitmap = aiorcu.Bitmap(8, domain=aiorcu.Domain(name="threads"), initial=True)
    holder, leave = hold_section(bitmap.domain)
    try:
        with pytest.raises(aiorcu.RcuUsageError):
            bitmap.is_set(0)
    finally:
        leave.set()
        holder.join()


@pytest.mark.anyio
async def test_task_sections_count_per_task() -> None:
    bitmap = aiorcu.Bitmap(8, domain=aiorcu.Domain(name="tasks"), initial=True)
    entered, leave = anyio.Event(), anyio.Event()

    async def holder() -> None:
        async with bitmap.domain.read():
            entered.set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await entered.wait()
        with pytest.raises(aiorcu.RcuUsageError):
            bitmap.is_set(0)  # another task on this loop is inside, not this one
        async with bitmap.domain.read():
            assert bitmap.is_set(0)
            await anyio.sleep(0)
            assert bitmap.check_range(0, 8)
        leave.set()


def test_range_reads_across_words_and_sizes() -> None:
    for pages in (1, 63, 64, 65, 200, 5000, 70_000):
        bitmap = aiorcu.Bitmap(pages, initial=True)
        holes = sorted({0, pages // 2, pages - 1, min(pages - 1, 64), min(pages - 1, 4200)})
        for p in holes:
            bitmap.commit_blocking(_tx(("revoke", p, 1)))
        with bitmap.domain.read():
            for p in holes:
                assert not bitmap.is_set(p)
                assert not bitmap.check_range(p, 1)
                assert bitmap.first_clear(0, pages) == holes[0]
                assert bitmap.first_clear(p, pages - p) == p
            for a, b in itertools.pairwise(holes):
                if b - a > 1:
                    assert bitmap.check_range(a + 1, b - a - 1)
                    assert bitmap.first_clear(a + 1, b - a - 1) is None
                    assert bitmap.first_clear(a + 1, b - a) == b
            assert bitmap.check_range(0, 0) and bitmap.first_clear(pages, 0) is None


def test_out_of_range_reads_raise_index_error() -> None:
    bitmap = aiorcu.Bitmap(100, initial=True)
    with bitmap.domain.read():
        for call in [
            lambda: bitmap.is_set(100),
            lambda: bitmap.is_set(-1),
            lambda: bitmap.check_range(99, 2),
            lambda: bitmap.check_range(-1, 1),
            lambda: bitmap.first_clear(0, 101),
            lambda: bitmap.first_clear(0, -1),
        ]:
            with pytest.raises(IndexError, match="outside the bitmap's 100 pages"):
                call()


def test_a_bitmap_too_large_for_memory_says_how_much_it_wanted() -> None:
    with pytest.raises(
        MemoryError,
        match=r"a bitmap of 1,099,511,627,776 pages needs "
        r"137,438,953,728 bytes \(128 GiB\), which could not be allocated",
    ):
        aiorcu.Bitmap(2**40)
    with pytest.raises(
        MemoryError,
        match=r"GuardedMemory of 1,048,576 pages of 1,048,576 bytes "
        r"needs 1,099,511,759,104 bytes \(1 TiB\)",
    ):
        aiorcu.GuardedMemory(2**20, page_size=2**20)


def test_large_bitmap_fits_in_eight_mib() -> None:
    pages = 2**26  # 256 GiB of 4 KiB pages
    bitmap = aiorcu.Bitmap(pages, initial=True)
    # The words, and a header of less than a page.
    assert 8 * 2**20 < aiorcu.Bitmap.buffer_size(pages) < 8 * 2**20 + 4096
    report = bitmap.commit_blocking(_tx(("revoke", pages - 1_000_001, 1_000_000)))
    assert report.pages_revoked == 1_000_000
    with bitmap.domain.read():
        assert bitmap.first_clear(0, pages) == pages - 1_000_001
        assert bitmap.is_set(pages - 1) and not bitmap.check_range(0, pages)


# -- transactions --------------------------------------------------------------------


def test_transaction_model_is_strict_frozen_and_round_trips() -> None:
    tx = _tx(("revoke", 0, 8), ("grant", 2, 1), sync="always", label="x")
    assert isinstance(tx.ops[0], aiorcu.Revoke) and isinstance(tx.ops[1], aiorcu.Grant)
    again = aiorcu.BitmapTransaction.model_validate_json(tx.model_dump_json())
    assert again == tx
    with pytest.raises(pydantic.ValidationError):
        tx.sync = "never"  # type: ignore[misc]
    for bad in [
        {"ops": [{"op": "revoke", "start": "0", "count": 1}]},
        {"ops": [{"op": "revoke", "start": True, "count": 1}]},
        {"ops": [{"op": "revoke", "start": 1.0, "count": 1}]},
        {"ops": [{"op": "revoke", "start": -1, "count": 1}]},
        {"ops": [{"op": "revoke", "start": 2**48, "count": 1}]},
        {"ops": [{"op": "grant", "start": 0, "count": 0}]},
        {"ops": [{"op": "grant", "start": 0, "count": 2**48 + 1}]},
        {"ops": [{"op": "flip", "start": 0, "count": 1}]},
        {"ops": [{"start": 0, "count": 1}]},
        {"ops": [{"op": "grant", "start": 0, "count": 1, "x": 1}]},
        {"ops": [], "extra": True},
        {"ops": [], "sync": "sometimes"},
        {"ops": [], "label": 5},
    ]:
        with pytest.raises(pydantic.ValidationError):
            aiorcu.BitmapTransaction.model_validate(bad)
    assert aiorcu.Revoke(start=2**48 - 1, count=2**48).count == 2**48


def test_json_schema_describes_the_ops() -> None:
    schema = aiorcu.BitmapTransaction.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["$defs"]) >= {"Grant", "Revoke"}
    assert schema["properties"]["ops"]["items"]["discriminator"]["propertyName"] == "op"
    start = schema["$defs"]["Grant"]["properties"]["start"]
    assert start["minimum"] == 0 and start["exclusiveMaximum"] == 2**48


def test_ops_apply_in_order_and_report_net_counts() -> None:
    bitmap = aiorcu.Bitmap(300, initial=False)
    report = bitmap.commit_blocking(
        _tx(("grant", 0, 200), ("revoke", 50, 100), ("grant", 60, 10), label="first")
    )
    expected = set(range(200)) - set(range(50, 150)) | set(range(60, 70))
    assert _accessible(bitmap) == expected
    assert report.pages_granted == len(expected) and report.pages_revoked == 0
    assert not report.restricted and not report.synchronized
    assert report.label == "first" and report.sync == "auto"
    assert report.grace_period_seconds == 0.0

    # Revoke then re-grant in one commit: net nothing, so no restriction.
    report = bitmap.commit_blocking(_tx(("revoke", 0, 10), ("grant", 0, 10)))
    assert (report.pages_granted, report.pages_revoked, report.restricted) == (0, 0, False)
    assert not report.synchronized

    report = bitmap.commit_blocking(_tx(("revoke", 0, 300), ("grant", 0, 5)))
    assert report.pages_revoked == len(expected) - 5 and report.pages_granted == 0
    assert report.restricted and report.synchronized
    assert _accessible(bitmap) == set(range(5))


def test_rejected_transaction_applies_nothing_and_names_the_op() -> None:
    bitmap = aiorcu.Bitmap(256, initial=True)
    tx = _tx(("revoke", 0, 8), ("grant", 0, 1), ("revoke", 250, 8))
    with pytest.raises(aiorcu.TransactionRejected) as info:
        bitmap.commit_blocking(tx)
    assert str(info.value) == (
        "op 2 (revoke start=250 count=8) reaches page 257, but the bitmap has 256 pages "
        "(0..255); nothing was applied"
    )
    assert info.value.index == 2 and info.value.op == tx.ops[2]
    assert isinstance(info.value, ValueError)
    assert _accessible(bitmap) == set(range(256))
    with pytest.raises(TypeError, match="takes a BitmapTransaction"):
        bitmap.commit_blocking({"ops": []})  # type: ignore[arg-type]


def test_sync_modes() -> None:
    bitmap = aiorcu.Bitmap(64, initial=True)
    never = bitmap.commit_blocking(_tx(("revoke", 0, 4), sync="never"))
    assert never.restricted and not never.synchronized
    assert never.grace_period_seconds == 0.0
    # An auto commit that revokes pages an earlier commit already revoked
    # restricts nothing itself, yet its caller will act on those pages: it
    # waits until that earlier restriction is flushed.  A grant never waits.
    holder, leave = hold_section(bitmap.domain)
    try:
        never = bitmap.commit_blocking(_tx(("revoke", 4, 4), sync="never"))
        assert not never.synchronized
        grant = bitmap.commit_blocking(_tx(("grant", 60, 1)))
        assert not grant.synchronized and not grant.restricted
        follower = Background(lambda: bitmap.commit_blocking(_tx(("revoke", 4, 2))))
        assert not follower.done.wait(0.2)  # held by the reader that may see pages 4..7
    finally:
        leave.set()
        holder.join()
    follower.result()
    again = bitmap.commit_blocking(_tx(("revoke", 4, 2)))
    assert not again.synchronized and not again.restricted  # flushed by now
    always = bitmap.commit_blocking(_tx(("grant", 0, 1), sync="always"))
    assert always.synchronized and not always.restricted
    assert bitmap.commit_blocking(_tx()).synchronized is False  # flushed already


def test_commit_inside_own_section_raises_before_applying() -> None:
    bitmap = aiorcu.Bitmap(64, initial=True)
    with bitmap.domain.read():
        with pytest.raises(aiorcu.RcuUsageError, match="it would wait for itself"):
            bitmap.commit_blocking(_tx(("revoke", 0, 1)))
        assert bitmap.is_set(0)
        report = bitmap.commit_blocking(_tx(("revoke", 0, 1), sync="never"))  # the opt-out
        assert report.restricted and not bitmap.is_set(0)


def test_commit_waits_for_a_reader_that_may_see_the_page() -> None:
    bitmap = aiorcu.Bitmap(64, domain=aiorcu.Domain(name="wait"), initial=True)
    holder, leave = hold_section(bitmap.domain)
    writer = Background(lambda: bitmap.commit_blocking(_tx(("revoke", 3, 1))))
    try:
        assert not writer.done.wait(0.2)
        with bitmap.domain.read():
            assert not bitmap.is_set(3)  # applied before the wait: new readers see it
    finally:
        leave.set()
        holder.join()
    writer.result()


def test_transaction_block() -> None:
    bitmap = aiorcu.Bitmap(1024, initial=True)
    with bitmap.transaction(label="evict") as tx:
        tx.revoke(0, 100)
        tx.grant(10, 5)
        assert [op.op for op in tx.ops] == ["revoke", "grant"]
        with pytest.raises(aiorcu.RcuUsageError, match=r"read tx\.report after the"):
            _ = tx.report
    assert tx.report.pages_revoked == 95 and tx.report.label == "evict"
    assert tx.build().ops == tx.ops
    with pytest.raises(aiorcu.RcuUsageError, match="has ended"):
        tx.revoke(0, 1)

    with pytest.raises(RuntimeError, match="changed my mind"), bitmap.transaction() as tx2:
        tx2.revoke(100, 900)
        raise RuntimeError("changed my mind")
    with pytest.raises(aiorcu.RcuUsageError, match="ended without committing"):
        _ = tx2.report
    assert _accessible(bitmap) == set(range(1024)) - set(range(100)) | set(range(10, 15))

    with pytest.raises(aiorcu.TransactionRejected, match="op 1"), bitmap.transaction() as tx3:
        tx3.revoke(200, 1)
        tx3.grant(1000, 25)  # checked when added
    with pytest.raises(aiorcu.RcuUsageError, match="ended without committing"):
        _ = tx3.report
    assert 200 in _accessible(bitmap)
    with pytest.raises(pydantic.ValidationError):
        bitmap.transaction(sync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError), bitmap.transaction() as tx4:
        tx4.grant("1", 1)  # type: ignore[arg-type]


# -- async commits -------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_commit_and_block() -> None:
    bitmap = aiorcu.Bitmap(64, domain=aiorcu.Domain(name="async-commit"), initial=True)
    report = await bitmap.commit(_tx(("revoke", 0, 8)))
    assert report.synchronized and report.pages_revoked == 8
    async with bitmap.transaction(label="blk") as tx:
        tx.grant(0, 4)
    assert tx.report.pages_granted == 4
    with pytest.raises(KeyError):
        async with bitmap.transaction() as tx2:
            tx2.revoke(0, 64)
            raise KeyError("x")
    assert _accessible(bitmap) == set(range(4)) | set(range(8, 64))
    async with bitmap.domain.read():
        with pytest.raises(aiorcu.RcuUsageError, match="held by this task"):
            await bitmap.commit(_tx(("revoke", 0, 1)))
        assert bitmap.is_set(0)


@pytest.mark.anyio
async def test_async_commit_waits_for_a_reader_task() -> None:
    bitmap = aiorcu.Bitmap(64, domain=aiorcu.Domain(name="async-wait"), initial=True)
    order: list[str] = []
    entered = anyio.Event()

    async def reader() -> None:
        async with bitmap.domain.read():
            assert bitmap.is_set(5)
            entered.set()
            await anyio.sleep(0.1)
            order.append("reader left")

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        await bitmap.commit(_tx(("revoke", 5, 1)))
        order.append("commit returned")
    assert order == ["reader left", "commit returned"]


@pytest.mark.anyio
async def test_commit_cancelled_before_applying_changes_nothing() -> None:
    bitmap = aiorcu.Bitmap(64, initial=True)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await bitmap.commit(_tx(("revoke", 0, 64)))
    assert scope.cancelled_caught
    assert _accessible(bitmap) == set(range(64))


@pytest.mark.anyio
async def test_cancelled_commit_still_waits_for_readers_once_applied() -> None:
    bitmap = aiorcu.Bitmap(64, domain=aiorcu.Domain(name="shielded"), initial=True)
    holder, leave = hold_section(bitmap.domain)
    events: list[str] = []
    scope = anyio.CancelScope()

    async def commit() -> None:
        with scope:
            await bitmap.commit(_tx(("revoke", 7, 1)))
            events.append("not cancelled?")
        events.append("commit ended")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(commit)
            await anyio.sleep(0.05)  # applied; now waiting for the holder
            with bitmap.domain.read():
                assert not bitmap.is_set(7)
            scope.cancel()
            await anyio.sleep(0.2)
            assert events == []  # the cancellation waits behind the grace period
            events.append("reader leaves")
            leave.set()
    finally:
        leave.set()
        holder.join()
    assert events == ["reader leaves", "commit ended"]
    assert scope.cancelled_caught  # delivered after the wait


@pytest.mark.anyio
async def test_concurrent_async_commits_are_atomic_and_wait_for_the_lock_on_the_loop() -> None:
    bitmap = aiorcu.Bitmap(4096, domain=aiorcu.Domain(name="contended"), initial=True)
    blocker = threading.Event()
    entered = threading.Event()

    def hold_writer_lock() -> None:
        bitmap._lock.acquire_blocking()
        entered.set()
        blocker.wait(HANG_GUARD)
        bitmap._lock.release()

    t = threading.Thread(target=hold_writer_lock)
    t.start()
    assert entered.wait(HANG_GUARD)
    threads_before = set(threading.enumerate())
    reports: list[aiorcu.CommitReport] = []

    async def one(i: int) -> None:
        reports.append(await bitmap.commit(_tx(("revoke", i * 64, 64), ("grant", i * 64, 32))))

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(one, i)
        await anyio.sleep(0.05)
        assert reports == []  # all waiting for the lock, without blocking the loop
        assert set(threading.enumerate()) <= threads_before  # and without a thread each
        blocker.set()
    t.join()
    assert sorted(r.pages_revoked for r in reports) == [32] * 16
    with bitmap.domain.read():
        assert bitmap.first_clear(0, 4096) == 32


# -- the invariant under load ----------------------------------------------------------


def _revocation_race(busted: bool, seconds: float) -> int:
    """Readers check a page and use it; a writer revokes it, then marks it dead.

    Returns how many reads found a page dead that they had checked accessible
    in the same section: a commit returned while they were still inside.
    """
    domain = aiorcu.Domain(name="race")
    if busted:
        testing.set_busted(domain)
    pages = 64
    bitmap = aiorcu.Bitmap(pages, domain=domain, initial=True)
    dead = bytearray(pages)
    violations = [0]
    stop = threading.Event()

    def reader(seed: int) -> None:
        page, n = seed, 0
        while not stop.is_set():
            page = (page * 17 + 5) % pages
            with domain.read():
                if bitmap.is_set(page):
                    if n % 16 == 0:
                        # Let the writer run now: a real sleep hands the GIL
                        # over (sleep(0) often takes it straight back).
                        time.sleep(0.00005)
                    if dead[page]:
                        violations[0] += 1
            n += 1

    def writer() -> None:
        page = 0
        while not stop.is_set():
            page = (page + 7) % pages
            bitmap.commit_blocking(_tx(("revoke", page, 1)))
            dead[page] = 1  # "tell the hardware": the page is gone now
            time.sleep(0.00005)
            dead[page] = 0  # a fresh page behind the same number
            bitmap.commit_blocking(_tx(("grant", page, 1)))

    readers = [functools.partial(reader, i) for i in range(3)]
    run_race(readers, writer, stop, seconds, lambda: busted and violations[0] > 0)
    return violations[0]


@pytest.mark.stress
def test_no_reader_uses_a_page_after_its_revocation_returned() -> None:
    assert _revocation_race(busted=False, seconds=STRESS_SECONDS) == 0


@pytest.mark.stress
def test_negative_control_busted_grace_period_is_caught() -> None:
    assert _revocation_race(busted=True, seconds=max(STRESS_SECONDS, 30)) > 0


@pytest.mark.anyio
@pytest.mark.stress
async def test_commits_cancelled_at_random_points_under_load() -> None:
    """Each commit is cancelled at a random moment while readers hold pages.

    A cancelled commit either applied nothing or applied everything, and in
    the second case its caller only regains control after the grace period:
    the page is marked dead right then, and no reader that saw it accessible
    may still be inside.
    """
    domain = aiorcu.Domain(name="cancel-commits")
    ranges, width = 64, 8
    bitmap = aiorcu.Bitmap(ranges * width, domain=domain, initial=True)
    dead = bytearray(ranges * width)
    violations = [0]
    stop = threading.Event()
    rng = random.Random(1234)

    def reader(seed: int) -> None:
        page = seed
        while not stop.is_set():
            page = (page * 31 + 11) % (ranges * width)
            with domain.read():
                if bitmap.is_set(page):
                    time.sleep(0.0005 if page % 5 == 0 else 0)
                    if dead[page]:
                        violations[0] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    cancelled = 0
    try:
        for i in range(ranges):
            with anyio.move_on_after(rng.choice([0.0, rng.uniform(0, 0.002)])) as scope:
                await bitmap.commit(_tx(("revoke", i * width, width), ("grant", i * width, 1)))
            cancelled += scope.cancelled_caught
            with domain.read():
                state = [bitmap.is_set(p) for p in range(i * width, (i + 1) * width)]
            assert state in ([True] * width, [True] + [False] * (width - 1)), state
            if not state[1]:
                dead[i * width + 1 : (i + 1) * width] = b"\1" * (width - 1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert violations[0] == 0, f"{violations[0]} reads of a page after its commit returned"
    assert cancelled > 0, "no commit was cancelled: the test did not test"  # deadline 0 cancels
    assert domain.stats().readers_active == 0
