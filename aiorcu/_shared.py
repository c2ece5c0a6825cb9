"""SharedDomain: one RCU domain across worker processes.

The domain's state (phase, sequence numbers, waiting words, reader slots)
lives in a segment, a file in ``/dev/shm`` that every attached process maps.
Readers and writers use it exactly as a `Domain`; a grace period started in
any process waits for every section, in every attached process, that began
before it.  The C side (``csrc/shared.c``) explains the layout, the proof of
a process's death and the fork bridge; this module names the segment,
creates or opens it, and ties the domain's lifetime, ``close()`` and
``unlink()`` to it.
"""

from __future__ import annotations

import contextvars
import errno
import mmap
import os
import threading
import weakref
from types import TracebackType
from typing import final

from . import _lowlevel
from ._callbacks import AFTER_EXIT_DRAIN
from ._domain import ReadWriteDomain
from ._errors import AiorcuError, RcuUsageError
from ._grace import GraceRunner, stall_seconds
from ._hotpath import ReadSection
from ._records import BackendInfo, DomainStatistics

SEGMENT_DIR = "/dev/shm"
_PREFIX = "aiorcu-"
_NAME_BYTES = 100
_shared: weakref.WeakSet[SharedDomain] = weakref.WeakSet()


def segment_path(name: str) -> str:
    """The file that holds the segment of shared domain ``name``."""
    return os.path.join(SEGMENT_DIR, _PREFIX + name)


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a shared domain's name is a str, not {type(name).__name__}")
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(
            f"shared domain name {name!r} cannot name a file: it must be non-empty, "
            "without '/' or NUL"
        )
    if len(name.encode()) > _NAME_BYTES:
        raise ValueError(f"shared domain name {name!r} is longer than {_NAME_BYTES} bytes")
    return name


