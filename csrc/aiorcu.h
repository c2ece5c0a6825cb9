/*
 * aiorcu C core: grace periods for RCU domains whose readers need no memory
 * barriers (membarrier(2)) or only plain fences (fallback).
 *
 * Each thread that reads in a domain owns a *slot*.  The slot's first cache
 * line, `struct aiorcu_reader_line`, is what readers touch: one 64-bit count
 * of open sections per (kind, phase), a generation per kind, and the owner.
 * Every read section takes the phase current when it enters and counts in
 * that phase until it leaves (SRCU's two-index scheme), so sections on one
 * thread may close in any order and no pattern of overlapping sections can
 * hold a grace period open forever.  Counts are relaxed atomics: the owner
 * increments them, and any thread may decrement one to release a section
 * (an exit on the wrong thread, a collected section), so nobody has to wait
 * for an idle owner.  A release of the whole slot (its thread exited, fork)
 * zeroes the counts and bumps the generations; a section remembers the
 * generation it entered under, and a late exit then changes nothing.
 *
 * The reader protocol itself is `static inline` in reader.h; the writer side
 * (grace.c) runs without the GIL.  docs/explanation/memory-ordering.md has
 * the ordering argument; every barrier names the access it pairs with, in
 * one numbering: M1/M2/M3 on the writer, F1/F2/F3 on the reader.
 */
#ifndef AIORCU_H
#define AIORCU_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define AIORCU_CACHELINE   64
#define AIORCU_CHUNK_SLOTS 64
#define AIORCU_MAX_SLOTS   65536

/* Section kinds; each has its own counts and generation in a slot. */
#define AIORCU_KIND_THREAD        0 /* `with` sections */
#define AIORCU_KIND_TASK          1 /* `async with` sections */
#define AIORCU_NKINDS             2
#define AIORCU_NCOUNTS            4 /* count[AIORCU_COUNT(kind, phase)] */
#define AIORCU_COUNT(kind, phase) ((kind) * 2 + (phase))

/* Byte offsets inside the reader-visible control line. */
#define AIORCU_CTL_PHASE   0 /* current phase, 0 or 1; written by the writer */
#define AIORCU_CTL_WAITING 2 /* + phase: a writer sleeps until that phase drains */
#define AIORCU_CTL_SIZE    8

/* Results of aiorcu_synchronize(). */
#define AIORCU_OK       0
#define AIORCU_TIMEDOUT 1 /* deadline passed; grace period abandoned */
#define AIORCU_BUSY     2 /* try mode: would have to wait */
#define AIORCU_EBARRIER 3 /* no working memory barrier for the readers */
#define AIORCU_EINVAL   4 /* bitmap op outside the bitmap */
#define AIORCU_ENOMEM   5 /* out of memory */
#define AIORCU_ECORRUPT 6 /* a segment or buffer failed validation */
#define AIORCU_ESYS     7 /* a system call failed (errno says which) */

/* Barrier mechanisms: a process's private domains use the one chosen at
 * start-up; a shared domain uses the one its creator recorded. */
#define AIORCU_MECH_FENCE             0
#define AIORCU_MECH_MEMBARRIER        1 /* MEMBARRIER_CMD_PRIVATE_EXPEDITED */
#define AIORCU_MECH_MEMBARRIER_GLOBAL 2 /* MEMBARRIER_CMD_GLOBAL_EXPEDITED (shared) */

/* Shared segments (shared.c). */
#define AIORCU_NAME_MAX 128 /* bytes of a shared domain's name, NUL included */

/* How a writer waits for readers once its short spin is over. */
#define AIORCU_WAIT_FUTEX 0 /* sleep; readers wake the writer */
#define AIORCU_WAIT_POLL  1 /* sleep with exponential backoff */

/* Flags for aiorcu_synchronize(). */
#define AIORCU_SYNC_TRY    1 /* never wait: return AIORCU_BUSY instead */
#define AIORCU_SYNC_BUSTED 2 /* negative control: skip every reader wait */

/* Stages of a grace period, reported to the stall callback. */
#define AIORCU_STAGE_STRAGGLERS 1 /* waiting for the non-current phase */
#define AIORCU_STAGE_CLOSED     2 /* waiting for the phase just closed */

