"""The only module that touches the compiled cffi ``ffi``/``lib``.

Everything above it sees plain Python types: ints, memoryviews and the small
`CoreDomain` wrapper.  The barrier backend is chosen once, here, at
import: membarrier(2) PRIVATE_EXPEDITED when the kernel has it, plain fences
when it does not or when ``AIORCU_MEMBARRIER=off``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Final

from ._aiorcu_cffi import ffi, lib

logger = logging.getLogger("aiorcu")

FLAG_THREAD: Final[int] = lib.AIORCU_FLAG_THREAD
FLAG_TASK: Final[int] = lib.AIORCU_FLAG_TASK
CTL_PHASE: Final[int] = lib.AIORCU_CTL_PHASE
CTL_WAITING: Final[int] = lib.AIORCU_CTL_WAITING

OK: Final[int] = lib.AIORCU_OK
TIMEDOUT: Final[int] = lib.AIORCU_TIMEDOUT
BUSY: Final[int] = lib.AIORCU_BUSY
EBARRIER: Final[int] = lib.AIORCU_EBARRIER

SYNC_TRY: Final[int] = lib.AIORCU_SYNC_TRY
SYNC_BUSTED: Final[int] = lib.AIORCU_SYNC_BUSTED

STAGE_STRAGGLERS: Final[int] = lib.AIORCU_STAGE_STRAGGLERS
STAGE_CLOSED: Final[int] = lib.AIORCU_STAGE_CLOSED

WAIT_MODES: Final[dict[str, int]] = {"futex": lib.AIORCU_WAIT_FUTEX, "poll": lib.AIORCU_WAIT_POLL}

_DISABLED_VALUES = {"0", "off", "no", "false", "fence"}


def _init_backend() -> tuple[bool, str | None]:
    setting = os.environ.get("AIORCU_MEMBARRIER", "").strip().lower()
    mechanism = lib.aiorcu_backend_init(1 if setting in _DISABLED_VALUES else 0)
    reason = lib.aiorcu_backend_reason()
    return (
        mechanism == lib.AIORCU_MECH_MEMBARRIER,
        None if reason == ffi.NULL else ffi.string(reason).decode(),
    )


MEMBARRIER, FALLBACK_REASON = _init_backend()
"""Whether readers rely on membarrier (no fences) and, if not, why."""

fence: Final[Callable[[], None]] = lib.aiorcu_fence
monotonic_ns: Final[Callable[[], int]] = lib.aiorcu_monotonic_ns


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


# Domains whose owner was collected, freed after the garbage collection that
# found them.  In a reference cycle, finalizers run in no particular order:
# the finalizer of an abandoned task section (which clears its slot flag
# through a view of C memory) may run after the domain's own, so the domain
# must outlive the whole collection.  Freeing only at "stop" guarantees that.
_dead_domains: list[Any] = []


def _free_later(d: Any) -> None:
    _dead_domains.append(d)


def _free_dead_domains(phase: str, info: dict[str, int]) -> None:
    if phase == "stop":
        while _dead_domains:
            lib.aiorcu_domain_free(_dead_domains.pop())


gc.callbacks.append(_free_dead_domains)


class CoreDomain:
    """Owns one C domain and exposes it with Python types."""

    __slots__ = ("__weakref__", "_d", "_stall_handle", "ctl")

    def __init__(self, stall: StallHandler) -> None:
        d = lib.aiorcu_domain_new()
        if d == ffi.NULL:
            raise MemoryError("aiorcu: cannot allocate a domain")
        self._d = ffi.gc(d, _free_later)
        self._stall_handle = ffi.new_handle(stall)
        # Readers load the phase and the waiting bytes from this view with
        # plain loads; the writer stores them with C11 atomics.
        self.ctl: memoryview = memoryview(ffi.buffer(lib.aiorcu_domain_ctl(d), lib.AIORCU_CTL_SIZE))

    def slot_alloc(self, owner_tid: int) -> int:
        slot: int = lib.aiorcu_slot_alloc(self._d, owner_tid)
        if slot < 0:
            raise RuntimeError(
                f"aiorcu: no free reader slot ({lib.AIORCU_MAX_SLOTS} threads at most per domain)"
            )
        return slot

    def slot_flags(self, slot: int) -> memoryview:
        """A writable 4-byte view of the slot's flags, for its owner thread."""
        return memoryview(ffi.buffer(lib.aiorcu_slot_flags(self._d, slot), lib.AIORCU_NFLAGS))

    def slot_flags_address(self, slot: int) -> Any:
        return lib.aiorcu_slot_flags(self._d, slot)

    def slot_release(self, slot: int) -> None:
        lib.aiorcu_slot_release(self._d, slot)

    def slot_clear(self, slot: int) -> None:
        lib.aiorcu_slot_clear(self._d, slot)

    def fence_flag_clear(self, flags: Any, index: int) -> None:
        lib.aiorcu_fence_flag_clear(self._d, flags, index)

    def wake(self) -> None:
        lib.aiorcu_wake(self._d)

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

    def after_fork(self, keep_slot: int) -> None:
        lib.aiorcu_domain_after_fork(self._d, keep_slot)

    def stats(self) -> dict[str, int]:
        s = ffi.new("struct aiorcu_stats *")
        lib.aiorcu_domain_stats(self._d, s)
        return {name: int(getattr(s, name)) for name, _ in ffi.typeof(s[0]).fields}

    def set_wait_mode(self, mode: str) -> None:
        lib.aiorcu_domain_set_wait_mode(self._d, WAIT_MODES[mode])

    def set_stall(self, first_ns: int, max_ns: int) -> None:
        lib.aiorcu_domain_set_stall(self._d, first_ns, max_ns)


class CoreBitmap:
    """The words of a page bitmap, in C memory, and the C commit routine.

    ``octets`` (format ``B``) is the view readers load with plain loads;
    only `apply()` stores into the words.
    """

    __slots__ = ("_words", "octets", "pages")

    def __init__(self, pages: int, initial: bool) -> None:
        if sys.byteorder != "little":
            # Readers find page p in byte p // 8, bit p % 8 of the C words.
            raise RuntimeError("aiorcu bitmaps need a little-endian machine")
        nwords = max(1, (pages + 63) // 64)
        # Zeroed by cffi and freed when the last view of it goes away.
        self._words = ffi.new("uint64_t[]", nwords)
        self.pages = pages
        self.octets: memoryview = memoryview(ffi.buffer(self._words)).cast("B")
        if initial:
            self.apply([(0, pages, True)])

    def first_clear(self, start: int, count: int) -> int:
        """The first page in the range whose bit is clear, or -1 (C loop, no GIL)."""
        return int(lib.aiorcu_bitmap_first_clear(self._words, start, count))

    def apply(self, ops: list[tuple[int, int, bool]]) -> tuple[int, int, int]:
        """Applies ``(start, count, grant)`` ops in order.

        Returns (granted, revoked, left revoked): bits that went clear->set,
        set->clear, and pages whose last op was a revoke.
        """
        if not ops:
            return 0, 0, 0
        cops = ffi.new("struct aiorcu_bitmap_op[]", ops)
        out = ffi.new("uint64_t[3]")
        rc = lib.aiorcu_bitmap_apply(self._words, self.pages, cops, len(ops), out)
        if rc == lib.AIORCU_ENOMEM:
            raise MemoryError("aiorcu: no memory for a bitmap commit; nothing was applied")
        if rc != lib.AIORCU_OK:
            raise ValueError(f"aiorcu: bitmap op outside {self.pages} pages; nothing was applied")
        return int(out[0]), int(out[1]), int(out[2])
