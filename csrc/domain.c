/* Domains and their registry of per-thread reader slots. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define STALL_FIRST_NS 100000000ull   /* 100 ms */
#define STALL_MAX_NS 10000000000ull   /* 10 s */

static void init_locks(struct aiorcu_domain *d)
{
    pthread_mutex_init(&d->writer_lock, NULL);
    pthread_mutex_init(&d->registry_lock, NULL);
}

struct aiorcu_domain *aiorcu_domain_new(void)
{
    struct aiorcu_domain *d = aligned_alloc(AIORCU_CACHELINE, sizeof *d);
    if (!d)
        return NULL;
    memset(d, 0, sizeof *d);
    init_locks(d);
    d->wait_mode = AIORCU_WAIT_FUTEX;
    d->stall_first_ns = STALL_FIRST_NS;
    d->stall_max_ns = STALL_MAX_NS;
    return d;
}

void aiorcu_domain_free(struct aiorcu_domain *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nchunks; i++)
        free(d->chunks[i]);
    free(d->chunks);
    pthread_mutex_destroy(&d->writer_lock);
    pthread_mutex_destroy(&d->registry_lock);
    free(d);
}

uint8_t *aiorcu_domain_ctl(struct aiorcu_domain *d)
{
    return (uint8_t *)d->ctl.bytes;
}

static int grow(struct aiorcu_domain *d)
{
    if ((d->nchunks + 1) * AIORCU_CHUNK_SLOTS > AIORCU_MAX_SLOTS)
        return -1;
    struct aiorcu_slot **chunks = realloc(d->chunks, (d->nchunks + 1) * sizeof *chunks);
    if (!chunks)
        return -1;
    d->chunks = chunks;
    struct aiorcu_slot *chunk =
        aligned_alloc(AIORCU_CACHELINE, AIORCU_CHUNK_SLOTS * sizeof *chunk);
    if (!chunk)
        return -1;
    memset(chunk, 0, AIORCU_CHUNK_SLOTS * sizeof *chunk);
    d->chunks[d->nchunks++] = chunk;
    return 0;
}

/* Returns a slot index owned by the calling thread, or -1 when the registry
 * is full or memory ran out.  Registration happens under the registry lock,
 * which a scanning writer also holds: a reader registered after a scan's
 * unlock enters after the writer's M1, so it sees the writer's update. */
int aiorcu_slot_alloc(struct aiorcu_domain *d, uint64_t owner_tid)
{
    int found = -1;
    pthread_mutex_lock(&d->registry_lock);
    for (size_t i = 0; i < d->nchunks * AIORCU_CHUNK_SLOTS && found < 0; i++)
        if (!aiorcu__slot(d, (int)i)->in_use)
            found = (int)i;
    if (found < 0 && grow(d) == 0)
        found = (int)((d->nchunks - 1) * AIORCU_CHUNK_SLOTS);
    if (found >= 0) {
        struct aiorcu_slot *s = aiorcu__slot(d, found);
        for (int f = 0; f < AIORCU_NFLAGS; f++)
            atomic_store_explicit(&s->flags[f], 0, memory_order_relaxed);
        s->in_use = 1;
        s->owner_tid = owner_tid;
        s->blocked_gp = 0;
        d->slots_live++;
    }
    pthread_mutex_unlock(&d->registry_lock);
    return found;
}

uint8_t *aiorcu_slot_flags(struct aiorcu_domain *d, int slot)
{
    /* Registry lock: a concurrent grow() may reallocate the chunk table.
     * The slot itself never moves: chunks are only ever added. */
    pthread_mutex_lock(&d->registry_lock);
    uint8_t *flags = (uint8_t *)aiorcu__slot(d, slot)->flags;
    pthread_mutex_unlock(&d->registry_lock);
    return flags;
}

static void clear_flags(struct aiorcu_slot *s)
{
    for (int f = 0; f < AIORCU_NFLAGS; f++)
        /* Release: whatever the releasing thread did before is ordered before
         * a writer's scan that sees the zero (pairs with the scan's load and
         * the M3 that follows it). */
        atomic_store_explicit(&s->flags[f], 0, memory_order_release);
}

/* Forget whatever sections the slot's owner left open, keeping the slot.
 * Used when those sections can never be left normally. */
void aiorcu_slot_clear(struct aiorcu_domain *d, int slot)
{
    pthread_mutex_lock(&d->registry_lock);
    clear_flags(aiorcu__slot(d, slot));
    pthread_mutex_unlock(&d->registry_lock);
    aiorcu_wake(d);
}