/* aiorcu_slot_release(): the slot was not owned by the given claim. */
#define AIORCU_NOT_OWNER UINT64_MAX

struct aiorcu_domain;

/*
 * The first cache line of a slot.  Readers of the owner thread increment
 * `count`; any thread may decrement a count to release one section.  `gen`
 * and `owner` change only under the domain's registry lock (slot claimed or
 * released); the owner reads them without it.  _Atomic members are C11 only:
 * Python code never sees this struct.
 */
struct aiorcu_reader_line {
    _Atomic uint64_t count[AIORCU_NCOUNTS]; /* open sections by kind and phase */
    _Atomic uint64_t gen[AIORCU_NKINDS];    /* bumped whenever counts are dropped */
    _Atomic uint64_t owner;                 /* the claim's token (per domain); 0: free */
    uint64_t reserved;
};
_Static_assert(sizeof(struct aiorcu_reader_line) == AIORCU_CACHELINE,
               "the reader line is one cache line");

struct aiorcu_stats {
    uint64_t started;               /* grace periods begun (sequence) */
    uint64_t completed;             /* highest grace period completed */
    uint64_t grace_periods;         /* grace periods completed */
    uint64_t membarrier_calls;      /* PRIVATE_EXPEDITED (or GLOBAL) calls */
    uint64_t barriers_elided;       /* membarriers replaced by a fence: no other reader */
    uint64_t barrier_fallbacks;     /* PRIVATE_EXPEDITED failed; GLOBAL used */
    uint64_t futex_sleeps;          /* writer sleeps on the futex */
    uint64_t wakeups;               /* wake calls made by readers */
    uint64_t backstop_timeouts;     /* sleeps ended by timeout with readers gone */
    uint64_t timeouts;              /* grace periods abandoned at their deadline */
    uint64_t slots_live;            /* slots owned by threads */
    uint64_t slots_capacity;        /* slots allocated */
    uint64_t dead_readers_released; /* dead threads or processes released (each once) */
    uint64_t sections_open;         /* sum of every slot's counts, a moment's view */
    uint64_t writer_recoveries;     /* writer mutex found held by a dead process */
    uint64_t processes_attached;    /* shared: live process entries; private: 1 */
};

/*
 * Called from a waiting writer (writer mutex held, GIL not held) when a grace
 * period has waited `waited_ns`; `stage` says which wait.  It may inspect and
 * release slots.  The next call comes after twice the interval, up to a cap.
 */
typedef void (*aiorcu_stall_fn)(void *arg, uint64_t waited_ns, int stage, int phase);

/* Backend (membarrier.c) */
int aiorcu_backend_init(int force_fence);
int aiorcu_backend_mechanism(void);
const char *aiorcu_backend_reason(void);
int aiorcu_backend_global_available(void);
int aiorcu_backend_register_global(void);
void aiorcu_fence(void);
void aiorcu_debug_fail_membarrier(int count, int err);

/* Threads (thread.c): a process-unique serial per thread (never 0), and a
 * record that the thread's exit marks dead, which is how a writer proves
 * that the owner of a slot is gone. */
uint64_t aiorcu_thread_serial(void);

/* Domains and slots (domain.c) */
struct aiorcu_domain *aiorcu_domain_new(void);
void aiorcu_domain_free(struct aiorcu_domain *d);
uint8_t *aiorcu_domain_ctl(struct aiorcu_domain *d);
/* Claims a slot for the calling thread; -1 when the registry is full or
 * memory ran out.  `owner_tid` is kept for reports. */
int aiorcu_slot_alloc(struct aiorcu_domain *d, uint64_t owner_tid);
void *aiorcu_slot_line(struct aiorcu_domain *d, int slot);
/* Releases a slot whose owner is gone (or, owner 0, whoever owns it): its
 * counts are zeroed and its generations bumped.  Returns the open sections
 * dropped, or AIORCU_NOT_OWNER when `owner` does not own the slot. */
uint64_t aiorcu_slot_release(struct aiorcu_domain *d, int slot, uint64_t owner);
/* 1 when the slot's owner thread has provably exited, else 0. */
int aiorcu_slot_owner_dead(struct aiorcu_domain *d, int slot);
/* Releases the slot if its owner has provably exited, in one step; returns
 * the sections dropped (and the claim's token in *owner), or
 * AIORCU_NOT_OWNER when the owner is alive or the slot is free. */
