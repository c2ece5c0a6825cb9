/*
 * Grace periods: two-phase (SRCU / urcu style) waits bracketed by two heavy
 * barriers.  Reader steps (reader.h), per section:
 *
 *   enter: p = load(phase); count[kind, p]++; F1
 *   leave: F2; count[kind, p]--; on 1 -> 0: F3; load(waiting[p]) -> wake
 *
 * F1/F2/F3 are compiler barriers in membarrier mode, full fences in fence
 * mode.  Writer, serialized by the writer mutex:
 *
 *   started += 1; M1; wait(!cur); mb; cur = !cur; mb; wait(cur_old); M3;
 *   completed = started (release)
 *
 * where each wait that sleeps first stores waiting[p] and issues M2.  M1
 * pairs with F1, M2 with F3, M3 with F2; the two plain fences around the
 * flip serve progress only (the spin model verifies without them).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define SPIN_NS     20000ull    /* spin this long before sleeping */
#define BACKSTOP_NS 50000000ull /* futex sleeps end after this at the latest */
#define POLL_MIN_NS 2000ull     /* poll mode: first sleep */
#define POLL_MAX_NS 1000000ull  /* poll mode: longest sleep */

uint64_t aiorcu_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

/* Debug knob, see aiorcu_debug_set_writer_jitter().  Relaxed: it publishes
 * nothing, so its accesses pair with no other. */
static _Atomic uint64_t writer_jitter_ns;

uint64_t aiorcu_debug_set_writer_jitter(uint64_t max_ns)
{
    if (max_ns > 1000000000ull)
        max_ns = 1000000000ull;
    return atomic_exchange_explicit(&writer_jitter_ns, max_ns, memory_order_relaxed);
}

/* Between the writer's steps: at one step in four, sleep 0..max ns.  The
 * sleeps widen the windows between the steps for the torture run. */
static void writer_jitter(void)
{
    uint64_t max = atomic_load_explicit(&writer_jitter_ns, memory_order_relaxed);
    if (!max)
        return;
    static _Thread_local uint64_t state; /* xorshift64*, one per writer thread */
    if (!state)
        state = (aiorcu_monotonic_ns() ^ (uint64_t)(uintptr_t)&state) | 1;
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    uint64_t r = state * 0x2545F4914F6CDD1Dull;
    if (r >> 62)
        return;
    uint64_t ns = r % (max + 1);
    if (ns)
        sleep_ns(ns);
}

uint64_t aiorcu_snapshot(struct aiorcu_domain *d)
{
    /* Full fence: the caller's update (made before this call) is ordered
     * before the load of `started`.  Pairs with the writer's increment of
     * `started` followed by M1: if we read s, grace period s + 1 begins its
     * M1 after our update, so it covers every reader that could miss it. */
    atomic_thread_fence(memory_order_seq_cst);
    return atomic_load_explicit(&d->st->started, memory_order_relaxed) + 1;
}

uint64_t aiorcu_completed(struct aiorcu_domain *d)
{
    /* Acquire: pairs with the release store of `completed` after M3, so a
     * caller that sees its token complete also sees M3's effects. */
    return atomic_load_explicit(&d->st->completed, memory_order_acquire);
}

/* The futex word of a private domain is this process's alone; a shared
 * domain's is in a segment other processes wait on. */
static int futex_op(struct aiorcu_domain *d, int op)
{
    return d->shared ? op : op | FUTEX_PRIVATE_FLAG;
}

void aiorcu_wake(struct aiorcu_domain *d)
{
    if (atomic_exchange(&d->st->futex, 0) == -1) {
        atomic_fetch_add_explicit(&d->st->wakeups, 1, memory_order_relaxed);
        syscall(SYS_futex, &d->st->futex, futex_op(d, FUTEX_WAKE), INT_MAX, NULL, NULL, 0);
    }
}

/* Skipping both membarriers is safe only when no thread but the caller owns
 * a slot: any other reader registers later, under the registry lock, and so
 * enters after the caller's update (see aiorcu_slot_alloc). */
