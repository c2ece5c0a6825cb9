"""Page-visibility bitmaps whose commits flush readers before they return."""

from __future__ import annotations

import time
from types import TracebackType
from typing import final

import anyio.lowlevel

from . import _hotpath, _lowlevel
from ._cancel import CommitLock, wait_holding_cancellation
from ._domain import Domain, global_domain
from ._errors import RcuUsageError, TransactionRejected
from ._transaction import MAX_PAGE, BitmapTransaction, CommitReport, Grant, Revoke, SyncMode

_CoreOps = list[tuple[int, int, bool]]


@final
class Bitmap(_hotpath.BitmapBase):
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

    __slots__ = ("__weakref__", "_core", "_domain", "_flush_token", "_lock", "_pages")

    def __init__(self, pages: int, domain: Domain | None = None, initial: bool = False) -> None:
        if isinstance(pages, bool) or not isinstance(pages, int):
            raise TypeError(f"Bitmap pages must be an int, not {type(pages).__name__}")
        if not 1 <= pages <= MAX_PAGE:
            raise ValueError(f"Bitmap pages must be between 1 and 2**48, not {pages}")
        self._domain = domain if domain is not None else global_domain()
        self._pages = pages
        self._core = _lowlevel.CoreBitmap(pages, bool(initial))
        self._bind_words(self._domain, self._core, self._core.address, pages)
        self._lock = CommitLock()
        # The token whose grace period flushes every restriction applied so
        # far; None until the first one.  Written under _lock.
        self._flush_token: int | None = None

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
    # is_set(page), check_range(start, count) and first_clear(start, count)
    # are C methods (_hotpath.BitmapBase, documented in _hotpath.pyi): each
    # refuses to run outside a read section of the domain, then loads the
    # words without a lock.

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
            self._domain.check_blocking_wait("Bitmap.commit_blocking()")
        self._lock.acquire_blocking()
        try:
            granted, revoked, token = self._apply_locked(ops, tx.sync)
        finally:
            self._lock.release()
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

        Cancellation: a commit called in a cancelled scope (trio, anyio),
        or cancelled while it waits for another commit of this bitmap to
        finish, withdraws at once: nothing is applied, then or later.
        (asyncio's ``Task.cancel()`` takes effect at the first suspension,
        which is that lock wait when there is one.)  Once applied, its grace-period wait runs
        to the end whatever cancels it (trio's and anyio's cancel scopes,
        and asyncio's own ``Task.cancel()``, ``wait_for``,
        ``asyncio.timeout`` and ``TaskGroup`` alike); the cancellation is
        then delivered, the same exception object, so no caller goes on
        while a reader may still use a revoked page.

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
            self._domain.check_async_wait("Bitmap.commit()")
        await anyio.lowlevel.checkpoint_if_cancelled()
        await self._lock.acquire()
        # No await from here to the release: a cancellation cannot come
        # between the lock and the apply.
        try:
            granted, revoked, token = self._apply_locked(ops, tx.sync)
        finally:
            self._lock.release()
        waited = 0.0
        if token is not None:
            started = time.perf_counter()
            await wait_holding_cancellation(lambda: self._domain.wait(token))
            waited = time.perf_counter() - started
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
            # the readers' count increments, F1).
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

    __slots__ = ("_bitmap", "_done", "_label", "_ops", "_report", "_sync")

    def __init__(self, bitmap: Bitmap, sync: SyncMode, label: str | None) -> None:
        BitmapTransaction(sync=sync, label=label)  # malformed sync/label fail here
        self._bitmap = bitmap
        self._sync: SyncMode = sync
        self._label = label
        self._ops: list[Grant | Revoke] = []
        self._done = False
        self._report: CommitReport | None = None

    @property
    def report(self) -> CommitReport:
        """The commit's report, once the block has ended and committed.

        Raises:
            RcuUsageError: The block has not ended yet, or it raised (or was
                cancelled before applying), so nothing was committed.
        """
        if self._report is None:
            raise RcuUsageError(
                "this transaction has no report: "
                + (
                    "its block ended without committing (it raised or was cancelled)"
                    if self._done
                    else "read tx.report after the `with bitmap.transaction() as tx:` block"
                )
            )
        return self._report

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
            self._report = self._bitmap.commit_blocking(self.build())

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
            self._report = await self._bitmap.commit(self.build())