/* Frees the slot of a thread that is gone.  The flags are cleared before the
 * slot is marked free, under the registry lock: once another thread can
 * allocate the slot, nothing of the old owner's may touch it again. */
void aiorcu_slot_release(struct aiorcu_domain *d, int slot)
{
    pthread_mutex_lock(&d->registry_lock);
    struct aiorcu_slot *s = aiorcu__slot(d, slot);
    if (s->in_use) {
        clear_flags(s);
        s->in_use = 0;
        d->slots_live--;
    }
    pthread_mutex_unlock(&d->registry_lock);
    aiorcu_wake(d);
}

/* Lists the slots that still hold `phase` open, with how long each has
 * blocked the running grace period (writer mutex held by the caller). */
size_t aiorcu_blocking_slots(struct aiorcu_domain *d, int phase, int32_t *out,
                             uint64_t *blocked_ns, size_t max)
{
    size_t n = 0;
    uint64_t now = aiorcu_monotonic_ns();
    pthread_mutex_lock(&d->registry_lock);
    for (size_t i = 0; i < d->nchunks * AIORCU_CHUNK_SLOTS && n < max; i++) {
        struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
        if (!s->in_use)
            continue;
        if (atomic_load_explicit(&s->flags[AIORCU_FLAG_THREAD + phase], memory_order_relaxed) ||
            atomic_load_explicit(&s->flags[AIORCU_FLAG_TASK + phase], memory_order_relaxed)) {
            out[n] = (int32_t)i;
            blocked_ns[n] = s->blocked_gp ? now - s->first_blocked : 0;
            n++;
        }
    }
    pthread_mutex_unlock(&d->registry_lock);
    return n;
}

/* In a fork child only the forking thread exists: every other slot is a
 * phantom reader.  Locks may have been held by threads that are gone. */
void aiorcu_domain_after_fork(struct aiorcu_domain *d, int keep_slot)
{
    init_locks(d);
    atomic_store(&d->futex, 0);
    atomic_store(&d->ctl.bytes[AIORCU_CTL_WAITING + 0], 0);
    atomic_store(&d->ctl.bytes[AIORCU_CTL_WAITING + 1], 0);
    /* An interrupted grace period is abandoned like a timed-out one: the
     * phase stays flipped and `completed` does not advance. */
    d->slots_live = 0;
    for (size_t i = 0; i < d->nchunks * AIORCU_CHUNK_SLOTS; i++) {
        struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
        if ((int)i == keep_slot && s->in_use) {
            d->slots_live++;
            continue;
        }
        s->in_use = 0;
        for (int f = 0; f < AIORCU_NFLAGS; f++)
            atomic_store(&s->flags[f], 0);
    }
}

void aiorcu_domain_stats(struct aiorcu_domain *d, struct aiorcu_stats *o)
{
    o->started = atomic_load(&d->started);
    o->completed = atomic_load(&d->completed);
    o->grace_periods = atomic_load(&d->grace_periods);
    o->membarrier_calls = atomic_load(&d->membarrier_calls);
    o->barriers_elided = atomic_load(&d->barriers_elided);
    o->barrier_fallbacks = atomic_load(&d->barrier_fallbacks);
    o->futex_sleeps = atomic_load(&d->futex_sleeps);
    o->wakeups = atomic_load(&d->wakeups);
    o->backstop_timeouts = atomic_load(&d->backstop_timeouts);
    o->timeouts = atomic_load(&d->timeouts);
    pthread_mutex_lock(&d->registry_lock);
    o->slots_live = d->slots_live;
    o->slots_capacity = d->nchunks * AIORCU_CHUNK_SLOTS;
    pthread_mutex_unlock(&d->registry_lock);
}

void aiorcu_domain_set_wait_mode(struct aiorcu_domain *d, int mode)
{
    pthread_mutex_lock(&d->writer_lock);
    d->wait_mode = mode;
    pthread_mutex_unlock(&d->writer_lock);
}

void aiorcu_domain_set_stall(struct aiorcu_domain *d, uint64_t first_ns, uint64_t max_ns)
{
    pthread_mutex_lock(&d->writer_lock);
    d->stall_first_ns = first_ns;
    d->stall_max_ns = max_ns;
    pthread_mutex_unlock(&d->writer_lock);
}
