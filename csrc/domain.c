/* Domains and their registry of per-thread reader slots. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "reader.h"

#define STALL_FIRST_NS 1000000000ull  /* 1 s */
#define STALL_MAX_NS   60000000000ull /* 60 s */

static void init_locks(struct aiorcu_state *st)
{
    pthread_mutex_init(&st->writer_lock, NULL);
    pthread_mutex_init(&st->registry_lock, NULL);
}

int aiorcu__registry_lock(struct aiorcu_domain *d)
{
    return aiorcu__lock(&d->st->registry_lock);
}

void aiorcu__registry_unlock(struct aiorcu_domain *d)
{
    pthread_mutex_unlock(&d->st->registry_lock);
}

/* --- fork -----------------------------------------------------------------
 *
 * A child of fork() has one thread: the one that forked.  Every other
 * thread's slot is a phantom reader, and a lock another thread held at the
 * fork stays held forever.  So before fork() the prepare handler takes the
 * domain list lock and every registry lock (held only briefly, never while
 * waiting for the GIL), and the child handler, which runs inside fork()
 * before any other code of the child, drops every slot of a private domain
 * that the forking thread does not own and re-initialises its locks.  The
 * writer mutex may be held for a whole grace period, so it is not taken
 * before the fork; the child re-initialises it, abandoning an interrupted
 * grace period like a timed-out one (the phase stays flipped, `completed`
 * does not move).  Which of the forking thread's own task sections the
 * child keeps is decided later, by the Python extension (it needs the
 * context).
 *
 * A shared domain's state is in a segment other processes still use: the
 * child changes none of it.  The parent's handler unlocks the segment's
 * registry lock (the child's copy of the mapping is the same memory), the
 * child forgets its parent's process entry, and the Python side joins again
 * (shared.c: aiorcu_shared_forked).
 */
static pthread_mutex_t domains_lock = PTHREAD_MUTEX_INITIALIZER;
static struct aiorcu_domain *domains;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void before_fork(void)
{
    aiorcu__threads_before_fork();
    pthread_mutex_lock(&domains_lock);
    for (struct aiorcu_domain *d = domains; d; d = d->next_domain) {
        aiorcu__registry_lock(d);
        if (d->shared)
            aiorcu__shared_before_fork(d);
    }
}

static void after_fork_parent(void)
{
    for (struct aiorcu_domain *d = domains; d; d = d->next_domain) {
        aiorcu__registry_unlock(d);
        if (d->shared)
            aiorcu__shared_after_fork_parent(d);
    }
    pthread_mutex_unlock(&domains_lock);
    aiorcu__threads_after_fork(0);
}

static void after_fork_child(void)
{
    struct aiorcu_thread *me = aiorcu__thread_peek();
    uint64_t serial = me ? me->serial : 0;
    for (struct aiorcu_domain *d = domains; d; d = d->next_domain) {
        if (d->shared) {
            aiorcu__shared_after_fork_child(d);
            continue;
        }
        struct aiorcu_state *st = d->st;
        init_locks(st);
        atomic_store(&st->futex, 0);
        atomic_store(&st->ctl.bytes[AIORCU_CTL_WAITING + 0], 0);
        atomic_store(&st->ctl.bytes[AIORCU_CTL_WAITING + 1], 0);
        /* Phantoms are not deaths: dead_readers_released stays as it was. */
        uint64_t dead = atomic_load(&st->dead_readers_released);
        for (size_t i = 0; i < aiorcu__nslots(d); i++) {
            struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
            if (s->in_use && (!serial || !s->life || s->life->serial != serial))
                aiorcu__drop_owner(d, s);
        }
        atomic_store(&st->dead_readers_released, dead);
    }
    pthread_mutex_init(&domains_lock, NULL);
    aiorcu__threads_after_fork(1);
}

static void register_atfork(void)
{
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* Links a new handle into the fork handlers' list. */
void aiorcu__domain_link(struct aiorcu_domain *d)
{
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&domains_lock);
    d->next_domain = domains;
    if (domains)
        domains->prev_domain = d;
    domains = d;
    pthread_mutex_unlock(&domains_lock);
}

