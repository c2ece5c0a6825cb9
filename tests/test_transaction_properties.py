"""Property tests: `BitmapTransaction` from JSON, its bounds and its label.

Arbitrary JSON, near misses of valid transactions (ints as strings, floats,
bools, bounds, missing and extra fields), raw and truncated bytes: each
parser yields a valid model that round-trips, or a `pydantic.ValidationError`
and nothing else, and which one agrees with the contract written out in
`expected_valid`.  The bounds of ``start`` and ``count`` are exact.

Example counts are small by default; ``AIORCU_HYPOTHESIS_SCALE=10`` runs ten
times as many examples (see ``strategies.py``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import aiorcu
from aiorcu import BitmapTransaction, Grant, Revoke
from aiorcu._transaction import MAX_PAGE

from .strategies import LABELS, SYNCS, rejection_message, scaled_settings

pytestmark = pytest.mark.fallback

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


@scaled_settings(150)
@given(doc=JSON_VALUES | TX_DICTS)
def test_transaction_from_arbitrary_json(doc: Any) -> None:
    check_parse(doc)


@scaled_settings(500)
@given(doc=near_misses())
def test_transaction_from_near_miss_json(doc: Any) -> None:
    check_parse(doc)


@scaled_settings(150)
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
