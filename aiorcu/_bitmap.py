"""Page-visibility bitmaps whose commits flush readers before they return."""

from __future__ import annotations

import operator
import threading
import time
from _thread import get_ident
from types import TracebackType
from typing import Final, final

import anyio
import anyio.lowlevel
import anyio.to_thread

from . import _lowlevel
from ._domain import Domain, global_domain
from ._errors import RcuUsageError, TransactionRejected
from ._transaction import MAX_PAGE, BitmapTransaction, CommitReport, Grant, Revoke, SyncMode

# Ranges up to this many pages are checked in Python on a snapshot of their
# bytes (no GIL hand-off); longer ones by a C loop over whole words.
_PY_RANGE_LIMIT: Final = 4096

_CoreOps = list[tuple[int, int, bool]]


@final
class Bitmap:
    """One bit per page: set while the page is accessible.

    Readers check pages inside a read section of the bitmap's domain with
    `is_set()`, `check_range()` and `first_clear()`; each refuses to run
    outside one, so an unprotected check cannot happen by accident.  A
    check costs an "am I inside?" test and a load from the bitmap's memory:
    no lock, no system call.

    Writers change the bitmap only through transactions: `commit()`,
    `commit_blocking()` or the `transaction()` block.  A commit validates
    every op first (nothing is applied when one does not fit), computes the
    final value of every word it touches, and stores each changed word once,
    so a reader sees each page as it was before the commit or as it is
    after it.  When some page went from accessible to not, the commit waits
    for a grace period before it returns (``sync="auto"``): once it returns,
    no reader that could have seen the page accessible is still inside its
    section.  Commits are serialized with each other; readers never wait
    for them.

    The bits live in C memory, 8 bytes per 64 pages: 2**26 pages (256 GiB
    of 4 KiB pages) take 8 MiB.

    Args:
        pages: Number of pages, at least 1.
        domain: The domain whose read sections protect the bitmap; the
            global one by default.
        initial: Whether every page starts accessible.

    Raises:
        TypeError: ``pages`` is not an int.
        ValueError: ``pages`` is out of range.
    """

    __slots__ = (
        "__weakref__",
        "_by_ident",
        "_core",
        "_domain",
        "_flush_token",
        "_lock",
        "_octets",
        "_pages",
        "_var",
    )

    def __init__(self, pages: int, domain: Domain | None = None, initial: bool = False) -> None:
        if isinstance(pages, bool) or not isinstance(pages, int):
            raise TypeError(f"Bitmap pages must be an int, not {type(pages).__name__}")
        if not 1 <= pages <= MAX_PAGE:
            raise ValueError(f"Bitmap pages must be between 1 and 2**48, not {pages}")
        self._domain = domain if domain is not None else global_domain()
        self._pages = pages
        self._core = _lowlevel.CoreBitmap(pages, bool(initial))
        self._octets = self._core.octets
        self._lock = threading.Lock()
        # The token whose grace period flushes every restriction applied so
        # far; None until the first one.  Written under _lock.
        self._flush_token: int | None = None
        # Cached for the read path, as RcuCell does.
        self._by_ident = self._domain._by_ident
        self._var = self._domain._var

    def __repr__(self) -> str:
        return f"<aiorcu.Bitmap pages={self._pages} domain={self._domain.name!r}>"

    @property
    def domain(self) -> Domain:
        """The domain whose read sections protect the bitmap."""
        return self._domain

    @property
    def pages(self) -> int:
        """Number of pages."""
        return self._pages

    # -- readers ----------------------------------------------------------------
    def _refuse_outside(self, what: str) -> None:
        """The slow half of the "inside a read section?" test; raises when outside."""
        if not self._domain._task_inside():
            self._domain._require_inside(what)

    def is_set(self, page: int) -> bool:
        """Whether ``page`` is accessible; only inside a read section of the domain.

        The answer holds until the section ends: a commit that revokes the
        page waits for this section before it returns.

        Args:
            page: ``0 <= page < pages``.

        Raises:
            RcuUsageError: The caller is outside any read section of the
                bitmap's domain (this thread's ``with`` or this task's
                ``async with``).
            IndexError: ``page`` is outside the bitmap.
        """
        reader = self._by_ident.get(get_ident())
        if reader is None or not reader.depth:
            self._refuse_outside("Bitmap.is_set()")
        if not 0 <= page < self._pages:
            raise IndexError(
                f"Bitmap.is_set({page}) is outside the bitmap's {self._pages} pages "
                f"(0..{self._pages - 1})"
            )
        return (self._octets[page >> 3] >> (page & 7)) & 1 == 1

    def check_range(self, start: int, count: int) -> bool:
        """Whether every page in ``[start, start + count)`` is accessible.

        Only inside a read section of the domain; ``count=0`` gives True.

        Raises:
            RcuUsageError: The caller is outside any read section of the domain.
            IndexError: The range is not inside the bitmap.
        """
        reader = self._by_ident.get(get_ident())
        if reader is None or not reader.depth:
            self._refuse_outside("Bitmap.check_range()")
        if count == 1 and 0 <= start < self._pages:
            return (self._octets[start >> 3] >> (start & 7)) & 1 == 1
        return self._first_clear(start, count, "check_range") < 0

    def first_clear(self, start: int, count: int) -> int | None:
        """The first inaccessible page in ``[start, start + count)``, or None.

        Only inside a read section of the domain.

        Raises:
            RcuUsageError: The caller is outside any read section of the domain.
            IndexError: The range is not inside the bitmap.
        """
        reader = self._by_ident.get(get_ident())
        if reader is None or not reader.depth:
            self._refuse_outside("Bitmap.first_clear()")
        page = self._first_clear(start, count, "first_clear")
        return None if page < 0 else page

    def _first_clear(self, start: int, count: int, what: str) -> int:
        """First clear page of a range, or -1; the caller made sure it is inside."""
        if count == 1 and 0 <= start < self._pages:
            return -1 if (self._octets[start >> 3] >> (start & 7)) & 1 else start
        start, count = operator.index(start), operator.index(count)
        if start < 0 or count < 0 or start + count > self._pages:
            raise IndexError(
                f"Bitmap.{what}({start}, {count}) is outside the bitmap's {self._pages} pages "
                f"(0..{self._pages - 1})"
            )
        if count == 0:
            return -1
        if count > _PY_RANGE_LIMIT:
            return self._core.first_clear(start, count)
        # The bytes of the range as one int: bit i is page (start & ~7) + i.
        # Each byte is loaded whole, so each page reads as before or after a
        # concurrent commit, never anything else.
        bits = int.from_bytes(self._octets[start >> 3 : (start + count + 7) >> 3], "little")
        clear = ~(bits >> (start & 7)) & ((1 << count) - 1)
        if not clear:
            return -1
        return start + (clear & -clear).bit_length() - 1

    # -- writers ----------------------------------------------------------------
    def transaction(
        self, sync: SyncMode = "auto", label: str | None = None
    ) -> BitmapTransactionBuilder:
        """A block that collects grants and revokes and commits them on exit.

        ``with bitmap.transaction() as tx:`` commits with `commit_blocking()`;
        ``async with`` awaits `commit()`.  Ops are checked against the bitmap
        as they are added.  When the block raises (or is cancelled), nothing
        is applied.  The report is left on ``tx.report``.

        Args:
            sync: As `BitmapTransaction.sync`.
            label: As `BitmapTransaction.label`.

        Raises:
            pydantic.ValidationError: ``sync`` or ``label`` is malformed.
        """
        return BitmapTransactionBuilder(self, sync, label)

    def commit_blocking(self, tx: BitmapTransaction) -> CommitReport:
        """Applies a transaction and, when needed, waits for a grace period.

        With ``sync="auto"`` the wait happens when this commit made some
        page inaccessible, or when it revokes pages that an earlier commit
        (a concurrent one, or one with ``sync="never"``) made inaccessible
        and whose grace period has not completed yet: either way, once this
        returns, no reader that could have seen a page this transaction
        revokes as accessible is still inside its section.  A commit that
        only grants never waits.  ``"always"`` waits anyway; ``"never"``
        never waits (the report says ``synchronized=False``).

        Args:
            tx: The transaction.

        Returns:
            The commit's report.

        Raises:
            TransactionRejected: An op does not fit the bitmap; nothing applied.
            RcuUsageError: ``sync`` is not ``"never"`` and the caller is inside
                a read section on this thread (the wait would wait for
                itself) or is an RCU callback; nothing applied.
        """
        ops = self._prepare(tx)
        if tx.sync != "never":
            self._domain._check_blocking_allowed("Bitmap.commit_blocking()")
        granted, revoked, token = self._apply_blocking(ops, tx.sync)
        waited = 0.0
        if token is not None:
            started = time.perf_counter()
            self._domain.wait_blocking(token)
            waited = time.perf_counter() - started
        return self._report(tx, granted, revoked, token is not None, waited)

    async def commit(self, tx: BitmapTransaction) -> CommitReport:
        """Applies a transaction and, when needed, awaits a grace period.

        As `commit_blocking()`, without blocking the event loop: the
        grace-period wait is shared and offloaded like ``await``
        `Domain.synchronize()`.

        Cancellation: a commit cancelled before it applies changes nothing.
        Once applied, its grace-period wait is shielded and the cancellation
        is delivered when the wait is over, so no caller goes on while a
        reader may still use a revoked page.

        Args:
            tx: The transaction.

        Returns:
            The commit's report.

        Raises:
            TransactionRejected: An op does not fit the bitmap; nothing applied.
            RcuUsageError: ``sync`` is not ``"never"`` and the calling task is
                inside a read section of the domain; nothing applied.
        """
        ops = self._prepare(tx)
        if tx.sync != "never":
            self._domain._check_async_allowed("Bitmap.commit()")
        await anyio.lowlevel.checkpoint_if_cancelled()
        with anyio.CancelScope(shield=True):
            if self._lock.acquire(blocking=False):
                try:
                    granted, revoked, token = self._apply_locked(ops, tx.sync)
                finally:
                    self._lock.release()
            else:  # another commit holds the lock: wait for it off the loop
                granted, revoked, token = await anyio.to_thread.run_sync(
                    self._apply_blocking, ops, tx.sync
                )
            waited = 0.0
            if token is not None:
                started = time.perf_counter()
                await self._domain.wait(token)
                waited = time.perf_counter() - started
        await anyio.lowlevel.checkpoint_if_cancelled()
        return self._report(tx, granted, revoked, token is not None, waited)

    def _prepare(self, tx: BitmapTransaction) -> _CoreOps:
        if not isinstance(tx, BitmapTransaction):
            raise TypeError(
                f"commit() takes a BitmapTransaction, not {type(tx).__name__}; build one "
                "with BitmapTransaction(ops=[...]) or BitmapTransaction.model_validate(...)"
            )
        ops: _CoreOps = []
        for index, op in enumerate(tx.ops):
            self._check_op(index, op)
            ops.append((op.start, op.count, op.op == "grant"))
        return ops

    def _check_op(self, index: int, op: Grant | Revoke) -> None:
        if op.start + op.count > self._pages:
            raise TransactionRejected(
                f"op {index} ({op.op} start={op.start} count={op.count}) reaches page "
                f"{op.start + op.count - 1}, but the bitmap has {self._pages} pages "
                f"(0..{self._pages - 1}); nothing was applied",
                index=index,
                op=op,
            )

    def _apply_blocking(self, ops: _CoreOps, sync: SyncMode) -> tuple[int, int, int | None]:
        with self._lock:
            return self._apply_locked(ops, sync)

    def _apply_locked(self, ops: _CoreOps, sync: SyncMode) -> tuple[int, int, int | None]:
        """Applies ops (lock held); returns counts and the token to wait for, if any.

        ``"auto"`` waits when this commit revoked a page.  It also waits when
        it asked for pages to be revoked that an earlier commit revoked
        already and whose grace period has not completed (a concurrent
        commit, or one with ``sync="never"``): its caller will act on those
        pages too, so it must not return before they are flushed.  The
        bitmap keeps one token for the latest restriction, which flushes all
        earlier ones, so that test is "some op here leaves a page revoked
        and the latest restriction is not flushed yet".
        """
        granted, revoked, left_revoked = self._core.apply(ops)
        if revoked:
            # Taken after the stores: its grace period orders them before
            # every reader it waits for (snapshot() fences; M1 pairs with
            # the readers' flag stores).
            self._flush_token = self._domain.snapshot()
        if sync == "always":
            return granted, revoked, self._domain.snapshot()
        token = self._flush_token
        if sync == "auto" and left_revoked and token is not None and not self._domain.poll(token):
            return granted, revoked, token
        return granted, revoked, None

    @staticmethod
    def _report(
        tx: BitmapTransaction, granted: int, revoked: int, synchronized: bool, waited: float
    ) -> CommitReport:
        return CommitReport(
            pages_granted=granted,
            pages_revoked=revoked,
            restricted=revoked > 0,
            synchronized=synchronized,
            grace_period_seconds=waited,
            sync=tx.sync,
            label=tx.label,
        )


