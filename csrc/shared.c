/*
 * Shared domains: one domain whose state lives in a memory segment that
 * several processes map.  The algorithm is the same as a private domain's;
 * what changes is where its state lives and how the death of a reader is
 * proven.
 *
 * Layout (every part 64-byte aligned, every offset recorded and checked):
 *
 *   header  magic, layout version, barrier mechanism, sizes, offsets, name
 *   state   struct aiorcu_state: phase/waiting line, futex word, writer and
 *           registry mutexes (robust, process-shared), sequence numbers,
 *           domain-wide statistics
 *   procs   one entry per attached process: a robust, process-shared mutex
 *           held by that process's lifeline thread, its pid, a generation
 *   slots   max_threads reader slots (struct aiorcu_slot)
 *
 * Proof of death.  A process that joins takes a free entry and starts a
 * lifeline thread that locks the entry's robust mutex and keeps it until
 * the process leaves.  If the process dies (SIGKILL included) or execs, the
 * kernel marks the mutex owner-dead; a writer's trylock then returns
 * EOWNERDEAD, which proves the death: the writer releases every slot of
 * that process and frees the entry, and counts the process once in
 * dead_readers_released.  Anything else (EBUSY) counts as alive: a reused
 * pid, a zombie, another pid namespace or an unreadable /proc cannot fool
 * it, because nothing here looks at pids except the reports.  Writers check
 * at every backstop (50 ms) while they wait.
 *
 * A thread of a live process that exits inside a section is that process's
 * business: its registration releases the slot at thread exit, and the
 * lifeline thread doubles as a janitor that releases slots of this
 * process's threads proven dead (thread.c) while a writer is waiting.
 *
 * Trust.  Processes attached to one domain trust each other (the threat is
 * crashes and bugs, not a hostile peer), but nothing read from the segment
 * may send a process outside it: sizes and offsets are read once, at open,
 * and every index read later (a slot's process) is bound-checked.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define SEG_MAGIC   0x47535543524f4941ull /* "AIORCUSG", little-endian */
#define SEG_VERSION 1u

#define PROC_FREE    0u
#define PROC_JOINING 1u
#define PROC_LIVE    2u
#define PROC_LEAVING 3u

#define JANITOR_NS  100000000ull /* lifeline wake-ups while a writer waits */
#define MAX_BRIDGES 64           /* forks whose child has not adopted its slot yet */

struct seg_header {
    uint64_t magic;
    uint32_t version;
    uint32_t mechanism;
    uint64_t size;
    uint32_t max_threads;
    uint32_t max_procs;
    uint64_t state_off;
    uint64_t procs_off;
    uint64_t slots_off;
    char name[AIORCU_NAME_MAX];
    _Atomic uint32_t ready; /* release-stored 1 once formatted */
    uint32_t pad;
};

struct seg_proc {
    pthread_mutex_t life; /* robust, process-shared: held by the lifeline */
    _Atomic uint32_t state;
    _Atomic uint32_t gen; /* bumped when the entry is freed */
    int32_t pid;          /* reports only */
    uint32_t pad;
    uint8_t fill[AIORCU_CACHELINE - (sizeof(pthread_mutex_t) + 16) % AIORCU_CACHELINE];
};
_Static_assert(sizeof(struct seg_proc) % AIORCU_CACHELINE == 0, "process entries fill lines");

/* A process's own view of a segment. */
struct aiorcu_segment {
    struct seg_header *hdr;
    struct seg_proc *procs;
    uint32_t nprocs;
    int my_proc; /* -1 until joined (and again after leave, or in a fork child) */
    uint32_t my_gen;
    /* the lifeline thread and its process-local wait */
    pthread_t lifeline;
    int lifeline_running;
    int leaving;
    int held; /* the lifeline holds the entry's mutex */
    /* set once the entry is PROC_LIVE (registry lock), cleared first by
     * leave: only then may this process's threads claim slots, so no slot
     * of ours exists while a writer could take the entry for a leftover */
    int live;
    pthread_mutex_t join_lock; /* serializes join and leave in this process */
    pthread_mutex_t wait_lock;
    pthread_cond_t wait_cond;
    /* fork: the bridge slot made before a fork (parent), the one to adopt
     * (child), and the parent's bridges its children have not adopted yet */
    int fork_slot;
    uint64_t fork_token;
    int child_bridge;
    uint64_t child_token;
    int fork_sock[2];
    int child_sock;
    int nbridges;
    struct bridge {
        int slot;
        int sock; /* the parent's end of the pair: end of file when done */
        uint64_t token;
    } bridges[MAX_BRIDGES];
};

