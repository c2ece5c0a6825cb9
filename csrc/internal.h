/* Private layout of a domain; shared by domain.c, grace.c and reader.c. */
#ifndef AIORCU_INTERNAL_H
#define AIORCU_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "aiorcu.h"

/* A reader slot: one cache line, flags first.  Only the owner thread writes
 * flags; the writer reads them during scans, under the registry lock. */
struct aiorcu_slot {
    _Atomic uint8_t flags[AIORCU_NFLAGS];
    uint8_t in_use;           /* registry lock */
    uint8_t pad0[3];
    uint64_t owner_tid;       /* registry lock; diagnostics only */
    uint64_t first_blocked;   /* writer mutex: when a scan first saw it block */
    uint64_t blocked_gp;      /* writer mutex: which grace period that was */
    uint8_t pad[AIORCU_CACHELINE - 4 - 4 - 3 * 8];
};
_Static_assert(sizeof(struct aiorcu_slot) == AIORCU_CACHELINE,
               "a slot is one cache line");

struct aiorcu_ctl {
    /* [AIORCU_CTL_PHASE]: written by the writer, read by every reader entry.
     * [AIORCU_CTL_WAITING + p]: set by a writer about to sleep until phase p
     * drains, read by readers after they clear a phase-p flag. */
    _Atomic uint8_t bytes[AIORCU_CTL_SIZE];
    uint8_t pad[AIORCU_CACHELINE - AIORCU_CTL_SIZE];
};

struct aiorcu_domain {
    struct aiorcu_ctl ctl; /* first: its own cache line */

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
};

static inline struct aiorcu_slot *aiorcu__slot(struct aiorcu_domain *d, int i)
{
    return &d->chunks[i / AIORCU_CHUNK_SLOTS][i % AIORCU_CHUNK_SLOTS];
}

/* The heavy barrier of a grace period: membarrier(PRIVATE_EXPEDITED), or a
 * full fence in fence mode.  Returns 0, or -1 when no correct barrier could
 * be issued (errno set). */
int aiorcu__heavy_barrier(struct aiorcu_domain *d);

/* AIORCU_MECH_*, fixed by aiorcu_backend_init(). */
int aiorcu_backend_mechanism(void);

#endif