@final
class BitmapTransactionBuilder:
    """The ``tx`` of ``with bitmap.transaction() as tx:``; collects ops.

    Single use: after its block ends, `grant()` and `revoke()` refuse.
    """

    __slots__ = ("_bitmap", "_done", "_label", "_ops", "_sync", "report")

    def __init__(self, bitmap: Bitmap, sync: SyncMode, label: str | None) -> None:
        BitmapTransaction(sync=sync, label=label)  # malformed sync/label fail here
        self._bitmap = bitmap
        self._sync: SyncMode = sync
        self._label = label
        self._ops: list[Grant | Revoke] = []
        self._done = False
        self.report: CommitReport | None = None
        """The commit's report once the block ended normally; None before."""

    @property
    def ops(self) -> tuple[Grant | Revoke, ...]:
        """The ops collected so far."""
        return tuple(self._ops)

    def grant(self, start: int, count: int) -> None:
        """Adds a grant of ``[start, start + count)``.

        Raises:
            pydantic.ValidationError: ``start``/``count`` are not valid ints.
            TransactionRejected: The range does not fit the bitmap; the
                block should end with this error and apply nothing.
            RcuUsageError: The transaction was already committed or dropped.
        """
        self._add(Grant(start=start, count=count))

    def revoke(self, start: int, count: int) -> None:
        """Adds a revoke of ``[start, start + count)``; raises as `grant()`."""
        self._add(Revoke(start=start, count=count))

    def _add(self, op: Grant | Revoke) -> None:
        if self._done:
            raise RcuUsageError(
                "this bitmap transaction has ended (committed or abandoned); "
                "start a new one with bitmap.transaction()"
            )
        self._bitmap._check_op(len(self._ops), op)
        self._ops.append(op)

    def build(self) -> BitmapTransaction:
        """The transaction collected so far, as a `BitmapTransaction`."""
        return BitmapTransaction(ops=tuple(self._ops), sync=self._sync, label=self._label)

    def _begin(self) -> BitmapTransactionBuilder:
        if self._done:
            raise RcuUsageError("a bitmap transaction block can be entered only once")
        return self

    def __enter__(self) -> BitmapTransactionBuilder:
        return self._begin()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done = True
        if exc_type is None:
            self.report = self._bitmap.commit_blocking(self.build())

    async def __aenter__(self) -> BitmapTransactionBuilder:
        return self._begin()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done = True
        if exc_type is None:
            self.report = await self._bitmap.commit(self.build())
