"""The only module that touches the compiled cffi ``ffi``/``lib``.

Everything above it sees plain Python types: ints, addresses as ints for
the hot-path extension, and the small `CoreDomain` and `CoreBitmap`
wrappers.  The barrier backend is chosen once, here, at import:
membarrier(2) PRIVATE_EXPEDITED when the kernel has it, plain fences when it
does not or when ``AIORCU_MEMBARRIER=off``.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any, Final

from ._aiorcu_cffi import ffi, lib
from ._errors import AiorcuError

logger = logging.getLogger("aiorcu")

KIND_THREAD: Final[int] = lib.AIORCU_KIND_THREAD
KIND_TASK: Final[int] = lib.AIORCU_KIND_TASK
NOT_OWNER: Final[int] = lib.AIORCU_NOT_OWNER

OK: Final[int] = lib.AIORCU_OK
TIMEDOUT: Final[int] = lib.AIORCU_TIMEDOUT
BUSY: Final[int] = lib.AIORCU_BUSY
EBARRIER: Final[int] = lib.AIORCU_EBARRIER

SYNC_TRY: Final[int] = lib.AIORCU_SYNC_TRY
SYNC_BUSTED: Final[int] = lib.AIORCU_SYNC_BUSTED

STAGE_STRAGGLERS: Final[int] = lib.AIORCU_STAGE_STRAGGLERS
STAGE_CLOSED: Final[int] = lib.AIORCU_STAGE_CLOSED

WAIT_MODES: Final[dict[str, int]] = {"futex": lib.AIORCU_WAIT_FUTEX, "poll": lib.AIORCU_WAIT_POLL}

_FENCE_VALUES = {"0", "off", "no", "false", "fence"}
_MEMBARRIER_VALUES = {"", "1", "on", "yes", "true", "auto", "membarrier"}


def _init_backend() -> tuple[bool, str | None]:
    raw = os.environ.get("AIORCU_MEMBARRIER", "")
    setting = raw.strip().lower()
    if setting not in _FENCE_VALUES | _MEMBARRIER_VALUES:
        raise ValueError(
            f"AIORCU_MEMBARRIER={raw!r} is not understood: set it to 'off' to make readers use "
            "fences instead of membarrier(2), or leave it unset (or 'on') to use membarrier "
            "where the kernel has it"
        )
    mechanism = lib.aiorcu_backend_init(1 if setting in _FENCE_VALUES else 0)
    reason = lib.aiorcu_backend_reason()
    return (
        mechanism == lib.AIORCU_MECH_MEMBARRIER,
        None if reason == ffi.NULL else ffi.string(reason).decode(),
    )


MEMBARRIER, FALLBACK_REASON = _init_backend()
"""Whether readers rely on membarrier (no fences) and, if not, why."""


def debug_fail_membarrier(count: int, err: int) -> None:
    """Fault injection: the next ``count`` membarrier calls fail with ``err``."""
    lib.aiorcu_debug_fail_membarrier(count, err)


def debug_set_writer_jitter(max_ns: int) -> int:
    """Writers sleep 0..``max_ns`` at some grace-period steps (0: off); returns the old value."""
    return int(lib.aiorcu_debug_set_writer_jitter(max_ns))


StallHandler = Callable[[int, int, int], None]
"""``handler(waited_ns, stage, phase)``, called from a waiting writer."""


@ffi.def_extern()  # type: ignore[misc,untyped-decorator,unused-ignore]
def aiorcu_py_stall(arg: Any, waited_ns: int, stage: int, phase: int) -> None:
    # Runs on the waiting writer's thread with the GIL re-taken by cffi, the
    # writer mutex held.  Exceptions must not escape into C.
    try:
        handler: StallHandler = ffi.from_handle(arg)
        handler(waited_ns, stage, phase)
    except BaseException:
        logger.exception("aiorcu stall handler failed")


class SegmentError(Exception):
    """A segment failed validation; the message says how."""


def _free_shared(handle: Any, ptr: Any, memory: Any) -> None:
    lib.aiorcu_shared_free(handle)
    ffi.release(ptr)
    with contextlib.suppress(BufferError, ValueError):
        memory.close()


def _address(name: str) -> int:
    """The address of a core function, for the hot-path extension."""
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


THREAD_SERIAL_ADDRESS: Final[int] = _address("aiorcu_thread_serial")
"""``aiorcu_thread_serial``: the extension names threads as the core does."""


MAX_SLOTS: Final[int] = lib.AIORCU_MAX_SLOTS
MECH_FENCE: Final[int] = lib.AIORCU_MECH_FENCE
MECH_GLOBAL: Final[int] = lib.AIORCU_MECH_MEMBARRIER_GLOBAL
NAME_MAX: Final[int] = lib.AIORCU_NAME_MAX


def shared_size(max_threads: int) -> int:
    """Bytes of a shared domain's segment with ``max_threads`` reader slots (0: invalid)."""
    return int(lib.aiorcu_shared_size(max_threads))


