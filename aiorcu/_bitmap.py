"""Page-visibility bitmaps whose commits flush readers before they return."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, final

import anyio
import anyio.lowlevel

from . import _buffers, _hotpath, _lowlevel
from ._cancel import CommitLock, wait_holding_cancellation
from ._domain import ReadWriteDomain
from ._errors import RcuUsageError, TransactionRejected
from ._lowlevel import CoreBuffer
from ._transaction import BitmapTransaction, CommitReport, Grant, Revoke, SyncMode

if TYPE_CHECKING:
    if sys.version_info >= (3, 12):
        from collections.abc import Buffer
    else:
        from typing_extensions import Buffer

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
    section.  Commits are serialized with each other, across processes
    too when the bitmap lives in a shared buffer; readers never wait for
    them.

    Memory: 8 bytes per 64 pages (2**26 pages, 256 GiB of 4 KiB pages, take
    8 MiB) after a 256-byte header, in an anonymous mapping of its own, or
    in the caller's ``buffer`` (see `buffer_size()` and `attach()`): an
    mmap'd file, a device region, or ``SharedMemory.buf`` for a bitmap that
    worker processes share under a `SharedDomain`.

    Args:
        pages: Number of pages, 1 to 2**48.
        domain: The domain whose read sections protect the bitmap; the
            global one by default.  A `SharedDomain` needs ``buffer``.
        initial: Whether every page starts accessible.
        buffer: Memory to format and keep the bitmap in: any writable,
            C-contiguous buffer of at least ``buffer_size(pages)`` bytes,
            starting at a 64-byte aligned address.  It is overwritten.

    Raises:
        TypeError: ``pages`` is not an int, or ``buffer`` is not a writable
            buffer.
        ValueError: ``pages`` is out of range, or ``buffer`` is too small or
            misaligned.
        RcuUsageError: ``domain`` is a `SharedDomain` and no ``buffer`` was
            given (other processes could not see the bitmap).
    """

    __slots__ = ("__weakref__", "_core", "_domain", "_flush", "_lock", "_pages")

    def __init__(
        self,
        pages: int,
        domain: ReadWriteDomain | None = None,
        initial: bool = False,
        buffer: Buffer | None = None,
    ) -> None:
        chosen = _buffers.domain_for("Bitmap", domain)
        chosen._check_open()
        core = _buffers.create("Bitmap", pages, 0, chosen, buffer)
        if initial:
            core.apply([(0, pages, True)])  # nobody can read it yet
        self._setup(core, chosen, attached=False)

    @staticmethod
    def buffer_size(pages: int) -> int:
        """Bytes a caller's buffer needs for a bitmap of ``pages`` pages.

        Raises:
            TypeError: ``pages`` is not an int.
            ValueError: ``pages`` is out of range.
        """
        return _buffers.size_of("Bitmap", pages, 0)

    @classmethod
    def attach(cls, buffer: Buffer, domain: ReadWriteDomain | None = None) -> Bitmap:
        """The bitmap a `Bitmap` (here or in another process) made in ``buffer``.

        Reads the header once, checks it (magic number, layout version,
        sizes against the buffer's real length, the recorded domain) and
        never trusts it again.  The bits are used as they are.

        Args:
            buffer: The buffer another `Bitmap` was made in.
            domain: The domain it was made under: the `SharedDomain` of the
                recorded name, or for a bitmap made under a process-private
                domain, any `Domain` (the global one by default).

        Raises:
            AiorcuError: The buffer is not a bitmap, is corrupt, of another
                layout version, or smaller than its header says.
            RcuUsageError: ``domain`` is not the domain the buffer records.
            ValueError: ``buffer`` does not start at a 64-byte aligned address.
            TypeError: ``buffer`` is not a writable buffer.
        """
        core = _buffers.attach("Bitmap", buffer, domain)
        self = cls.__new__(cls)
        self._setup(core, _buffers.domain_for("Bitmap", domain), attached=True)
        return self

    @classmethod
    def _over(cls, core: CoreBuffer, domain: ReadWriteDomain, attached: bool) -> Bitmap:
        """The bitmap of a guarded memory's buffer."""
        self = cls.__new__(cls)
        self._setup(core, domain, attached)
        return self

    def _setup(self, core: CoreBuffer, domain: ReadWriteDomain, attached: bool) -> None:
        self._domain = domain
        self._pages = core.pages
        self._core: CoreBuffer | None = core
        self._bind_words(domain, core, core.words_address, core.pages)
        self._lock = CommitLock()  # commits of this process, in order, cancel-safe
        self._flush = _buffers.FlushState(core, domain, attached)

    def __repr__(self) -> str:
        state = " closed" if self._core is None else ""
        return f"<aiorcu.Bitmap pages={self._pages} domain={self._domain.name!r}{state}>"

    @property
    def domain(self) -> ReadWriteDomain:
        """The domain whose read sections protect the bitmap."""
        return self._domain

    @property
    def pages(self) -> int:
        """Number of pages."""
        return self._pages

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._core is None

    def close(self) -> None:
        """Releases the bitmap's memory; the caller may then close its buffer.

        Later reads and commits raise `RcuUsageError`; closing again does
        nothing.  The bits stay in the buffer for another `attach()`.

        Raises:
            RcuUsageError: A commit of this bitmap is in progress in this
                process (close after it returns).
        """
        core = self._core
        if core is None:
            return
        if not self._lock.try_acquire():
            raise RcuUsageError(
                "Bitmap.close() called while a commit of this bitmap is applying; "
                "close it after the commit returns"
            )
        try:
            self._unbind_words()
            self._core = None
            core.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Bitmap:
        self._open_core()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_core(self) -> CoreBuffer:
        if self._core is None:
            raise RcuUsageError("this bitmap was closed: its buffer was released")
        return self._core

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
            core = self._open_core()
            self._domain._check_open()
            self._after_lock(core.lock(try_only=False))
            try:
                granted, revoked, token = self._apply_locked(core, ops, tx.sync)
            finally:
                core.unlock()
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
        try:
            core = self._open_core()
            self._domain._check_open()
            # Another process may hold the buffer's lock for the moment of
            # an apply: poll it, so a cancellation here stays prompt and
            # applies nothing.
            state, delay = core.lock(try_only=True), 0.0002
            while state == _lowlevel.LOCK_BUSY:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.005)
                state = core.lock(try_only=True)
            # No await from here to the unlock: a cancellation cannot come
            # between the lock and the apply.
            self._after_lock(state)
            try:
                granted, revoked, token = self._apply_locked(core, ops, tx.sync)
            finally:
                core.unlock()
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
        ops: _CoreOps = [(op.start, op.count, op.op == "grant") for op in tx.ops]
        # One pass over plain tuples (a 64-op commit spent half its time in a
        # call per op); the op that does not fit is found only to report it.
        pages = self._pages
        if any(start + count > pages for start, count, _ in ops):
            for index, op in enumerate(tx.ops):
                self._check_op(index, op)
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

    def _after_lock(self, state: str) -> None:
        if state == _lowlevel.LOCK_RECOVERED:
            self._flush.recovered(repr(self))

    def _apply_locked(
        self, core: CoreBuffer, ops: _CoreOps, sync: SyncMode
    ) -> tuple[int, int, int | None]:
        """Applies ops (lock held); returns counts and the token to wait for, if any.

        ``"auto"`` waits when this commit revoked a page.  It also waits when
        it asked for pages to be revoked that an earlier commit revoked
        already and whose grace period has not completed (a concurrent
        commit, or one with ``sync="never"``): its caller will act on those
        pages too, so it must not return before they are flushed.  The
        bitmap keeps one token for the latest restriction, which flushes all
        earlier ones, so that test is "some op here leaves a page revoked
        and the latest restriction is not flushed yet".  The token lives with
        the buffer (`_buffers.FlushState`), so for a shared bitmap "earlier"
        includes other processes' commits.
        """
        granted, revoked, left_revoked = core.apply(ops)
        if revoked:
            # Taken after the stores: its grace period orders them before
            # every reader it waits for (snapshot() fences; M1 pairs with
            # the readers' count increments, F1).
            self._flush.set(self._domain.snapshot())
        if sync == "always":
            return granted, revoked, self._domain.snapshot()
        token = self._flush.token()
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
