/*
 * aiorcu C core: grace periods for RCU domains whose readers need no memory
 * barriers (membarrier(2)) or only plain fences (fallback).
 *
 * Readers live mostly in Python.  Each reader thread owns a *slot*: a cache
 * line in C memory whose first four bytes are flags that only the owner
 * thread writes.  flag[AIORCU_FLAG_THREAD + p] is non-zero while the thread
 * has `with` sections open that entered in phase p; flag[AIORCU_FLAG_TASK + p]
 * while it has `async with` sections open in phase p.  The open-section
 * counts themselves are Python ints kept by the owner thread, so they never
 * wrap; only their 0 <-> non-zero transitions are mirrored into the flags.
 *
 * The writer side (this file's functions) runs without the GIL.  See
 * docs/explanation/memory-ordering.md for the ordering argument;
 * every barrier in grace.c names the reader access it pairs with.
 */
#ifndef AIORCU_H
#define AIORCU_H

#include <stddef.h>
#include <stdint.h>

#define AIORCU_CACHELINE 64
#define AIORCU_CHUNK_SLOTS 64
#define AIORCU_MAX_SLOTS 65536

/* Byte offsets inside a slot; the Python reader writes these bytes. */
#define AIORCU_FLAG_THREAD 0 /* + phase: `with` sections open in that phase */
#define AIORCU_FLAG_TASK 2   /* + phase: `async with` sections open */
#define AIORCU_NFLAGS 4

/* Byte offsets inside the reader-visible control line. */
#define AIORCU_CTL_PHASE 0   /* current phase, 0 or 1; written by the writer */
#define AIORCU_CTL_WAITING 2 /* + phase: a writer sleeps until that phase drains */
#define AIORCU_CTL_SIZE 8

/* Results of aiorcu_synchronize(). */
#define AIORCU_OK 0
#define AIORCU_TIMEDOUT 1 /* deadline passed; grace period abandoned */
#define AIORCU_BUSY 2     /* try mode: would have to wait */
#define AIORCU_EBARRIER 3 /* no working memory barrier for the readers */
#define AIORCU_EINVAL 4   /* bitmap op outside the bitmap */
#define AIORCU_ENOMEM 5   /* out of memory */

/* Barrier mechanisms, chosen once per process. */
#define AIORCU_MECH_FENCE 0
#define AIORCU_MECH_MEMBARRIER 1

/* How a writer waits for readers once its short spin is over. */
#define AIORCU_WAIT_FUTEX 0 /* sleep; readers wake the writer */
#define AIORCU_WAIT_POLL 1  /* sleep with exponential backoff */

/* Flags for aiorcu_synchronize(). */
#define AIORCU_SYNC_TRY 1  /* never wait: return AIORCU_BUSY instead */
#define AIORCU_SYNC_BUSTED 2 /* negative control: skip every reader wait */

/* Stages of a grace period, reported to the stall callback. */
#define AIORCU_STAGE_STRAGGLERS 1 /* waiting for the non-current phase */
#define AIORCU_STAGE_CLOSED 2     /* waiting for the phase just closed */

struct aiorcu_domain;

struct aiorcu_stats {
    uint64_t started;            /* grace periods begun (sequence) */
    uint64_t completed;          /* highest grace period completed */
    uint64_t grace_periods;      /* grace periods completed */
    uint64_t membarrier_calls;   /* PRIVATE_EXPEDITED (or GLOBAL) calls */
    uint64_t barriers_elided;    /* membarriers replaced by a fence: no other reader */
    uint64_t barrier_fallbacks;  /* PRIVATE_EXPEDITED failed; GLOBAL used */
    uint64_t futex_sleeps;       /* writer sleeps on the futex */
    uint64_t wakeups;            /* wake calls made by readers */
    uint64_t backstop_timeouts;  /* sleeps ended by timeout with readers gone */
    uint64_t timeouts;           /* grace periods abandoned at their deadline */
    uint64_t slots_live;         /* slots owned by threads */
    uint64_t slots_capacity;     /* slots allocated */
};

/*
 * Called from a waiting writer (writer mutex held, GIL not held) when a grace
 * period has waited `waited_ns`; `stage` says which wait.  It may inspect and
 * release slots.  The next call comes after twice the interval, up to a cap.
 */