def global_membarrier_available() -> bool:
    """Whether the kernel offers MEMBARRIER_CMD_GLOBAL_EXPEDITED."""
    return bool(lib.aiorcu_backend_global_available())


def format_shared(memory: Any, name: str, max_threads: int, fence: bool) -> None:
    """Formats a new segment (``memory``: a writable buffer, 64-byte aligned)."""
    ptr = ffi.from_buffer(memory, require_writable=True)
    try:
        rc = lib.aiorcu_shared_format(ptr, len(ptr), name.encode(), max_threads, int(fence))
    finally:
        ffi.release(ptr)
    if rc != lib.AIORCU_OK:
        raise OSError(ffi.errno, f"aiorcu: formatting the segment failed (code {rc})")


class CoreDomain:
    """Owns one C domain handle and exposes it with Python types.

    The C memory is freed when this object is; a domain keeps it as the
    owner of its read path, so no section, cell or bitmap can outlive it.
    A shared domain's handle points into a mapped segment, kept mapped
    until then too (a section's late exit may still read its slot).
    """

    __slots__ = ("__weakref__", "_d", "_stall_handle", "address", "shared")

    def __init__(self, stall: StallHandler, segment: tuple[Any, str] | None = None) -> None:
        self.shared = segment is not None
        if segment is None:
            d = lib.aiorcu_domain_new()
            if d == ffi.NULL:
                raise MemoryError("aiorcu: cannot allocate a domain")
            self._d = ffi.gc(d, lib.aiorcu_domain_free)
        else:
            memory, name = segment
            ptr = ffi.from_buffer(memory, require_writable=True)
            why = ffi.new("char[]", 256)
            d = lib.aiorcu_shared_open(ptr, len(ptr), name.encode(), why, 256)
            if d == ffi.NULL:
                ffi.release(ptr)
                raise SegmentError(ffi.string(why).decode(errors="replace"))
            self._d = d
            # Freed in this order when the domain goes: handle, buffer export,
            # mapping (weakref.finalize runs after the last reference died).
            # Not at exit: callbacks may still run a grace period then, and
            # the exit hook of _shared leaves the domain after them.
            weakref.finalize(self, _free_shared, d, ptr, memory).atexit = False
        self._stall_handle = ffi.new_handle(stall)
        self.address = int(ffi.cast("uintptr_t", self._d))

    def hotpath_binding(self) -> tuple[int, int, int, int, bool, bool]:
        """``(ctl, core, wake, release, fence, shared)`` for ``DomainBase._bind``."""
        return (
            int(ffi.cast("uintptr_t", lib.aiorcu_domain_ctl(self._d))),
            self.address,
            _address("aiorcu_wake"),
            _address("aiorcu_section_release"),
            self.mechanism() == lib.AIORCU_MECH_FENCE,
            self.shared,
        )

    def mechanism(self) -> int:
        return int(lib.aiorcu_domain_mechanism(self._d))

    def slot_alloc(self, owner_tid: int) -> int:
        """Claims a slot for the calling thread."""
        slot: int = lib.aiorcu_slot_alloc(self._d, owner_tid)
        if slot < 0:
            if self.shared:
                raise AiorcuError(
                    "aiorcu: this shared domain has no free reader slot: all of its "
                    f"{self.stats()['slots_capacity']} slots are taken by threads of attached "
                    "processes; create it with a larger max_threads"
                )
            raise AiorcuError(
                f"aiorcu: no free reader slot ({lib.AIORCU_MAX_SLOTS} threads at most per domain)"
            )
        return slot

    # -- shared domains ----------------------------------------------------------
    def join(self) -> None:
        """Joins a shared domain: a process entry, its lifeline, membarrier registration."""
        rc = lib.aiorcu_shared_join(self._d)
        if rc == lib.AIORCU_ENOMEM:
            raise MemoryError("aiorcu: no memory to join the shared domain")
        if rc != lib.AIORCU_OK:
            err = ffi.errno
            raise OSError(err, os.strerror(err))

    def joined(self) -> bool:
        return bool(lib.aiorcu_shared_joined(self._d))

    def leave(self) -> None:
        lib.aiorcu_shared_leave(self._d)

    def reap(self) -> int:
        """Releases the entries and slots of processes that provably died; how many."""
        return int(lib.aiorcu_shared_reap(self._d))

    def fork_prepare(self, counts: tuple[int, int, int, int]) -> int:
        """Before a fork: the bridge slot holding what the child keeps, or -1."""
        return int(lib.aiorcu_shared_fork_prepare(self._d, list(counts)))

    def adopt(self, owner_tid: int) -> int:
        """In a fork child, after joining: the bridge slot, now this thread's, or -1."""
        return int(lib.aiorcu_shared_adopt(self._d, owner_tid))

    def slot_set_name(self, slot: int, name: str) -> None:
        """Records the owner thread's name (15 bytes of it) for other processes' reports."""
        lib.aiorcu_slot_set_name(self._d, slot, name.encode(errors="replace")[:15])

    def slot_owner_info(self, slot: int) -> tuple[int, int, str] | None:
        """``(pid, native thread id, thread name)`` of a slot's owner, as it recorded them."""
        pid = ffi.new("int32_t *")
        tid = ffi.new("uint64_t *")
        name = ffi.new("char[16]")
        if not lib.aiorcu_slot_owner_info(self._d, slot, pid, tid, name):
            return None
        return int(pid[0]), int(tid[0]), ffi.string(name).decode(errors="replace")

    def slot_line(self, slot: int) -> int:
        """The address of the slot's reader line."""
        return int(ffi.cast("uintptr_t", lib.aiorcu_slot_line(self._d, slot)))

    def slot_release(self, slot: int, owner: int) -> int | None:
        """Releases a slot owned by ``owner`` (0: whoever); the sections it dropped, or None."""
        dropped = int(lib.aiorcu_slot_release(self._d, slot, owner))
        return None if dropped == NOT_OWNER else dropped

    def slot_release_if_dead(self, slot: int) -> tuple[int, int] | None:
        """Releases the slot if its owner provably exited: ``(owner serial, sections dropped)``."""
        owner = ffi.new("uint64_t *")
        dropped = int(lib.aiorcu_slot_release_if_dead(self._d, slot, owner))
        return None if dropped == NOT_OWNER else (int(owner[0]), dropped)

    def slot_owner_dead(self, slot: int) -> bool:
        """Whether the slot's owner thread has provably exited."""
        return bool(lib.aiorcu_slot_owner_dead(self._d, slot))

    def slot_counts(self, slot: int) -> tuple[int, tuple[int, int, int, int]]:
        """``(owner serial, counts)``; counts are indexed ``kind * 2 + phase``."""
        out = ffi.new("uint64_t[4]")
        owner = int(lib.aiorcu_slot_counts(self._d, slot, out))
        return owner, (int(out[0]), int(out[1]), int(out[2]), int(out[3]))

    def wake(self) -> None:
        lib.aiorcu_wake(self._d)

    def phase(self) -> int:
        """The current phase (a moment's view, for tests)."""
        return int(lib.aiorcu_domain_ctl(self._d)[lib.AIORCU_CTL_PHASE])

    def snapshot(self) -> int:
        return int(lib.aiorcu_snapshot(self._d))

    def completed(self) -> int:
        return int(lib.aiorcu_completed(self._d))

    def synchronize(self, target: int, timeout_ns: int, flags: int, caller_slot: int) -> int:
        """Runs (or shares) a grace period; returns OK, TIMEDOUT, BUSY or EBARRIER."""
        rc: int = lib.aiorcu_synchronize(
            self._d,
            target,
            timeout_ns,
            flags,
            caller_slot,
            lib.aiorcu_py_stall,
            self._stall_handle,
        )
        return rc

    def blocking_slots(self, phase: int, limit: int = 256) -> list[tuple[int, int]]:
        """``(slot, blocked_ns)`` for each slot holding ``phase`` open."""
        out = ffi.new("int32_t[]", limit)
        blocked = ffi.new("uint64_t[]", limit)
        n = lib.aiorcu_blocking_slots(self._d, phase, out, blocked, limit)
        return [(int(out[i]), int(blocked[i])) for i in range(n)]

    def stats(self) -> dict[str, int]:
        s = ffi.new("struct aiorcu_stats *")
        lib.aiorcu_domain_stats(self._d, s)
        return {name: int(getattr(s, name)) for name, _ in ffi.typeof(s[0]).fields}

    def set_wait_mode(self, mode: str) -> None:
        lib.aiorcu_domain_set_wait_mode(self._d, WAIT_MODES[mode])

    def set_stall(self, first_ns: int, max_ns: int) -> None:
        lib.aiorcu_domain_set_stall(self._d, first_ns, max_ns)


