"""Property tests: page bitmaps against a Python model, transaction JSON, guarded memory.

A `Bitmap` is driven by a Hypothesis state machine and compared after every
step with a plain Python model: an int used as a set of pages (bit p set
while page p is accessible), on which a grant is ``|=`` and a revoke
``&= ~``, op after op.  The model also predicts each report: the net page
counts and whether the commit waited for a grace period.

Example counts are small by default, so the file runs in well under a
minute; ``AIORCU_HYPOTHESIS_SCALE=10`` runs ten times as many examples.
"""

from __future__ import annotations

import json
import math
import os
from array import array
from typing import Any, Literal

import anyio
import pydantic
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import aiorcu
from aiorcu import BitmapTransaction, Grant, Revoke
from aiorcu._transaction import MAX_PAGE

pytestmark = pytest.mark.fallback

SCALE = float(os.environ.get("AIORCU_HYPOTHESIS_SCALE", "1"))


def _settings(examples: int, **kwargs: Any) -> settings:
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **kwargs,
    )


SYNCS: tuple[Literal["auto", "always", "never"], ...] = ("auto", "always", "never")
Sync = Literal["auto", "always", "never"]
OpTuple = tuple[Literal["grant", "revoke"], int, int]

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


LABELS = st.none() | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


def make_tx(ops: list[OpTuple], sync: Sync = "auto", label: str | None = None) -> BitmapTransaction:
    return BitmapTransaction(
        ops=[{"op": op, "start": start, "count": count} for op, start, count in ops],
        sync=sync,
        label=label,
    )


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


def rejection_message(index: int, op: OpTuple, pages: int) -> str:
    kind, start, count = op
    return (
        f"op {index} ({kind} start={start} count={count}) reaches page "
        f"{start + count - 1}, but the bitmap has {pages} pages (0..{pages - 1}); "
        "nothing was applied"
    )


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
        token = self.bitmap._flush_token
        assert token is not None
        assert not self.domain.poll(token)


BitmapMachine.TestCase.settings = _settings(200, stateful_step_count=30)
test_bitmap_state_machine = BitmapMachine.TestCase


@_settings(60)
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
@_settings(40)
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