void aiorcu__domain_unlink(struct aiorcu_domain *d)
{
    pthread_mutex_lock(&domains_lock);
    if (d->prev_domain)
        d->prev_domain->next_domain = d->next_domain;
    else
        domains = d->next_domain;
    if (d->next_domain)
        d->next_domain->prev_domain = d->prev_domain;
    d->prev_domain = d->next_domain = NULL;
    pthread_mutex_unlock(&domains_lock);
}

/* A handle with process-local defaults; `st` is set by the caller. */
struct aiorcu_domain *aiorcu__domain_alloc(void)
{
    struct aiorcu_domain *d = aligned_alloc(AIORCU_CACHELINE, sizeof *d);
    if (!d)
        return NULL;
    memset(d, 0, sizeof *d);
    d->wait_mode = AIORCU_WAIT_FUTEX;
    d->stall_first_ns = STALL_FIRST_NS;
    d->stall_max_ns = STALL_MAX_NS;
    return d;
}

struct aiorcu_domain *aiorcu_domain_new(void)
{
    struct aiorcu_domain *d = aiorcu__domain_alloc();
    if (!d)
        return NULL;
    d->st = &d->local;
    d->mechanism = aiorcu_backend_mechanism();
    init_locks(d->st);
    aiorcu__domain_link(d);
    return d;
}

/* Drops the slot's owner (registry lock held): counts zeroed, generations
 * bumped, the owner's record released.  Returns the sections dropped. */
uint64_t aiorcu__drop_owner(struct aiorcu_domain *d, struct aiorcu_slot *s)
{
    uint64_t open = 0;
    for (int i = 0; i < AIORCU_NCOUNTS; i++)
        /* Release: whatever the releasing thread did before is ordered
         * before a writer's scan that sees the zero (pairs with the scan's
         * load and the M3 that follows it). */
        open += atomic_exchange_explicit(&s->line.count[i], 0, memory_order_release);
    for (int k = 0; k < AIORCU_NKINDS; k++)
        /* Relaxed: read under the registry lock by foreign releases, and by
         * the owner, which no longer exists or is this thread (fork). */
        atomic_fetch_add_explicit(&s->line.gen[k], 1, memory_order_relaxed);
    atomic_store_explicit(&s->line.owner, 0, memory_order_relaxed);
    /* A shared slot's record belongs to its process, which alone keeps it
     * (another process releasing the slot finds NULL here). */
    struct aiorcu_thread **life = aiorcu__life(d, s);
    if (*life)
        aiorcu__thread_put(*life);
    *life = NULL;
    s->in_use = 0;
    d->st->slots_live--;
    if (open)
        atomic_fetch_add_explicit(&d->st->dead_readers_released, 1, memory_order_relaxed);
    return open;
}

void aiorcu_domain_free(struct aiorcu_domain *d)
{
    if (!d || d->shared)
        return; /* shared handles: aiorcu_shared_free */
    aiorcu__domain_unlink(d);
    for (size_t i = 0; i < aiorcu__nslots(d); i++) {
        struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
        if (s->in_use && s->life)
            aiorcu__thread_put(s->life);
    }
    for (size_t i = 0; i < d->nchunks; i++)
        free(d->chunks[i]);
    free(d->chunks);
    pthread_mutex_destroy(&d->st->writer_lock);
    pthread_mutex_destroy(&d->st->registry_lock);
    free(d);
}

uint8_t *aiorcu_domain_ctl(struct aiorcu_domain *d)
{
    return (uint8_t *)d->st->ctl.bytes;
}

int aiorcu_domain_mechanism(struct aiorcu_domain *d)
{
    return d->mechanism;
}

static int grow(struct aiorcu_domain *d)
{
    if (d->shared || (d->nchunks + 1) * AIORCU_CHUNK_SLOTS > AIORCU_MAX_SLOTS)
        return -1;
    struct aiorcu_slot **chunks = realloc(d->chunks, (d->nchunks + 1) * sizeof *chunks);
    if (!chunks)
        return -1;
    d->chunks = chunks;
    struct aiorcu_slot *chunk = aligned_alloc(AIORCU_CACHELINE, AIORCU_CHUNK_SLOTS * sizeof *chunk);
    if (!chunk)
        return -1;
    memset(chunk, 0, AIORCU_CHUNK_SLOTS * sizeof *chunk);
    d->chunks[d->nchunks++] = chunk;
    return 0;
}

