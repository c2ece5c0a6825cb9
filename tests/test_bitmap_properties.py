"""Property tests: page bitmaps against a Python model.

A `Bitmap` is driven by a Hypothesis state machine and compared after every
step with a plain Python model: an int used as a set of pages (bit p set
while page p is accessible), on which a grant is ``|=`` and a revoke
``&= ~``, op after op.  The model also predicts each report: the net page
counts and whether the commit waited for a grace period.  Then one commit of
many overlapping ops, and transactions whose k-th op does not fit, which
must apply nothing.

Transaction JSON is in ``test_transaction_properties.py``, guarded memory in
``test_memory_properties.py``; the shared strategies in ``strategies.py``.
Example counts are small by default, so the file runs in well under a
minute; ``AIORCU_HYPOTHESIS_SCALE=10`` runs ten times as many examples.
"""

from __future__ import annotations

from typing import Literal

import anyio
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import aiorcu
from aiorcu._transaction import MAX_PAGE

from .strategies import (
    LABELS,
    SYNCS,
    OpTuple,
    Sync,
    make_tx,
    rejection_message,
    scaled_settings,
)

pytestmark = pytest.mark.fallback

# -- strategies for page ranges ----------------------------------------------------------

# Sizes around word edges, one page, and a few thousand pages (ranges of more
# than 4096 pages are read by the C loop, shorter ones in Python).
SIZES = st.one_of(
    st.just(1),
    st.integers(1, 200),
    st.integers(65, 1500),
    st.sampled_from([63, 64, 65, 127, 128, 129, 191, 192, 193, 1000, 4095, 4096, 4097, 4160]),
    st.integers(4000, 9000),
    st.integers(4097, 6000),
)


