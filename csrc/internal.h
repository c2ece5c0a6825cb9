/* Private layout of a domain; shared by the core's .c files. */
#ifndef AIORCU_INTERNAL_H
#define AIORCU_INTERNAL_H

#include <pthread.h>

#include "aiorcu.h"

/* A thread's record: its serial, and a robust mutex the thread holds for
 * its whole life, which the kernel marks owner-dead when it exits (thread.c). */
struct aiorcu_thread {
    pthread_mutex_t life;
    uint64_t serial;
    _Atomic int dead;              /* 1 once EOWNERDEAD was observed */
    _Atomic uint32_t refs;         /* slots that refer to this record */
    struct aiorcu_thread *next;    /* all records (thread.c's records_lock) */
};

/* The calling thread's record, made on first use; NULL without memory. */
struct aiorcu_thread *aiorcu__thread_self(void);
/* The calling thread's record if it has one (never allocates). */
struct aiorcu_thread *aiorcu__thread_peek(void);
/* 1 when the record's thread has provably exited. */
int aiorcu__thread_dead(struct aiorcu_thread *t);
void aiorcu__thread_get(struct aiorcu_thread *t);
void aiorcu__thread_put(struct aiorcu_thread *t);
/* Fork handlers of thread.c, called by domain.c's. */
void aiorcu__threads_before_fork(void);
void aiorcu__threads_after_fork(int child);

/* A reader slot: the reader line, then a line for the registry and the
 * writer, so that a writer noting when a slot first blocked it never
 * touches the line its reader writes. */
struct aiorcu_slot {
    struct aiorcu_reader_line line;
    /* registry lock */
    struct aiorcu_thread *life; /* the owner's record, referenced */
    uint64_t owner_tid;         /* diagnostics only */
    uint8_t in_use;
    uint8_t pad0[7];
    /* writer mutex */
    uint64_t first_blocked; /* when a scan first saw it block */
    uint64_t blocked_gp;    /* which grace period that was */
    uint8_t pad[AIORCU_CACHELINE - 5 * 8];
};
_Static_assert(sizeof(struct aiorcu_slot) == 2 * AIORCU_CACHELINE, "a slot is two cache lines");

struct aiorcu_ctl {
    /* [AIORCU_CTL_PHASE]: written by the writer, read by every reader entry.
     * [AIORCU_CTL_WAITING + p]: set by a writer about to sleep until phase p
     * drains, read by readers whose phase-p count went 1 -> 0. */
    _Atomic uint8_t bytes[AIORCU_CTL_SIZE];
    uint8_t pad[AIORCU_CACHELINE - AIORCU_CTL_SIZE];
};

struct aiorcu_domain {
    struct aiorcu_ctl ctl; /* first: its own cache line */

    /* every live domain, for the fork handlers (domain list lock) */
    struct aiorcu_domain *prev_domain, *next_domain;

    _Alignas(AIORCU_CACHELINE) _Atomic int32_t futex; /* -1: writer asleep */

    _Alignas(AIORCU_CACHELINE) pthread_mutex_t writer_lock;
    pthread_mutex_t registry_lock;
    _Atomic uint64_t started;   /* writer mutex; read with acquire */
    _Atomic uint64_t completed; /* release store after M3 */

    /* registry lock */
    struct aiorcu_slot **chunks;
    size_t nchunks;
    size_t slots_live;

    /* writer mutex */
    int wait_mode;
    uint64_t stall_first_ns;
    uint64_t stall_max_ns;

    /* statistics: relaxed atomics, any thread */
    _Atomic uint64_t grace_periods;
    _Atomic uint64_t membarrier_calls;
    _Atomic uint64_t barriers_elided;
    _Atomic uint64_t barrier_fallbacks;
    _Atomic uint64_t futex_sleeps;
    _Atomic uint64_t wakeups;
    _Atomic uint64_t backstop_timeouts;
    _Atomic uint64_t timeouts;
    _Atomic uint64_t dead_readers_released;
};

static inline struct aiorcu_slot *aiorcu__slot(struct aiorcu_domain *d, int i)
{
    return &d->chunks[i / AIORCU_CHUNK_SLOTS][i % AIORCU_CHUNK_SLOTS];
}

/* Whether slot i exists (registry lock held). */
static inline int aiorcu__slot_valid(struct aiorcu_domain *d, int i)
{
    return i >= 0 && (size_t)i < d->nchunks * AIORCU_CHUNK_SLOTS;
}

/* The heavy barrier of a grace period: membarrier(PRIVATE_EXPEDITED), or a
 * full fence in fence mode.  Returns 0, or -1 when no correct barrier could
 * be issued (errno set). */
int aiorcu__heavy_barrier(struct aiorcu_domain *d);

#endif