/* Takes back the slots of this process's threads that provably exited
 * without releasing theirs (registry lock held); returns one freed slot,
 * or -1.  In a shared domain only this process's records may be followed. */
static int reclaim_dead_thread(struct aiorcu_domain *d)
{
    for (size_t i = 0; i < aiorcu__nslots(d); i++) {
        struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
        struct aiorcu_thread *life = *aiorcu__life(d, s);
        if (!s->in_use || !life || (d->shared && s->proc != aiorcu__shared_my_proc(d)))
            continue;
        if (aiorcu__thread_dead(life)) {
            aiorcu__drop_owner(d, s);
            return (int)i;
        }
    }
    return -1;
}

/* Returns a slot index owned by the calling thread, or -1 when the registry
 * is full or memory ran out.  Registration happens under the registry lock,
 * which a scanning writer also holds: a reader registered after a scan's
 * unlock enters after the writer's M1, so it sees the writer's update.
 * When the registry is full, slots of threads that provably exited without
 * releasing theirs are taken back first.  The slot's owner word gets a new
 * token of the domain: a reader's cached slot stays valid exactly while the
 * token is there. */
int aiorcu_slot_alloc(struct aiorcu_domain *d, uint64_t owner_tid)
{
    struct aiorcu_thread *me = aiorcu__thread_self();
    if (!me || (d->shared && aiorcu__shared_my_proc(d) < 0))
        return -1;
    int found = -1;
    if (aiorcu__registry_lock(d) < 0)
        return -1;
    size_t n = aiorcu__nslots(d);
    uint64_t now = d->shared ? aiorcu_monotonic_ns() : 0;
    for (size_t i = 0; i < n && found < 0; i++) {
        struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
        if (!s->in_use && !(d->shared && aiorcu__resting(s, now)))
            found = (int)i;
    }
    if (found < 0 && grow(d) == 0)
        found = (int)((d->nchunks - 1) * AIORCU_CHUNK_SLOTS);
    if (found < 0)
        found = reclaim_dead_thread(d);
    if (found >= 0) {
        struct aiorcu_slot *s = aiorcu__slot(d, found);
        for (int i = 0; i < AIORCU_NCOUNTS; i++)
            atomic_store_explicit(&s->line.count[i], 0, memory_order_relaxed);
        uint64_t token = atomic_fetch_add_explicit(&d->st->next_owner, 1, memory_order_relaxed) + 1;
        atomic_store_explicit(&s->line.owner, token, memory_order_relaxed);
        aiorcu__thread_get(me);
        *aiorcu__life(d, s) = me;
        s->in_use = 1;
        s->owner_tid = owner_tid;
        s->blocked_gp = 0;
        if (d->shared)
            aiorcu__shared_claim(d, s);
        else
            s->proc = -1;
        d->st->slots_live++;
    }
    aiorcu__registry_unlock(d);
    return found;
}

void *aiorcu_slot_line(struct aiorcu_domain *d, int slot)
{
    /* Registry lock: a concurrent grow() may reallocate the chunk table.
     * The slot itself never moves: chunks are only ever added. */
    if (aiorcu__registry_lock(d) < 0)
        return NULL;
    void *line = aiorcu__slot_valid(d, slot) ? &aiorcu__slot(d, slot)->line : NULL;
    aiorcu__registry_unlock(d);
    return line;
}

/* Frees the slot of a thread that is gone.  The counts are dropped before
 * the slot is marked free, under the registry lock: once another thread can
 * claim the slot, nothing of the old owner's may change it again (their
 * sections carry the old generation).  `owner` is the slot's owner token
 * (0: whoever owns it). */
uint64_t aiorcu_slot_release(struct aiorcu_domain *d, int slot, uint64_t owner)
{
    uint64_t open = AIORCU_NOT_OWNER;
    if (aiorcu__registry_lock(d) < 0)
        return open;
    if (aiorcu__slot_valid(d, slot)) {
        struct aiorcu_slot *s = aiorcu__slot(d, slot);
        uint64_t current = atomic_load_explicit(&s->line.owner, memory_order_relaxed);
        if (s->in_use && (owner == 0 || current == owner))
            open = aiorcu__drop_owner(d, s);
    }
    aiorcu__registry_unlock(d);
    aiorcu_wake(d);
    return open;
}