static size_t round_up(size_t n)
{
    return (n + AIORCU_CACHELINE - 1) & ~(size_t)(AIORCU_CACHELINE - 1);
}

struct layout {
    size_t state_off, procs_off, slots_off, size;
};

static struct layout layout_for(uint32_t max_threads)
{
    struct layout l;
    l.state_off = round_up(sizeof(struct seg_header));
    l.procs_off = round_up(l.state_off + sizeof(struct aiorcu_state));
    l.slots_off = round_up(l.procs_off + (size_t)max_threads * sizeof(struct seg_proc));
    l.size = l.slots_off + (size_t)max_threads * sizeof(struct aiorcu_slot);
    return l;
}

size_t aiorcu_shared_size(uint32_t max_threads)
{
    if (max_threads < 1 || max_threads > AIORCU_MAX_SLOTS)
        return 0;
    return layout_for(max_threads).size;
}

static int init_shared_mutex(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
}

int aiorcu_shared_format(void *mem, size_t size, const char *name, uint32_t max_threads, int fence)
{
    size_t need = aiorcu_shared_size(max_threads);
    if (!mem || need == 0 || size < need || ((uintptr_t)mem % AIORCU_CACHELINE) ||
        strlen(name) >= AIORCU_NAME_MAX)
        return AIORCU_EINVAL;
    struct layout l = layout_for(max_threads);
    memset(mem, 0, need);
    struct seg_header *h = mem;
    h->magic = SEG_MAGIC;
    h->version = SEG_VERSION;
    h->mechanism = fence ? AIORCU_MECH_FENCE : AIORCU_MECH_MEMBARRIER_GLOBAL;
    h->size = need;
    h->max_threads = max_threads;
    h->max_procs = max_threads;
    h->state_off = l.state_off;
    h->procs_off = l.procs_off;
    h->slots_off = l.slots_off;
    memcpy(h->name, name, strlen(name) + 1);
    struct aiorcu_state *st = (void *)((char *)mem + l.state_off);
    if (init_shared_mutex(&st->writer_lock) || init_shared_mutex(&st->registry_lock))
        return AIORCU_ESYS;
    struct seg_proc *procs = (void *)((char *)mem + l.procs_off);
    for (uint32_t i = 0; i < max_threads; i++)
        if (init_shared_mutex(&procs[i].life))
            return AIORCU_ESYS;
    struct aiorcu_slot *slots = (void *)((char *)mem + l.slots_off);
    for (uint32_t i = 0; i < max_threads; i++)
        slots[i].proc = -1;
    /* Release: an opener that reads ready == 1 (acquire) sees it all. */
    atomic_store_explicit(&h->ready, 1, memory_order_release);
    return AIORCU_OK;
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(why, whylen, __VA_ARGS__);                                                        \
        return NULL;                                                                               \
    } while (0)

