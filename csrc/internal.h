/* Private layout of a domain; shared by the core's .c files. */
#ifndef AIORCU_INTERNAL_H
#define AIORCU_INTERNAL_H

#include <errno.h>
#include <pthread.h>

#include "aiorcu.h"

/* A thread's record: its serial, and a robust mutex the thread holds for
 * its whole life, which the kernel marks owner-dead when it exits (thread.c). */
struct aiorcu_thread {
    pthread_mutex_t life;
    uint64_t serial;
    _Atomic int dead;           /* 1 once EOWNERDEAD was observed */
    _Atomic uint32_t refs;      /* slots that refer to this record */
    struct aiorcu_thread *next; /* all records (thread.c's records_lock) */
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
 * touches the line its reader writes.  In a shared segment, `life` is a
 * pointer of the owning process (only it may follow it), `proc` the index
 * of that process's entry and `proc_gen` that entry's generation. */
struct aiorcu_slot {
    struct aiorcu_reader_line line;
    /* registry lock */
    struct aiorcu_thread *life; /* the owner's record (private; shared: d->lives) */
    uint64_t owner_tid;         /* reports */
    int32_t proc;               /* shared: owner's process entry; -1 private */
    int32_t pid;                /* shared: reports */
    uint32_t proc_gen;          /* shared: that entry's generation at claim */
    uint8_t in_use;
    uint8_t pad0[3];
    char name[16]; /* shared: owner thread's name, for other processes' reports */
    /* writer mutex */
    uint64_t first_blocked; /* when a scan first saw it block */
    uint64_t blocked_gp;    /* which grace period that was */
};
_Static_assert(sizeof(struct aiorcu_slot) == 2 * (size_t)AIORCU_CACHELINE,
               "a slot is two cache lines");

struct aiorcu_ctl {
    /* [AIORCU_CTL_PHASE]: written by the writer, read by every reader entry.
     * [AIORCU_CTL_WAITING + p]: set by a writer about to sleep until phase p
     * drains, read by readers whose phase-p count went 1 -> 0. */
    _Atomic uint8_t bytes[AIORCU_CTL_SIZE];
    uint8_t pad[AIORCU_CACHELINE - AIORCU_CTL_SIZE];
};

/* The state every reader and writer of a domain shares.  A private domain
 * keeps it in its own allocation; a shared domain in its segment, where the
 * mutexes are robust and process-shared. */
struct aiorcu_state {
    struct aiorcu_ctl ctl; /* first: its own cache line */

    _Alignas(AIORCU_CACHELINE) _Atomic int32_t futex; /* -1: a writer sleeps */

    _Alignas(AIORCU_CACHELINE) pthread_mutex_t writer_lock;
    pthread_mutex_t registry_lock;
    _Atomic uint64_t started;    /* writer mutex; read with acquire */
    _Atomic uint64_t completed;  /* release store after M3 */
    _Atomic uint64_t next_owner; /* owner tokens of claimed slots */
    uint64_t slots_live;         /* registry lock */

    /* statistics: relaxed atomics, any thread (of any attached process) */
    _Atomic uint64_t grace_periods;
    _Atomic uint64_t membarrier_calls;
    _Atomic uint64_t barriers_elided;
    _Atomic uint64_t barrier_fallbacks;
    _Atomic uint64_t futex_sleeps;
    _Atomic uint64_t wakeups;
    _Atomic uint64_t backstop_timeouts;
    _Atomic uint64_t timeouts;
    _Atomic uint64_t dead_readers_released;
    _Atomic uint64_t writer_recoveries; /* writer mutex found owner-dead */
};

struct aiorcu_segment; /* shared.c */

/* A process's handle on a domain. */
struct aiorcu_domain {
    struct aiorcu_state *st;
    int shared;
    int mechanism; /* AIORCU_MECH_* the domain's readers use */

    /* private: a growable table of slot chunks (registry lock) */
    struct aiorcu_slot **chunks;
    size_t nchunks;
    /* shared: the fixed table of the segment, and this process's part */
    struct aiorcu_segment *seg;
    struct aiorcu_slot *table;
    size_t ntable;
    /* shared: the owner records of this process's slots, by slot index.
     * Kept here, never in the segment: no pointer read from shared memory
     * is ever followed. */
    struct aiorcu_thread **lives;

    /* process-local writer settings (writer mutex) */
    int wait_mode;
    uint64_t stall_first_ns;
    uint64_t stall_max_ns;