# -- 3. BitmapTransaction from JSON --------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | TEXT
    | st.sampled_from([0, 1, -1, MAX_PAGE - 1, MAX_PAGE, MAX_PAGE + 1, "grant", "auto"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
WEIRD = st.one_of(
    st.sampled_from(
        [
            0,
            1,
            -1,
            MAX_PAGE - 2,
            MAX_PAGE - 1,
            MAX_PAGE,
            MAX_PAGE + 1,
            2**63,
            2**64,
            -(2**48),
            10**30,
            True,
            False,
            None,
            0.0,
            -0.0,
            1.0,
            1.5,
            1e20,
            math.inf,
            -math.inf,
            math.nan,
            float(MAX_PAGE),
            "0",
            "1",
            "8",
            str(MAX_PAGE - 1),
            "",
            "grant",
            "revoke",
            "auto",
            "never",
            [],
            {},
            [1, 2],
            {"op": "grant", "start": 0, "count": 1},
        ]
    ),
    st.integers(),
    st.floats(),
    TEXT,
    JSON_VALUES,
)
STARTS = st.integers(0, MAX_PAGE - 1) | st.sampled_from([0, 1, 63, 64, MAX_PAGE - 1])
COUNTS = st.integers(1, MAX_PAGE) | st.sampled_from([1, 64, MAX_PAGE - 1, MAX_PAGE])
OP_DICTS = st.fixed_dictionaries(
    {"op": st.sampled_from(["grant", "revoke"]), "start": STARTS, "count": COUNTS}
)
TX_DICTS = st.fixed_dictionaries(
    {"ops": st.lists(OP_DICTS, max_size=4)},
    optional={"sync": st.sampled_from(SYNCS), "label": LABELS},
)


@st.composite
def near_misses(draw: st.DrawFn) -> Any:
    """A valid transaction dict with one to three small mutations."""
    doc: Any = json.loads(json.dumps(draw(TX_DICTS)))  # a private copy to mutate
    for _ in range(draw(st.integers(1, 3))):
        containers = [doc] if isinstance(doc, dict) else []
        if isinstance(doc, dict) and isinstance(doc.get("ops"), list):
            containers += [op for op in doc["ops"] if isinstance(op, dict)]
        mutation = draw(
            st.sampled_from(
                [
                    "set",
                    "int",
                    "int",
                    "delete",
                    "extra",
                    "op_name",
                    "to_string",
                    "wrap",
                    "ops_shape",
                ]
            )
        )
        if not containers or mutation == "wrap":
            doc = draw(st.sampled_from([[doc], {"tx": doc}, {"ops": doc}, json.dumps(doc)]))
            continue
        target = draw(st.sampled_from(containers))
        keys = sorted(target)
        if mutation == "int" and len(containers) > 1:
            target = draw(st.sampled_from(containers[1:]))
            key = draw(st.sampled_from(["start", "count"]))
            value = target.get(key, 1)
            value = value if type(value) is int else 1
            target[key] = draw(
                st.sampled_from(
                    [
                        str(value),
                        float(value),
                        value - 1,
                        value + 1,
                        -value,
                        value == 1,
                        0,
                        -1,
                        MAX_PAGE - 1,
                        MAX_PAGE,
                        MAX_PAGE + 1,
                        float(MAX_PAGE),
                        [value],
                        {"value": value},
                        None,
                    ]
                )
            )
        elif mutation == "set":
            key = draw(st.sampled_from([*keys, "op", "start", "count", "sync", "label", "ops"]))
            target[key] = draw(WEIRD)
        elif mutation == "delete" and keys:
            del target[draw(st.sampled_from(keys))]
        elif mutation == "extra":
            target[draw(TEXT | st.sampled_from(["Start", "extra", "opp", "ops ", "pages"]))] = draw(
                WEIRD
            )
        elif mutation == "op_name":
            target["op"] = draw(
                st.sampled_from(["Grant", "GRANT", "grant ", " revoke", "delete", "", "revok"])
                | TEXT
            )
        elif mutation == "to_string" and keys:
            key = draw(st.sampled_from(keys))
            target[key] = json.dumps(target[key])
        elif mutation == "ops_shape" and isinstance(doc, dict):
            doc["ops"] = draw(
                st.sampled_from(
                    [None, {}, "[]", doc.get("ops"), {"0": doc.get("ops")}, [doc.get("ops")]]
                )
            )
    return doc


def _int_in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _valid_op(op: object) -> bool:
    return (
        isinstance(op, dict)
        and set(op) == {"op", "start", "count"}
        and op["op"] in ("grant", "revoke")
        and _int_in(op["start"], 0, MAX_PAGE - 1)
        and _int_in(op["count"], 1, MAX_PAGE)
    )


def expected_valid(doc: object) -> bool:
    """The contract, written out: strict ints, exact bounds, no extra fields."""
    if not isinstance(doc, dict) or not set(doc) <= {"ops", "sync", "label"}:
        return False
    ops = doc.get("ops", [])
    if not isinstance(ops, list) or not all(_valid_op(op) for op in ops):
        return False
    sync = doc.get("sync", "auto")
    label = doc.get("label")
    return isinstance(sync, str) and sync in SYNCS and (label is None or isinstance(label, str))


def check_parse(doc: Any) -> None:
    """Both parsers agree with `expected_valid`, raise only ValidationError, and round-trip."""
    text = json.dumps(doc)  # NaN and Infinity as their JavaScript tokens, which jiter reads
    for parse, source in (
        (BitmapTransaction.model_validate_json, text),
        (BitmapTransaction.model_validate_json, text.encode()),
        (BitmapTransaction.model_validate, doc),
    ):
        try:
            model = parse(source)
        except pydantic.ValidationError:
            assert not expected_valid(doc), (parse, source)
            continue
        assert expected_valid(doc), (parse, source, model)
        event("valid transaction")
        assert model.model_dump(mode="json") == {
            "ops": doc.get("ops", []),
            "sync": doc.get("sync", "auto"),
            "label": doc.get("label"),
        }
        assert BitmapTransaction.model_validate_json(model.model_dump_json()) == model
        assert BitmapTransaction.model_validate(model.model_dump()) == model


@_settings(150)
@given(doc=JSON_VALUES | TX_DICTS)
def test_transaction_from_arbitrary_json(doc: Any) -> None:
    check_parse(doc)


@_settings(500)
@given(doc=near_misses())
def test_transaction_from_near_miss_json(doc: Any) -> None:
    check_parse(doc)


@_settings(150)
@given(
    raw=st.binary(max_size=60)
    | TEXT
    | TX_DICTS.map(json.dumps).flatmap(
        lambda s: st.integers(0, len(s)).map(lambda i: s[:i])  # truncated documents
    )
)
def test_transaction_raw_bytes_fuzz(raw: bytes | str) -> None:
    try:
        model = BitmapTransaction.model_validate_json(raw)
    except pydantic.ValidationError:
        return
    assert BitmapTransaction.model_validate_json(model.model_dump_json()) == model


def test_deeply_nested_json_is_a_validation_error() -> None:
    for doc in ('{"ops": ' + "[" * 5000 + "]" * 5000 + "}", "[" * 100_000):
        with pytest.raises(pydantic.ValidationError):
            BitmapTransaction.model_validate_json(doc)


@pytest.mark.parametrize("op", ["grant", "revoke"])
@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("start", 0, True),
        ("start", MAX_PAGE - 1, True),
        ("start", MAX_PAGE, False),
        ("start", -1, False),
        ("count", 1, True),
        ("count", MAX_PAGE, True),
        ("count", MAX_PAGE + 1, False),
        ("count", 0, False),
        ("count", -1, False),
    ],
)
def test_bounds_are_exact(op: str, field: str, value: int, ok: bool) -> None:
    fields = {"op": op, "start": 0, "count": 1, field: value}
    doc = {"ops": [fields]}
    model_class = Grant if op == "grant" else Revoke
    attempts = [
        lambda: BitmapTransaction.model_validate_json(json.dumps(doc)),
        lambda: BitmapTransaction.model_validate(doc),
        lambda: BitmapTransaction(ops=[fields]),
        lambda: model_class(**{k: v for k, v in fields.items() if k != "op"}),
    ]
    for attempt in attempts:
        if not ok:
            with pytest.raises(pydantic.ValidationError) as info:
                attempt()
            assert [e["loc"][-1] for e in info.value.errors()] == [field]
            continue
        result = attempt()
        op_model = result.ops[0] if isinstance(result, BitmapTransaction) else result
        assert isinstance(op_model, model_class)
        assert getattr(op_model, field) == value


def test_valid_but_too_far_for_any_bitmap_is_rejected_at_commit() -> None:
    tx = BitmapTransaction.model_validate_json(
        json.dumps({"ops": [{"op": "grant", "start": MAX_PAGE - 1, "count": MAX_PAGE}]})
    )
    bitmap = aiorcu.Bitmap(100, domain=aiorcu.Domain(name="far"))
    with pytest.raises(aiorcu.TransactionRejected) as info:
        bitmap.commit_blocking(tx)
    assert str(info.value) == rejection_message(0, ("grant", MAX_PAGE - 1, MAX_PAGE), 100)


def test_a_label_that_cannot_be_dumped_to_json_is_refused() -> None:
    # JSON input cannot carry a lone surrogate (the parser refuses it), a
    # Python str can; the model must refuse it rather than fail to dump later.
    with pytest.raises(pydantic.ValidationError, match="lone surrogate"):
        BitmapTransaction.model_validate({"label": "page \ud800"})
    assert BitmapTransaction(label="page é").model_dump_json().endswith('"label":"page é"}')


# -- 4. GuardedMemory ----------------------------------------------------------------------

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


@_settings(200)
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