static int can_elide(struct aiorcu_domain *d, int caller_slot)
{
    if (d->shared)
        return 0; /* "nobody else" would need a registry view of every process */
    if (aiorcu__registry_lock(d) < 0)
        return 0;
    int alone =
        d->st->slots_live == 0 || (d->st->slots_live == 1 && aiorcu__slot_valid(d, caller_slot) &&
                                   aiorcu__slot(d, caller_slot)->in_use);
    aiorcu__registry_unlock(d);
    return alone;
}

static int barrier(struct aiorcu_domain *d, int elide)
{
    if (elide) {
        atomic_fetch_add_explicit(&d->st->barriers_elided, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        return 0;
    }
    return aiorcu__heavy_barrier(d);
}

/* One pass over the registry: is `phase` free of readers? */
static int scan_clear(struct aiorcu_domain *d, int phase, uint64_t gp)
{
    int clear = 1;
    uint64_t now = 0;
    if (aiorcu__registry_lock(d) < 0)
        return 0; /* an unusable segment lock: keep waiting, never pass */
    size_t n = aiorcu__nslots(d);
    for (size_t i = 0; i < n; i++) {
        struct aiorcu_slot *s = aiorcu__slot(d, (int)i);
        if (!s->in_use)
            continue;
        /* Relaxed: ordering comes from M1 before the scans and the fences or
         * M3 after them. */
        if (atomic_load_explicit(&s->line.count[AIORCU_COUNT(AIORCU_KIND_THREAD, phase)],
                                 memory_order_relaxed) |
            atomic_load_explicit(&s->line.count[AIORCU_COUNT(AIORCU_KIND_TASK, phase)],
                                 memory_order_relaxed)) {
            clear = 0;
            if (s->blocked_gp != gp) {
                if (!now)
                    now = aiorcu_monotonic_ns();
                s->blocked_gp = gp;
                s->first_blocked = now;
            }
        }
    }
    aiorcu__registry_unlock(d);
    return clear;
}

struct gp_wait {
    uint64_t gp;
    uint64_t start;
    uint64_t deadline;
    uint64_t next_stall;
    uint64_t stall_interval;
    uint64_t next_reap; /* shared: next check for dead processes */
    int flags;
    int elide;
    aiorcu_stall_fn stall;
    void *stall_arg;
};

static int futex_sleep(struct aiorcu_domain *d, uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    atomic_fetch_add_explicit(&d->st->futex_sleeps, 1, memory_order_relaxed);
    long r = syscall(SYS_futex, &d->st->futex, futex_op(d, FUTEX_WAIT), -1, &ts, NULL, 0);
    return r < 0 && errno == ETIMEDOUT;
}

static void stop_waiting(struct aiorcu_domain *d, int phase)
{
    atomic_store_explicit(&d->st->ctl.bytes[AIORCU_CTL_WAITING + phase], 0, memory_order_relaxed);
    atomic_store_explicit(&d->st->futex, 0, memory_order_relaxed);
}

static int wait_phase(struct aiorcu_domain *d, int phase, int stage, struct gp_wait *w)
{
    if (w->flags & AIORCU_SYNC_BUSTED)
        return AIORCU_OK;
    if (scan_clear(d, phase, w->gp))
        return AIORCU_OK;
    if (w->flags & AIORCU_SYNC_TRY)
        return AIORCU_BUSY;
    uint64_t spin_until = aiorcu_monotonic_ns() + SPIN_NS;
    while (aiorcu_monotonic_ns() < spin_until) {
        for (int i = 0; i < 64; i++)
            cpu_relax();
        if (scan_clear(d, phase, w->gp))
            return AIORCU_OK;
    }
    uint64_t backoff = POLL_MIN_NS;
    for (;;) {
        uint64_t now = aiorcu_monotonic_ns();
        if (now >= w->deadline)
            return AIORCU_TIMEDOUT;
        if (d->shared && now >= w->next_reap) {
            /* A process that died inside a section never leaves it: every
             * backstop interval, release the slots of processes proven
             * dead (shared.c), well within 0.5 s of a death. */
            w->next_reap = now + BACKSTOP_NS;
            if (aiorcu__reap_dead(d, phase) > 0 && scan_clear(d, phase, w->gp))
                return AIORCU_OK;
        }
        if (now >= w->next_stall) {
            if (w->stall)
                w->stall(w->stall_arg, now - w->start, stage, phase);
            w->stall_interval *= 2;
            if (w->stall_interval > d->stall_max_ns)
                w->stall_interval = d->stall_max_ns;
            w->next_stall = now + w->stall_interval;
            if (scan_clear(d, phase, w->gp))
                return AIORCU_OK;
            continue;
        }
        uint64_t until = w->deadline < w->next_stall ? w->deadline : w->next_stall;
        /* Relaxed atomic: set_wait_mode() stores it without the writer mutex. */
        if (__atomic_load_n(&d->wait_mode, __ATOMIC_RELAXED) == AIORCU_WAIT_POLL) {
            sleep_ns(until - now < backoff ? until - now : backoff);
            backoff = backoff * 2 > POLL_MAX_NS ? POLL_MAX_NS : backoff * 2;
            if (scan_clear(d, phase, w->gp))
                return AIORCU_OK;
            continue;
        }
        atomic_store_explicit(&d->st->futex, -1, memory_order_relaxed);
        /* Release: a reader that sees the waiting byte also sees futex == -1,
         * so its wake's exchange cannot miss the sleeper (pairs with the
         * acquire load of the waiting byte in aiorcu_read_uncount). */
        atomic_store_explicit(&d->st->ctl.bytes[AIORCU_CTL_WAITING + phase], 1,
                              memory_order_release);
        /* M2: either a reader's load of the waiting byte after its 1 -> 0
         * decrement (F3) sees 1 and wakes us, or our rescan sees the
         * decrement.  Pairs with F3 (membarrier mode: the IPI stands in for
         * it).  Never elided: a reader registered since M1 may be a
         * straggler here. */
        if (aiorcu__heavy_barrier(d) < 0) {
            stop_waiting(d, phase);
            return AIORCU_EBARRIER;
        }
        if (scan_clear(d, phase, w->gp)) {
            stop_waiting(d, phase);
            return AIORCU_OK;
        }
        uint64_t nap = until - now < BACKSTOP_NS ? until - now : BACKSTOP_NS;
        int timed_out = futex_sleep(d, nap);
        /* A reader's wake exchanges -1 for 0: one that came just after the
         * timeout was late, not lost. */
        int woken = atomic_load_explicit(&d->st->futex, memory_order_relaxed) != -1;
        stop_waiting(d, phase);
        int reaped = 0;
        if (timed_out && d->shared) {
            w->next_reap = aiorcu_monotonic_ns() + BACKSTOP_NS;
            reaped = aiorcu__reap_dead(d, phase) > 0;
        }
        if (scan_clear(d, phase, w->gp)) {
            /* Readers left but nobody woke us: a lost wake-up that only the
             * backstop caught.  Tests and the torture run assert zero. */
            if (timed_out && nap == BACKSTOP_NS && !reaped && !woken)
                atomic_fetch_add_explicit(&d->st->backstop_timeouts, 1, memory_order_relaxed);
            return AIORCU_OK;
        }
    }
}

static int run_grace_period(struct aiorcu_domain *d, struct gp_wait *w, int caller_slot)
{
    /* Under the writer mutex; the update was published before the call. */
    w->gp = atomic_load_explicit(&d->st->started, memory_order_relaxed) + 1;
    atomic_store_explicit(&d->st->started, w->gp, memory_order_relaxed);
    writer_jitter();
    w->elide = can_elide(d, caller_slot);

    /* M1: pairs with F1, between a reader's count increment and its data
     * loads.  A reader whose increment the scans below miss is guaranteed
     * to load the updated data. */
    if (barrier(d, w->elide) < 0)
        return AIORCU_EBARRIER;
    writer_jitter();

    int cur = atomic_load_explicit(&d->st->ctl.bytes[AIORCU_CTL_PHASE], memory_order_relaxed);
    int rc = wait_phase(d, !cur, AIORCU_STAGE_STRAGGLERS, w);
    if (rc != AIORCU_OK)
        return rc;
    /* A try that would have to wait gives up before the flip: a flip it
     * then abandoned would make the grace period that follows wait for the
     * readers that entered since, as well as for those already inside. */
    if ((w->flags & (AIORCU_SYNC_TRY | AIORCU_SYNC_BUSTED)) == AIORCU_SYNC_TRY &&
        !scan_clear(d, cur, w->gp))
        return AIORCU_BUSY;
    writer_jitter();
    /* Plain fences around the flip, as liburcu's smp_mb(): progress (readers
     * see the new phase sooner), not safety. */
    atomic_thread_fence(memory_order_seq_cst);
    atomic_store_explicit(&d->st->ctl.bytes[AIORCU_CTL_PHASE], !cur, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    writer_jitter();

    rc = wait_phase(d, cur, AIORCU_STAGE_CLOSED, w);
    if (rc != AIORCU_OK)
        return rc; /* abandoned: the flip stays, `completed` does not move */
    writer_jitter();

    /* M3: pairs with F2, between a reader's last data load and its count
     * decrement; what the caller does next (free, revoke) is ordered after
     * every data load of the readers waited for. */
    if (barrier(d, w->elide) < 0)
        return AIORCU_EBARRIER;
    writer_jitter();
    /* Release: pairs with the acquire load in aiorcu_completed(). */
    atomic_store_explicit(&d->st->completed, w->gp, memory_order_release);
    atomic_fetch_add_explicit(&d->st->grace_periods, 1, memory_order_relaxed);
    return AIORCU_OK;
}

/* The writer mutex.  In a segment it is robust: a writer that died holding
 * it may have flipped the phase without completing, which is an abandoned
 * grace period; "never un-flip" and the next straggler wait cover it. */
static int writer_locked(struct aiorcu_domain *d, int rc)
{
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(&d->st->writer_lock);
        atomic_fetch_add_explicit(&d->st->writer_recoveries, 1, memory_order_relaxed);
        return AIORCU_OK;
    }
    if (rc == 0)
        return AIORCU_OK;
    if (rc == EBUSY)
        return AIORCU_BUSY;
    if (rc == ETIMEDOUT)
        return AIORCU_TIMEDOUT;
    errno = rc;
    return AIORCU_ESYS;
}

static int lock_writer(struct aiorcu_domain *d, uint64_t deadline, int flags)
{
    pthread_mutex_t *m = &d->st->writer_lock;
    if (flags & AIORCU_SYNC_TRY)
        return writer_locked(d, pthread_mutex_trylock(m));
    if (deadline == UINT64_MAX)
        return writer_locked(d, pthread_mutex_lock(m));
    struct timespec ts = {(time_t)(deadline / 1000000000ull), (long)(deadline % 1000000000ull)};
    return writer_locked(d, pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts));
}

