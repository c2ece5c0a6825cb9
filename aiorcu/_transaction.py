"""Bitmap transactions and commit reports: validated, frozen pydantic models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Final, Literal, NoReturn, final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_PAGE: Final = 2**48
"""Exclusive upper bound of an op's ``start``; also the largest ``count``."""
MAX_OPS: Final = 2**20
"""Most ops in one transaction (a bound on what one request can make the commit do)."""

SyncMode = Literal["auto", "always", "never"]
"""When a commit waits for a grace period: see `BitmapTransaction.sync`."""

_Start = Annotated[int, Field(strict=True, ge=0, lt=MAX_PAGE)]
_Count = Annotated[int, Field(strict=True, ge=1, le=MAX_PAGE)]
_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _encodable(label: str) -> str:
    """Refuses lone surrogates: JSON cannot carry them, so such a label could not be
    dumped (model_dump_json) or logged as UTF-8."""
    try:
        label.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"label must be valid Unicode text; it has a lone surrogate at {exc.start}"
        ) from None
    return label


_Label = Annotated[str, Field(strict=True), AfterValidator(_encodable)]


@final
class Grant(BaseModel):
    """Makes pages ``[start, start + count)`` accessible.

    Integers are strict: ``"8"``, ``8.0`` and ``True`` are refused, so a
    malformed request cannot be read as a different range than it says.
    """

    model_config: ClassVar[ConfigDict] = _FROZEN

    op: Literal["grant"] = "grant"
    start: _Start
    """First page, ``0 <= start < 2**48``."""
    count: _Count
    """Number of pages, ``1 <= count <= 2**48``."""


@final
class Revoke(BaseModel):
    """Makes pages ``[start, start + count)`` inaccessible.

    A commit that revokes a page that was accessible *restricts* access:
    with ``sync="auto"`` it waits for a grace period before it returns.
    """

    model_config: ClassVar[ConfigDict] = _FROZEN

    op: Literal["revoke"] = "revoke"
    start: _Start
    """First page, ``0 <= start < 2**48``."""
    count: _Count
    """Number of pages, ``1 <= count <= 2**48``."""


Op = Annotated[Grant | Revoke, Field(discriminator="op")]
"""One operation of a transaction, told apart by its ``op`` field."""


@final
class BitmapTransaction(BaseModel):
    """A batch of grant and revoke operations, committed as one.

    Build one from Python values, from a dict or from JSON
    (``BitmapTransaction.model_validate_json(body)``); commit it with
    `Bitmap.commit()` or `Bitmap.commit_blocking()`, or let
    `Bitmap.transaction()` build and commit it for you.

    Ops apply in order, so the last op that covers a page decides it.  An
    empty transaction is valid and changes nothing (its commit reports
    zeros and never waits, unless ``sync="always"``).  A transaction that
    is well formed but does not fit a bitmap (an op past
    its last page) is refused by the commit with `TransactionRejected`, and
    nothing is applied.

    Example:
        ```python
        tx = BitmapTransaction(
            ops=[{"op": "revoke", "start": 0, "count": 8}, {"op": "grant", "start": 2, "count": 1}],
            label="evict",
        )
        ```
    """

    model_config: ClassVar[ConfigDict] = _FROZEN

    ops: tuple[Op, ...] = Field(default=(), max_length=MAX_OPS)
    """The operations, applied in order (at most 2**20)."""
    sync: SyncMode = "auto"
    """``"auto"``: wait for a grace period when access was reduced (or when
    pages this transaction revokes were revoked by an earlier commit whose
    grace period is still running); ``"always"``: always
    wait; ``"never"``: never wait — the explicit opt-out, after which the
    caller must wait for a grace period itself before acting on a revocation."""
    label: _Label | None = None
    """Free text carried into the report and logs."""

    def __init__(
        self,
        *,
        ops: Sequence[Grant | Revoke | Mapping[str, Any]] = (),
        sync: SyncMode = "auto",
        label: str | None = None,
        **extra: NoReturn,
    ) -> None:
        # Spelled out so that type checkers accept plain mappings as ops, as
        # pydantic does (they are validated into Grant and Revoke models).
        # Any other keyword is a type error, and at run time pydantic's
        # ValidationError (extra="forbid").
        super().__init__(ops=ops, sync=sync, label=label, **extra)


@final
class CommitReport(BaseModel):
    """What a commit did: returned by the commit and left on ``tx.report``.

    Page counts are *net*: bits whose value differs between before and after
    the whole commit.  Revoking a page and granting it back in one
    transaction counts as nothing and restricts nothing; readers could never
    see the page revoked, because each word is stored once, with its final
    value.
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True)

    pages_granted: int = Field(ge=0)
    """Pages that went from inaccessible to accessible."""
    pages_revoked: int = Field(ge=0)
    """Pages that went from accessible to inaccessible."""
    restricted: bool
    """``pages_revoked > 0``: some page became inaccessible."""
    synchronized: bool
    """Whether the commit waited for a grace period before returning."""
    grace_period_seconds: float = Field(ge=0.0)
    """How long that wait took (0.0 when there was none)."""
    sync: SyncMode
    """The transaction's sync mode."""
    label: str | None
    """The transaction's label."""