struct aiorcu_domain *aiorcu_shared_open(void *mem, size_t size, const char *name, char *why,
                                         size_t whylen)
{
    if (!mem || size < sizeof(struct seg_header))
        FAIL("the segment is %zu bytes, smaller than its header", size);
    if ((uintptr_t)mem % AIORCU_CACHELINE)
        FAIL("the segment is not aligned to %d bytes", AIORCU_CACHELINE);
    const struct seg_header *h = mem;
    if (h->magic != SEG_MAGIC)
        FAIL("not an aiorcu domain segment (magic %016llx)", (unsigned long long)h->magic);
    if (h->version != SEG_VERSION)
        FAIL("segment layout version %u; this aiorcu reads version %u", h->version, SEG_VERSION);
    if (!atomic_load_explicit(&((struct seg_header *)mem)->ready, memory_order_acquire))
        FAIL("the segment was never completely formatted (its creator died while creating it?)");
    /* Read the sizes once; from here on only the copies are trusted. */
    uint32_t max_threads = h->max_threads, max_procs = h->max_procs;
    uint32_t mechanism = h->mechanism;
    if (mechanism != AIORCU_MECH_FENCE && mechanism != AIORCU_MECH_MEMBARRIER_GLOBAL)
        FAIL("corrupt segment: unknown barrier mechanism %u", mechanism);
    if (max_threads < 1 || max_threads > AIORCU_MAX_SLOTS || max_procs != max_threads)
        FAIL("corrupt segment: %u reader slots, %u process entries", max_threads, max_procs);
    struct layout l = layout_for(max_threads);
    if (h->state_off != l.state_off || h->procs_off != l.procs_off || h->slots_off != l.slots_off ||
        h->size != l.size)
        FAIL("corrupt segment: its layout does not match its %u slots", max_threads);
    if (size < l.size)
        FAIL("the segment is %zu bytes; its header says %zu", size, l.size);
    if (!memchr(h->name, 0, AIORCU_NAME_MAX))
        FAIL("corrupt segment: the recorded name is not terminated");
    if (strcmp(h->name, name) != 0)
        FAIL("the segment belongs to domain '%.*s', not '%s'", AIORCU_NAME_MAX, h->name, name);

    struct aiorcu_domain *d = aiorcu__domain_alloc();
    struct aiorcu_segment *seg = calloc(1, sizeof *seg);
    struct aiorcu_thread **lives = calloc(max_threads, sizeof *lives);
    if (!d || !seg || !lives) {
        free(d);
        free(seg);
        free(lives);
        FAIL("out of memory");
    }
    seg->hdr = mem;
    seg->procs = (void *)((char *)mem + l.procs_off);
    seg->nprocs = max_procs;
    seg->my_proc = -1;
    seg->fork_slot = -1;
    seg->child_bridge = -1;
    seg->child_sock = -1;
    pthread_mutex_init(&seg->wait_lock, NULL);
    pthread_mutex_init(&seg->join_lock, NULL);
    pthread_condattr_t cattr;
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&seg->wait_cond, &cattr);
    pthread_condattr_destroy(&cattr);
    d->shared = 1;
    d->seg = seg;
    d->st = (void *)((char *)mem + l.state_off);
    d->table = (void *)((char *)mem + l.slots_off);
    d->ntable = max_threads;
    d->lives = lives;
    d->mechanism = (int)mechanism;
    aiorcu__domain_link(d);
    return d;
}

/* This process's entry, once joined and live; -1 before, while joining
 * and from the start of leaving (registry lock held by callers that claim). */
int aiorcu__shared_my_proc(struct aiorcu_domain *d)
{
    return d->seg && d->seg->live ? d->seg->my_proc : -1;
}

uint64_t aiorcu__shared_live_processes(struct aiorcu_domain *d)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < d->seg->nprocs; i++)
        n += atomic_load_explicit(&d->seg->procs[i].state, memory_order_relaxed) == PROC_LIVE;
    return n;
}

void aiorcu__shared_claim(struct aiorcu_domain *d, struct aiorcu_slot *s)
{
    s->proc = d->seg->my_proc;
    s->proc_gen = d->seg->my_gen;
    s->pid = (int32_t)getpid();
    memset(s->name, 0, sizeof s->name);
    pthread_getname_np(pthread_self(), s->name, sizeof s->name);
    s->name[sizeof s->name - 1] = 0;
}

/* Releases every slot of process entry p and frees it (registry lock held).
 * Counted once in dead_readers_released when some section was still open. */
static void drop_process(struct aiorcu_domain *d, uint32_t p, int dead)
{
    struct seg_proc *e = &d->seg->procs[p];
    uint32_t gen = atomic_load_explicit(&e->gen, memory_order_relaxed);
    uint64_t before = atomic_load(&d->st->dead_readers_released);
    uint64_t open = 0;
    uint64_t now = aiorcu_monotonic_ns();
    for (size_t i = 0; i < d->ntable; i++) {
        struct aiorcu_slot *s = &d->table[i];
        if (s->in_use && s->proc == (int32_t)p && s->proc_gen == gen) {
            open += aiorcu__drop_owner(d, s);
            if (dead)
                aiorcu__quarantine(s, now);
        }
    }
    atomic_store(&d->st->dead_readers_released, before + (dead && open ? 1 : 0));
    atomic_store_explicit(&e->state, PROC_FREE, memory_order_relaxed);
    atomic_fetch_add_explicit(&e->gen, 1, memory_order_relaxed);
}

