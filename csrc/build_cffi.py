"""cffi (API mode) build of the aiorcu C core into ``aiorcu._aiorcu_cffi``."""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["membarrier.c", "thread.c", "domain.c", "grace.c", "reader.c", "bitmap.c"]

CDEF = """
#define AIORCU_CACHELINE ...
#define AIORCU_MAX_SLOTS ...
#define AIORCU_KIND_THREAD ...
#define AIORCU_KIND_TASK ...
#define AIORCU_NCOUNTS ...
#define AIORCU_CTL_PHASE ...
#define AIORCU_CTL_WAITING ...
#define AIORCU_CTL_SIZE ...
#define AIORCU_OK ...
#define AIORCU_TIMEDOUT ...
#define AIORCU_BUSY ...
#define AIORCU_EBARRIER ...
#define AIORCU_EINVAL ...
#define AIORCU_ENOMEM ...
#define AIORCU_MECH_FENCE ...
#define AIORCU_MECH_MEMBARRIER ...
#define AIORCU_WAIT_FUTEX ...
#define AIORCU_WAIT_POLL ...
#define AIORCU_SYNC_TRY ...
#define AIORCU_SYNC_BUSTED ...
#define AIORCU_STAGE_STRAGGLERS ...
#define AIORCU_STAGE_CLOSED ...
#define AIORCU_NOT_OWNER ...

struct aiorcu_domain;
struct aiorcu_stats {
    uint64_t started, completed, grace_periods, membarrier_calls,
             barriers_elided, barrier_fallbacks, futex_sleeps, wakeups,
             backstop_timeouts, timeouts, slots_live, slots_capacity,
             dead_readers_released, sections_open;
};
typedef void (*aiorcu_stall_fn)(void *arg, uint64_t waited_ns, int stage, int phase);

int aiorcu_backend_init(int force_fence);
int aiorcu_backend_mechanism(void);
const char *aiorcu_backend_reason(void);
void aiorcu_fence(void);
void aiorcu_debug_fail_membarrier(int count, int err);
uint64_t aiorcu_debug_set_writer_jitter(uint64_t max_ns);
uint64_t aiorcu_thread_serial(void);

struct aiorcu_domain *aiorcu_domain_new(void);
void aiorcu_domain_free(struct aiorcu_domain *d);
uint8_t *aiorcu_domain_ctl(struct aiorcu_domain *d);
int aiorcu_slot_alloc(struct aiorcu_domain *d, uint64_t owner_tid);
void *aiorcu_slot_line(struct aiorcu_domain *d, int slot);
uint64_t aiorcu_slot_release(struct aiorcu_domain *d, int slot, uint64_t owner);
int aiorcu_slot_owner_dead(struct aiorcu_domain *d, int slot);
uint64_t aiorcu_slot_release_if_dead(struct aiorcu_domain *d, int slot, uint64_t *owner);
uint64_t aiorcu_slot_counts(struct aiorcu_domain *d, int slot, uint64_t out[4]);
int aiorcu_section_release(struct aiorcu_domain *d, void *line, int kind, int phase,
                           uint64_t gen);
size_t aiorcu_blocking_slots(struct aiorcu_domain *d, int phase, int32_t *out,
                             uint64_t *blocked_ns, size_t max);
void aiorcu_domain_stats(struct aiorcu_domain *d, struct aiorcu_stats *out);
void aiorcu_domain_set_wait_mode(struct aiorcu_domain *d, int mode);
void aiorcu_domain_set_stall(struct aiorcu_domain *d, uint64_t first_ns, uint64_t max_ns);
int aiorcu_domain_mechanism(struct aiorcu_domain *d);

uint64_t aiorcu_snapshot(struct aiorcu_domain *d);
uint64_t aiorcu_completed(struct aiorcu_domain *d);
int aiorcu_synchronize(struct aiorcu_domain *d, uint64_t target, int64_t timeout_ns,
                       int flags, int caller_slot, aiorcu_stall_fn stall, void *stall_arg);
void aiorcu_wake(struct aiorcu_domain *d);
uint64_t aiorcu_monotonic_ns(void);

struct aiorcu_bitmap_op { uint64_t start; uint64_t count; uint32_t grant; };
int64_t aiorcu_bitmap_first_clear(const uint64_t *words, uint64_t start, uint64_t count);
int aiorcu_bitmap_apply(uint64_t *words, uint64_t pages, const struct aiorcu_bitmap_op *ops,
                        size_t n, uint64_t out[3]);

extern "Python" void aiorcu_py_stall(void *, uint64_t, int, int);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "aiorcu._aiorcu_cffi",
    '#include "aiorcu.h"',
    # setuptools wants paths relative to the project root for sdists.
    sources=[os.path.relpath(HERE / name) for name in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    depends=[os.path.relpath(HERE / name) for name in ("aiorcu.h", "internal.h", "reader.h")],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