@final
class SharedDomain(ReadWriteDomain):
    """An RCU domain that several processes share.

    Create it once (``create=True``), then attach to it by name from every
    worker process: each process that creates or attaches takes part in one
    domain.  A grace period started in any of them waits for every read
    section, in every attached process, thread or task, that began before
    it.  Sections cost what they cost in a `Domain`: the reader's slot lives
    in the shared segment instead of process memory.

    Barriers: each attached process registers for
    ``MEMBARRIER_CMD_GLOBAL_EXPEDITED`` before its first section, and writers
    issue that barrier (never skipped).  Where the kernel lacks it, or the
    creating process runs with ``AIORCU_MEMBARRIER=off``, the domain uses
    fences in every process: the mode belongs to the domain and is recorded
    in the segment.

    A process that dies inside a section (SIGKILL included), or while it
    holds the writer lock, never wedges the domain: the kernel proves its
    death (a robust mutex its lifeline thread held comes back owner-dead),
    writers release its slots within 50 ms of noticing, and
    ``dead_readers_released`` counts it once.  A process that exits
    normally, or calls `close()`, releases its slots.

    Like `multiprocessing.shared_memory`: `close()` detaches this process,
    `unlink()` removes the name (attached processes keep working; a new
    attach fails), and the domain is a context manager that closes on exit.
    Processes attached to one domain trust each other: the threat model is
    crashes and bugs, not a hostile peer; still, nothing read from the
    segment can make a process read or write outside it.

    Args:
        name: The domain's name: a file name (no ``/`` or NUL, at most 100
            bytes), also shown in logs.
        create: Create the segment; `FileExistsError` if the name is taken.
            Otherwise attach; `FileNotFoundError` if there is none.
        max_threads: Reader slots of the whole domain (creator only): every
            thread of every attached process that reads takes one.
        mode: Permission bits of the segment (creator only), default
            ``0o600``: only this user may attach.
        stall_warning: As for `Domain`; this process's writers warn.

    Raises:
        FileExistsError: ``create=True`` and the name is taken.
        FileNotFoundError: Attaching, and no domain has this name.
        PermissionError: This user may not open the segment.
        ValueError: A bad name, ``max_threads`` or ``stall_warning``.
        AiorcuError: The segment is not an aiorcu domain, is corrupt or is
            of another version, or this process could not register for the
            domain's membarrier (the message has the errno).
    """

    def __init__(
        self,
        name: str,
        *,
        create: bool = False,
        max_threads: int = 1024,
        mode: int = 0o600,
        stall_warning: float | None = 1.0,
    ) -> None:
        name = _check_name(name)
        seconds = stall_seconds(stall_warning)
        if isinstance(max_threads, bool) or not isinstance(max_threads, int):
            raise TypeError(f"max_threads must be an int, not {type(max_threads).__name__}")
        if not 1 <= max_threads <= _lowlevel.MAX_SLOTS:
            raise ValueError(
                f"max_threads must be between 1 and {_lowlevel.MAX_SLOTS}, not {max_threads}"
            )
        self._path = segment_path(name)
        self._closed = False
        self._waits = 0  # waits in progress in this process (close() refuses)
        self._waits_lock = threading.Lock()
        memory = _create(self._path, name, max_threads, mode) if create else _open(self._path)
        self._var: contextvars.ContextVar[ReadSection | None] = contextvars.ContextVar(
            f"aiorcu-section-{name}", default=None
        )
        try:
            grace = GraceRunner(name, self._var, seconds, (memory, name))  # type: ignore[arg-type]
        except _lowlevel.SegmentError as exc:
            memory.close()
            raise AiorcuError(f"cannot attach shared domain {name!r}: {exc}") from None
        self._assemble(name, grace)
        self._threads.before_claim = self._join
        self._join()
        _shared.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "attached"
        return f"<aiorcu.SharedDomain {self.name!r} {state}>"

    # -- attaching ---------------------------------------------------------------
    def _join(self) -> None:
        """Takes part in the domain (once per process, before the first section)."""
        self._check_open()
        core = self._grace.core
        if core.joined():
            return
        try:
            core.join()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise AiorcuError(
                    f"cannot attach shared domain {self.name!r}: every process entry is taken "
                    "(one per reader slot); create it with a larger max_threads"
                ) from None
            raise AiorcuError(
                f"cannot attach shared domain {self.name!r}: registering for membarrier "
                f"GLOBAL_EXPEDITED failed: [Errno {exc.errno}] {exc.strerror}. The domain's "
                "creator chose membarrier; a process that cannot take its barrier cannot read"
            ) from None

    @property
    def path(self) -> str:
        """The segment's file."""
        return self._path

    def backend_info(self) -> BackendInfo:
        """Which barrier mechanism this domain's readers rely on, in every process."""
        if self._grace.core.mechanism() == _lowlevel.MECH_GLOBAL:
            return BackendInfo(
                membarrier=True, mechanism="membarrier-global-expedited", reason=None
            )
        return BackendInfo(
            membarrier=False,
            mechanism="fence",
            reason="the domain's creator chose fences (its AIORCU_MEMBARRIER=off, or a kernel "
            "without MEMBARRIER_CMD_GLOBAL_EXPEDITED)",
        )

    def close(self) -> None:
        """Detaches this process: releases its slots and process entry.

        Other processes keep using the domain.  Anything but `close()` on a
        closed domain raises `RcuUsageError`.

        Raises:
            RcuUsageError: This process has a section open, a grace-period
                wait in progress, or callbacks not yet run (use
                `barrier_blocking()` first).
        """
        if self._closed:
            return
        mine = self._my_open_sections()
        with self._waits_lock:
            waits = self._waits + self._worker.pending
        if mine or waits or self._callbacks.pending:
            raise RcuUsageError(
                f"SharedDomain {self.name!r}.close() called while this process has "
                f"{mine} read section(s) open, {waits} grace-period wait(s) in progress and "
                f"{self._callbacks.pending} callback(s) pending; leave the sections, let the "
                "waits end and run barrier_blocking() first"
            )
        self._closed = True
        self._grace.core.leave()
        self._unbind()

    def unlink(self) -> None:
        """Removes the domain's name: a new attach fails, attached processes keep working.

        Raises:
            FileNotFoundError: The name was removed already.
        """
        os.unlink(self._path)

    def __enter__(self) -> SharedDomain:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether this process detached with `close()`."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RcuUsageError(
                f"SharedDomain {self.name!r} was closed in this process; attach again with "
                f"aiorcu.SharedDomain({self.name!r})"
            )

    def _my_open_sections(self) -> int:
        """Sections open in this process's slots."""
        return sum(sum(self._grace.core.slot_counts(i.slot)[1]) for i in self._threads.owners())

    # -- what the shared variant adds to the common API ---------------------------
    def _thread_slot(self, create: bool) -> int | None:
        self._check_open()
        return super()._thread_slot(create)

    def _waiting(self, delta: int) -> None:
        with self._waits_lock:
            self._waits += delta

    # Every use after close() is refused, the cheap ones too.
    def snapshot(self) -> int:
        """As `Domain.snapshot()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        return super().snapshot()

    def start_grace_period(self) -> int:
        """As `Domain.start_grace_period()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        return super().start_grace_period()

    def poll(self, token: int) -> bool:
        """As `Domain.poll()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        return super().poll(token)

    def check_blocking_wait(self, what: str) -> None:
        """As `Domain.check_blocking_wait()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        super().check_blocking_wait(what)

    def check_async_wait(self, what: str) -> None:
        """As `Domain.check_async_wait()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        super().check_async_wait(what)

    def barrier_blocking(self) -> None:
        """As `Domain.barrier_blocking()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        super().barrier_blocking()

    async def barrier(self) -> None:
        """As `Domain.barrier()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        await super().barrier()

    def synchronize_blocking(self, timeout: float | None = None) -> None:
        """As `Domain.synchronize_blocking()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        self._waiting(1)
        try:
            super().synchronize_blocking(timeout)
        finally:
            self._waiting(-1)

    async def synchronize(self) -> None:
        """As `Domain.synchronize()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        self._waiting(1)
        try:
            await super().synchronize()
        finally:
            self._waiting(-1)

    def wait_blocking(self, token: int, timeout: float | None = None) -> None:
        """As `Domain.wait_blocking()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        self._waiting(1)
        try:
            super().wait_blocking(token, timeout)
        finally:
            self._waiting(-1)

    async def wait(self, token: int) -> None:
        """As `Domain.wait()`, across every attached process.

        Raises `RcuUsageError` after `close()`.
        """
        self._check_open()
        self._waiting(1)
        try:
            await super().wait(token)
        finally:
            self._waiting(-1)

    def stats(self) -> DomainStatistics:
        """A snapshot of the domain's counters.

        Whole domain (every attached process): ``grace_periods``,
        ``membarrier_calls``, ``threads_registered``, ``readers_active``,
        ``dead_readers_released``, ``processes_attached`` and the writer
        figures.  This process: ``offloaded_waits``, ``stall_warnings``,
        ``callbacks_pending``.

        Processes that died since the last grace period are released first
        (with proof of death, as a waiting writer does), so the whole-domain
        figures are current.
        """
        self._check_open()
        self._grace.core.reap()
        return super().stats()

    # -- fork ---------------------------------------------------------------------
    def _before_fork(self) -> None:
        """Parent, before fork: a bridge slot counts the sections the child keeps."""
        self._fork_bridge = None
        if self._closed or not self._grace.core.joined():
            return
        counts, line, task_gen, epoch = self._fork_counts()
        if any(counts) and self._grace.core.fork_prepare(counts) >= 0:
            self._fork_bridge = (line, task_gen, epoch)

    def _after_fork_child(self) -> None:
        # The C fork handler forgot the parent's entry; the registry forgets
        # the parent's slots.  With sections to keep, join now and adopt the
        # bridge; otherwise join lazily, at the first section.
        self._threads.after_fork()
        self._worker.after_fork()
        self._callbacks.after_fork()
        bridge = getattr(self, "_fork_bridge", None)
        self._fork_bridge = None
        if self._closed or bridge is None:
            return
        self._join()
        slot = self._grace.core.adopt(threading.get_native_id())
        if slot < 0:
            return
        self._threads.adopt(slot)
        self._adopted(self._grace.core.slot_line(slot), *bridge)


def _create(path: str, name: str, max_threads: int, mode: int) -> mmap.mmap:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits like 0o600, not {mode!r}")
    size = _lowlevel.shared_size(max_threads)
    fence = not (_lowlevel.MEMBARRIER and _lowlevel.global_membarrier_available())
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask does not narrow what the caller asked for
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    try:
        _lowlevel.format_shared(memory, name, max_threads, fence)
    except BaseException:
        memory.close()
        os.unlink(path)
        raise
    return memory


def _open(path: str) -> mmap.mmap:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            exc.errno,
            f"there is no shared domain {os.path.basename(path)[len('aiorcu-') :]!r} "
            f"({path} does not exist): create it first with create=True",
            path,
        ) from None
    except PermissionError as exc:
        raise PermissionError(
            exc.errno,
            f"this user may not open shared domain segment {path} (its mode is "
            f"{oct(os.stat(path).st_mode & 0o777)}): ask its creator for a wider mode",
            path,
        ) from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise AiorcuError(f"shared domain segment {path} is empty: not an aiorcu domain")
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _before_fork() -> None:
    for domain in list(_shared):
        domain._before_fork()


def _leave_at_exit() -> None:
    """A process that exits normally releases its slots, close() or not."""
    for domain in list(_shared):
        if not domain._closed:
            domain._closed = True
            domain._grace.core.leave()
            domain._unbind()


AFTER_EXIT_DRAIN.append(_leave_at_exit)


os.register_at_fork(before=_before_fork)