uint64_t aiorcu_slot_release_if_dead(struct aiorcu_domain *d, int slot, uint64_t *owner);
/* The slot's owner word (the claim's token; 0: free) and counts (reports). */
uint64_t aiorcu_slot_counts(struct aiorcu_domain *d, int slot, uint64_t out[AIORCU_NCOUNTS]);
/* Releases one section from any thread, under the registry lock: unless the
 * slot was released since (generation changed), F2, decrement, F3, wake.
 * Returns 1 if it decremented, 0 if the slot's counts were already gone. */
int aiorcu_section_release(struct aiorcu_domain *d, void *line, int kind, int phase, uint64_t gen);
size_t aiorcu_blocking_slots(struct aiorcu_domain *d, int phase, int32_t *out, uint64_t *blocked_ns,
                             size_t max);
/* There is no after-fork call: fork handlers registered with the first
 * domain release every slot but the forking thread's in the child (the
 * caller adjusts that slot's task counts to what the child can leave). */
void aiorcu_domain_stats(struct aiorcu_domain *d, struct aiorcu_stats *out);
void aiorcu_domain_set_wait_mode(struct aiorcu_domain *d, int mode);
void aiorcu_domain_set_stall(struct aiorcu_domain *d, uint64_t first_ns, uint64_t max_ns);
/* The barrier mode readers of this domain must use (AIORCU_MECH_*). */
int aiorcu_domain_mechanism(struct aiorcu_domain *d);

/*
 * Shared domains (shared.c): one domain in a memory segment that several
 * processes map.  The caller maps the memory (a file in /dev/shm); the core
 * formats it, validates it, and never trusts a size or index read from it
 * again.  Each attached process owns an entry whose robust mutex a thread of
 * its own (the lifeline) holds until it leaves: the kernel marks the mutex
 * owner-dead when the process dies or execs, which proves the death, and
 * the writers then release the process's slots.
 */
size_t aiorcu_shared_size(uint32_t max_threads);
/* Formats `size` bytes at `mem` (creator).  `fence`: the domain's readers
 * use fences (else membarrier GLOBAL_EXPEDITED).  AIORCU_OK or an error. */
int aiorcu_shared_format(void *mem, size_t size, const char *name, uint32_t max_threads, int fence);
/* Validates a segment and returns a handle (not yet joined); on error NULL,
 * with a message in `why`. */
struct aiorcu_domain *aiorcu_shared_open(void *mem, size_t size, const char *name, char *why,
                                         size_t whylen);
/* Joins the domain: a process entry, its lifeline thread, the membarrier
 * registration.  AIORCU_OK, AIORCU_ESYS (errno set) or AIORCU_ENOMEM. */
int aiorcu_shared_join(struct aiorcu_domain *d);
/* Leaves: releases this process's slots and entry, stops the lifeline. */
void aiorcu_shared_leave(struct aiorcu_domain *d);
/* Frees a handle (after leave); the caller unmaps the memory afterwards. */
void aiorcu_shared_free(struct aiorcu_domain *d);
/* The domain's recorded mechanism, and whether this process has joined. */
int aiorcu_shared_joined(struct aiorcu_domain *d);
/* Releases the entries and slots of attached processes that provably died;
 * returns how many processes. */
int aiorcu_shared_reap(struct aiorcu_domain *d);
/* Fork (see shared.c): before the fork the parent makes a bridge slot
 * holding the sections the child keeps (counts by AIORCU_COUNT(kind,
 * phase)); the child, once joined, adopts it for the forking thread. */
int aiorcu_shared_fork_prepare(struct aiorcu_domain *d, const uint64_t counts[AIORCU_NCOUNTS]);
int aiorcu_shared_adopt(struct aiorcu_domain *d, uint64_t owner_tid);
/* For reports: a slot's owner pid and thread name (name: 16 bytes, the
 * owner names itself with set_name; other processes read it). */
void aiorcu_slot_set_name(struct aiorcu_domain *d, int slot, const char *name);
int aiorcu_slot_owner_info(struct aiorcu_domain *d, int slot, int32_t *pid, uint64_t *tid,
                           char *name);