typedef void (*aiorcu_stall_fn)(void *arg, uint64_t waited_ns, int stage,
                                int phase);

/* Backend (membarrier.c) */
int aiorcu_backend_init(int force_fence);
int aiorcu_backend_mechanism(void);
const char *aiorcu_backend_reason(void);
void aiorcu_fence(void);
void aiorcu_debug_fail_membarrier(int count, int err);

/* Domains and slots (domain.c) */
struct aiorcu_domain *aiorcu_domain_new(void);
void aiorcu_domain_free(struct aiorcu_domain *d);
uint8_t *aiorcu_domain_ctl(struct aiorcu_domain *d);
int aiorcu_slot_alloc(struct aiorcu_domain *d, uint64_t owner_tid);
uint8_t *aiorcu_slot_flags(struct aiorcu_domain *d, int slot);
void aiorcu_slot_release(struct aiorcu_domain *d, int slot);
void aiorcu_slot_clear(struct aiorcu_domain *d, int slot);
size_t aiorcu_blocking_slots(struct aiorcu_domain *d, int phase, int32_t *out,
                             uint64_t *blocked_ns, size_t max);
void aiorcu_domain_after_fork(struct aiorcu_domain *d, int keep_slot);
void aiorcu_domain_stats(struct aiorcu_domain *d, struct aiorcu_stats *out);
void aiorcu_domain_set_wait_mode(struct aiorcu_domain *d, int mode);
void aiorcu_domain_set_stall(struct aiorcu_domain *d, uint64_t first_ns,
                             uint64_t max_ns);

/* Grace periods (grace.c) */
uint64_t aiorcu_snapshot(struct aiorcu_domain *d);
uint64_t aiorcu_completed(struct aiorcu_domain *d);
int aiorcu_synchronize(struct aiorcu_domain *d, uint64_t target,
                       int64_t timeout_ns, int flags, int caller_slot,
                       aiorcu_stall_fn stall, void *stall_arg);
void aiorcu_wake(struct aiorcu_domain *d);
void aiorcu_fence_flag_clear(struct aiorcu_domain *d, uint8_t *flags, int index);
uint64_t aiorcu_monotonic_ns(void);

/*
 * Page bitmaps (bitmap.c): bit p of words[p / 64] is set while page p is
 * accessible.  The caller owns the words and serializes apply() calls.
 */
struct aiorcu_bitmap_op {
    uint64_t start;
    uint64_t count;
    uint32_t grant; /* 1: set the pages' bits; 0: clear them */
};
/* First page in [start, start + count) whose bit is clear, or -1. */
int64_t aiorcu_bitmap_first_clear(const uint64_t *words, uint64_t start, uint64_t count);
/* Applies ops in order; stores each changed word once with its final value.
 * out[0]/out[1]: bits that went clear->set / set->clear; out[2]: pages whose
 * last covering op is a revoke (clear now, whatever they were).  AIORCU_OK,
 * AIORCU_EINVAL (an op outside [0, pages): nothing applied) or AIORCU_ENOMEM. */
int aiorcu_bitmap_apply(uint64_t *words, uint64_t pages, const struct aiorcu_bitmap_op *ops,
                        size_t n, uint64_t out[3]);

/*
 * C readers (used by the C stress harness; Python has its own reader that
 * follows the same protocol).  Not thread-safe across threads: one reader
 * object per thread.  Sections nest; the phase is taken by the outermost.
 */
struct aiorcu_reader {
    struct aiorcu_domain *d;
    uint8_t *flags;
    int slot;
    int phase;
    uint64_t depth;
};
int aiorcu_reader_init(struct aiorcu_reader *r, struct aiorcu_domain *d);
void aiorcu_reader_fini(struct aiorcu_reader *r);
void aiorcu_read_lock(struct aiorcu_reader *r);
void aiorcu_read_unlock(struct aiorcu_reader *r);
/* Debug: called between the reader's phase load and its flag store. */
extern void (*aiorcu_debug_reader_delay)(void);
/* Debug: the writer sleeps a random 0..max_ns (nanosleep, no callback) at
 * some of the steps of each grace period; 0 turns it off.  Process-wide.
 * Returns the previous setting. */
uint64_t aiorcu_debug_set_writer_jitter(uint64_t max_ns);

#endif /* AIORCU_H */