/* 1 when process entry p's owner provably died (registry lock held): its
 * lifeline's robust mutex comes back owner-dead.  The caller then holds
 * the (consistent) mutex and must release the entry with reap_process():
 * a reaper that dies before it has freed the entry hands the proof on to
 * the next one (owner-dead again), instead of leaving a LIVE entry with an
 * unlocked mutex that would look alive forever. */
static int proc_dead(struct aiorcu_domain *d, uint32_t p)
{
    struct seg_proc *e = &d->seg->procs[p];
    if (atomic_load_explicit(&e->state, memory_order_relaxed) != PROC_LIVE ||
        (int)p == d->seg->my_proc)
        return 0;
    int rc = pthread_mutex_trylock(&e->life);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(&e->life);
        return 1;
    }
    if (rc == 0) /* never while LIVE: the lifeline holds it; call it alive */
        pthread_mutex_unlock(&e->life);
    return 0;
}

/* After proc_dead(): releases the dead process's slots and entry, then
 * the entry's mutex, ready for a new process (registry lock held). */
static void reap_process(struct aiorcu_domain *d, uint32_t p)
{
    drop_process(d, p, 1);
    pthread_mutex_unlock(&d->seg->procs[p].life);
}

/* Registry lock held.  Releases the slots of every dead process whose slots
 * hold `phase` open (-1: any slot, open or not); returns how many. */
static int reap_locked(struct aiorcu_domain *d, int phase)
{
    int reaped = 0;
    for (size_t i = 0; i < d->ntable; i++) {
        struct aiorcu_slot *s = &d->table[i];
        if (!s->in_use || s->proc == d->seg->my_proc)
            continue;
        if (phase >= 0 &&
            !atomic_load_explicit(&s->line.count[AIORCU_COUNT(AIORCU_KIND_THREAD, phase)],
                                  memory_order_relaxed) &&
            !atomic_load_explicit(&s->line.count[AIORCU_COUNT(AIORCU_KIND_TASK, phase)],
                                  memory_order_relaxed))
            continue;
        if (s->proc < 0 || (uint32_t)s->proc >= d->seg->nprocs) {
            /* Out of range: corrupt; release the slot, never follow it. */
            aiorcu__drop_owner(d, s);
            continue;
        }
        uint32_t p = (uint32_t)s->proc;
        struct seg_proc *e = &d->seg->procs[p];
        if (atomic_load_explicit(&e->state, memory_order_relaxed) != PROC_LIVE ||
            atomic_load_explicit(&e->gen, memory_order_relaxed) != s->proc_gen) {
            /* Its process left or was reaped, which released its slots: a
             * leftover of an interrupted release; nobody owns it. */
            aiorcu__drop_owner(d, s);
            continue;
        }
        if (proc_dead(d, p)) {
            reap_process(d, p);
            reaped++;
        }
    }
    if (phase < 0) {
        /* Processes that died owning no slot hold an entry all the same. */
        for (uint32_t p = 0; p < d->seg->nprocs; p++) {
            if (proc_dead(d, p)) {
                reap_process(d, p);
                reaped++;
            }
        }
    }
    return reaped;
}

int aiorcu__reap_dead(struct aiorcu_domain *d, int phase)
{
    if (!d->shared || aiorcu__registry_lock(d) < 0)
        return 0;
    int reaped = reap_locked(d, phase);
    aiorcu__registry_unlock(d);
    if (reaped)
        aiorcu_wake(d);
    return reaped;
}

int aiorcu_shared_reap(struct aiorcu_domain *d)
{
    return aiorcu__reap_dead(d, -1);
}

static void check_bridges(struct aiorcu_domain *d);

/* The lifeline: holds this process's entry mutex until the process leaves,
 * and meanwhile, while a writer waits, releases the slots of this process's
 * threads that exited inside a section without releasing them. */