/* Grace periods (grace.c) */
uint64_t aiorcu_snapshot(struct aiorcu_domain *d);
uint64_t aiorcu_completed(struct aiorcu_domain *d);
int aiorcu_synchronize(struct aiorcu_domain *d, uint64_t target, int64_t timeout_ns, int flags,
                       int caller_slot, aiorcu_stall_fn stall, void *stall_arg);
void aiorcu_wake(struct aiorcu_domain *d);
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
 * Bitmaps and guarded memory in a caller's buffer (buffer.c): a validated
 * header (with the commit lock, robust and process-shared), the words, and
 * for guarded memory the pages.  All functions take a view filled by
 * aiorcu_buffer_open, which trusts the header's numbers only once.
 */
#define AIORCU_BUF_BITMAP 1
#define AIORCU_BUF_MEMORY 2
#define AIORCU_RECOVERED  8 /* aiorcu_buffer_lock: the previous holder died */
struct aiorcu_buffer_view {
    int kind;
    uint64_t pages;
    uint64_t page_size;
    uint64_t *words;
    char *data;
    size_t data_len;
    char domain[AIORCU_NAME_MAX];
    void *header;
};
size_t aiorcu_buffer_size(uint64_t pages, uint64_t page_size);
int aiorcu_buffer_format(void *mem, size_t len, uint64_t pages, uint64_t page_size,
                         const char *domain);
int aiorcu_buffer_open(void *mem, size_t len, struct aiorcu_buffer_view *v, char *why,
                       size_t whylen);
int aiorcu_buffer_lock(const struct aiorcu_buffer_view *v, int try_only);
void aiorcu_buffer_unlock(const struct aiorcu_buffer_view *v);
int aiorcu_buffer_apply(const struct aiorcu_buffer_view *v, const struct aiorcu_bitmap_op *ops,
                        size_t n, uint64_t out[3]);
uint64_t aiorcu_buffer_flush_token(const struct aiorcu_buffer_view *v);
void aiorcu_buffer_set_flush_token(const struct aiorcu_buffer_view *v, uint64_t token);
int aiorcu_buffer_take_unflushed(const struct aiorcu_buffer_view *v);
void aiorcu_buffer_mark_unflushed(const struct aiorcu_buffer_view *v);

/*
 * C read sections (reader.c), for C programs and the stress harness; the
 * Python extension (csrc/hotpath.c) uses the same inline steps of reader.h.
 * A reader is one thread's registration in a domain; a section is one
 * `with`/`async with`, entered once and left exactly once, in any order.
 */
struct aiorcu_reader {
    struct aiorcu_domain *d;
    void *line; /* struct aiorcu_reader_line * */
    int slot;
    int fence;      /* the domain's barrier mode is fences */
    uint64_t token; /* the slot's owner word when this reader claimed it */
};
struct aiorcu_section {
    void *line;
    uint64_t gen;
    uint64_t thread; /* aiorcu_thread_serial() of the entering thread */
    int kind;
    int phase;
    int state; /* AIORCU_SECTION_* */
};
#define AIORCU_SECTION_NEW    0
#define AIORCU_SECTION_OPEN   1
#define AIORCU_SECTION_CLOSED 2

int aiorcu_reader_init(struct aiorcu_reader *r, struct aiorcu_domain *d);
void aiorcu_reader_fini(struct aiorcu_reader *r);
void aiorcu_section_enter(struct aiorcu_reader *r, struct aiorcu_section *s, int kind);
/* Leaves a section on any thread: the lock-free path on the entering
 * thread, aiorcu_section_release() elsewhere.  Returns 0, or -1 if the
 * section was not open (never entered, or left already). */
int aiorcu_section_leave(struct aiorcu_reader *r, struct aiorcu_section *s);
/* Debug: called between a C reader's phase load and its count increment. */
extern void (*aiorcu_debug_reader_delay)(void);
/* Debug: the writer sleeps a random 0..max_ns (nanosleep, no callback) at
 * some of the steps of each grace period; 0 turns it off.  Process-wide.
 * Returns the previous setting. */
uint64_t aiorcu_debug_set_writer_jitter(uint64_t max_ns);

#endif /* AIORCU_H */