def describe_size(nbytes: int) -> str:
    """``"137,438,953,472 bytes (128 GiB)"``: exact, and readable."""
    unit, value = "bytes", float(nbytes)
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        unit, value = name, value / 1024
    readable = f" ({value:,.0f} {unit})" if unit != "bytes" else ""
    return f"{nbytes:,} bytes{readable}"


LOCK_OK: Final = "ok"
LOCK_BUSY: Final = "busy"
LOCK_RECOVERED: Final = "recovered"


class CoreBuffer:
    """The memory of a bitmap, or of guarded memory: header, words, pages.

    Lives in a buffer the caller gives (any writable, C-contiguous buffer of
    at least `size()` bytes at a 64-byte aligned address: an mmap,
    ``SharedMemory.buf``), or in an anonymous mapping of its own.  Readers
    load the words from C (``BitmapBase``) through `words_address`; only
    `apply()` stores into them, under `lock()`.
    """

    __slots__ = (
        "_memory",
        "_own",
        "_ptr",
        "_view",
        "data_address",
        "data_len",
        "domain_name",
        "page_size",
        "pages",
        "words_address",
    )

    def __init__(self, memory: Any, ptr: Any, view: Any) -> None:
        self._memory = memory
        self._own = False  # an anonymous mapping of its own, unmapped by close()
        self._ptr = ptr
        self._view = view
        self.pages = int(view.pages)
        self.page_size = int(view.page_size)
        self.words_address = int(ffi.cast("uintptr_t", view.words))
        self.data_address = int(ffi.cast("uintptr_t", view.data))
        self.data_len = int(view.data_len)
        self.domain_name = ffi.string(view.domain).decode(errors="replace")

    @staticmethod
    def size(pages: int, page_size: int) -> int:
        """Bytes a buffer needs: header, words (and ``pages * page_size``); 0 if invalid."""
        return int(lib.aiorcu_buffer_size(pages, page_size))

    @staticmethod
    def _pointer(memory: Any, need: int) -> Any:
        if sys.byteorder != "little":
            raise RuntimeError("aiorcu bitmaps need a little-endian machine")
        try:
            ptr = ffi.from_buffer(memory, require_writable=True)
        except (TypeError, BufferError) as exc:
            raise TypeError(
                f"buffer must be a writable, C-contiguous buffer (an mmap, a bytearray, "
                f"SharedMemory.buf), not {type(memory).__name__}: {exc}"
            ) from None
        address = int(ffi.cast("uintptr_t", ptr))
        if address % lib.AIORCU_CACHELINE:
            ffi.release(ptr)
            raise ValueError(
                f"buffer must start at a 64-byte aligned address; this one is at 0x{address:x} "
                f"({address % lib.AIORCU_CACHELINE} bytes past a boundary). An mmap is "
                "page-aligned; or slice a larger buffer at the right offset"
            )
        if need and len(ptr) < need:
            ffi.release(ptr)
            raise ValueError(f"buffer is {len(ptr):,} bytes; it must be at least {need:,}")
        return ptr

    @classmethod
    def create(cls, pages: int, page_size: int, domain_name: str, memory: Any | None) -> CoreBuffer:
        """Formats a new buffer (``memory``, or an anonymous mapping when None)."""
        need = cls.size(pages, page_size)
        own = memory is None
        if memory is None:
            try:
                memory = mmap.mmap(-1, need)
            except (OSError, OverflowError, MemoryError):
                what = (
                    f"GuardedMemory of {pages:,} pages of {page_size:,} bytes"
                    if page_size
                    else (f"a bitmap of {pages:,} pages")
                )
                raise MemoryError(
                    f"{what} needs {describe_size(need)}, which could not be allocated"
                ) from None
        ptr = cls._pointer(memory, need)
        rc = lib.aiorcu_buffer_format(ptr, len(ptr), pages, page_size, domain_name.encode())
        if rc != lib.AIORCU_OK:
            ffi.release(ptr)
            raise OSError(ffi.errno, "aiorcu: the buffer could not be initialised")
        core = cls._opened(memory, ptr)
        core._own = own
        return core

    @classmethod
    def open(cls, memory: Any) -> CoreBuffer:
        """Validates an initialised buffer; SegmentError says what is wrong."""
        return cls._opened(memory, cls._pointer(memory, 0))

    @classmethod
    def _opened(cls, memory: Any, ptr: Any) -> CoreBuffer:
        view = ffi.new("struct aiorcu_buffer_view *")
        why = ffi.new("char[]", 256)
        if lib.aiorcu_buffer_open(ptr, len(ptr), view, why, 256) != lib.AIORCU_OK:
            ffi.release(ptr)
            raise SegmentError(ffi.string(why).decode(errors="replace"))
        return cls(memory, ptr, view)

    def close(self) -> None:
        """Releases the caller's buffer (its export), so the caller may close it.

        Nothing may use the addresses afterwards: the C read paths are
        unbound first, under the GIL.
        """
        ffi.release(self._ptr)
        if self._own:
            self._memory.close()

    def lock(self, try_only: bool) -> str:
        """Takes the commit lock: LOCK_OK, LOCK_BUSY (try only) or LOCK_RECOVERED."""
        rc = lib.aiorcu_buffer_lock(self._view, int(try_only))
        if rc == lib.AIORCU_OK:
            return LOCK_OK
        if rc == lib.AIORCU_BUSY:
            return LOCK_BUSY
        if rc == lib.AIORCU_RECOVERED:
            return LOCK_RECOVERED
        err = ffi.errno
        raise OSError(err, f"aiorcu: the bitmap's commit lock failed: {os.strerror(err)}")

    def unlock(self) -> None:
        lib.aiorcu_buffer_unlock(self._view)

    def apply(self, ops: list[tuple[int, int, bool]]) -> tuple[int, int, int]:
        """Applies ``(start, count, grant)`` ops in order (lock held).

        Returns (granted, revoked, left revoked): bits that went clear->set,
        set->clear, and pages whose last op was a revoke.
        """
        if not ops:
            return 0, 0, 0
        cops = ffi.new("struct aiorcu_bitmap_op[]", ops)
        out = ffi.new("uint64_t[3]")
        rc = lib.aiorcu_buffer_apply(self._view, cops, len(ops), out)
        if rc == lib.AIORCU_ENOMEM:
            raise MemoryError("aiorcu: no memory for a bitmap commit; nothing was applied")
        if rc != lib.AIORCU_OK:
            raise ValueError(f"aiorcu: bitmap op outside {self.pages} pages; nothing was applied")
        return int(out[0]), int(out[1]), int(out[2])

    def flush_token(self) -> int:
        return int(lib.aiorcu_buffer_flush_token(self._view))

    def set_flush_token(self, token: int) -> None:
        lib.aiorcu_buffer_set_flush_token(self._view, token)

    def take_unflushed(self) -> bool:
        """Whether a revoke of unknown flush state was left here (and clears the mark)."""
        return bool(lib.aiorcu_buffer_take_unflushed(self._view))

    def mark_unflushed(self) -> None:
        lib.aiorcu_buffer_mark_unflushed(self._view)