int aiorcu_synchronize(struct aiorcu_domain *d, uint64_t target, int64_t timeout_ns, int flags,
                       int caller_slot, aiorcu_stall_fn stall, void *stall_arg)
{
    uint64_t start = aiorcu_monotonic_ns();
    struct gp_wait w = {
        .start = start,
        /* Negative: no deadline; so is one too far away to represent. */
        .deadline = timeout_ns < 0 || (uint64_t)timeout_ns > UINT64_MAX - start
                        ? UINT64_MAX
                        : start + (uint64_t)timeout_ns,
        .flags = flags,
        .stall = stall,
        .stall_arg = stall_arg,
    };
    int rc = lock_writer(d, w.deadline, flags);
    if (rc == AIORCU_TIMEDOUT)
        atomic_fetch_add_explicit(&d->st->timeouts, 1, memory_order_relaxed);
    if (rc != AIORCU_OK)
        return rc;
    /* Another writer may have run a grace period that started after our
     * target was taken while we waited for the mutex: share it. */
    if (aiorcu_completed(d) >= target) {
        pthread_mutex_unlock(&d->st->writer_lock);
        return AIORCU_OK;
    }
    w.stall_interval = d->stall_first_ns;
    w.next_stall = start + d->stall_first_ns;
    rc = run_grace_period(d, &w, caller_slot);
    if (rc == AIORCU_TIMEDOUT)
        atomic_fetch_add_explicit(&d->st->timeouts, 1, memory_order_relaxed);
    pthread_mutex_unlock(&d->st->writer_lock);
    return rc;
}
