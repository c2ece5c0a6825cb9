"""Strategies and helpers shared by the property tests.

Used by ``test_bitmap_properties.py`` (bitmaps against a Python model),
``test_transaction_properties.py`` (`BitmapTransaction` from JSON) and
``test_memory_properties.py`` (`GuardedMemory` against a bytearray).

Example counts are small by default, so each file runs in well under a
minute; ``AIORCU_HYPOTHESIS_SCALE=10`` runs ten times as many examples.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from aiorcu import BitmapTransaction

SCALE = float(os.environ.get("AIORCU_HYPOTHESIS_SCALE", "1"))


def scaled_settings(examples: int, **kwargs: Any) -> settings:
    """``examples`` examples, times ``AIORCU_HYPOTHESIS_SCALE``; no deadline."""
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **kwargs,
    )


SYNCS: tuple[Literal["auto", "always", "never"], ...] = ("auto", "always", "never")
Sync = Literal["auto", "always", "never"]
OpTuple = tuple[Literal["grant", "revoke"], int, int]

LABELS = st.none() | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


def make_tx(ops: list[OpTuple], sync: Sync = "auto", label: str | None = None) -> BitmapTransaction:
    return BitmapTransaction(
        ops=[{"op": op, "start": start, "count": count} for op, start, count in ops],
        sync=sync,
        label=label,
    )


def rejection_message(index: int, op: OpTuple, pages: int) -> str:
    kind, start, count = op
    return (
        f"op {index} ({kind} start={start} count={count}) reaches page "
        f"{start + count - 1}, but the bitmap has {pages} pages (0..{pages - 1}); "
        "nothing was applied"
    )