static void *lifeline_main(void *arg)
{
    struct aiorcu_domain *d = arg;
    struct aiorcu_segment *seg = d->seg;
    pthread_setname_np(pthread_self(), "aiorcu-lifeline");
    int rc = pthread_mutex_lock(&seg->procs[seg->my_proc].life);
    if (rc == EOWNERDEAD) /* a dead process's entry, freed: ours now */
        pthread_mutex_consistent(&seg->procs[seg->my_proc].life);
    pthread_mutex_lock(&seg->wait_lock);
    seg->held = rc == 0 || rc == EOWNERDEAD;
    pthread_cond_broadcast(&seg->wait_cond);
    while (!seg->leaving) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)JANITOR_NS;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&seg->wait_cond, &seg->wait_lock, &ts);
        if (seg->leaving)
            break;
        if (seg->nbridges)
            check_bridges(d);
        if (!atomic_load(&d->st->ctl.bytes[AIORCU_CTL_WAITING + 0]) &&
            !atomic_load(&d->st->ctl.bytes[AIORCU_CTL_WAITING + 1]))
            continue;
        pthread_mutex_unlock(&seg->wait_lock);
        if (aiorcu__registry_lock(d) >= 0) {
            for (size_t i = 0; i < d->ntable; i++) {
                struct aiorcu_slot *s = &d->table[i];
                struct aiorcu_thread *life = d->lives[i];
                if (s->in_use && s->proc == seg->my_proc && life && aiorcu__thread_dead(life))
                    aiorcu__drop_owner(d, s);
            }
            aiorcu__registry_unlock(d);
            aiorcu_wake(d);
        }
        pthread_mutex_lock(&seg->wait_lock);
    }
    if (seg->held)
        pthread_mutex_unlock(&seg->procs[seg->my_proc].life);
    seg->held = 0;
    pthread_mutex_unlock(&seg->wait_lock);
    return NULL;
}

static int join_locked(struct aiorcu_domain *d);

int aiorcu_shared_join(struct aiorcu_domain *d)
{
    struct aiorcu_segment *seg = d->seg;
    /* Another thread of this process may be joining: wait for it. */
    pthread_mutex_lock(&seg->join_lock);
    int rc = join_locked(d);
    pthread_mutex_unlock(&seg->join_lock);
    return rc;
}

static int join_locked(struct aiorcu_domain *d)
{
    struct aiorcu_segment *seg = d->seg;
    if (seg->my_proc >= 0)
        return AIORCU_OK;
    if (d->mechanism == AIORCU_MECH_MEMBARRIER_GLOBAL && aiorcu_backend_register_global() < 0)
        return AIORCU_ESYS;
    if (aiorcu__registry_lock(d) < 0) {
        errno = ENOTRECOVERABLE;
        return AIORCU_ESYS;
    }
    int found = -1;
    for (int pass = 0; pass < 2 && found < 0; pass++) {
        for (uint32_t i = 0; i < seg->nprocs && found < 0; i++) {
            uint32_t state = atomic_load_explicit(&seg->procs[i].state, memory_order_relaxed);
            if (state == PROC_FREE)
                found = (int)i;
        }
        if (found < 0 && pass == 0)
            reap_locked(d, -1); /* take back the entries of dead processes */
    }
    if (found < 0) {
        aiorcu__registry_unlock(d);
        errno = ENOSPC;
        return AIORCU_ESYS;
    }
    struct seg_proc *e = &seg->procs[found];
    atomic_store_explicit(&e->state, PROC_JOINING, memory_order_relaxed);
    e->pid = (int32_t)getpid();
    seg->my_proc = found;
    seg->my_gen = atomic_load_explicit(&e->gen, memory_order_relaxed);
    aiorcu__registry_unlock(d);

    seg->leaving = 0;
    seg->held = 0;
    int rc = pthread_create(&seg->lifeline, NULL, lifeline_main, d);
    if (rc == 0) {
        pthread_mutex_lock(&seg->wait_lock);
        while (!seg->held)
            pthread_cond_wait(&seg->wait_cond, &seg->wait_lock);
        pthread_mutex_unlock(&seg->wait_lock);
        seg->lifeline_running = 1;
    }
    aiorcu__registry_lock(d);
    atomic_store_explicit(&e->state, rc == 0 ? PROC_LIVE : PROC_FREE, memory_order_relaxed);
    seg->live = rc == 0;
    aiorcu__registry_unlock(d);
    if (rc != 0) {
        seg->my_proc = -1;
        errno = rc;
        return AIORCU_ESYS;
    }
    return AIORCU_OK;
}

static void leave_locked(struct aiorcu_domain *d);

void aiorcu_shared_leave(struct aiorcu_domain *d)
{
    struct aiorcu_segment *seg = d->seg;
    pthread_mutex_lock(&seg->join_lock);
    leave_locked(d);
    pthread_mutex_unlock(&seg->join_lock);
}