@st.composite
def page_ranges(draw: st.DrawFn, pages: int) -> tuple[int, int]:
    """A ``(start, count)`` inside ``pages``; often word-aligned or crossing a word edge."""
    kind = draw(st.sampled_from(["any", "aligned", "cross", "to_end", "small", "all"]))
    if kind == "aligned" and pages >= 64:
        first = draw(st.integers(0, pages // 64 - 1))
        words = draw(st.integers(1, pages // 64 - first))
        return 64 * first, 64 * words
    if kind == "cross" and pages > 64:
        edge = 64 * draw(st.integers(1, (pages - 1) // 64))
        start = edge - draw(st.integers(1, min(edge, 130)))
        end = edge + draw(st.integers(1, min(pages - edge, 130)))
        return start, end - start
    if kind == "all":
        return 0, pages
    start = draw(st.integers(0, pages - 1))
    room = pages - start
    if kind == "to_end":
        return start, room
    if kind == "small":
        return start, draw(st.integers(1, min(room, 3)))
    return start, draw(st.integers(1, room))


@st.composite
def outside_ranges(draw: st.DrawFn, pages: int) -> tuple[int, int]:
    """A well-formed ``(start, count)`` (start < 2**48, 1 <= count <= 2**48) past the bitmap."""
    kind = draw(st.sampled_from(["past_end", "at_end", "huge"]))
    if kind == "past_end":
        start = draw(st.integers(0, pages - 1))
        return start, draw(st.integers(pages - start + 1, pages - start + 130))
    if kind == "at_end":
        return draw(st.integers(pages, pages + 130)), draw(st.integers(1, 70))
    start = draw(st.one_of(st.integers(0, MAX_PAGE - 1), st.just(MAX_PAGE - 1)))
    low = max(1, pages - start + 1)
    return start, draw(st.one_of(st.integers(low, MAX_PAGE), st.just(MAX_PAGE)))


def op_tuples(pages: int, max_size: int = 8) -> st.SearchStrategy[list[OpTuple]]:
    kinds: st.SearchStrategy[Literal["grant", "revoke"]] = st.sampled_from(["grant", "revoke"])
    op = st.tuples(kinds, page_ranges(pages)).map(lambda t: (t[0], *t[1]))
    return st.lists(op, max_size=max_size)  # type: ignore[arg-type]


def apply_model(model: int, ops: list[OpTuple]) -> int:
    for op, start, count in ops:
        mask = ((1 << count) - 1) << start
        model = model | mask if op == "grant" else model & ~mask
    return model


def left_revoked(ops: list[OpTuple]) -> int:
    """How many pages have a revoke as the last op that covers them."""
    revoked_last = 0
    for op, start, count in ops:
        mask = ((1 << count) - 1) << start
        revoked_last = revoked_last & ~mask if op == "grant" else revoked_last | mask
    return revoked_last.bit_count()


def accessible(bitmap: aiorcu.Bitmap) -> int:
    """The bitmap's accessible pages, as a model int, read page by page."""
    with bitmap.domain.read():
        return sum(1 << p for p in range(bitmap.pages) if bitmap.is_set(p))


def model_first_clear(model: int, start: int, count: int) -> int | None:
    clear = ~(model >> start) & ((1 << count) - 1)
    return None if not clear else start + (clear & -clear).bit_length() - 1


class _Boom(Exception):
    pass


# -- 1. the state machine ------------------------------------------------------------------


class BitmapMachine(RuleBasedStateMachine):
    """One bitmap in a domain of its own, so no other writer completes grace periods."""

    def __init__(self) -> None:
        super().__init__()
        self.domain = aiorcu.Domain(name="props")
        self.pages = 1
        self.bitmap = aiorcu.Bitmap(1, domain=self.domain)
        self.model = 0
        # A restriction committed with sync="never" whose grace period has not
        # run yet: the next "auto" commit waits for it (Bitmap._apply_locked).
        self.unflushed = False
        self.commits = 0

    @initialize(pages=SIZES, initial=st.booleans())
    def make_bitmap(self, pages: int, initial: bool) -> None:
        self.pages = pages
        self.bitmap = aiorcu.Bitmap(pages, domain=self.domain, initial=initial)
        self.model = (1 << pages) - 1 if initial else 0
        event(
            "bitmap size", "1 page" if pages == 1 else "> 4096 pages" if pages > 4096 else "other"
        )

    # The exact sync rule of Bitmap._apply_locked, for one writer thread:
    # "never" never waits, "always" always does, "auto" when this commit
    # revoked a page, or when some op of it leaves a page revoked while an
    # earlier revocation has not been flushed.
    def expected_synchronized(self, sync: Sync, revoked: int, ops: list[OpTuple]) -> bool:
        if sync == "never":
            return False
        if sync == "always":
            return True
        return revoked > 0 or (self.unflushed and left_revoked(ops) > 0)

    def check_report(
        self, report: aiorcu.CommitReport | None, ops: list[OpTuple], sync: Sync, label: str | None
    ) -> None:
        assert report is not None
        after = apply_model(self.model, ops)
        granted = (after & ~self.model).bit_count()
        revoked = (self.model & ~after).bit_count()
        assert report.pages_granted == granted
        assert report.pages_revoked == revoked
        assert report.restricted is (revoked > 0)
        assert report.synchronized is self.expected_synchronized(sync, revoked, ops)
        assert report.grace_period_seconds >= 0.0
        if not report.synchronized:
            assert report.grace_period_seconds == 0.0
        assert report.sync == sync
        assert report.label == label
        if sync == "auto" and report.synchronized and not revoked:
            event("auto commit waited for an earlier unflushed restriction")
        if revoked and sync == "never":
            self.unflushed = True
        elif report.synchronized:
            self.unflushed = False
        self.model = after
        self.commits += 1

    def accessible_runs(self) -> list[tuple[int, int]]:
        """(first page, the inaccessible page after it) of each run of accessible pages."""
        runs: list[tuple[int, int]] = []
        run_start = 0
        for page in range(self.pages):
            if not self.model >> page & 1:
                if page > run_start:
                    runs.append((run_start, page))
                run_start = page + 1
        return runs

    @invariant()
    def bitmap_matches_model(self) -> None:
        assert accessible(self.bitmap) == self.model
        full = (1 << self.pages) - 1
        runs = self.accessible_runs()
        with self.domain.read():
            assert self.bitmap.check_range(0, self.pages) is (self.model == full)
            assert self.bitmap.first_clear(0, self.pages) == model_first_clear(
                self.model, 0, self.pages
            )
            # Each run whole, and with the page that ends it: the edge cases
            # of the range scans (first clear page last, or none).
            for start, clear in runs[:100] + runs[100:][-100:]:
                assert self.bitmap.check_range(start, clear - start)
                assert self.bitmap.first_clear(start, clear - start) is None
                assert self.bitmap.first_clear(start, clear - start + 1) == clear

    # -- commits ------------------------------------------------------------------------
    @rule(data=st.data(), sync=st.sampled_from(SYNCS), label=LABELS)
    def commit_blocking(self, data: st.DataObject, sync: Sync, label: str | None) -> None:
        ops = data.draw(op_tuples(self.pages), label="ops")
        tx = make_tx(ops, sync, label)
        self.check_report(self.bitmap.commit_blocking(tx), ops, sync, label)

    @rule(data=st.data(), sync=st.sampled_from(SYNCS), label=LABELS)
    def commit_builder(self, data: st.DataObject, sync: Sync, label: str | None) -> None:
        ops = data.draw(op_tuples(self.pages), label="ops")
        with self.bitmap.transaction(sync=sync, label=label) as tx:
            for op, start, count in ops:
                (tx.grant if op == "grant" else tx.revoke)(start, count)
            assert tx.build() == make_tx(ops, sync, label)
        self.check_report(tx.report, ops, sync, label)

    @rule(
        data=st.data(),
        sync=st.sampled_from(SYNCS),
        label=LABELS,
        backend=st.sampled_from(["asyncio", "trio"]),
        block=st.booleans(),
    )
    def commit_async(
        self, data: st.DataObject, sync: Sync, label: str | None, backend: str, block: bool
    ) -> None:
        ops = data.draw(op_tuples(self.pages), label="ops")

        async def main() -> aiorcu.CommitReport | None:
            if not block:
                return await self.bitmap.commit(make_tx(ops, sync, label))
            async with self.bitmap.transaction(sync=sync, label=label) as tx:
                for op, start, count in ops:
                    (tx.grant if op == "grant" else tx.revoke)(start, count)
            return tx.report

        self.check_report(anyio.run(main, backend=backend), ops, sync, label)

    @rule(data=st.data())
    def commit_never_inside_a_section(self, data: st.DataObject) -> None:
        ops = data.draw(op_tuples(self.pages), label="ops")
        with self.domain.read():
            report = self.bitmap.commit_blocking(make_tx(ops, "never"))
            # Applied at once, visible inside the same section.
            assert [self.bitmap.is_set(p) for p in range(self.pages)] == [
                bool(apply_model(self.model, ops) >> p & 1) for p in range(self.pages)
            ]
        self.check_report(report, ops, "never", None)

    @rule(data=st.data(), sync=st.sampled_from(["auto", "always"]), builder=st.booleans())
    def commit_that_would_wait_inside_a_section(
        self, data: st.DataObject, sync: Sync, builder: bool
    ) -> None:
        ops = data.draw(op_tuples(self.pages), label="ops")
        with self.domain.read(), pytest.raises(aiorcu.RcuUsageError) as info:
            if builder:
                with self.bitmap.transaction(sync=sync) as tx:
                    for op, start, count in ops:
                        (tx.grant if op == "grant" else tx.revoke)(start, count)
            else:
                self.bitmap.commit_blocking(make_tx(ops, sync))
        assert str(info.value) == (
            "Bitmap.commit_blocking() called inside a `with domain.read():` section on this "
            "thread; it would wait for itself. Leave the section first, or use "
            "call_after_grace_period()"
        )
        # the invariant checks that nothing was applied

    @rule()
    def grace_period_from_elsewhere(self) -> None:
        self.domain.synchronize_blocking()
        self.unflushed = False

    # -- commits that apply nothing -------------------------------------------------------
    @rule(
        data=st.data(),
        sync=st.sampled_from(SYNCS),
        how=st.sampled_from(["blocking", "builder", "asyncio", "trio"]),
    )
    def rejected_commit(self, data: st.DataObject, sync: Sync, how: str) -> None:
        before = op_tuples(self.pages, max_size=5)
        prefix = data.draw(before, label="prefix")
        bad_range = data.draw(outside_ranges(self.pages), label="bad")
        kind: Literal["grant", "revoke"] = data.draw(st.sampled_from(["grant", "revoke"]))
        bad: OpTuple = (kind, *bad_range)
        suffix = data.draw(before, label="suffix")
        ops = [*prefix, bad, *suffix]
        with pytest.raises(aiorcu.TransactionRejected) as info:
            if how == "builder":
                with self.bitmap.transaction(sync=sync) as tx:
                    for op, start, count in ops:
                        (tx.grant if op == "grant" else tx.revoke)(start, count)
            elif how == "blocking":
                self.bitmap.commit_blocking(make_tx(ops, sync))
            else:
                anyio.run(self.bitmap.commit, make_tx(ops, sync), backend=how)
        if how == "builder":
            with pytest.raises(aiorcu.RcuUsageError, match="ended without committing"):
                _ = tx.report
            assert tx.ops == make_tx(prefix).ops
        assert info.value.index == len(prefix)
        assert info.value.op == make_tx([bad]).ops[0]
        assert str(info.value) == rejection_message(len(prefix), bad, self.pages)

    @rule(data=st.data(), sync=st.sampled_from(SYNCS))
    def block_that_raises(self, data: st.DataObject, sync: Sync) -> None:
        ops = data.draw(op_tuples(self.pages), label="ops")
        with pytest.raises(_Boom), self.bitmap.transaction(sync=sync) as tx:
            for op, start, count in ops:
                (tx.grant if op == "grant" else tx.revoke)(start, count)
            raise _Boom
        with pytest.raises(aiorcu.RcuUsageError, match="ended without committing"):
            _ = tx.report
        with pytest.raises(aiorcu.RcuUsageError, match="this bitmap transaction has ended"):
            tx.grant(0, 1)

    # -- queries ------------------------------------------------------------------------
    @rule(data=st.data())
    def query_ranges(self, data: st.DataObject) -> None:
        ranges = data.draw(
            st.lists(page_ranges(self.pages) | st.tuples(st.integers(0, self.pages), st.just(0)))
        )
        # Ranges of accessible pages that end on an inaccessible one (its
        # first clear page is its last) or just before it (none clear).
        runs = self.accessible_runs()
        for _ in range(data.draw(st.integers(0, 4)) if runs else 0):
            run_start, clear = data.draw(st.sampled_from(runs))
            start = data.draw(st.integers(run_start, clear - 1))
            ranges.append((start, clear - start + data.draw(st.sampled_from([0, 1]))))
        with self.domain.read():
            for start, count in ranges:
                expected = model_first_clear(self.model, start, count) if count else None
                assert self.bitmap.first_clear(start, count) == expected
                assert self.bitmap.check_range(start, count) is (expected is None)
                if count:
                    assert self.bitmap.is_set(start) is bool(self.model >> start & 1)

    @rule(data=st.data())
    def query_outside_the_bitmap(self, data: st.DataObject) -> None:
        n = self.pages
        start, count = data.draw(
            st.one_of(
                outside_ranges(n),
                st.tuples(st.integers(-(2**64), -1), st.integers(0, n)),
                st.tuples(st.integers(0, n), st.integers(-(2**64), -1)),
            )
        )
        with self.domain.read():
            for what in ("first_clear", "check_range"):
                with pytest.raises(IndexError) as info:
                    getattr(self.bitmap, what)(start, count)
                assert str(info.value) == (
                    f"Bitmap.{what}({start}, {count}) is outside the bitmap's {n} pages "
                    f"(0..{n - 1})"
                )
            page = data.draw(st.integers(n, n + 200) | st.integers(-200, -1))
            with pytest.raises(IndexError, match=rf"^Bitmap\.is_set\({page}\) is outside"):
                self.bitmap.is_set(page)

    @rule(data=st.data(), what=st.sampled_from(["is_set", "check_range", "first_clear"]))
    def query_outside_a_section(self, data: st.DataObject, what: str) -> None:
        start, count = data.draw(page_ranges(self.pages))
        args = (start,) if what == "is_set" else (start, count)
        with pytest.raises(aiorcu.RcuUsageError) as info:
            getattr(self.bitmap, what)(*args)
        assert str(info.value) == (
            f"Bitmap.{what}() called outside a read section of domain 'props'; wrap the "
            "access in `with domain.read():` (thread code) or `async with domain.read():` "
            "(task code). A worker thread running a copy of a task's context "
            "(asyncio.to_thread, run_in_executor) is not inside that task's section"
        )

    @precondition(lambda self: self.unflushed)
    @rule()
    def unflushed_restriction_is_not_complete(self) -> None:
        # Sanity of the model's premise: nothing else ran a grace period.
        token = self.bitmap._flush.token()
        assert token is not None
        assert not self.domain.poll(token)


BitmapMachine.TestCase.settings = scaled_settings(200, stateful_step_count=30)
test_bitmap_state_machine = BitmapMachine.TestCase


@scaled_settings(60)
@given(data=st.data(), pages=SIZES, initial=st.booleans(), sync=st.sampled_from(SYNCS))
def test_one_commit_of_many_overlapping_ops(
    data: st.DataObject, pages: int, initial: bool, sync: Sync
) -> None:
    """The sweep's heap of open ops, with many ranges starting and ending together."""
    bitmap = aiorcu.Bitmap(pages, domain=aiorcu.Domain(name="many"), initial=initial)
    before = (1 << pages) - 1 if initial else 0
    ops = data.draw(op_tuples(pages, max_size=80), label="ops")
    report = bitmap.commit_blocking(make_tx(ops, sync))
    after = apply_model(before, ops)
    assert accessible(bitmap) == after
    assert report.pages_granted == (after & ~before).bit_count()
    assert report.pages_revoked == (before & ~after).bit_count()


# -- 2. bad input never applies partially --------------------------------------------------


@st.composite
def rejected_setups(draw: st.DrawFn) -> tuple[int, list[OpTuple], list[OpTuple], OpTuple]:
    pages = draw(SIZES)
    history = draw(op_tuples(pages, max_size=6))
    prefix = draw(op_tuples(pages, max_size=10))
    kind: Literal["grant", "revoke"] = draw(st.sampled_from(["grant", "revoke"]))
    start, count = draw(outside_ranges(pages))
    return pages, history, prefix, (kind, start, count)


@pytest.mark.parametrize("how", ["blocking", "asyncio", "trio"])
@scaled_settings(40)
@given(setup=rejected_setups(), sync=st.sampled_from(SYNCS))
def test_kth_op_out_of_range_applies_nothing(
    how: str, setup: tuple[int, list[OpTuple], list[OpTuple], OpTuple], sync: Sync
) -> None:
    pages, history, prefix, bad = setup
    bitmap = aiorcu.Bitmap(pages, domain=aiorcu.Domain(name="partial"))
    bitmap.commit_blocking(make_tx(history))
    before = accessible(bitmap)
    assert before == apply_model(0, history)
    # Valid ops (grants and revokes) before the one that does not fit.
    tx = make_tx([*prefix, bad], sync)
    with pytest.raises(aiorcu.TransactionRejected) as info:
        if how == "blocking":
            bitmap.commit_blocking(tx)
        else:
            anyio.run(bitmap.commit, tx, backend=how)
    assert info.value.index == len(prefix)
    assert str(info.value) == rejection_message(len(prefix), bad, pages)
    assert accessible(bitmap) == before
    # The bitmap still works: the valid prefix alone commits.
    report = bitmap.commit_blocking(make_tx(prefix, sync))
    assert accessible(bitmap) == apply_model(before, prefix)
    assert report.pages_granted == (apply_model(before, prefix) & ~before).bit_count()