    /* every live domain of this process, for the fork handlers */
    struct aiorcu_domain *prev_domain, *next_domain;

    struct aiorcu_state local; /* a private domain's state */
};

static inline size_t aiorcu__nslots(struct aiorcu_domain *d)
{
    return d->shared ? d->ntable : d->nchunks * AIORCU_CHUNK_SLOTS;
}

static inline struct aiorcu_slot *aiorcu__slot(struct aiorcu_domain *d, int i)
{
    if (d->shared)
        return &d->table[i];
    return &d->chunks[i / AIORCU_CHUNK_SLOTS][i % AIORCU_CHUNK_SLOTS];
}

/* A shared slot released for a dead process rests before it is claimed
 * again.  Death is proven per process (its lifeline thread's robust mutex);
 * the SIGKILL that killed the lifeline stops the process's other threads
 * too, but a thread running on another CPU at that moment may execute a
 * few more instructions (until the kill's interrupt reaches it), such as
 * the decrement of its section count.  Landing in a free slot, that store
 * is harmless (a claim zeroes the counts); landing in a new owner's counts,
 * it would end a section that is still open.  The rest outlasts that
 * window by orders of magnitude.  Marked in the slot's stall fields, which
 * a free slot does not use. */
#define AIORCU_QUARANTINE_GP UINT64_MAX
#define AIORCU_QUARANTINE_NS 100000000ull

static inline void aiorcu__quarantine(struct aiorcu_slot *s, uint64_t now)
{
    s->blocked_gp = AIORCU_QUARANTINE_GP;
    s->first_blocked = now;
}

static inline int aiorcu__resting(const struct aiorcu_slot *s, uint64_t now)
{
    return s->blocked_gp == AIORCU_QUARANTINE_GP && now - s->first_blocked < AIORCU_QUARANTINE_NS;
}

/* Where a slot's owner record is kept (registry lock held): in the slot
 * for a private domain, in this process's own table for a shared one
 * (NULL there for every slot another process owns). */
static inline struct aiorcu_thread **aiorcu__life(struct aiorcu_domain *d, struct aiorcu_slot *s)
{
    return d->shared ? &d->lives[s - d->table] : &s->life;
}

/* Whether slot i exists (registry lock held). */
static inline int aiorcu__slot_valid(struct aiorcu_domain *d, int i)
{
    return i >= 0 && (size_t)i < aiorcu__nslots(d);
}

/* Locks a domain mutex.  In a segment the mutexes are robust: a process that
 * died holding one hands it over owner-dead; the state it guards is made
 * consistent by the caller's protocol (every registry operation is
 * idempotent, an interrupted grace period is an abandoned one).  Returns 0,
 * 1 when the previous owner died, or -1 when the mutex is unusable. */
static inline int aiorcu__lock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_lock(m);
    if (rc == 0)
        return 0;
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        return 1;
    }
    return -1;
}

/* Handles and the registry, shared by domain.c and shared.c. */
struct aiorcu_domain *aiorcu__domain_alloc(void);
void aiorcu__domain_link(struct aiorcu_domain *d);
void aiorcu__domain_unlink(struct aiorcu_domain *d);
uint64_t aiorcu__drop_owner(struct aiorcu_domain *d, struct aiorcu_slot *s); /* lock held */
int aiorcu__registry_lock(struct aiorcu_domain *d);
void aiorcu__registry_unlock(struct aiorcu_domain *d);

/* shared.c's part of the registry (registry lock held where it matters). */
int aiorcu__shared_my_proc(struct aiorcu_domain *d); /* this process's entry, or -1 */
void aiorcu__shared_claim(struct aiorcu_domain *d, struct aiorcu_slot *s);
uint64_t aiorcu__shared_live_processes(struct aiorcu_domain *d);
void aiorcu__shared_before_fork(struct aiorcu_domain *d);
void aiorcu__shared_after_fork_parent(struct aiorcu_domain *d);
void aiorcu__shared_after_fork_child(struct aiorcu_domain *d);

/* The heavy barrier of a grace period: membarrier(PRIVATE_EXPEDITED), or
 * GLOBAL_EXPEDITED for a shared domain, or a full fence in fence mode.
 * Returns 0, or -1 when no correct barrier could be issued (errno set). */
int aiorcu__heavy_barrier(struct aiorcu_domain *d);

/* shared.c, for the writer: releases the slots of dead processes that hold
 * `phase` open (registry lock not held); returns how many processes. */
int aiorcu__reap_dead(struct aiorcu_domain *d, int phase);

#endif