static void leave_locked(struct aiorcu_domain *d)
{
    struct aiorcu_segment *seg = d->seg;
    if (seg->my_proc < 0)
        return;
    uint32_t p = (uint32_t)seg->my_proc;
    aiorcu__registry_lock(d);
    seg->live = 0;
    atomic_store_explicit(&seg->procs[p].state, PROC_LEAVING, memory_order_relaxed);
    aiorcu__registry_unlock(d);
    if (seg->lifeline_running) {
        pthread_mutex_lock(&seg->wait_lock);
        seg->leaving = 1;
        pthread_cond_broadcast(&seg->wait_cond);
        pthread_mutex_unlock(&seg->wait_lock);
        pthread_join(seg->lifeline, NULL);
        seg->lifeline_running = 0;
    }
    aiorcu__registry_lock(d);
    /* This process's threads are alive: their slots are released, not
     * counted as dead.  The records they point to are ours to drop. */
    drop_process(d, p, 0);
    aiorcu__registry_unlock(d);
    seg->my_proc = -1;
    aiorcu_wake(d);
}

int aiorcu_shared_joined(struct aiorcu_domain *d)
{
    return d->shared && d->seg->live;
}

void aiorcu_shared_free(struct aiorcu_domain *d)
{
    if (!d || !d->shared)
        return;
    aiorcu_shared_leave(d);
    aiorcu__domain_unlink(d);
    pthread_mutex_destroy(&d->seg->wait_lock);
    pthread_cond_destroy(&d->seg->wait_cond);
    pthread_mutex_destroy(&d->seg->join_lock);
    free(d->seg);
    free(d->lives);
    free(d);
}

/* --- fork ---------------------------------------------------------------
 *
 * A fork child keeps the forking thread's `with` sections and the forking
 * context's task sections, and reads the shared data through them: they
 * must be counted from the fork on, in a slot the child will own.  Before
 * the fork (Python's before-fork hook, GIL held) the parent claims a
 * "bridge" slot, owned by its own entry, holding those counts, and a
 * socket pair.  The child keeps one end open until it has adopted the
 * bridge (its own entry, lifeline and membarrier registration first); the
 * parent's lifeline watches the other end.  End of file there means the
 * child adopted the bridge (the slot's owner word changed) or died before
 * adopting it (it did not), and then the parent releases the bridge.  A
 * failed fork closes the child's end at once, so the same rule applies; a
 * parent that dies takes the bridge with its own slots.  No pid is read:
 * nothing can make a dead child look alive or a live one dead.
 */

/* Parent, before fork: the bridge slot with the kept counts
 * (count[AIORCU_COUNT(kind, phase)]); its index, or -1. */