/* A slot's owner is proven dead: a thread record of this process whose
 * robust mutex is owner-dead (thread.c).  Another process's slots are
 * proven dead through their process entry instead (shared.c). */
static int owner_dead(struct aiorcu_domain *d, struct aiorcu_slot *s)
{
    struct aiorcu_thread *life = *aiorcu__life(d, s);
    if (!s->in_use || !life)
        return 0;
    if (d->shared && s->proc != aiorcu__shared_my_proc(d))
        return 0;
    return aiorcu__thread_dead(life);
}

uint64_t aiorcu_slot_release_if_dead(struct aiorcu_domain *d, int slot, uint64_t *owner)
{
    /* One step under the registry lock: a slot released and claimed again
     * between a check and a release would otherwise lose a live owner. */
    uint64_t open = AIORCU_NOT_OWNER;
    *owner = 0;
    if (aiorcu__registry_lock(d) < 0)
        return open;
    if (aiorcu__slot_valid(d, slot)) {
        struct aiorcu_slot *s = aiorcu__slot(d, slot);
        if (owner_dead(d, s)) {
            *owner = atomic_load_explicit(&s->line.owner, memory_order_relaxed);
            open = aiorcu__drop_owner(d, s);
        }
    }
    aiorcu__registry_unlock(d);
    if (open != AIORCU_NOT_OWNER)
        aiorcu_wake(d);
    return open;
}

int aiorcu_slot_owner_dead(struct aiorcu_domain *d, int slot)
{
    int dead = 0;
    if (aiorcu__registry_lock(d) < 0)
        return 0;
    if (aiorcu__slot_valid(d, slot))
        dead = owner_dead(d, aiorcu__slot(d, slot));
    aiorcu__registry_unlock(d);
    return dead;
}

uint64_t aiorcu_slot_counts(struct aiorcu_domain *d, int slot, uint64_t out[AIORCU_NCOUNTS])
{
    uint64_t owner = 0;
    for (int i = 0; i < AIORCU_NCOUNTS; i++)
        out[i] = 0;
    if (aiorcu__registry_lock(d) < 0)
        return 0;
    if (aiorcu__slot_valid(d, slot) && aiorcu__slot(d, slot)->in_use) {
        struct aiorcu_slot *s = aiorcu__slot(d, slot);
        owner = atomic_load_explicit(&s->line.owner, memory_order_relaxed);
        for (int i = 0; i < AIORCU_NCOUNTS; i++)
            out[i] = atomic_load_explicit(&s->line.count[i], memory_order_relaxed);
    }
    aiorcu__registry_unlock(d);
    return owner;
}

void aiorcu_slot_set_name(struct aiorcu_domain *d, int slot, const char *name)
{
    if (aiorcu__registry_lock(d) < 0)
        return;
    if (aiorcu__slot_valid(d, slot)) {
        struct aiorcu_slot *s = aiorcu__slot(d, slot);
        memset(s->name, 0, sizeof s->name);
        strncpy(s->name, name, sizeof s->name - 1);
    }
    aiorcu__registry_unlock(d);
}

int aiorcu_slot_owner_info(struct aiorcu_domain *d, int slot, int32_t *pid, uint64_t *tid,
                           char *name)
{
    int ok = 0;
    *pid = 0;
    *tid = 0;
    memset(name, 0, 16);
    if (aiorcu__registry_lock(d) < 0)
        return 0;
    if (aiorcu__slot_valid(d, slot) && aiorcu__slot(d, slot)->in_use) {
        struct aiorcu_slot *s = aiorcu__slot(d, slot);
        *pid = s->pid;
        *tid = s->owner_tid;
        memcpy(name, s->name, 15); /* always NUL-terminated for the caller */
        ok = 1;
    }
    aiorcu__registry_unlock(d);
    return ok;
}

/* A section released by a thread other than its owner (left on the wrong
 * thread, or collected).  The registry lock makes the generation check and
 * the decrement one step with respect to a release of the whole slot, which
 * also holds it; the owner's own decrements need no lock (it cannot race a
 * release of its own slot: it is alive, and the process did not fork under
 * it).  Fences: a foreign release runs F2 before the decrement and F3 after
 * it as full fences whatever the barrier mode.  Fence mode needs them (the
 * writer's M3 and M2 are plain fences that pair with them); in membarrier
 * mode M3's and M2's IPIs reach the releasing thread as well, so there they
 * only cost a little on this slow path (the spin model's foreign-no-f2 and
 * fence-foreign-no-f2 variants show both). */