int aiorcu_shared_fork_prepare(struct aiorcu_domain *d, const uint64_t counts[AIORCU_NCOUNTS])
{
    struct aiorcu_segment *seg = d->seg;
    seg->fork_slot = -1;
    if (seg->my_proc < 0)
        return -1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    int slot = aiorcu_slot_alloc(d, 0);
    if (slot < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    struct aiorcu_slot *s = &d->table[slot];
    if (aiorcu__registry_lock(d) >= 0) {
        /* No thread of this process owns the bridge: the janitor must not
         * release it when the forking thread exits. */
        if (d->lives[slot])
            aiorcu__thread_put(d->lives[slot]);
        d->lives[slot] = NULL;
        memcpy(s->name, "fork-bridge", sizeof "fork-bridge");
        aiorcu__registry_unlock(d);
    }
    for (int i = 0; i < AIORCU_NCOUNTS; i++)
        atomic_store(&s->line.count[i], counts[i]);
    /* Full fence: the counts are visible before the fork (and before the
     * caller goes on): a grace period that starts from here waits for the
     * child's copies of the sections exactly as for the parent's. */
    atomic_thread_fence(memory_order_seq_cst);
    seg->fork_slot = slot;
    seg->fork_token = atomic_load(&s->line.owner);
    seg->fork_sock[0] = sv[0];
    seg->fork_sock[1] = sv[1];
    return slot;
}

/* Fork, parent (C handler, also after a failed fork): watch the bridge. */
static void bridge_parent(struct aiorcu_domain *d)
{
    struct aiorcu_segment *seg = d->seg;
    if (seg->fork_slot < 0)
        return;
    close(seg->fork_sock[1]); /* the child's end */
    pthread_mutex_lock(&seg->wait_lock);
    if (seg->nbridges < MAX_BRIDGES) {
        seg->bridges[seg->nbridges].slot = seg->fork_slot;
        seg->bridges[seg->nbridges].token = seg->fork_token;
        seg->bridges[seg->nbridges].sock = seg->fork_sock[0];
        seg->nbridges++;
    } else {
        close(seg->fork_sock[0]); /* too many at once: it goes with this process */
    }
    pthread_cond_broadcast(&seg->wait_cond);
    pthread_mutex_unlock(&seg->wait_lock);
    seg->fork_slot = -1;
}

/* The lifeline's check of pending bridges (wait_lock held). */
static void check_bridges(struct aiorcu_domain *d)
{
    struct aiorcu_segment *seg = d->seg;
    for (int i = 0; i < seg->nbridges;) {
        struct bridge *b = &seg->bridges[i];
        struct pollfd pfd = {.fd = b->sock, .events = POLLIN};
        if (poll(&pfd, 1, 0) <= 0) { /* the child holds its end: not adopted yet */
            i++;
            continue;
        }
        /* End of file: adopted, or the child is gone. */
        struct aiorcu_slot *s = &d->table[b->slot];
        if (aiorcu__registry_lock(d) >= 0) {
            if (s->in_use && atomic_load(&s->line.owner) == b->token)
                aiorcu__drop_owner(d, s); /* died before adopting: counted if inside */
            aiorcu__registry_unlock(d);
            aiorcu_wake(d);
        }
        close(b->sock);
        seg->bridges[i] = seg->bridges[--seg->nbridges];
    }
}

/* Fork, prepare (registry lock held): the bridge was made before, with the
 * GIL; nothing more. */
void aiorcu__shared_before_fork(struct aiorcu_domain *d)
{
    (void)d;
}

void aiorcu__shared_after_fork_parent(struct aiorcu_domain *d)
{
    bridge_parent(d);
}

/* Fork, child: nothing of the segment is ours to change (the parent
 * unlocks the registry lock it took).  The parent's entry, lifeline and
 * bridges are not this process's: forget them; the Python side joins again
 * and adopts the bridge. */
void aiorcu__shared_after_fork_child(struct aiorcu_domain *d)
{
    struct aiorcu_segment *seg = d->seg;
    seg->child_bridge = seg->fork_slot;
    seg->child_token = seg->fork_token;
    seg->child_sock = -1;
    if (seg->fork_slot >= 0) {
        close(seg->fork_sock[0]); /* the parent's end */
        seg->child_sock = seg->fork_sock[1];
    }
    seg->fork_slot = -1;
    for (int i = 0; i < seg->nbridges; i++)
        close(seg->bridges[i].sock); /* the parent's watches */
    seg->nbridges = 0;
    seg->my_proc = -1;
    seg->lifeline_running = 0;
    seg->held = 0;
    seg->leaving = 0;
    seg->live = 0;
    pthread_mutex_init(&seg->wait_lock, NULL);
    pthread_mutex_init(&seg->join_lock, NULL);
    pthread_condattr_t cattr;
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&seg->wait_cond, &cattr);
    pthread_condattr_destroy(&cattr);
}

/* Child, after joining: takes over the bridge slot for the calling thread.
 * Returns its index, or -1 when there is none (the fork kept no section
 * here) or the parent released it meanwhile (it left the domain). */
int aiorcu_shared_adopt(struct aiorcu_domain *d, uint64_t owner_tid)
{
    struct aiorcu_segment *seg = d->seg;
    int slot = seg->child_bridge;
    int sock = seg->child_sock;
    seg->child_bridge = -1;
    seg->child_sock = -1;
    struct aiorcu_thread *me = aiorcu__thread_self();
    int adopted = -1;
    if (slot >= 0 && (size_t)slot < d->ntable && seg->my_proc >= 0 && me &&
        aiorcu__registry_lock(d) >= 0) {
        struct aiorcu_slot *s = &d->table[slot];
        if (s->in_use && atomic_load(&s->line.owner) == seg->child_token) {
            uint64_t token = atomic_fetch_add(&d->st->next_owner, 1) + 1;
            atomic_store(&s->line.owner, token);
            aiorcu__thread_get(me);
            d->lives[slot] = me;
            s->owner_tid = owner_tid;
            aiorcu__shared_claim(d, s);
            adopted = slot;
        }
        aiorcu__registry_unlock(d);
    }
    if (sock >= 0)
        close(sock); /* the parent stops watching */
    return adopted;
}