int aiorcu_section_release(struct aiorcu_domain *d, void *line_, int kind, int phase, uint64_t gen)
{
    struct aiorcu_reader_line *line = line_;
    int wake = 0, released = 0;
    if (aiorcu__registry_lock(d) < 0)
        return 0;
    if (atomic_load_explicit(&line->gen[kind], memory_order_relaxed) == gen) {
        wake = aiorcu_read_uncount(d->st->ctl.bytes, line, kind, phase, 1);
        released = 1;
    }
    aiorcu__registry_unlock(d);
    if (wake)
        aiorcu_wake(d);
    return released;
}

/* Lists the slots that still hold `phase` open, with how long each has
 * blocked the running grace period (writer mutex held by the caller). */
size_t aiorcu_blocking_slots(struct aiorcu_domain *d, int phase, int32_t *out, uint64_t *blocked_ns,
                             size_t max)
{
    size_t n = 0;
    uint64_t now = aiorcu_monotonic_ns();
    if (aiorcu__registry_lock(d) < 0)
        return 0;
    for (size_t i = 0; i < aiorcu__nslots(d) && n < max; i++) {
        struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
        if (!s->in_use)
            continue;
        if (atomic_load_explicit(&s->line.count[AIORCU_COUNT(AIORCU_KIND_THREAD, phase)],
                                 memory_order_relaxed) ||
            atomic_load_explicit(&s->line.count[AIORCU_COUNT(AIORCU_KIND_TASK, phase)],
                                 memory_order_relaxed)) {
            out[n] = (int32_t)i;
            blocked_ns[n] = s->blocked_gp && now > s->first_blocked ? now - s->first_blocked : 0;
            n++;
        }
    }
    aiorcu__registry_unlock(d);
    return n;
}

void aiorcu_domain_stats(struct aiorcu_domain *d, struct aiorcu_stats *o)
{
    struct aiorcu_state *st = d->st;
    o->started = atomic_load(&st->started);
    o->completed = atomic_load(&st->completed);
    o->grace_periods = atomic_load(&st->grace_periods);
    o->membarrier_calls = atomic_load(&st->membarrier_calls);
    o->barriers_elided = atomic_load(&st->barriers_elided);
    o->barrier_fallbacks = atomic_load(&st->barrier_fallbacks);
    o->futex_sleeps = atomic_load(&st->futex_sleeps);
    o->wakeups = atomic_load(&st->wakeups);
    o->backstop_timeouts = atomic_load(&st->backstop_timeouts);
    o->timeouts = atomic_load(&st->timeouts);
    o->dead_readers_released = atomic_load(&st->dead_readers_released);
    o->writer_recoveries = atomic_load(&st->writer_recoveries);
    o->processes_attached = d->shared ? aiorcu__shared_live_processes(d) : 1;
    uint64_t open = 0;
    o->slots_live = o->slots_capacity = o->sections_open = 0;
    if (aiorcu__registry_lock(d) < 0)
        return;
    o->slots_live = st->slots_live;
    o->slots_capacity = aiorcu__nslots(d);
    for (size_t i = 0; i < aiorcu__nslots(d); i++) {
        struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
        if (s->in_use)
            for (int c = 0; c < AIORCU_NCOUNTS; c++)
                open += atomic_load_explicit(&s->line.count[c], memory_order_relaxed);
    }
    aiorcu__registry_unlock(d);
    o->sections_open = open;
}

void aiorcu_domain_set_wait_mode(struct aiorcu_domain *d, int mode)
{
    /* Process-local settings, read by this process's writers under the
     * writer mutex; an int store needs no lock of a segment. */
    __atomic_store_n(&d->wait_mode, mode, __ATOMIC_RELAXED);
}

void aiorcu_domain_set_stall(struct aiorcu_domain *d, uint64_t first_ns, uint64_t max_ns)
{
    __atomic_store_n(&d->stall_first_ns, first_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&d->stall_max_ns, max_ns, __ATOMIC_RELAXED);
}
