/*
 * Plain-C stress harness for the aiorcu core (the .c files in csrc/), built and run by
 * run.sh (AddressSanitizer + UndefinedBehaviorSanitizer) and tsan.sh
 * (ThreadSanitizer).  README.md next to this file says what each run checks.
 *
 * The protected object: writers publish a fresh heap `struct obj` through the
 * atomic pointer `g_current`, wait for a grace period (aiorcu_synchronize, or a
 * snapshot token polled with aiorcu_completed), then poison the old object and
 * free it.  Readers load the pointer inside a read section and check that the
 * object is neither poisoned nor torn, at every point where a section still
 * protects it, including on another thread that a section was handed to
 * before that thread leaves it.  A poisoned read is a violation of the
 * grace-period guarantee; with `free()` on, AddressSanitizer also reports it
 * as a use-after-free.
 *
 * Exit status: 0 clean, 2 usage, 3 violations seen, 4 an invariant of the
 * core's API broke (or a self-test failed), 5 the run hung, 77 membarrier
 * mode was asked for but the kernel cannot provide it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aiorcu.h"

#if defined(__SANITIZE_THREAD__)
#define STRESS_TSAN 1
#else
#define STRESS_TSAN 0
#endif

/* Optional core knob (grace.c): widens the windows between the writer's
 * steps.  Weak, so the harness still builds against a core without it. */
#pragma weak aiorcu_debug_set_writer_jitter
uint64_t aiorcu_debug_set_writer_jitter(uint64_t max_ns);

#if STRESS_TSAN
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

typedef int (*clocklock_fn)(pthread_mutex_t *, clockid_t, const struct timespec *);

/* Set in a fork child (pthread_atfork, registered in main).  After a fork
 * of a multi-threaded process TSan stops interpreting the child's
 * interceptors, so it does not see the core re-initialise its mutexes
 * there; annotating a lock of them would report a bogus "double lock". */
static int tsan_in_fork_child;

static void tsan_mark_fork_child(void)
{
    tsan_in_fork_child = 1;
}

/* gcc 12's ThreadSanitizer runtime intercepts pthread_mutex_timedlock but
 * not pthread_mutex_clocklock, which aiorcu_synchronize() uses for a timed
 * wait on the writer mutex: TSan would see an unlock of a mutex it never saw
 * locked ("unlock of an unlocked mutex") and would miss the happens-before
 * edges of that lock.  This definition takes precedence over libc's for the
 * executable and reports the lock the way TSan's own interceptors do. */
int pthread_mutex_clocklock(pthread_mutex_t *m, clockid_t clock, const struct timespec *abstime)
{
    static _Atomic(clocklock_fn) real;
    /* Relaxed: every thread computes the same value; no data hangs off it. */
    clocklock_fn fn = atomic_load_explicit(&real, memory_order_relaxed);
    if (!fn) {
        fn = (clocklock_fn)dlsym(RTLD_NEXT, "pthread_mutex_clocklock");
        if (!fn)
            abort();
        atomic_store_explicit(&real, fn, memory_order_relaxed);
    }
    if (tsan_in_fork_child)
        return fn(m, clock, abstime);
    __tsan_mutex_pre_lock(m, __tsan_mutex_try_lock);
    int rc = fn(m, clock, abstime);
    __tsan_mutex_post_lock(
        m, rc == 0 ? __tsan_mutex_try_lock : __tsan_mutex_try_lock | __tsan_mutex_try_lock_failed,
        0);
    return rc;
}
#endif

#define EXIT_USAGE     2
#define EXIT_VIOLATION 3
#define EXIT_INVARIANT 4
#define EXIT_HANG      5
#define EXIT_SKIP      77

#define MODE_AUTO       0
#define MODE_FENCE      1
#define MODE_MEMBARRIER 2

#define OBJ_LIVE   0x4c4956454f424a31ull /* "LIVEOBJ1" */
#define OBJ_POISON 0xdeaddeaddeaddeadull
#define OBJ_WORDS  6

#define THREAD AIORCU_KIND_THREAD
#define TASK   AIORCU_KIND_TASK

#define HOG_MAX            150  /* slots one hog round may hold: > 2 chunks */
#define GROW_CHILDREN      3    /* threads registering at once on a fresh domain */
#define GROW_SLOTS         48   /* slots each of them takes: 3 * 48 > 2 chunks */
#define PENDING_MAX        1024 /* poll writer: objects waiting for their token */
#define STALL_SLOTS        512
#define MAX_TASKS          4
#define MAX_NEST           4
#define MAX_OVERLAP        4
#define MAX_CHURN_CHILDREN 6
#define MAX_DEAD_SECTIONS  3         /* sections a churn child may die inside */
#define HANDOFF_CAP        256       /* handed-over sections waiting for a leaver */
#define RACE_GATE_NS       200000ull /* two leaves of one section wait this long for each other */
#define RELAY_LIMIT_S 3.0 /* longest a relay of overlapping sections may hold grace periods off */
#define GP_STALL_LIMIT_S   3.0 /* the auditor: longest time without a completed grace period */
#define COUNT_BOUND        (1ull << 20) /* no count of open sections is ever this large */
#define FORK_MAX           200          /* forks per run */
#define FORK_CHILD_LIMIT_S 5.0          /* a fork child that has not exited by then is hung */

/* ------------------------------------------------------------------ */
/* Options                                                             */

static struct {
    double seconds;
    int mode;
    int readers;
    int churners;
    int hogs;
    int growers;
    int writers;
    int leavers;
    int forkers;
    int busted;
    int retire_free; /* -1: default (free unless busted or under TSan) */
    int racy_control;
    int selftest;
    uint64_t seed;
} opt = {
    .seconds = 5.0,
    .mode = MODE_AUTO,
    .readers = 3,
    .churners = 1,
    .hogs = 1,
    .growers = 1,
    .writers = 2,
    .leavers = 2,
    .forkers = 1,
    .retire_free = -1,
    .selftest = 1,
    .seed = 0,
};

static int g_mech; /* AIORCU_MECH_*, fixed before any thread starts */

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static _Thread_local uint64_t tl_rng = 0x9e3779b97f4a7c15ull;

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void rng_seed(uint64_t seed)
{
    tl_rng = splitmix(seed) | 1;
}

static uint64_t rnd(void)
{
    uint64_t x = tl_rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    tl_rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

static unsigned rnd_below(unsigned n)
{
    return (unsigned)(rnd() % n);
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static double now_s(void)
{
    return (double)aiorcu_monotonic_ns() / 1e9;
}

static _Atomic int g_stop;
static _Atomic uint64_t g_violations;
static _Atomic uint64_t g_invariant_failures;

static int stopping(void)
{
    /* Relaxed: a stop request needs no ordering, only to be seen eventually;
     * the join in main() orders everything the threads did. */
    return atomic_load_explicit(&g_stop, memory_order_relaxed);
}

static void invariant_fail(const char *fmt, ...)
{
    uint64_t n = atomic_fetch_add_explicit(&g_invariant_failures, 1, memory_order_relaxed) + 1;
    if (n > 10)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("stress: INVARIANT BROKEN: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static _Noreturn void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("stress: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(EXIT_INVARIANT);
}

/* This thread's aiorcu_thread_serial(), cached: what the core records as
 * the entering thread of a section (section.thread).  It is not a slot's
 * owner: see claim_token(). */
static _Thread_local uint64_t tl_serial;

static uint64_t my_serial(void)
{
    if (!tl_serial)
        tl_serial = aiorcu_thread_serial();
    return tl_serial;
}

/* A token no claim has: claim tokens count up from 1 per domain. */
static uint64_t not_the_token(uint64_t token)
{
    return token ^ (1ull << 62);
}

/* Per-thread counters; main() sums them after joining the thread.  Every
 * field is a uint64_t; the ones from peak_slots on are maxima. */
struct counters {
    uint64_t reads, sections, task_sections, nested, overlapping, task_ops, long_sections;
    uint64_t relays, double_leaves, stale_owner_leaves;
    uint64_t handed, foreign_leaves, races, races_tight, race_losses, late_leaves;
    uint64_t late_reuse_checks, queue_full, phantom_leaves;
    uint64_t registrations, reregistrations, rereg_deferred, spawns, dead_owner_releases;
    uint64_t alive_proofs, death_proofs, released_open, sections_dropped;
    uint64_t hog_rounds, grow_rounds, grow_syncs;
    uint64_t forks, fork_own_sections, fork_phantoms;
    uint64_t updates, gps_waited, gps_polled, retired, stalls, stall_slots;
    uint64_t rc[4], faults_injected, mode_switches, jitter_switches;
    uint64_t audits, sweeps;
    /* maxima */
    uint64_t peak_slots, relay_max_us, fork_call_max_us, fork_child_max_us, gp_gap_max_us;
};

static void counters_add(struct counters *to, const struct counters *from)
{
    const uint64_t *f = (const uint64_t *)from;
    uint64_t *t = (uint64_t *)to;
    size_t first_max = offsetof(struct counters, peak_slots) / sizeof(uint64_t);
    for (size_t i = 0; i < sizeof *from / sizeof(uint64_t); i++) {
        if (i < first_max)
            t[i] += f[i];
        else if (f[i] > t[i])
            t[i] = f[i];
    }
}

static void note_max(uint64_t *m, uint64_t v)
{
    if (v > *m)
        *m = v;
}

/* ------------------------------------------------------------------ */
/* The protected object                                                */

struct obj {
    /* Payload words are atomics read relaxed: the test is whether the read
     * section protects the object, not how these loads are ordered, and
     * atomics keep the busted run free of C11 data races (and of TSan
     * reports about accesses ordered only by fences, see README.md). */
    _Atomic uint64_t magic;
    _Atomic uint64_t seq;
    _Atomic uint64_t words[OBJ_WORDS];
    struct obj *grave_next; /* g_grave_lock */
};

static _Atomic(struct obj *) g_current;
static _Atomic uint64_t g_next_seq;
static struct aiorcu_domain *g_d;

static pthread_mutex_t g_grave_lock = PTHREAD_MUTEX_INITIALIZER;
static struct obj *g_grave;
static uint64_t g_grave_count;

static uint64_t obj_word(uint64_t seq, unsigned i)
{
    return splitmix(seq * OBJ_WORDS + i);
}

static struct obj *obj_new(void)
{
    struct obj *o = malloc(sizeof *o);
    if (!o)
        die("out of memory");
    uint64_t seq = atomic_fetch_add_explicit(&g_next_seq, 1, memory_order_relaxed) + 1;
    /* Relaxed: published by the release half of the exchange in publish(). */
    atomic_store_explicit(&o->magic, OBJ_LIVE, memory_order_relaxed);
    atomic_store_explicit(&o->seq, seq, memory_order_relaxed);
    for (unsigned i = 0; i < OBJ_WORDS; i++)
        atomic_store_explicit(&o->words[i], obj_word(seq, i), memory_order_relaxed);
    o->grave_next = NULL;
    return o;
}

static struct obj *publish(struct obj *o)
{
    /* Release: pairs with the acquire load in load_current(), so a reader
     * that sees `o` sees its initialised words.  Acquire: the old object's
     * words, written by whichever writer published it, are ours to poison. */
    return atomic_exchange_explicit(&g_current, o, memory_order_acq_rel);
}

static struct obj *load_current(void)
{
    /* Acquire: pairs with the release half of the exchange in publish(). */
    return atomic_load_explicit(&g_current, memory_order_acquire);
}

static int retire_frees(void)
{
    return opt.retire_free;
}

/* Called only once a grace period covering every reader that could hold `o`
 * has completed (or, in busted mode, once the busted "grace period" did). */
static void retire(struct obj *o, struct counters *c)
{
    /* Relaxed: ordered after the readers' loads by the grace period (M3 and
     * the acquire in aiorcu_completed); a reader that still sees these stores
     * was not waited for. */
    atomic_store_explicit(&o->magic, OBJ_POISON, memory_order_relaxed);
    atomic_store_explicit(&o->seq, 0, memory_order_relaxed);
    for (unsigned i = 0; i < OBJ_WORDS; i++)
        atomic_store_explicit(&o->words[i], OBJ_POISON, memory_order_relaxed);
    c->retired++;
    if (retire_frees()) {
        free(o);
        return;
    }
    pthread_mutex_lock(&g_grave_lock);
    o->grave_next = g_grave;
    g_grave = o;
    g_grave_count++;
    pthread_mutex_unlock(&g_grave_lock);
}

static void violation(const char *what, const struct obj *o, uint64_t magic, uint64_t seq)
{
    uint64_t n = atomic_fetch_add_explicit(&g_violations, 1, memory_order_relaxed) + 1;
    if (n <= 5)
        fprintf(stderr,
                "stress: VIOLATION #%" PRIu64 ": %s (object %p, magic %#" PRIx64 ", seq %" PRIu64
                ")\n",
                n, what, (const void *)o, magic, seq);
}

/* Reads a protected object: must be live and consistent. */
static void check(const struct obj *o, struct counters *c)
{
    c->reads++;
    if (!o) {
        violation("NULL object", o, 0, 0);
        return;
    }
    /* Relaxed: see struct obj. */
    uint64_t magic = atomic_load_explicit(&o->magic, memory_order_relaxed);
    uint64_t seq = atomic_load_explicit(&o->seq, memory_order_relaxed);
    unsigned i = rnd_below(OBJ_WORDS);
    uint64_t w = atomic_load_explicit(&o->words[i], memory_order_relaxed);
    if (magic != OBJ_LIVE)
        violation("poisoned object read inside a read section", o, magic, seq);
    else if (w != obj_word(seq, i))
        violation("object changed under a read section (torn)", o, magic, seq);
}

/* ------------------------------------------------------------------ */
/* Reader side                                                         */

/* Installed as aiorcu_debug_reader_delay: widens the window between a
 * section's phase load and its count increment, the straggler case that the
 * two-phase wait exists for. */
static void reader_delay(void)
{
    uint64_t r = rnd();
    if ((r & 1023) == 0)
        sched_yield();
    else if ((r & 65535) == 1)
        sleep_us(100);
}

static struct obj *section_load(struct counters *c)
{
    struct obj *o = load_current();
    check(o, c);
    return o;
}

static void reader_init_or_die(struct aiorcu_reader *r, struct aiorcu_domain *d, struct counters *c)
{
    if (aiorcu_reader_init(r, d) != 0)
        die("aiorcu_reader_init failed: registry full or out of memory");
    c->registrations++;
}

/* The owner word of the slot `r` has just claimed: a fresh token of the
 * domain per claim (not the thread's serial), which aiorcu_slot_counts()
 * reports and aiorcu_slot_release() matches.  Read right after the claim,
 * while nothing else can release the slot; the caller keeps it with the
 * reader and checks ownership against it. */
static uint64_t claim_token(const struct aiorcu_reader *r)
{
    uint64_t got[AIORCU_NCOUNTS];
    uint64_t token = aiorcu_slot_counts(r->d, r->slot, got);
    if (token == 0)
        die("slot %d just claimed has no owner token", r->slot);
    return token;
}

/* Enters a section on this thread and checks what the core recorded in it. */
static void enter(struct aiorcu_reader *r, struct aiorcu_section *s, int kind, struct counters *c)
{
    aiorcu_section_enter(r, s, kind);
    c->sections++;
    if (kind == TASK)
        c->task_sections++;
    /* Relaxed: the section is this thread's; nobody else has seen it yet. */
    int state = atomic_load_explicit((_Atomic int *)&s->state, memory_order_relaxed);
    if (state != AIORCU_SECTION_OPEN || s->kind != kind || (s->phase & ~1) != 0 ||
        s->thread != my_serial() || s->line != r->line)
        invariant_fail("entered section: state %d kind %d (want %d) phase %d thread %" PRIu64
                       " (want %" PRIu64 ")",
                       state, s->kind, kind, s->phase, s->thread, my_serial());
}

/* Leaves a section this thread entered and has not handed to anyone. */
static void leave(struct aiorcu_reader *r, struct aiorcu_section *s, struct counters *c)
{
    int rc = aiorcu_section_leave(r, s);
    if (rc != 0)
        invariant_fail("leaving an open section returned %d", rc);
    /* Now and then: a second leave must lose. */
    if (rnd_below(32) == 0) {
        rc = aiorcu_section_leave(r, s);
        if (rc != -1)
            invariant_fail("second leave of a section returned %d, not -1", rc);
        c->double_leaves++;
    }
}

static int rnd_kind(void)
{
    return rnd_below(3) == 0 ? TASK : THREAD;
}

/* --- handing sections over to other threads ------------------------
 *
 * A section entered here may be left on another thread.  The leaver threads
 * take `struct handoff` items from one queue:
 *   CHECKED  one leaver; the section still protects its object, so the
 *            leaver checks the object, then leaves (must return 0);
 *   RACE2    two leavers leave it at the same moment: exactly one wins;
 *   RACE_OWN the owner and one leaver leave it at the same moment (the
 *            owner's lock-free path against the core's locked release):
 *            exactly one wins;
 *   LATE     a dead churn child's section, left after its parent released
 *            the slot: the leave returns 0 and must change no count.
 * Only CHECKED items are read through: in the others the section may be
 * closed (or its slot released) before the reading thread gets to it. */
#define HO_CHECKED  0
#define HO_RACE2    1
#define HO_RACE_OWN 2
#define HO_LATE     3

struct handoff {
    struct aiorcu_section s;
    struct obj *o;
    int type;
    int parties;              /* leaves that will be attempted */
    _Atomic int arrived;      /* race gate */
    _Atomic int wins;         /* leaves that returned 0 */
    _Atomic int done;         /* leaves attempted; the last one frees the item */
    _Atomic int *outstanding; /* CHECKED: the owner's count of unleft items */
};

static pthread_mutex_t g_ho_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_ho_cond = PTHREAD_COND_INITIALIZER;
static struct handoff *g_ho_ring[HANDOFF_CAP]; /* g_ho_lock */
static unsigned g_ho_head, g_ho_len;           /* g_ho_lock */
static int g_ho_closing;                       /* g_ho_lock: every producer is gone */

static struct handoff *handoff_new(int type, int parties)
{
    struct handoff *h = calloc(1, sizeof *h);
    if (!h)
        die("out of memory");
    h->type = type;
    h->parties = parties;
    return h;
}

/* Queues `copies` references to h (one per leaver that is to take it). */
static int handoff_push(struct handoff *h, unsigned copies)
{
    if (opt.leavers == 0)
        return 0;
    pthread_mutex_lock(&g_ho_lock);
    int ok = g_ho_len + copies <= HANDOFF_CAP;
    for (unsigned i = 0; ok && i < copies; i++) {
        g_ho_ring[(g_ho_head + g_ho_len) % HANDOFF_CAP] = h;
        g_ho_len++;
    }
    if (ok)
        pthread_cond_broadcast(&g_ho_cond);
    pthread_mutex_unlock(&g_ho_lock);
    return ok;
}

/* Takes the oldest item, waiting for one; NULL once the queue is empty and
 * no producer is left. */
static struct handoff *handoff_pop(void)
{
    struct handoff *h = NULL;
    pthread_mutex_lock(&g_ho_lock);
    while (g_ho_len == 0 && !g_ho_closing) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 2000000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g_ho_cond, &g_ho_lock, &ts);
    }
    if (g_ho_len > 0) {
        h = g_ho_ring[g_ho_head];
        g_ho_head = (g_ho_head + 1) % HANDOFF_CAP;
        g_ho_len--;
    }
    pthread_mutex_unlock(&g_ho_lock);
    return h;
}

/* The forker's request for a phantom: the next CHECKED section a reader
 * hands over goes to the mailbox instead of the queue. */
static _Atomic int g_phantom_wanted;
static _Atomic(struct handoff *) g_phantom;

static int handoff_to_forker(struct handoff *h)
{
    int want = 1;
    if (!atomic_compare_exchange_strong_explicit(&g_phantom_wanted, &want, 0, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return 0;
    /* Release: pairs with the forker's acquire exchange. */
    atomic_store_explicit(&g_phantom, h, memory_order_release);
    return 1;
}

/* Asks the readers for a phantom and waits up to `secs` for one. */
static struct handoff *phantom_take(double secs)
{
    atomic_store_explicit(&g_phantom_wanted, 1, memory_order_release);
    double give_up = now_s() + secs;
    for (;;) {
        struct handoff *h = atomic_exchange_explicit(&g_phantom, NULL, memory_order_acquire);
        if (h)
            return h;
        /* Past the deadline, withdraw the request; if a reader already
         * took it up, its section is on the way: wait for it. */
        if (now_s() > give_up &&
            atomic_exchange_explicit(&g_phantom_wanted, 0, memory_order_acq_rel) == 1)
            return NULL;
        sched_yield();
    }
}

static void handoff_close(void)
{
    pthread_mutex_lock(&g_ho_lock);
    g_ho_closing = 1;
    pthread_cond_broadcast(&g_ho_cond);
    pthread_mutex_unlock(&g_ho_lock);
}

/* Both parties of a race arrive here, then leave as close together as the
 * scheduler allows (two cores, more threads: the gate gives up after
 * RACE_GATE_NS).  Returns 1 to the party that arrived first and saw the
 * other one arrive in time (a tight race, counted once). */
static int race_gate(struct handoff *h)
{
    if (atomic_fetch_add_explicit(&h->arrived, 1, memory_order_acq_rel) + 1 >= h->parties)
        return 0;
    uint64_t until = aiorcu_monotonic_ns() + RACE_GATE_NS;
    unsigned spins = 0;
    while (atomic_load_explicit(&h->arrived, memory_order_acquire) < h->parties) {
        if (aiorcu_monotonic_ns() > until)
            return 0;
        if (++spins % 64 == 0)
            sched_yield();
    }
    return 1;
}

/* One party's leave is done: record it; the last party checks the outcome
 * and frees the item.  Nothing may touch h after the `done` increment
 * unless it was the last. */
static void handoff_finish(struct handoff *h, int rc, int foreign, struct counters *c)
{
    int type = h->type, parties = h->parties;
    if (rc != 0 && rc != -1)
        invariant_fail("aiorcu_section_leave returned %d", rc);
    if (rc == 0) {
        atomic_fetch_add_explicit(&h->wins, 1, memory_order_relaxed);
        if (foreign)
            c->foreign_leaves++;
    } else {
        c->race_losses++;
    }
    if (parties == 1 && rc != 0)
        invariant_fail("the only leave of a handed-over section (type %d) returned %d", type, rc);
    if (type == HO_LATE)
        c->late_leaves++;
    if (h->outstanding)
        /* Release: the owner's acquire load of 0 comes after this leave. */
        atomic_fetch_sub_explicit(h->outstanding, 1, memory_order_release);
    /* acq_rel: the last party sees every other party's use of h. */
    if (atomic_fetch_add_explicit(&h->done, 1, memory_order_acq_rel) + 1 == parties) {
        int wins = atomic_load_explicit(&h->wins, memory_order_relaxed);
        if (wins != 1)
            invariant_fail("%d of %d leaves of one section returned 0 (exactly one must)", wins,
                           parties);
        free(h);
    }
}

/* A leaver (or the forker, or an owner without leavers) takes its part. */
static void handoff_leave(struct aiorcu_reader *r, struct handoff *h, struct counters *c)
{
    if (h->type == HO_CHECKED) {
        /* Still protected: the section that loaded it is open. */
        check(h->o, c);
        if (rnd_below(4) == 0)
            sched_yield();
        check(h->o, c);
    }
    if (h->parties == 2 && race_gate(h))
        c->races_tight++;
    int foreign = h->type != HO_LATE && h->s.thread != my_serial();
    int rc = aiorcu_section_leave(r, &h->s);
    handoff_finish(h, rc, foreign, c);
}

/* Nobody to hand it to: every party's leave on this thread, in turn. */
static void handoff_self(struct aiorcu_reader *r, struct handoff *h, struct counters *c)
{
    c->queue_full++;
    int parties = h->parties;
    for (int i = 0; i < parties; i++) {
        int rc = aiorcu_section_leave(r, &h->s);
        handoff_finish(h, rc, 0, c); /* frees h on the last round */
    }
}

/* A long-lived reader thread: two readers (slots) of one thread, and the
 * count of CHECKED sections it handed over and nobody has left yet (its slot
 * must stay registered until they are). */
struct reader_ctx {
    struct aiorcu_reader r, r2;
    uint64_t token, token2; /* claim_token() of r's and r2's slots */
    _Atomic int outstanding;
    struct counters *c;
};

static void op_simple(struct aiorcu_reader *r, struct counters *c)
{
    struct aiorcu_section s;
    enter(r, &s, rnd_kind(), c);
    struct obj *o = section_load(c);
    check(o, c);
    leave(r, &s, c);
}

/* Nested sections: independent sections of one slot, each taking the phase
 * current when it enters; an outer one still protects what it loaded after
 * the inner ones left. */
static void op_nested(struct aiorcu_reader *r, struct counters *c)
{
    struct aiorcu_section s[MAX_NEST];
    struct obj *held[MAX_NEST];
    unsigned depth = 2 + rnd_below(MAX_NEST - 1);
    for (unsigned i = 0; i < depth; i++) {
        enter(r, &s[i], rnd_kind(), c);
        held[i] = section_load(c);
        if (rnd_below(8) == 0)
            sched_yield();
    }
    for (unsigned i = depth; i-- > 0;) {
        for (unsigned j = 0; j <= i; j++)
            check(held[j], c);
        leave(r, &s[i], c);
    }
    c->nested++;
}

/* Overlapping sections: two slots of one thread (enter A, enter B, leave A,
 * leave B), then up to four sections of one slot closed in random order,
 * the still-open ones rechecked after every leave. */
static void op_overlap(struct aiorcu_reader *a, struct aiorcu_reader *b, struct counters *c)
{
    struct aiorcu_section sa, sb;
    enter(a, &sa, rnd_kind(), c);
    struct obj *oa = section_load(c);
    enter(b, &sb, rnd_kind(), c);
    struct obj *ob = section_load(c);
    check(oa, c);
    leave(a, &sa, c);
    check(ob, c);
    struct obj *oc = section_load(c);
    if (rnd_below(4) == 0)
        sched_yield();
    check(ob, c);
    check(oc, c);
    leave(b, &sb, c);

    struct aiorcu_section s[MAX_OVERLAP];
    struct obj *o[MAX_OVERLAP];
    unsigned n = 2 + rnd_below(MAX_OVERLAP - 1);
    for (unsigned i = 0; i < n; i++) {
        enter(a, &s[i], rnd_kind(), c);
        o[i] = section_load(c);
    }
    while (n > 0) {
        unsigned k = rnd_below(n);
        leave(a, &s[k], c);
        s[k] = s[n - 1]; /* not entered or left by anyone else: copying is fine */
        o[k] = o[n - 1];
        n--;
        for (unsigned j = 0; j < n; j++)
            check(o[j], c);
    }
    c->overlapping++;
}

/* Task sections (the `async with` kind) opened and closed in random order,
 * with a thread section of the same slot sometimes open across them. */
static void op_tasks(struct aiorcu_reader *r, struct counters *c)
{
    struct aiorcu_section ts[MAX_TASKS], th;
    struct obj *to[MAX_TASKS], *tho = NULL;
    unsigned n = 0, opened = 0, target = 1 + rnd_below(MAX_TASKS * 2);
    int thread_section = 0;
    while (opened < target || n > 0) {
        unsigned what = rnd_below(8);
        if (what == 0 && !thread_section) {
            enter(r, &th, THREAD, c);
            tho = section_load(c);
            thread_section = 1;
        } else if (what == 1 && thread_section) {
            check(tho, c);
            leave(r, &th, c);
            thread_section = 0;
        } else if (opened < target && n < MAX_TASKS && (what < 5 || n == 0)) {
            enter(r, &ts[n], TASK, c);
            to[n] = section_load(c);
            n++;
            opened++;
        } else if (n > 0) {
            unsigned k = rnd_below(n);
            for (unsigned j = 0; j < n; j++)
                check(to[j], c);
            leave(r, &ts[k], c);
            ts[k] = ts[n - 1];
            to[k] = to[n - 1];
            n--;
        }
    }
    if (thread_section) {
        check(tho, c);
        leave(r, &th, c);
    }
    c->task_ops++;
}

/* A section long enough that writers sleep, time out and see stalls. */
static void op_long(struct aiorcu_reader *r, struct counters *c)
{
    struct aiorcu_section s;
    enter(r, &s, rnd_kind(), c);
    struct obj *o = section_load(c);
    sleep_us(50 + rnd_below(1500));
    check(o, c);
    leave(r, &s, c);
    c->long_sections++;
}

/* A relay: always at least one section open on this slot (enter the next,
 * then leave the previous) until two more grace periods completed.  Every
 * section takes the phase current at its entry, so the relay cannot hold
 * grace periods off; it gives up (and fails) after RELAY_LIMIT_S. */
static void op_relay(struct aiorcu_reader *r, struct counters *c)
{
    struct aiorcu_section s[2];
    struct obj *o[2];
    uint64_t start = aiorcu_completed(g_d);
    double t0 = now_s();
    int cur = 0;
    enter(r, &s[cur], rnd_kind(), c);
    o[cur] = section_load(c);
    for (unsigned steps = 1; aiorcu_completed(g_d) < start + 2 && !stopping(); steps++) {
        int next = !cur;
        enter(r, &s[next], rnd_kind(), c);
        o[next] = section_load(c);
        check(o[cur], c);
        leave(r, &s[cur], c);
        cur = next;
        if (steps % 16 == 0) {
            sched_yield();
            if (now_s() - t0 > RELAY_LIMIT_S) {
                invariant_fail("a relay of overlapping sections held grace periods off for "
                               "%.1f s (completed stayed below %" PRIu64 ")",
                               now_s() - t0, start + 2);
                break;
            }
        }
    }
    check(o[cur], c);
    leave(r, &s[cur], c);
    c->relays++;
    note_max(&c->relay_max_us, (uint64_t)((now_s() - t0) * 1e6));
}

/* Hands a section over: CHECKED to a leaver, RACE2 to two leavers at
 * once, or RACE_OWN, where this thread and a leaver leave it together. */
static void op_handoff(struct reader_ctx *x)
{
    struct counters *c = x->c;
    unsigned what = rnd_below(10);
    int type = what < 6 ? HO_CHECKED : what < 8 ? HO_RACE2 : HO_RACE_OWN;
    struct handoff *h = handoff_new(type, type == HO_CHECKED ? 1 : 2);
    enter(&x->r, &h->s, rnd_kind(), c);
    h->o = section_load(c);
    c->handed++;
    if (type == HO_CHECKED) {
        h->outstanding = &x->outstanding;
        atomic_fetch_add_explicit(&x->outstanding, 1, memory_order_relaxed);
        if (!handoff_to_forker(h) && !handoff_push(h, 1))
            handoff_self(&x->r, h, c);
    } else if (type == HO_RACE2) {
        c->races++;
        if (!handoff_push(h, 2))
            handoff_self(&x->r, h, c);
    } else {
        c->races++;
        if (!handoff_push(h, 1)) {
            handoff_self(&x->r, h, c);
            return;
        }
        if (race_gate(h))
            c->races_tight++;
        int rc = aiorcu_section_leave(&x->r, &h->s);
        handoff_finish(h, rc, 0, c);
    }
}

/* Releases this thread's own slot (a reader that is re-registering or done),
 * claimed with `token`.  Sections it handed over in a race may still be
 * open: their counts are dropped, which the core counts in
 * dead_readers_released. */
static void reader_release(struct aiorcu_reader *r, uint64_t token, struct counters *c)
{
    uint64_t n = aiorcu_slot_release(r->d, r->slot, token);
    if (n == AIORCU_NOT_OWNER) {
        uint64_t got[AIORCU_NCOUNTS];
        /* UINT64_MAX: not the owner, or counts that sum to -1 (below zero). */
        invariant_fail("releasing our own slot %d returned AIORCU_NOT_OWNER (owner now %" PRIu64
                       ", our claim %" PRIu64 "; or its counts summed to -1)",
                       r->slot, aiorcu_slot_counts(r->d, r->slot, got), token);
    } else if (n > HANDOFF_CAP)
        invariant_fail("releasing our own slot %d dropped %" PRIu64 " sections", r->slot, n);
    else if (n > 0) {
        c->released_open++;
        c->sections_dropped += n;
    }
    r->slot = -1;
    r->line = NULL;
}

/* Releases the slot while inside a section, registers again (often on
 * the same slot) and enters a section there; then leaves the first one: its
 * generation is gone, so that leave (the lock-free path: same thread) must
 * leave the new registration's counts exactly as they are. */
static void op_rereg_inside(struct reader_ctx *x)
{
    struct counters *c = x->c;
    struct aiorcu_section old, cur;
    enter(&x->r, &old, rnd_kind(), c);
    check(section_load(c), c);
    uint64_t old_token = x->token;
    reader_release(&x->r, old_token, c); /* drops `old` (and any open handed-over race) */
    reader_init_or_die(&x->r, g_d, c);
    x->token = claim_token(&x->r);
    c->reregistrations++;
    enter(&x->r, &cur, rnd_kind(), c);
    struct obj *o = section_load(c);
    uint64_t expect[AIORCU_NCOUNTS] = {0}, got[AIORCU_NCOUNTS];
    expect[AIORCU_COUNT(cur.kind, cur.phase)] = 1;
    int rc = aiorcu_section_leave(&x->r, &old);
    if (rc != 0)
        invariant_fail("leaving a section of a released registration returned %d", rc);
    uint64_t owner = aiorcu_slot_counts(g_d, x->r.slot, got);
    if (x->token == old_token)
        invariant_fail("slot %d claimed again with the released claim's token %" PRIu64, x->r.slot,
                       old_token);
    if (owner != x->token || memcmp(got, expect, sizeof got) != 0)
        invariant_fail("leaving a section of the released registration changed the new one's "
                       "owner or counts (slot %d): owner %" PRIu64 " (want %" PRIu64
                       "), counts %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 ", want %" PRIu64
                       " %" PRIu64 " %" PRIu64 " %" PRIu64,
                       x->r.slot, owner, x->token, got[0], got[1], got[2], got[3], expect[0],
                       expect[1], expect[2], expect[3]);
    check(o, c);
    leave(&x->r, &cur, c);
    c->stale_owner_leaves++;
}

struct worker {
    pthread_t tid;
    int index;
    uint64_t seed;
    struct counters c;
};

static void *reader_main(void *arg)
{
    struct worker *w = arg;
    struct reader_ctx x = {.c = &w->c};
    struct counters *c = &w->c;
    rng_seed(w->seed);
    reader_init_or_die(&x.r, g_d, c);
    x.token = claim_token(&x.r);
    reader_init_or_die(&x.r2, g_d, c);
    x.token2 = claim_token(&x.r2);
    while (!stopping()) {
        unsigned op = rnd_below(200);
        if (op < 80)
            op_simple(&x.r, c);
        else if (op < 110)
            op_nested(&x.r, c);
        else if (op < 134)
            op_overlap(&x.r, &x.r2, c);
        else if (op < 160)
            op_tasks(&x.r, c);
        else if (op < 163)
            op_long(&x.r, c);
        else if (op < 164)
            op_relay(&x.r, c);
        else if (op < 186)
            op_handoff(&x);
        else if (op < 190) {
            /* Leave and register again on the same thread, unless a section
             * handed over for checking is still open on the slot. */
            if (atomic_load_explicit(&x.outstanding, memory_order_acquire) != 0)
                c->rereg_deferred++;
            else if (op < 188)
                op_rereg_inside(&x);
            else {
                reader_release(&x.r, x.token, c);
                reader_init_or_die(&x.r, g_d, c);
                x.token = claim_token(&x.r);
                c->reregistrations++;
            }
        } else
            sleep_us(rnd_below(40));
    }
    /* Acquire: pairs with the leavers' release decrement. */
    while (atomic_load_explicit(&x.outstanding, memory_order_acquire) != 0)
        sleep_us(100);
    reader_release(&x.r2, x.token2, c);
    reader_release(&x.r, x.token, c);
    return NULL;
}

/* Leaves sections handed over by other threads, until every producer is
 * gone and the queue is empty.  It has a slot of its own and reads too. */
static void *leaver_main(void *arg)
{
    struct worker *w = arg;
    struct counters *c = &w->c;
    rng_seed(w->seed);
    struct aiorcu_reader r;
    reader_init_or_die(&r, g_d, c);
    struct handoff *h;
    while ((h = handoff_pop()) != NULL) {
        handoff_leave(&r, h, c);
        if (rnd_below(8) == 0)
            op_simple(&r, c);
    }
    aiorcu_reader_fini(&r);
    return NULL;
}

/* Short-lived reader threads: register, read a little, release, exit.
 * One in ten exits *inside* one to three sections instead.  Its parent
 * checks, while it is parked inside them, that its slot's owner is not
 * reported dead; after joining it, that the owner is proven dead and that
 * the slot counts exactly those sections; then it releases the slot, as the
 * Python side does for a thread that is gone, while writers may be waiting
 * on it.  The dead thread's section structs are left afterwards, late, by
 * another thread: such a leave must change nothing. */
struct churn_child {
    pthread_t tid;
    uint64_t seed;
    int dies_inside;
    int slot;
    uint64_t token;                          /* claim_token() of its slot */
    struct handoff *dead[MAX_DEAD_SECTIONS]; /* the sections it dies inside */
    unsigned ndead;
    int self_dead; /* aiorcu_slot_owner_dead() on its own slot, asked by itself */
    _Atomic int parked;
    _Atomic int go;
    struct counters c;
};

static void *churn_child_main(void *arg)
{
    struct churn_child *k = arg;
    struct counters *c = &k->c;
    rng_seed(k->seed);
    struct aiorcu_reader r;
    reader_init_or_die(&r, g_d, c);
    k->slot = r.slot;
    k->token = claim_token(&r);
    unsigned n = 1 + rnd_below(20);
    for (unsigned i = 0; i < n; i++) {
        unsigned op = rnd_below(10);
        if (op < 6)
            op_simple(&r, c);
        else if (op < 8)
            op_nested(&r, c);
        else
            op_tasks(&r, c);
    }
    if (!k->dies_inside) {
        aiorcu_reader_fini(&r);
        return NULL;
    }
    k->ndead = 1 + rnd_below(MAX_DEAD_SECTIONS);
    for (unsigned i = 0; i < k->ndead; i++) {
        struct handoff *h = handoff_new(HO_LATE, 1);
        enter(&r, &h->s, rnd_kind(), c);
        h->o = section_load(c);
        k->dead[i] = h;
    }
    k->self_dead = aiorcu_slot_owner_dead(g_d, r.slot);
    /* Release/acquire: the parent sees the fields above once parked. */
    atomic_store_explicit(&k->parked, 1, memory_order_release);
    double give_up = now_s() + 10.0;
    while (!atomic_load_explicit(&k->go, memory_order_acquire) && now_s() < give_up)
        sleep_us(20);
    return NULL; /* exits inside its sections: the slot stays registered */
}

/* The late leaves of a dead child's sections, after its slot was released.
 * Half of the time on this thread: it registers again, and when it gets the
 * very slot the child had, it opens sections there and checks that the late
 * leaves left its counts exactly as they were.  Otherwise the leavers take
 * them, concurrently with whatever the slot's next owner does. */
static void late_leaves(struct churn_child *k, struct counters *c)
{
    unsigned first = 0;
    if (opt.leavers > 0 && rnd_below(2) == 0) {
        while (first < k->ndead && handoff_push(k->dead[first], 1))
            first++;
        if (first == k->ndead)
            return;
        c->queue_full++;
    }
    struct aiorcu_reader rr;
    reader_init_or_die(&rr, g_d, c);
    uint64_t token = claim_token(&rr);
    struct aiorcu_section own[2];
    uint64_t expect[AIORCU_NCOUNTS] = {0}, got[AIORCU_NCOUNTS];
    int reused = rr.slot == k->slot;
    if (reused) {
        enter(&rr, &own[0], THREAD, c);
        enter(&rr, &own[1], TASK, c);
        expect[AIORCU_COUNT(THREAD, own[0].phase)]++;
        expect[AIORCU_COUNT(TASK, own[1].phase)]++;
    }
    for (unsigned i = first; i < k->ndead; i++) {
        int rc = aiorcu_section_leave(&rr, &k->dead[i]->s);
        handoff_finish(k->dead[i], rc, 0, c);
    }
    if (reused) {
        uint64_t owner = aiorcu_slot_counts(g_d, rr.slot, got);
        if (token == k->token)
            invariant_fail("slot %d claimed again with the dead thread's token %" PRIu64, rr.slot,
                           token);
        if (owner != token || memcmp(got, expect, sizeof got) != 0)
            invariant_fail("late leaves of a released slot's sections changed its new owner's "
                           "counts: slot %d owner %" PRIu64 " (want %" PRIu64 ") counts %" PRIu64
                           " %" PRIu64 " %" PRIu64 " %" PRIu64 ", want %" PRIu64 " %" PRIu64
                           " %" PRIu64 " %" PRIu64,
                           rr.slot, owner, token, got[0], got[1], got[2], got[3], expect[0],
                           expect[1], expect[2], expect[3]);
        c->late_reuse_checks++;
        leave(&rr, &own[1], c);
        leave(&rr, &own[0], c);
    }
    aiorcu_reader_fini(&rr);
}

static void bury_child(struct churn_child *k, struct counters *c)
{
    if (k->self_dead)
        invariant_fail("a live thread asking about its own slot %d was told its owner is dead",
                       k->slot);
    /* pthread_join returned: the thread's key destructors have run. */
    if (aiorcu_slot_owner_dead(g_d, k->slot) != 1)
        invariant_fail("slot %d: its owner thread was joined but is not proven dead", k->slot);
    else
        c->death_proofs++;
    uint64_t expect[AIORCU_NCOUNTS] = {0}, got[AIORCU_NCOUNTS];
    for (unsigned i = 0; i < k->ndead; i++)
        expect[AIORCU_COUNT(k->dead[i]->s.kind, k->dead[i]->s.phase)]++;
    uint64_t owner = aiorcu_slot_counts(g_d, k->slot, got);
    if (owner != k->token || memcmp(got, expect, sizeof got) != 0)
        invariant_fail("dead thread's slot %d: owner %" PRIu64 " (want %" PRIu64
                       "), counts %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 ", want %" PRIu64
                       " %" PRIu64 " %" PRIu64 " %" PRIu64,
                       k->slot, owner, k->token, got[0], got[1], got[2], got[3], expect[0],
                       expect[1], expect[2], expect[3]);
    uint64_t n = aiorcu_slot_release(g_d, k->slot, not_the_token(k->token));
    if (n != AIORCU_NOT_OWNER)
        invariant_fail("slot %d released for a claim that does not own it: %" PRIu64, k->slot, n);
    /* A writer may be waiting on this slot right now. */
    n = aiorcu_slot_release(g_d, k->slot, k->token);
    if (n != k->ndead)
        invariant_fail("releasing dead thread's slot %d dropped %" PRIu64 " sections, %u were open",
                       k->slot, n, k->ndead);
    else {
        c->released_open++;
        c->sections_dropped += n;
    }
    c->dead_owner_releases++;
    late_leaves(k, c);
}

static void *churner_main(void *arg)
{
    struct worker *w = arg;
    struct counters *c = &w->c;
    rng_seed(w->seed);
    struct churn_child kids[MAX_CHURN_CHILDREN];
    while (!stopping()) {
        unsigned n = 2 + rnd_below(MAX_CHURN_CHILDREN - 1);
        for (unsigned i = 0; i < n; i++) {
            memset(&kids[i], 0, sizeof kids[i]);
            kids[i].seed = rnd();
            kids[i].dies_inside = rnd_below(10) == 0;
            if (pthread_create(&kids[i].tid, NULL, churn_child_main, &kids[i]) != 0)
                die("pthread_create failed");
            c->spawns++;
        }
        for (unsigned i = 0; i < n; i++) {
            if (!kids[i].dies_inside)
                continue;
            double give_up = now_s() + 10.0;
            while (!atomic_load_explicit(&kids[i].parked, memory_order_acquire) &&
                   now_s() < give_up)
                sleep_us(20);
            /* Alive, inside its sections: not dead. */
            if (aiorcu_slot_owner_dead(g_d, kids[i].slot) != 0)
                invariant_fail("slot %d: its owner is alive (inside a section) but reported dead",
                               kids[i].slot);
            c->alive_proofs++;
            atomic_store_explicit(&kids[i].go, 1, memory_order_release);
        }
        for (unsigned i = 0; i < n; i++) {
            pthread_join(kids[i].tid, NULL);
            counters_add(c, &kids[i].c);
            if (kids[i].dies_inside)
                bury_child(&kids[i], c);
        }
    }
    return NULL;
}

/* One thread holding many slots at once: grows the registry past a chunk,
 * then leaves its sections and releases everything in random order while
 * writers scan. */
static void shuffle(unsigned *a, unsigned n)
{
    for (unsigned i = n; i > 1; i--) {
        unsigned j = rnd_below(i);
        unsigned tmp = a[i - 1];
        a[i - 1] = a[j];
        a[j] = tmp;
    }
}

static void *hog_main(void *arg)
{
    struct worker *w = arg;
    struct counters *c = &w->c;
    rng_seed(w->seed);
    struct aiorcu_reader *rs = calloc(HOG_MAX, sizeof *rs);
    struct aiorcu_section *ss = calloc(HOG_MAX, sizeof *ss);
    struct obj **held = calloc(HOG_MAX, sizeof *held);
    unsigned *order = calloc(HOG_MAX, sizeof *order);
    if (!rs || !ss || !held || !order)
        die("out of memory");
    while (!stopping()) {
        unsigned n = 1 + rnd_below(HOG_MAX);
        for (unsigned i = 0; i < n; i++) {
            reader_init_or_die(&rs[i], g_d, c);
            held[i] = NULL;
            order[i] = i;
        }
        note_max(&c->peak_slots, n);
        shuffle(order, n);
        unsigned m = rnd_below(n + 1);
        for (unsigned i = 0; i < m; i++) {
            enter(&rs[order[i]], &ss[order[i]], rnd_kind(), c);
            held[order[i]] = section_load(c);
        }
        if (rnd_below(4) == 0)
            sleep_us(rnd_below(300));
        shuffle(order, n);
        for (unsigned i = 0; i < n; i++) {
            unsigned k = order[i];
            if (held[k]) {
                check(held[k], c);
                leave(&rs[k], &ss[k], c);
            }
        }
        shuffle(order, n);
        for (unsigned i = 0; i < n; i++)
            aiorcu_reader_fini(&rs[order[i]]);
        c->hog_rounds++;
        sleep_us(rnd_below(500));
    }
    free(order);
    free(held);
    free(ss);
    free(rs);
    return NULL;
}

/* Registry races on a fresh domain: several threads register at once, so
 * the chunk table grows while others are between registering and using
 * their slot, and a writer scans throughout. */
struct grow_child {
    pthread_t tid;
    struct aiorcu_domain *d;
    uint64_t seed;
    struct counters c;
};

static void *grow_child_main(void *arg)
{
    struct grow_child *k = arg;
    rng_seed(k->seed);
    struct aiorcu_reader rs[GROW_SLOTS];
    for (unsigned i = 0; i < GROW_SLOTS; i++) {
        struct aiorcu_section s;
        reader_init_or_die(&rs[i], k->d, &k->c);
        enter(&rs[i], &s, rnd_kind(), &k->c);
        leave(&rs[i], &s, &k->c);
    }
    for (unsigned i = 0; i < GROW_SLOTS; i++)
        aiorcu_reader_fini(&rs[i]);
    return NULL;
}

static void *grower_main(void *arg)
{
    struct worker *w = arg;
    struct counters *c = &w->c;
    rng_seed(w->seed);
    while (!stopping()) {
        struct aiorcu_domain *d = aiorcu_domain_new();
        if (!d)
            die("aiorcu_domain_new failed");
        struct grow_child kids[GROW_CHILDREN];
        for (unsigned i = 0; i < GROW_CHILDREN; i++) {
            memset(&kids[i], 0, sizeof kids[i]);
            kids[i].d = d;
            kids[i].seed = rnd();
            if (pthread_create(&kids[i].tid, NULL, grow_child_main, &kids[i]) != 0)
                die("pthread_create failed");
        }
        for (unsigned i = 0; i < 8; i++) {
            int rc = aiorcu_synchronize(d, aiorcu_snapshot(d), -1, 0, -1, NULL, NULL);
            if (rc != AIORCU_OK && rc != AIORCU_EBARRIER)
                invariant_fail("synchronize on a growing domain returned %d", rc);
            c->grow_syncs++;
        }
        for (unsigned i = 0; i < GROW_CHILDREN; i++) {
            pthread_join(kids[i].tid, NULL);
            counters_add(c, &kids[i].c);
        }
        struct aiorcu_stats s;
        aiorcu_domain_stats(d, &s);
        if (s.slots_live != 0 || s.sections_open != 0)
            invariant_fail("fresh domain: %" PRIu64 " slots live, %" PRIu64
                           " sections open after every owner left and released",
                           s.slots_live, s.sections_open);
        if (s.slots_capacity < AIORCU_CHUNK_SLOTS)
            invariant_fail("fresh domain: capacity %" PRIu64 " after %d registrations",
                           s.slots_capacity, GROW_CHILDREN * GROW_SLOTS);
        aiorcu_domain_free(d);
        c->grow_rounds++;
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Writer side                                                         */

struct stall_ctx {
    struct aiorcu_domain *d;
    uint64_t calls;
    uint64_t slots_seen;
    int32_t watch_slot; /* self-test: the slot expected among the blockers */
    int watch_seen;
};

/* Called by a waiting writer, writer mutex held, registry lock not held. */
static void stall_cb(void *arg, uint64_t waited_ns, int stage, int phase)
{
    struct stall_ctx *s = arg;
    int32_t slots[STALL_SLOTS];
    uint64_t blocked[STALL_SLOTS];
    s->calls++;
    if (stage != AIORCU_STAGE_STRAGGLERS && stage != AIORCU_STAGE_CLOSED)
        invariant_fail("stall callback: unknown stage %d", stage);
    if (phase != 0 && phase != 1)
        invariant_fail("stall callback: phase %d", phase);
    if (waited_ns == 0)
        invariant_fail("stall callback after waiting 0 ns");
    size_t n = aiorcu_blocking_slots(s->d, phase, slots, blocked, STALL_SLOTS);
    s->slots_seen += n;
    for (size_t i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= AIORCU_MAX_SLOTS)
            invariant_fail("aiorcu_blocking_slots returned slot %" PRId32, slots[i]);
        if (slots[i] == s->watch_slot)
            s->watch_seen = 1;
    }
}

static int sync_flags(void)
{
    return opt.busted ? AIORCU_SYNC_BUSTED : 0;
}

static int do_sync(uint64_t target, int64_t timeout_ns, int flags, int caller_slot,
                   struct stall_ctx *sc, struct counters *c)
{
    int rc = aiorcu_synchronize(g_d, target, timeout_ns, flags | sync_flags(), caller_slot,
                                stall_cb, sc);
    if (rc < 0 || rc > 3) {
        invariant_fail("aiorcu_synchronize returned %d", rc);
        return rc;
    }
    c->rc[rc]++;
    if (rc == AIORCU_OK && aiorcu_completed(g_d) < target)
        invariant_fail("synchronize(target %" PRIu64 ") returned OK with completed %" PRIu64,
                       target, aiorcu_completed(g_d));
    return rc;
}

/* Blocking grace period; EBARRIER (injected membarrier faults) means "not
 * done", so try again. */
static void sync_until_ok(uint64_t target, int caller_slot, struct stall_ctx *sc,
                          struct counters *c)
{
    for (int tries = 0;; tries++) {
        int rc = do_sync(target, -1, 0, caller_slot, sc, c);
        if (rc == AIORCU_OK)
            return;
        if (rc != AIORCU_EBARRIER || tries > 100) {
            invariant_fail("blocking synchronize returned %d", rc);
            return;
        }
    }
}

static void throttle(void)
{
    /* Without free() retired objects pile up in the graveyard; keep that
     * bounded by pacing the writers. */
    if (!retire_frees())
        sleep_us(20);
}

/* Writer 1: publish, synchronize, poison, free.  It also owns a reader slot
 * (a thread that both reads and writes), passed as caller_slot so the
 * barrier elision for a lone caller is exercised. */
static void *writer_sync_main(void *arg)
{
    struct worker *w = arg;
    struct counters *c = &w->c;
    struct stall_ctx sc = {.d = g_d, .watch_slot = -1};
    rng_seed(w->seed);
    struct aiorcu_reader self;
    reader_init_or_die(&self, g_d, c);
    while (!stopping()) {
        if (rnd_below(8) == 0)
            op_simple(&self, c);
        struct obj *old = publish(obj_new());
        c->updates++;
        uint64_t target = aiorcu_snapshot(g_d);
        sync_until_ok(target, rnd_below(2) ? self.slot : -1, &sc, c);
        c->gps_waited++;
        retire(old, c);
        throttle();
    }
    aiorcu_reader_fini(&self);
    c->stalls = sc.calls;
    c->stall_slots = sc.slots_seen;
    return NULL;
}

/* Writer 2: publish, take a snapshot token, retire once aiorcu_completed()
 * reaches the token.  Grace periods come from writer 1 or from its own
 * synchronize calls with a timeout, with TRY, with a zero timeout or
 * blocking.  Also switches the wait mode and injects membarrier faults. */
struct pending {
    struct obj *o;
    uint64_t token;
};

static void reap(struct pending *q, unsigned *head, unsigned *len, struct counters *c)
{
    uint64_t done = aiorcu_completed(g_d);
    while (*len > 0 && q[*head].token <= done) {
        retire(q[*head].o, c);
        c->gps_polled++;
        *head = (*head + 1) % PENDING_MAX;
        (*len)--;
    }
}

static void *writer_poll_main(void *arg)
{
    struct worker *w = arg;
    struct counters *c = &w->c;
    struct stall_ctx sc = {.d = g_d, .watch_slot = -1};
    rng_seed(w->seed);
    struct pending *q = calloc(PENDING_MAX, sizeof *q);
    if (!q)
        die("out of memory");
    unsigned head = 0, len = 0;
    uint64_t last_completed = 0, token = 0;
    double next_maint = now_s() + 0.02;
    int poll_mode = 0;
    while (!stopping()) {
        struct obj *old = publish(obj_new());
        c->updates++;
        token = aiorcu_snapshot(g_d);
        if (len == PENDING_MAX) {
            sync_until_ok(q[head].token, -1, &sc, c);
            reap(q, &head, &len, c);
        }
        q[(head + len) % PENDING_MAX] = (struct pending){old, token};
        len++;
        reap(q, &head, &len, c);

        unsigned what = rnd_below(100);
        if (what < 30)
            do_sync(token, (int64_t)(1000 + rnd_below(2000000)), 0, -1, &sc, c);
        else if (what < 55)
            do_sync(token, -1, AIORCU_SYNC_TRY, -1, &sc, c);
        else if (what < 60)
            do_sync(token, 0, 0, -1, &sc, c);
        else if (what < 90)
            sleep_us(rnd_below(100));
        else
            sync_until_ok(token, -1, &sc, c);
        reap(q, &head, &len, c);

        uint64_t done = aiorcu_completed(g_d);
        if (done < last_completed)
            invariant_fail("completed went backwards: %" PRIu64 " after %" PRIu64, done,
                           last_completed);
        last_completed = done;

        double now = now_s();
        if (now >= next_maint) {
            next_maint = now + 0.02;
            if (rnd_below(4) == 0) {
                poll_mode = !poll_mode;
                aiorcu_domain_set_wait_mode(g_d, poll_mode ? AIORCU_WAIT_POLL : AIORCU_WAIT_FUTEX);
                c->mode_switches++;
            }
            if (aiorcu_debug_set_writer_jitter && rnd_below(4) == 0) {
                /* Off half of the time, else up to 1-50 us per step. */
                aiorcu_debug_set_writer_jitter(rnd_below(2) ? 0 : 1000 + rnd_below(49000));
                c->jitter_switches++;
            }
            if (g_mech == AIORCU_MECH_MEMBARRIER && rnd_below(3) == 0) {
                /* 1-3 failing membarrier calls: some recovered by
                 * re-registration or GLOBAL, some ending in EBARRIER. */
                aiorcu_debug_fail_membarrier(1 + (int)rnd_below(3), rnd_below(2) ? EPERM : EINVAL);
                c->faults_injected++;
            }
        }
        throttle();
    }
    /* Drain: everything still pending gets its grace period. */
    if (len > 0)
        sync_until_ok(token, -1, &sc, c);
    reap(q, &head, &len, c);
    if (len != 0)
        invariant_fail("%u objects still pending after a completed grace period", len);
    aiorcu_domain_set_wait_mode(g_d, AIORCU_WAIT_FUTEX);
    if (aiorcu_debug_set_writer_jitter)
        aiorcu_debug_set_writer_jitter(0);
    free(q);
    c->stalls = sc.calls;
    c->stall_slots = sc.slots_seen;
    return NULL;
}

/* ------------------------------------------------------------------ */
/* fork() while everything runs                                        */

/* What a fork child found; its exit status.  The child runs only the
 * forking thread, so it must not touch a lock another thread may have held
 * at the fork (the harness's own, malloc's, stdio's): it calls the core
 * and _exit(), nothing else. */
enum {
    FC_OK = 0,
    FC_SLOTS = 10,      /* a slot other than the forking thread's survived */
    FC_OWN_SLOT,        /* the forking thread's own slot did not survive */
    FC_OPEN,            /* sections_open is not the forking thread's own open sections */
    FC_COUNTS,          /* the forking thread's slot does not count exactly its sections */
    FC_NOT_BUSY,        /* the forking thread's open section did not hold a grace period */
    FC_PHANTOM_RC,      /* leaving another thread's section (a phantom) did not return 0 */
    FC_PHANTOM_CHANGED, /* ... or changed a count */
    FC_OWN_RC,          /* leaving its own section did not return 0 */
    FC_STILL_OPEN,      /* sections still counted after leaving them all */
    FC_SYNC,            /* a grace period failed */
    FC_SYNC_TIMEDOUT,   /* a grace period (or the writer mutex) timed out after 2 s */
    FC_SLOW,            /* the grace periods took more than a second */
    FC_SERIAL,          /* the forking thread's serial changed */
};

static const char *fork_child_what(int code)
{
    switch (code) {
    case FC_SLOTS:
        return "a slot of a thread that is not in the child survived the fork";
    case FC_OWN_SLOT:
        return "the forking thread's own slot did not survive the fork";
    case FC_OPEN:
        return "sections_open in the child is not the forking thread's own open sections";
    case FC_COUNTS:
        return "the forking thread's slot does not count exactly its own sections";
    case FC_NOT_BUSY:
        return "the forking thread's own open section did not hold off a grace period";
    case FC_PHANTOM_RC:
        return "leaving a section of a thread not in the child did not return 0";
    case FC_PHANTOM_CHANGED:
        return "leaving a section of a thread not in the child changed a count";
    case FC_OWN_RC:
        return "leaving the forking thread's own section did not return 0";
    case FC_STILL_OPEN:
        return "sections still counted after the child left its own";
    case FC_SYNC:
        return "a grace period failed in the child";
    case FC_SYNC_TIMEDOUT:
        return "a grace period timed out in the child (a phantom reader, or the writer mutex "
               "held at the fork)";
    case FC_SLOW:
        return "the child's grace periods took more than 1 s";
    case FC_SERIAL:
        return "the forking thread's serial changed in the child";
    default:
        return "unexpected exit status";
    }
}

/* A blocking grace period in a fork child: OK, else FC_SYNC.  EBARRIER can
 * be an injected membarrier fault inherited from the parent: retried. */
static int child_sync(struct aiorcu_domain *d, int caller_slot)
{
    for (int tries = 0; tries < 10; tries++) {
        int rc = aiorcu_synchronize(d, aiorcu_snapshot(d), 2000000000, 0, caller_slot, NULL, NULL);
        if (rc == AIORCU_OK)
            return FC_OK;
        if (rc == AIORCU_TIMEDOUT)
            return FC_SYNC_TIMEDOUT;
        if (rc != AIORCU_EBARRIER)
            return FC_SYNC;
    }
    return FC_SYNC;
}

/* A TRY grace period in a fork child, EBARRIER retried as above. */
static int child_try(struct aiorcu_domain *d)
{
    int rc = AIORCU_EBARRIER;
    for (int tries = 0; tries < 10 && rc == AIORCU_EBARRIER; tries++)
        rc = aiorcu_synchronize(d, aiorcu_snapshot(d), -1, AIORCU_SYNC_TRY, -1, NULL, NULL);
    return rc;
}

/* The child's checks.  `serial` is the forking thread's serial and `token`
 * the claim token of reader r's slot, both read before the fork; `own` are
 * the forking thread's open sections (on r, which must be its only slot in
 * d); `phantom`, if not NULL, an open section another thread entered and
 * handed to it. */
static int fork_child(struct aiorcu_domain *d, struct aiorcu_reader *r, uint64_t serial,
                      uint64_t token, struct aiorcu_section *own, unsigned nown,
                      struct aiorcu_section *phantom)
{
    double t0 = now_s();
    struct aiorcu_stats s;
    uint64_t expect[AIORCU_NCOUNTS] = {0}, got[AIORCU_NCOUNTS];
    if (aiorcu_thread_serial() != serial)
        return FC_SERIAL;
    aiorcu_domain_stats(d, &s);
    if (s.slots_live > 1)
        return FC_SLOTS;
    if (s.slots_live != 1 || aiorcu_slot_counts(d, r->slot, got) != token)
        return FC_OWN_SLOT;
    if (s.sections_open != nown)
        return FC_OPEN;
    for (unsigned i = 0; i < nown; i++)
        expect[AIORCU_COUNT(own[i].kind, own[i].phase)]++;
    if (aiorcu_slot_counts(d, r->slot, got) != token || memcmp(got, expect, sizeof got) != 0)
        return FC_COUNTS;
    if (nown > 0 && child_try(d) != AIORCU_BUSY)
        return FC_NOT_BUSY;
    if (phantom) {
        if (aiorcu_section_leave(r, phantom) != 0)
            return FC_PHANTOM_RC;
        aiorcu_domain_stats(d, &s);
        if (s.sections_open != nown || aiorcu_slot_counts(d, r->slot, got) != token ||
            memcmp(got, expect, sizeof got) != 0)
            return FC_PHANTOM_CHANGED;
    }
    for (unsigned i = 0; i < nown; i++)
        if (aiorcu_section_leave(r, &own[i]) != 0)
            return FC_OWN_RC;
    aiorcu_domain_stats(d, &s);
    if (s.sections_open != 0)
        return FC_STILL_OPEN;
    /* Not elided (caller_slot -1: a membarrier in the child), then elided
     * (the child's only slot is the caller's), then with a section. */
    int rc = child_sync(d, -1);
    if (rc == FC_OK)
        rc = child_sync(d, r->slot);
    if (rc != FC_OK)
        return rc;
    struct aiorcu_section x;
    aiorcu_section_enter(r, &x, TASK);
    if (aiorcu_section_leave(r, &x) != 0)
        return FC_OWN_RC;
    rc = child_sync(d, -1);
    if (rc != FC_OK)
        return rc;
    if (now_s() - t0 > 1.0)
        return FC_SLOW;
    return FC_OK;
}

/* Waits for a fork child; FORK_CHILD_LIMIT_S without an exit is a hang
 * (the child is killed).  Returns 1 if the child exited 0. */
static int reap_child(pid_t pid, const char *where, struct counters *c)
{
    double t0 = now_s();
    int st = 0;
    for (;;) {
        pid_t got = waitpid(pid, &st, WNOHANG);
        if (got == pid)
            break;
        if (got < 0 && errno != EINTR) {
            invariant_fail("%s: waitpid: %s", where, strerror(errno));
            return 0;
        }
        if (now_s() - t0 > FORK_CHILD_LIMIT_S) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            invariant_fail("%s: the fork child hung (no exit in %.0f s: a lock held at the fork, "
                           "or a grace period waiting for a reader that is not in the child)",
                           where, FORK_CHILD_LIMIT_S);
            return 0;
        }
        sleep_us(200);
    }
    note_max(&c->fork_child_max_us, (uint64_t)((now_s() - t0) * 1e6));
    if (WIFSIGNALED(st)) {
        invariant_fail("%s: the fork child died of signal %d", where, WTERMSIG(st));
        return 0;
    }
    if (WEXITSTATUS(st) != 0) {
        invariant_fail("%s: fork child exit %d: %s", where, WEXITSTATUS(st),
                       fork_child_what(WEXITSTATUS(st)));
        return 0;
    }
    return 1;
}

/* Forks now and then while every other role runs: maybe inside sections of
 * its own, maybe holding a CHECKED section another reader handed over (in
 * the child that section's slot is gone: leaving it must change nothing). */
static void *forker_main(void *arg)
{
    struct worker *w = arg;
    struct counters *c = &w->c;
    rng_seed(w->seed);
    struct aiorcu_reader r;
    reader_init_or_die(&r, g_d, c);
    uint64_t serial = my_serial();
    uint64_t token = claim_token(&r);
    double next = now_s() + 0.01 + rnd_below(40) / 1000.0;
    while (!stopping() && c->forks < FORK_MAX) {
        if (now_s() < next) {
            sleep_us(2000);
            continue;
        }
        next = now_s() + 0.02 + rnd_below(80) / 1000.0;
        struct aiorcu_section own[2];
        struct obj *oo[2];
        unsigned nown = rnd_below(3);
        for (unsigned i = 0; i < nown; i++) {
            enter(&r, &own[i], rnd_kind(), c);
            oo[i] = section_load(c);
        }
        struct handoff *ph = rnd_below(2) ? phantom_take(0.005) : NULL;
        if (ph)
            check(ph->o, c);
        double tf = now_s();
        pid_t pid = fork();
        if (pid < 0)
            die("fork failed: %s", strerror(errno));
        if (pid == 0)
            _exit(fork_child(g_d, &r, serial, token, own, nown, ph ? &ph->s : NULL));
        note_max(&c->fork_call_max_us, (uint64_t)((now_s() - tf) * 1e6));
        c->forks++;
        c->fork_own_sections += nown;
        for (unsigned i = 0; i < nown; i++) {
            check(oo[i], c);
            leave(&r, &own[i], c);
        }
        if (ph) {
            c->fork_phantoms++;
            handoff_leave(&r, ph, c);
        }
        reap_child(pid, "fork during the stress run", c);
    }
    aiorcu_reader_fini(&r);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* The auditor: the core's own view, sampled while everything runs      */

/* Every few ms: no count of open sections is ever implausibly large (a
 * decrement that should not have happened wraps to ~2^64), `completed`
 * never goes backwards, and grace periods keep completing.  Every few
 * sweeps, every slot's counts one by one. */
static void *auditor_main(void *arg)
{
    struct worker *w = arg;
    struct counters *c = &w->c;
    uint64_t last = 0;
    double last_progress = now_s();
    for (unsigned iter = 0; !stopping(); iter++) {
        struct aiorcu_stats s;
        aiorcu_domain_stats(g_d, &s);
        c->audits++;
        double now = now_s();
        if (s.sections_open > COUNT_BOUND)
            invariant_fail("sections_open = %" PRIu64 ": a count went below zero", s.sections_open);
        if (s.completed < last)
            invariant_fail("completed went backwards: %" PRIu64 " after %" PRIu64, s.completed,
                           last);
        if (s.completed != last) {
            note_max(&c->gp_gap_max_us, (uint64_t)((now - last_progress) * 1e6));
            last = s.completed;
            last_progress = now;
        } else if (now - last_progress > GP_STALL_LIMIT_S) {
            invariant_fail("no grace period completed for %.1f s (completed %" PRIu64
                           ", started %" PRIu64 ", sections open %" PRIu64 ")",
                           now - last_progress, s.completed, s.started, s.sections_open);
            last_progress = now;
        }
        if (iter % 8 == 0) {
            uint64_t got[AIORCU_NCOUNTS];
            for (uint64_t i = 0; i < s.slots_capacity; i++) {
                aiorcu_slot_counts(g_d, (int)i, got);
                for (int k = 0; k < AIORCU_NCOUNTS; k++)
                    if (got[k] > COUNT_BOUND)
                        invariant_fail("slot %" PRIu64 " count[%d] = %" PRIu64 ": went below zero",
                                       i, k, got[k]);
            }
            c->sweeps++;
        }
        sleep_us(2000);
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Deterministic self-tests (single writer, helper threads)            */

static int st_failures;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "stress: self-test failed (%s:%d): ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            st_failures++;                                                                         \
        }                                                                                          \
    } while (0)

/* After a failed block the domain's state is suspect (a count below zero
 * holds every later grace period): stop there.  main() then exits at once,
 * leaving helpers and the domain behind. */
#define BAIL_IF_FAILED()                                                                           \
    do {                                                                                           \
        if (st_failures)                                                                           \
            return;                                                                                \
    } while (0)

/* Waits (bounded) for an int flag set with a release store. */
static int await_flag(_Atomic int *flag, double secs)
{
    double give_up = now_s() + secs;
    while (!atomic_load_explicit(flag, memory_order_acquire)) {
        if (now_s() > give_up)
            return 0;
        sched_yield();
    }
    return 1;
}

static void raise_flag(_Atomic int *flag)
{
    atomic_store_explicit(flag, 1, memory_order_release);
}

/* Waits (bounded) until a writer advertises that it sleeps on `phase`. */
static int await_waiting(struct aiorcu_domain *d, int phase)
{
    _Atomic uint8_t *ctl = (_Atomic uint8_t *)aiorcu_domain_ctl(d);
    uint64_t give_up = aiorcu_monotonic_ns() + 5000000000ull;
    while (aiorcu_monotonic_ns() < give_up) {
        /* Relaxed: only a progress signal; the test does not rely on it
         * for ordering. */
        if (atomic_load_explicit(&ctl[AIORCU_CTL_WAITING + phase], memory_order_relaxed))
            return 1;
        sched_yield();
    }
    return 0;
}

static int counts_are(const uint64_t got[AIORCU_NCOUNTS], uint64_t a, uint64_t b, uint64_t c,
                      uint64_t e)
{
    return got[0] == a && got[1] == b && got[2] == c && got[3] == e;
}

static uint64_t sections_open(struct aiorcu_domain *d)
{
    struct aiorcu_stats s;
    aiorcu_domain_stats(d, &s);
    return s.sections_open;
}

static int try_sync(struct aiorcu_domain *d)
{
    return aiorcu_synchronize(d, aiorcu_snapshot(d), -1, AIORCU_SYNC_TRY, -1, NULL, NULL);
}

/* A helper thread with its own slot.  Roles:
 *   HOLD     enter `s`; leave it after hold_us, or once a writer sleeps on
 *            its phase (wait_for_waiting);
 *   FOREIGN  leave `target` (another thread's section), at once or once a
 *            writer sleeps on its phase;
 *   DIE      enter a thread and a task section, then exit inside them;
 *   PARK     enter `s`, wait for `go`, leave it.
 * `inside` is raised once its sections are open (or, FOREIGN, once it is
 * about to leave), `done` when it left.  With `linger`, HOLD and FOREIGN
 * then wait for `go` before they release their slot: a slot release wakes
 * writers too, which would hide a leave that failed to. */
#define H_HOLD    0
#define H_FOREIGN 1
#define H_DIE     2
#define H_PARK    3

struct helper {
    pthread_t tid;
    struct aiorcu_domain *d;
    int role;
    int wait_for_waiting;
    int linger;
    unsigned hold_us;
    struct aiorcu_section s, s2;
    struct aiorcu_section *target;
    int slot;
    uint64_t token; /* claim_token() of its slot */
    int self_dead;
    int saw_waiting;
    int rc;
    _Atomic int inside;
    _Atomic int go;
    _Atomic int done;
};

static void *helper_main(void *arg)
{
    struct helper *h = arg;
    struct aiorcu_reader r;
    struct counters c;
    memset(&c, 0, sizeof c);
    reader_init_or_die(&r, h->d, &c);
    h->slot = r.slot;
    h->token = claim_token(&r);
    switch (h->role) {
    case H_HOLD:
        aiorcu_section_enter(&r, &h->s, THREAD);
        raise_flag(&h->inside);
        if (h->wait_for_waiting)
            h->saw_waiting = await_waiting(h->d, h->s.phase);
        else
            sleep_us(h->hold_us);
        h->rc = aiorcu_section_leave(&r, &h->s);
        break;
    case H_FOREIGN:
        raise_flag(&h->inside);
        if (h->wait_for_waiting)
            h->saw_waiting = await_waiting(h->d, h->target->phase);
        h->rc = aiorcu_section_leave(&r, h->target);
        break;
    case H_DIE:
        aiorcu_section_enter(&r, &h->s, THREAD);
        aiorcu_section_enter(&r, &h->s2, TASK);
        h->self_dead = aiorcu_slot_owner_dead(h->d, r.slot);
        raise_flag(&h->inside);
        await_flag(&h->go, 5.0);
        raise_flag(&h->done);
        return NULL; /* inside both sections, slot registered */
    case H_PARK:
        aiorcu_section_enter(&r, &h->s, THREAD);
        raise_flag(&h->inside);
        await_flag(&h->go, 10.0);
        h->rc = aiorcu_section_leave(&r, &h->s);
        break;
    }
    raise_flag(&h->done);
    if (h->linger)
        await_flag(&h->go, 10.0);
    aiorcu_reader_fini(&r);
    return NULL;
}

static void helper_start(struct helper *h, struct aiorcu_domain *d, int role)
{
    h->d = d;
    h->role = role;
    if (pthread_create(&h->tid, NULL, helper_main, h) != 0)
        die("pthread_create failed");
    if (!await_flag(&h->inside, 10.0))
        die("self-test helper did not start");
}

static int query_membarrier(void)
{
    return (int)syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0);
}

static void selftest_faults(struct aiorcu_domain *d, struct stall_ctx *sc)
{
    struct aiorcu_stats a, b;
    int rc;
    if (g_mech == AIORCU_MECH_FENCE) {
        /* The hook only affects membarrier calls; fence mode makes none. */
        aiorcu_debug_fail_membarrier(3, EPERM);
        aiorcu_domain_stats(d, &a);
        rc = aiorcu_synchronize(d, aiorcu_snapshot(d), -1, 0, -1, stall_cb, sc);
        aiorcu_domain_stats(d, &b);
        EXPECT(rc == AIORCU_OK, "fence mode with membarrier faults armed: rc %d", rc);
        EXPECT(b.membarrier_calls == 0 && b.barrier_fallbacks == 0,
               "fence mode made %" PRIu64 " membarrier calls", b.membarrier_calls);
        aiorcu_debug_fail_membarrier(0, 0);
        return;
    }
    int global = query_membarrier() & MEMBARRIER_CMD_GLOBAL;
    static const struct {
        int count, err, ok, fallbacks;
        const char *what;
    } cases[] = {
        {1, EINVAL, 1, 1, "PRIVATE_EXPEDITED fails once: GLOBAL fallback"},
        {1, EPERM, 1, 0, "EPERM once: registered again, retry succeeds"},
        {2, EPERM, 1, 1, "EPERM, retry fails: GLOBAL fallback"},
        {3, EPERM, 0, 1, "every attempt fails: EBARRIER"},
        {2, EINVAL, 0, 1, "PRIVATE_EXPEDITED and GLOBAL fail: EBARRIER"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int expect_ok = cases[i].ok && (global || cases[i].fallbacks == 0);
        aiorcu_domain_stats(d, &a);
        aiorcu_debug_fail_membarrier(cases[i].count, cases[i].err);
        rc = aiorcu_synchronize(d, aiorcu_snapshot(d), -1, 0, -1, stall_cb, sc);
        aiorcu_debug_fail_membarrier(0, 0);
        aiorcu_domain_stats(d, &b);
        EXPECT(rc == (expect_ok ? AIORCU_OK : AIORCU_EBARRIER), "%s: rc %d", cases[i].what, rc);
        EXPECT(b.barrier_fallbacks - a.barrier_fallbacks == (uint64_t)cases[i].fallbacks,
               "%s: %" PRIu64 " fallbacks", cases[i].what,
               b.barrier_fallbacks - a.barrier_fallbacks);
        EXPECT(expect_ok ? b.completed > a.completed : b.completed == a.completed,
               "%s: completed %" PRIu64 " -> %" PRIu64, cases[i].what, a.completed, b.completed);
    }
    rc = aiorcu_synchronize(d, aiorcu_snapshot(d), -1, 0, -1, stall_cb, sc);
    EXPECT(rc == AIORCU_OK, "after fault injection: rc %d", rc);
}

/* A writer on its own thread, for tests where this thread is the reader. */
struct bg_sync {
    pthread_t tid;
    struct aiorcu_domain *d;
    int64_t timeout_ns;
    int rc;
    _Atomic int done;
};

static void *bg_sync_main(void *arg)
{
    struct bg_sync *b = arg;
    b->rc = aiorcu_synchronize(b->d, aiorcu_snapshot(b->d), b->timeout_ns, 0, -1, NULL, NULL);
    raise_flag(&b->done);
    return NULL;
}

/* Each section takes the phase current at its entry: with S1 open, a
 * writer flips the phase and waits for S1; S2, entered after the flip,
 * counts in the other phase, so leaving S1 ends the grace period while S2
 * is still open.  (Were S2 to count in S1's phase, as nested sections used
 * to, the writer would wait for S2 too: a relay could starve it.) */
static void selftest_phases(struct aiorcu_domain *d, struct aiorcu_reader *r0)
{
    struct counters c;
    memset(&c, 0, sizeof c);
    _Atomic uint8_t *ctl = (_Atomic uint8_t *)aiorcu_domain_ctl(d);
    struct aiorcu_section s1, s2;
    aiorcu_section_enter(r0, &s1, THREAD);
    struct bg_sync b = {.d = d, .timeout_ns = 2000000000};
    if (pthread_create(&b.tid, NULL, bg_sync_main, &b) != 0)
        die("pthread_create failed");
    double give_up = now_s() + 2.0;
    /* Relaxed: a progress signal; the writer's own barriers order the rest. */
    while ((atomic_load_explicit(&ctl[AIORCU_CTL_PHASE], memory_order_relaxed) & 1) == s1.phase &&
           now_s() < give_up)
        sched_yield();
    aiorcu_section_enter(r0, &s2, TASK);
    EXPECT(s2.phase != s1.phase, "a section entered after the flip took the old phase %d",
           s2.phase);
    EXPECT(aiorcu_section_leave(r0, &s1) == 0, "leaving S1");
    int finished = await_flag(&b.done, 3.0);
    EXPECT(finished && b.rc == AIORCU_OK,
           "grace period with S2 (entered after it began) still open: %s rc %d",
           finished ? "finished" : "still waiting", b.rc);
    EXPECT(aiorcu_section_leave(r0, &s2) == 0, "leaving S2");
    pthread_join(b.tid, NULL);
}

/* A thread that dies inside two sections: alive, its slot's owner is not
 * dead; joined, it is.  Released, the slot drops both sections; taken by
 * another thread, the late leaves of the dead thread's sections change
 * nothing there. */
static void selftest_death(struct aiorcu_domain *d, struct aiorcu_reader *r0)
{
    struct counters c;
    memset(&c, 0, sizeof c);
    struct aiorcu_stats a, b;
    uint64_t got[AIORCU_NCOUNTS];
    struct helper h;
    memset(&h, 0, sizeof h);
    helper_start(&h, d, H_DIE);
    EXPECT(aiorcu_slot_owner_dead(d, h.slot) == 0, "a live thread's slot: owner reported dead");
    raise_flag(&h.go);
    pthread_join(h.tid, NULL);
    EXPECT(h.self_dead == 0, "a thread asking about its own slot was told it is dead");
    EXPECT(aiorcu_slot_owner_dead(d, h.slot) == 1, "joined thread's slot: owner not proven dead");
    EXPECT(aiorcu_slot_owner_dead(d, r0->slot) == 0, "this thread's slot: owner reported dead");
    uint64_t owner = aiorcu_slot_counts(d, h.slot, got);
    uint64_t expect[AIORCU_NCOUNTS] = {0};
    expect[AIORCU_COUNT(THREAD, h.s.phase)]++;
    expect[AIORCU_COUNT(TASK, h.s2.phase)]++;
    EXPECT(owner == h.token && memcmp(got, expect, sizeof got) == 0,
           "dead thread's slot: owner %" PRIu64 " counts %" PRIu64 " %" PRIu64 " %" PRIu64
           " %" PRIu64,
           owner, got[0], got[1], got[2], got[3]);
    aiorcu_domain_stats(d, &a);
    EXPECT(aiorcu_slot_release(d, h.slot, not_the_token(h.token)) == AIORCU_NOT_OWNER,
           "release for a claim that does not own the slot");
    uint64_t n = aiorcu_slot_release(d, h.slot, h.token);
    EXPECT(n == 2, "releasing a dead thread's slot: %" PRIu64 " sections dropped, 2 open", n);
    aiorcu_domain_stats(d, &b);
    EXPECT(b.dead_readers_released == a.dead_readers_released + 1 &&
               b.slots_live == a.slots_live - 1 && b.sections_open == 0,
           "after the release: dead_readers_released +%" PRIu64 ", slots_live %" PRIu64
           ", sections_open %" PRIu64,
           b.dead_readers_released - a.dead_readers_released, b.slots_live, b.sections_open);
    EXPECT(aiorcu_slot_owner_dead(d, h.slot) == 0, "a free slot: owner reported dead");
    EXPECT(try_sync(d) == AIORCU_OK, "released slot still holds grace periods");

    struct aiorcu_reader rn;
    reader_init_or_die(&rn, d, &c);
    uint64_t rn_token = claim_token(&rn);
    EXPECT(rn.slot == h.slot, "the released slot %d was not reused (got %d)", h.slot, rn.slot);
    EXPECT(rn_token != h.token, "the slot was claimed again with the dead thread's token");
    struct aiorcu_section n1, n2;
    aiorcu_section_enter(&rn, &n1, THREAD);
    aiorcu_section_enter(&rn, &n2, TASK);
    memset(expect, 0, sizeof expect);
    expect[AIORCU_COUNT(THREAD, n1.phase)]++;
    expect[AIORCU_COUNT(TASK, n2.phase)]++;
    EXPECT(aiorcu_section_leave(r0, &h.s) == 0, "late leave of a dead thread's section");
    EXPECT(aiorcu_section_leave(r0, &h.s2) == 0, "late leave of a dead thread's section");
    EXPECT(aiorcu_section_leave(r0, &h.s) == -1, "second late leave");
    owner = aiorcu_slot_counts(d, rn.slot, got);
    EXPECT(owner == rn_token && memcmp(got, expect, sizeof got) == 0,
           "late leaves changed the new owner's counts: %" PRIu64 " %" PRIu64 " %" PRIu64
           " %" PRIu64 " (want %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 ")",
           got[0], got[1], got[2], got[3], expect[0], expect[1], expect[2], expect[3]);
    EXPECT(try_sync(d) == AIORCU_BUSY, "the new owner's sections do not hold a grace period");
    EXPECT(aiorcu_section_leave(&rn, &n1) == 0 && aiorcu_section_leave(&rn, &n2) == 0,
           "leaving the new owner's sections");
    EXPECT(try_sync(d) == AIORCU_OK, "no section open, yet BUSY");
    aiorcu_reader_fini(&rn);
}

/* Hammers the registry lock (`writer` 0: stats in a loop, the lock held
 * nearly all the time) or the writer mutex (`writer` 1: grace periods that
 * wait for the parked helper, 200 us each) while the main thread forks, so
 * that forks find them held. */
struct hammer {
    pthread_t tid;
    struct aiorcu_domain *d;
    int writer;
    _Atomic int stop;
};

static void *hammer_main(void *arg)
{
    struct hammer *hm = arg;
    struct aiorcu_stats s;
    while (!atomic_load_explicit(&hm->stop, memory_order_acquire)) {
        if (hm->writer)
            aiorcu_synchronize(hm->d, aiorcu_snapshot(hm->d), 200000, 0, -1, NULL, NULL);
        else
            aiorcu_domain_stats(hm->d, &s);
    }
    return NULL;
}

/* fork() with a section of this thread open, another thread's section
 * (a phantom in the child) in hand, and a helper hammering the domain's
 * locks: the child sees only this thread's slot and sections, leaves the
 * phantom without effect, and completes grace periods. */
static void selftest_fork(struct aiorcu_domain *d, struct aiorcu_reader *r0, uint64_t token0)
{
    struct counters c;
    memset(&c, 0, sizeof c);
    struct helper ph;
    memset(&ph, 0, sizeof ph);
    helper_start(&ph, d, H_PARK);
    struct hammer hm[2] = {{.d = d, .writer = 0}, {.d = d, .writer = 1}};
    for (int i = 0; i < 2; i++)
        if (pthread_create(&hm[i].tid, NULL, hammer_main, &hm[i]) != 0)
            die("pthread_create failed");
    int rounds = 12, ok = 0;
    for (int i = 0; i < rounds; i++) {
        struct aiorcu_section own[2];
        unsigned nown = (unsigned)(i % 3);
        for (unsigned k = 0; k < nown; k++)
            aiorcu_section_enter(r0, &own[k], k ? TASK : THREAD);
        /* The helper's section, as the helper would hand it over. */
        struct aiorcu_section phantom = ph.s;
        pid_t pid = fork();
        if (pid < 0)
            die("fork failed: %s", strerror(errno));
        if (pid == 0)
            _exit(fork_child(d, r0, aiorcu_thread_serial(), token0, own, nown,
                             i % 2 ? &phantom : NULL));
        for (unsigned k = 0; k < nown; k++)
            EXPECT(aiorcu_section_leave(r0, &own[k]) == 0, "parent: leaving its own section");
        if (!reap_child(pid, "self-test fork", &c)) {
            EXPECT(0, "fork child %d of %d failed", i + 1, rounds);
            break;
        }
        ok++;
        sleep_us(rnd_below(300));
    }
    for (int i = 0; i < 2; i++)
        atomic_store_explicit(&hm[i].stop, 1, memory_order_release);
    raise_flag(&ph.go);
    for (int i = 0; i < 2; i++)
        pthread_join(hm[i].tid, NULL);
    pthread_join(ph.tid, NULL);
    EXPECT(ph.rc == 0, "helper: leaving its section after the forks returned %d", ph.rc);
}

static void selftest(void)
{
    struct aiorcu_domain *d = aiorcu_domain_new();
    if (!d)
        die("aiorcu_domain_new failed");
    struct stall_ctx sc = {.d = d, .watch_slot = -1};
    struct aiorcu_stats a, b;
    struct counters c;
    memset(&c, 0, sizeof c);
    uint64_t got[AIORCU_NCOUNTS];
    int rc;
    int mb = g_mech == AIORCU_MECH_MEMBARRIER;
    uint64_t me = aiorcu_thread_serial();
    EXPECT(me != 0 && me == aiorcu_thread_serial(), "thread serial %" PRIu64, me);

    /* A fresh domain. */
    aiorcu_domain_stats(d, &a);
    EXPECT(a.started == 0 && a.completed == 0 && a.grace_periods == 0 && a.slots_live == 0 &&
               a.sections_open == 0 && a.dead_readers_released == 0,
           "fresh domain stats not zero");
    uint64_t t = aiorcu_snapshot(d);
    EXPECT(t == 1, "first snapshot token %" PRIu64, t);
    EXPECT(aiorcu_completed(d) == 0, "fresh domain completed %" PRIu64, aiorcu_completed(d));

    /* No reader at all: both barriers elided. */
    rc = aiorcu_synchronize(d, t, -1, 0, -1, stall_cb, &sc);
    aiorcu_domain_stats(d, &b);
    EXPECT(rc == AIORCU_OK, "lone synchronize: rc %d", rc);
    EXPECT(aiorcu_completed(d) >= t, "token %" PRIu64 " not completed", t);
    EXPECT(b.grace_periods == 1 && b.barriers_elided == 2 && b.membarrier_calls == 0,
           "lone synchronize: %" PRIu64 " grace periods, %" PRIu64 " elided, %" PRIu64
           " membarriers",
           b.grace_periods, b.barriers_elided, b.membarrier_calls);

    /* A completed token is shared: no new grace period. */
    rc = aiorcu_synchronize(d, t, -1, 0, -1, stall_cb, &sc);
    aiorcu_domain_stats(d, &a);
    EXPECT(rc == AIORCU_OK && a.started == b.started && a.grace_periods == b.grace_periods,
           "completed token ran a new grace period");

    /* One reader: elided when it is the caller's own slot, not otherwise. */
    struct aiorcu_reader r0;
    reader_init_or_die(&r0, d, &c);
    uint64_t token0 = claim_token(&r0);
    EXPECT(aiorcu_slot_counts(d, r0.slot, got) == token0 && counts_are(got, 0, 0, 0, 0),
           "new slot: owner or counts wrong");
    aiorcu_domain_stats(d, &a);
    rc = aiorcu_synchronize(d, aiorcu_snapshot(d), -1, 0, r0.slot, stall_cb, &sc);
    aiorcu_domain_stats(d, &b);
    EXPECT(rc == AIORCU_OK && b.barriers_elided - a.barriers_elided == 2,
           "caller's own slot only: rc %d, elided %" PRIu64, rc,
           b.barriers_elided - a.barriers_elided);
    rc = aiorcu_synchronize(d, aiorcu_snapshot(d), -1, 0, -1, stall_cb, &sc);
    aiorcu_domain_stats(d, &a);
    EXPECT(rc == AIORCU_OK && a.barriers_elided == b.barriers_elided,
           "another thread's slot: barriers elided");
    EXPECT(a.membarrier_calls - b.membarrier_calls == (mb ? 2u : 0u),
           "another thread's slot: %" PRIu64 " membarrier calls",
           a.membarrier_calls - b.membarrier_calls);

    /* Sections: counted by kind and phase, left in any order, exactly once. */
    struct aiorcu_section s, s2;
    memset(&s, 0, sizeof s);
    EXPECT(aiorcu_section_leave(&r0, &s) == -1, "leaving a section never entered");
    aiorcu_section_enter(&r0, &s, THREAD);
    aiorcu_section_enter(&r0, &s2, TASK);
    EXPECT(s.kind == THREAD && s2.kind == TASK && s.thread == me && s2.thread == me &&
               s.state == AIORCU_SECTION_OPEN && (s.phase & ~1) == 0,
           "entered section fields");
    uint64_t expect[AIORCU_NCOUNTS] = {0};
    expect[AIORCU_COUNT(THREAD, s.phase)]++;
    expect[AIORCU_COUNT(TASK, s2.phase)]++;
    EXPECT(aiorcu_slot_counts(d, r0.slot, got) == token0 && memcmp(got, expect, sizeof got) == 0,
           "counts %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " after a thread and a task "
           "section",
           got[0], got[1], got[2], got[3]);
    EXPECT(sections_open(d) == 2, "sections_open %" PRIu64 ", 2 open", sections_open(d));
    EXPECT(aiorcu_section_leave(&r0, &s) == 0, "leaving the first section first");
    EXPECT(aiorcu_section_leave(&r0, &s) == -1, "second leave of a section");
    expect[AIORCU_COUNT(THREAD, s.phase)]--;
    EXPECT(aiorcu_slot_counts(d, r0.slot, got) == token0 && memcmp(got, expect, sizeof got) == 0,
           "counts after leaving the first section");
    EXPECT(aiorcu_section_leave(&r0, &s2) == 0 && aiorcu_section_leave(&r0, &s2) == -1,
           "leaving the task section once");
    EXPECT(aiorcu_slot_counts(d, r0.slot, got) == token0 && counts_are(got, 0, 0, 0, 0) &&
               sections_open(d) == 0,
           "counts not zero after leaving every section");

    BAIL_IF_FAILED();
    /* A section open on this thread: TRY gives BUSY, a timeout TIMEDOUT,
     * the stall callback names the slot; releasing the slot (owner 0:
     * whoever owns it) drops the section and unblocks. */
    aiorcu_section_enter(&r0, &s, THREAD);
    aiorcu_domain_stats(d, &a);
    t = aiorcu_snapshot(d);
    rc = aiorcu_synchronize(d, t, -1, AIORCU_SYNC_TRY, -1, stall_cb, &sc);
    EXPECT(rc == AIORCU_BUSY, "TRY with a reader inside: rc %d", rc);
    rc = aiorcu_synchronize(d, t, 2000000, 0, -1, stall_cb, &sc);
    EXPECT(rc == AIORCU_TIMEDOUT, "2 ms timeout with a reader inside: rc %d", rc);
    aiorcu_domain_set_stall(d, 1000000, 4000000);
    sc.watch_slot = r0.slot;
    uint64_t calls = sc.calls;
    rc = aiorcu_synchronize(d, t, 30000000, 0, -1, stall_cb, &sc);
    EXPECT(rc == AIORCU_TIMEDOUT, "30 ms timeout with a reader inside: rc %d", rc);
    EXPECT(sc.calls > calls, "no stall callback in 30 ms (first at 1 ms)");
    EXPECT(sc.watch_seen, "stall callback: aiorcu_blocking_slots did not list slot %d", r0.slot);
    sc.watch_slot = -1;
    aiorcu_domain_stats(d, &b);
    EXPECT(b.timeouts - a.timeouts == 2, "%" PRIu64 " timeouts counted, 2 expected",
           b.timeouts - a.timeouts);
    EXPECT(b.completed == a.completed, "abandoned grace periods moved completed");
    EXPECT(b.started - a.started == 3, "3 abandoned grace periods, started moved %" PRIu64,
           b.started - a.started);
    EXPECT(aiorcu_slot_release(d, r0.slot, not_the_token(token0)) == AIORCU_NOT_OWNER,
           "release for a claim that does not own the slot");
    uint64_t n = aiorcu_slot_release(d, r0.slot, 0);
    EXPECT(n == 1, "owner-0 release of a slot with one open section: %" PRIu64, n);
    EXPECT(aiorcu_slot_release(d, r0.slot, 0) == AIORCU_NOT_OWNER, "release of a free slot");
    aiorcu_domain_stats(d, &a);
    EXPECT(a.dead_readers_released == b.dead_readers_released + 1,
           "dead_readers_released +%" PRIu64 " after dropping an open section",
           a.dead_readers_released - b.dead_readers_released);
    rc = aiorcu_synchronize(d, t, 1000000000, 0, -1, stall_cb, &sc);
    EXPECT(rc == AIORCU_OK, "after the slot's release: rc %d", rc);
    /* The slot is taken again by this thread; the section entered under the
     * old generation leaves (lock-free path: same thread) without effect. */
    int old_slot = r0.slot;
    uint64_t old_token = token0;
    reader_init_or_die(&r0, d, &c);
    token0 = claim_token(&r0);
    EXPECT(r0.slot == old_slot, "released slot %d not reused (got %d)", old_slot, r0.slot);
    EXPECT(token0 != old_token, "slot %d claimed again with the released claim's token %" PRIu64,
           r0.slot, old_token);
    aiorcu_section_enter(&r0, &s2, TASK);
    memset(expect, 0, sizeof expect);
    expect[AIORCU_COUNT(TASK, s2.phase)]++;
    EXPECT(aiorcu_section_leave(&r0, &s) == 0, "leaving a section of a released slot");
    EXPECT(aiorcu_slot_counts(d, r0.slot, got) == token0 && memcmp(got, expect, sizeof got) == 0,
           "leaving a section of the slot's previous generation changed its counts: %" PRIu64
           " %" PRIu64 " %" PRIu64 " %" PRIu64,
           got[0], got[1], got[2], got[3]);
    EXPECT(try_sync(d) == AIORCU_BUSY, "a task section does not hold a grace period");
    EXPECT(aiorcu_section_leave(&r0, &s2) == 0, "leaving the task section");
    EXPECT(try_sync(d) == AIORCU_OK, "nothing open, yet BUSY");

    BAIL_IF_FAILED();
    /* Foreign leave: entered here, left by another thread. */
    struct helper h;
    memset(&h, 0, sizeof h);
    aiorcu_section_enter(&r0, &s, THREAD);
    h.target = &s;
    helper_start(&h, d, H_FOREIGN);
    pthread_join(h.tid, NULL);
    EXPECT(h.rc == 0, "foreign leave returned %d", h.rc);
    EXPECT(aiorcu_slot_counts(d, r0.slot, got) == token0 && counts_are(got, 0, 0, 0, 0),
           "counts after a foreign leave: %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64, got[0],
           got[1], got[2], got[3]);
    EXPECT(try_sync(d) == AIORCU_OK, "BUSY after a foreign leave");
    EXPECT(aiorcu_section_leave(&r0, &s) == -1, "owner's leave after a foreign leave");

    BAIL_IF_FAILED();
    /* Futex wait: a reader in another thread leaves only once the writer
     * advertised that it sleeps; its leave must wake the writer.  Then the
     * same with the section left by a third thread (foreign release). */
    for (int foreign = 0; foreign < 2; foreign++) {
        struct helper owner_h, leaver_h;
        memset(&owner_h, 0, sizeof owner_h);
        memset(&leaver_h, 0, sizeof leaver_h);
        struct helper *waker = &owner_h;
        if (foreign) {
            helper_start(&owner_h, d, H_PARK);
            leaver_h.target = &owner_h.s;
            leaver_h.wait_for_waiting = 1;
            leaver_h.linger = 1;
            helper_start(&leaver_h, d, H_FOREIGN);
            waker = &leaver_h;
        } else {
            owner_h.wait_for_waiting = 1;
            owner_h.linger = 1;
            helper_start(&owner_h, d, H_HOLD);
        }
        aiorcu_domain_stats(d, &a);
        rc = aiorcu_synchronize(d, aiorcu_snapshot(d), 5000000000, 0, -1, stall_cb, &sc);
        aiorcu_domain_stats(d, &b);
        raise_flag(&waker->go);
        pthread_join(waker->tid, NULL);
        const char *what = foreign ? "futex wait, foreign leave" : "futex wait";
        EXPECT(rc == AIORCU_OK, "%s: rc %d", what, rc);
        EXPECT(waker->saw_waiting, "%s: the writer never set its waiting byte", what);
        EXPECT(waker->rc == 0, "%s: leave returned %d", what, waker->rc);
        EXPECT(b.backstop_timeouts == a.backstop_timeouts, "%s: lost wake-up", what);
        EXPECT(b.wakeups > a.wakeups, "%s: no wake-up", what);
        fprintf(stderr, "stress: self-test %s: futex_sleeps +%" PRIu64 ", wakeups +%" PRIu64 "\n",
                what, b.futex_sleeps - a.futex_sleeps, b.wakeups - a.wakeups);
        if (foreign) {
            raise_flag(&owner_h.go);
            pthread_join(owner_h.tid, NULL);
            EXPECT(owner_h.rc == -1, "owner's leave after a foreign leave returned %d", owner_h.rc);
        }
        BAIL_IF_FAILED();
    }

    BAIL_IF_FAILED();
    /* Poll wait: never sleeps on the futex, never advertises waiting. */
    aiorcu_domain_set_wait_mode(d, AIORCU_WAIT_POLL);
    memset(&h, 0, sizeof h);
    h.hold_us = 3000;
    helper_start(&h, d, H_HOLD);
    aiorcu_domain_stats(d, &a);
    rc = aiorcu_synchronize(d, aiorcu_snapshot(d), 5000000000, 0, -1, stall_cb, &sc);
    pthread_join(h.tid, NULL);
    aiorcu_domain_stats(d, &b);
    EXPECT(rc == AIORCU_OK, "poll wait: rc %d", rc);
    EXPECT(b.futex_sleeps == a.futex_sleeps && b.wakeups == a.wakeups, "poll wait used the futex");
    aiorcu_domain_set_wait_mode(d, AIORCU_WAIT_FUTEX);

    /* Polled tokens. */
    t = aiorcu_snapshot(d);
    EXPECT(aiorcu_completed(d) < t, "a new token is already complete");
    rc = aiorcu_synchronize(d, t, -1, 0, -1, stall_cb, &sc);
    EXPECT(rc == AIORCU_OK && aiorcu_completed(d) >= t, "token %" PRIu64 " not completed", t);

    BAIL_IF_FAILED();
    selftest_phases(d, &r0);
    BAIL_IF_FAILED();
    selftest_death(d, &r0);
    BAIL_IF_FAILED();
    selftest_fork(d, &r0, token0);
    BAIL_IF_FAILED();

    /* Membarrier fault injection (r0 registered: barriers not elided). */
    selftest_faults(d, &sc);

    /* Growth past two chunks, release, reuse of the lowest free slot. */
    aiorcu_reader_fini(&r0);
    enum { N = 2 * AIORCU_CHUNK_SLOTS + 2 };
    static struct aiorcu_reader many[N];
    static uint64_t many_tokens[N];
    for (int i = 0; i < N; i++) {
        reader_init_or_die(&many[i], d, &c);
        many_tokens[i] = claim_token(&many[i]);
        for (int j = 0; j < i; j++) {
            EXPECT(many[j].slot != many[i].slot, "slot %d handed out twice", many[i].slot);
            EXPECT(many_tokens[j] != many_tokens[i], "claim token %" PRIu64 " handed out twice",
                   many_tokens[i]);
        }
    }
    aiorcu_domain_stats(d, &a);
    EXPECT(a.slots_live == N && a.slots_capacity == 3 * AIORCU_CHUNK_SLOTS,
           "%d readers: %" PRIu64 " live, capacity %" PRIu64, N, a.slots_live, a.slots_capacity);
    for (int i = 0; i < N; i++)
        aiorcu_reader_fini(&many[i]);
    aiorcu_domain_stats(d, &a);
    EXPECT(a.slots_live == 0, "%" PRIu64 " slots live after release", a.slots_live);
    reader_init_or_die(&r0, d, &c);
    EXPECT(r0.slot == 0, "lowest free slot not reused: got %d", r0.slot);
    aiorcu_reader_fini(&r0);
    aiorcu_domain_stats(d, &a);
    EXPECT(a.backstop_timeouts == 0, "%" PRIu64 " backstop timeouts", a.backstop_timeouts);
    aiorcu_domain_free(d);
}

/* ------------------------------------------------------------------ */
/* TSan negative control: an unsynchronized plain counter.             */

static uint64_t racy_counter;

static void *racy_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100000; i++)
        racy_counter++;
    return NULL;
}

static int racy_control(void)
{
    pthread_t a, b;
    pthread_create(&a, NULL, racy_main, NULL);
    pthread_create(&b, NULL, racy_main, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("stress: racy control done (counter %" PRIu64 "); only ThreadSanitizer reports it\n",
           racy_counter);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Watchdog                                                            */

static _Atomic int g_done;

static void *watchdog_main(void *arg)
{
    double deadline = now_s() + *(double *)arg;
    /* Relaxed: a flag polled for termination only. */
    while (!atomic_load_explicit(&g_done, memory_order_relaxed)) {
        if (now_s() > deadline) {
            struct aiorcu_stats s;
            aiorcu_domain_stats(g_d, &s);
            fprintf(stderr,
                    "stress: HANG: threads did not stop in time (started %" PRIu64
                    ", completed %" PRIu64 ", slots live %" PRIu64 ")\n",
                    s.started, s.completed, s.slots_live);
            _exit(EXIT_HANG);
        }
        sleep_us(100000);
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* main                                                                */

static void usage(FILE *f)
{
    fprintf(f, "usage: stress [--seconds S] [--mode auto|fence|membarrier] [--busted]\n"
               "              [--retire free|keep] [--readers N] [--churners N] [--hogs N]\n"
               "              [--growers N] [--writers 1|2] [--leavers N] [--forkers N]\n"
               "              [--seed N] [--no-selftest] [--racy-control]\n"
               "--mode auto follows AIORCU_MEMBARRIER like the Python package (off/0/no/\n"
               "false/fence: fence mode).  --busted passes AIORCU_SYNC_BUSTED: violations\n"
               "must be seen (exit 3).  --retire free|keep: free retired objects (default\n"
               "unless --busted or built with -fsanitize=thread) or keep them poisoned.\n");
}

static long parse_long(const char *s, long lo, long hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "stress: bad number %s\n", s);
        usage(stderr);
        exit(EXIT_USAGE);
    }
    return v;
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--busted")) {
            opt.busted = 1;
            takes = 0;
        } else if (!strcmp(a, "--racy-control")) {
            opt.racy_control = 1;
            takes = 0;
        } else if (!strcmp(a, "--no-selftest")) {
            opt.selftest = 0;
            takes = 0;
        } else if (!v) {
            fprintf(stderr, "stress: %s needs a value\n", a);
            usage(stderr);
            exit(EXIT_USAGE);
        } else if (!strcmp(a, "--seconds")) {
            char *end;
            opt.seconds = strtod(v, &end);
            if (*end != '\0' || !(opt.seconds > 0 && opt.seconds < 86400)) {
                fprintf(stderr, "stress: bad --seconds %s\n", v);
                exit(EXIT_USAGE);
            }
        } else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "auto"))
                opt.mode = MODE_AUTO;
            else if (!strcmp(v, "fence"))
                opt.mode = MODE_FENCE;
            else if (!strcmp(v, "membarrier"))
                opt.mode = MODE_MEMBARRIER;
            else {
                fprintf(stderr, "stress: --mode is auto, fence or membarrier, not %s\n", v);
                exit(EXIT_USAGE);
            }
        } else if (!strcmp(a, "--retire")) {
            if (!strcmp(v, "free"))
                opt.retire_free = 1;
            else if (!strcmp(v, "keep"))
                opt.retire_free = 0;
            else {
                fprintf(stderr, "stress: --retire is free or keep, not %s\n", v);
                exit(EXIT_USAGE);
            }
        } else if (!strcmp(a, "--readers"))
            opt.readers = (int)parse_long(v, 1, 64);
        else if (!strcmp(a, "--churners"))
            opt.churners = (int)parse_long(v, 0, 16);
        else if (!strcmp(a, "--hogs"))
            opt.hogs = (int)parse_long(v, 0, 16);
        else if (!strcmp(a, "--growers"))
            opt.growers = (int)parse_long(v, 0, 16);
        else if (!strcmp(a, "--writers"))
            opt.writers = (int)parse_long(v, 1, 2);
        else if (!strcmp(a, "--leavers"))
            opt.leavers = (int)parse_long(v, 0, 16);
        else if (!strcmp(a, "--forkers"))
            opt.forkers = (int)parse_long(v, 0, 4);
        else if (!strcmp(a, "--seed"))
            opt.seed = (uint64_t)parse_long(v, 0, 0x7fffffffL);
        else {
            fprintf(stderr, "stress: unknown option %s\n", a);
            usage(stderr);
            exit(EXIT_USAGE);
        }
        i += takes;
    }
    if (opt.retire_free < 0)
        opt.retire_free = !opt.busted && !STRESS_TSAN;
}

static int env_says_fence(void)
{
    const char *s = getenv("AIORCU_MEMBARRIER");
    if (!s)
        return 0;
    static const char *const off[] = {"0", "off", "no", "false", "fence"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++)
        if (!strcasecmp(s, off[i]))
            return 1;
    return 0;
}

static void start(struct worker *w, void *(*fn)(void *), int index)
{
    w->index = index;
    w->seed = splitmix(opt.seed * 1000003u + (uint64_t)index);
    if (pthread_create(&w->tid, NULL, fn, w) != 0)
        die("pthread_create failed");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (opt.seed == 0)
        opt.seed = aiorcu_monotonic_ns() % 1000000007u;
    rng_seed(opt.seed);

    if (opt.racy_control)
        return racy_control();

    int force_fence = opt.mode == MODE_FENCE || (opt.mode == MODE_AUTO && env_says_fence());
    g_mech = aiorcu_backend_init(force_fence);
    if (aiorcu_backend_mechanism() != g_mech)
        die("aiorcu_backend_mechanism() disagrees with aiorcu_backend_init()");
    const char *reason = aiorcu_backend_reason();
    if (opt.mode == MODE_FENCE)
        reason = "forced by --mode fence";
    if (opt.mode == MODE_MEMBARRIER && g_mech != AIORCU_MECH_MEMBARRIER) {
        printf("stress: SKIP: membarrier mode unavailable: %s\n", reason ? reason : "?");
        return EXIT_SKIP;
    }
    const char *mech_name = g_mech == AIORCU_MECH_MEMBARRIER ? "membarrier" : "fence";
    printf("stress: backend=%s%s%s%s busted=%d retire=%s seconds=%.2f seed=%" PRIu64 " tsan=%d\n",
           mech_name, reason ? " (" : "", reason ? reason : "", reason ? ")" : "", opt.busted,
           retire_frees() ? "free" : "keep", opt.seconds, opt.seed, STRESS_TSAN);

    aiorcu_debug_reader_delay = reader_delay;
#if STRESS_TSAN
    pthread_atfork(NULL, NULL, tsan_mark_fork_child);
#endif

    double t0 = now_s();
    if (opt.selftest) {
        selftest();
        printf("stress: self-tests %s (%.2f s)\n", st_failures ? "FAILED" : "passed", now_s() - t0);
        if (st_failures) {
            /* Helpers and the self-test domain are left as they are. */
            fflush(NULL);
            _exit(EXIT_INVARIANT);
        }
    }

    g_d = aiorcu_domain_new();
    if (!g_d)
        die("aiorcu_domain_new failed");
    aiorcu_domain_set_stall(g_d, 1000000, 8000000);
    atomic_store(&g_current, obj_new());

    int nthreads = opt.readers + opt.churners + opt.hogs + opt.growers + opt.writers + opt.forkers +
                   1 + opt.leavers;
    struct worker *ws = calloc((size_t)nthreads, sizeof *ws);
    if (!ws)
        die("out of memory");
    int k = 0;
    int first_reader = k;
    for (int i = 0; i < opt.readers; i++, k++)
        start(&ws[k], reader_main, k);
    int first_churner = k;
    for (int i = 0; i < opt.churners; i++, k++)
        start(&ws[k], churner_main, k);
    for (int i = 0; i < opt.hogs; i++, k++)
        start(&ws[k], hog_main, k);
    for (int i = 0; i < opt.growers; i++, k++)
        start(&ws[k], grower_main, k);
    int first_forker = k;
    for (int i = 0; i < opt.forkers; i++, k++)
        start(&ws[k], forker_main, k);
    int auditor = k;
    start(&ws[k], auditor_main, k);
    k++;
    int first_writer = k;
    start(&ws[k], writer_sync_main, k);
    k++;
    if (opt.writers > 1) {
        start(&ws[k], writer_poll_main, k);
        k++;
    }
    int end_writers = k;
    /* Leavers last: they run until every thread before them is joined. */
    int first_leaver = k;
    for (int i = 0; i < opt.leavers; i++, k++)
        start(&ws[k], leaver_main, k);

    double grace = opt.seconds + 60.0;
    pthread_t dog;
    if (pthread_create(&dog, NULL, watchdog_main, &grace) != 0)
        die("pthread_create failed");

    double t1 = now_s();
    sleep_us((uint64_t)(opt.seconds * 1e6));
    atomic_store(&g_stop, 1);
    struct counters total;
    memset(&total, 0, sizeof total);
    for (int i = 0; i < first_leaver; i++) {
        pthread_join(ws[i].tid, NULL);
        counters_add(&total, &ws[i].c);
    }
    /* No producer left: the leavers empty the queue and stop. */
    handoff_close();
    for (int i = first_leaver; i < nthreads; i++) {
        pthread_join(ws[i].tid, NULL);
        counters_add(&total, &ws[i].c);
    }
    double ran = now_s() - t1;
    atomic_store(&g_done, 1);
    pthread_join(dog, NULL);

    /* Every thread is joined: nothing can read the last object. */
    free(atomic_load(&g_current));
    uint64_t graveyard = g_grave_count;
    while (g_grave) {
        struct obj *o = g_grave;
        g_grave = o->grave_next;
        free(o);
    }

    struct aiorcu_stats s;
    aiorcu_domain_stats(g_d, &s);
    uint64_t violations = atomic_load(&g_violations);

    printf("stress: ran %.2f s (self-tests and setup %.2f s)\n", ran, t1 - t0);
    printf("stress: readers: reads=%" PRIu64 " sections=%" PRIu64 " task_sections=%" PRIu64
           " nested=%" PRIu64 " overlapping=%" PRIu64 " task_ops=%" PRIu64 " long=%" PRIu64
           " relays=%" PRIu64 " relay_max_ms=%.1f double_leaves=%" PRIu64
           " stale_owner_leaves=%" PRIu64 "\n",
           total.reads, total.sections, total.task_sections, total.nested, total.overlapping,
           total.task_ops, total.long_sections, total.relays, total.relay_max_us / 1000.0,
           total.double_leaves, total.stale_owner_leaves);
    printf("stress: handoffs: handed=%" PRIu64 " foreign_leaves=%" PRIu64 " races=%" PRIu64
           " races_tight=%" PRIu64 " race_losses=%" PRIu64 " late_leaves=%" PRIu64
           " late_reuse_checks=%" PRIu64 " queue_full=%" PRIu64 "\n",
           total.handed, total.foreign_leaves, total.races, total.races_tight, total.race_losses,
           total.late_leaves, total.late_reuse_checks, total.queue_full);
    printf("stress: slots: registrations=%" PRIu64 " reregistrations=%" PRIu64
           " rereg_deferred=%" PRIu64 " thread_spawns=%" PRIu64 " dead_owner_releases=%" PRIu64
           " alive_proofs=%" PRIu64 " death_proofs=%" PRIu64 " released_open=%" PRIu64
           " sections_dropped=%" PRIu64 " hog_rounds=%" PRIu64 " hog_peak=%" PRIu64
           " grow_rounds=%" PRIu64 "\n",
           total.registrations, total.reregistrations, total.rereg_deferred, total.spawns,
           total.dead_owner_releases, total.alive_proofs, total.death_proofs, total.released_open,
           total.sections_dropped, total.hog_rounds, total.peak_slots, total.grow_rounds);
    printf("stress: fork: forks=%" PRIu64 " own_sections=%" PRIu64 " phantoms=%" PRIu64
           " fork_call_max_ms=%.1f child_max_ms=%.1f\n",
           total.forks, total.fork_own_sections, total.fork_phantoms,
           total.fork_call_max_us / 1000.0, total.fork_child_max_us / 1000.0);
    printf("stress: writers: updates=%" PRIu64 " retired=%" PRIu64 " waited=%" PRIu64
           " polled=%" PRIu64 " rc_ok=%" PRIu64 " rc_timedout=%" PRIu64 " rc_busy=%" PRIu64
           " rc_ebarrier=%" PRIu64 " stalls=%" PRIu64 " stall_slots=%" PRIu64
           " faults_injected=%" PRIu64 " wait_mode_switches=%" PRIu64 " jitter_switches=%" PRIu64
           " graveyard=%" PRIu64 "\n",
           total.updates, total.retired, total.gps_waited, total.gps_polled, total.rc[AIORCU_OK],
           total.rc[AIORCU_TIMEDOUT], total.rc[AIORCU_BUSY], total.rc[AIORCU_EBARRIER],
           total.stalls, total.stall_slots, total.faults_injected, total.mode_switches,
           total.jitter_switches, graveyard);
    printf("stress: audit: samples=%" PRIu64 " slot_sweeps=%" PRIu64 " max_gp_gap_ms=%.1f\n",
           total.audits, total.sweeps, total.gp_gap_max_us / 1000.0);
    printf("stress: core: started=%" PRIu64 " completed=%" PRIu64 " grace_periods=%" PRIu64
           " membarrier_calls=%" PRIu64 " barriers_elided=%" PRIu64 " barrier_fallbacks=%" PRIu64
           " futex_sleeps=%" PRIu64 " wakeups=%" PRIu64 " backstop_timeouts=%" PRIu64
           " timeouts=%" PRIu64 " slots_live=%" PRIu64 " slots_capacity=%" PRIu64
           " dead_readers_released=%" PRIu64 " sections_open=%" PRIu64 "\n",
           s.started, s.completed, s.grace_periods, s.membarrier_calls, s.barriers_elided,
           s.barrier_fallbacks, s.futex_sleeps, s.wakeups, s.backstop_timeouts, s.timeouts,
           s.slots_live, s.slots_capacity, s.dead_readers_released, s.sections_open);

    /* Invariants of the core's bookkeeping, whatever the mode. */
    if (s.slots_live != 0 || s.sections_open != 0)
        invariant_fail("%" PRIu64 " slots live, %" PRIu64 " sections open after every thread "
                       "released its own",
                       s.slots_live, s.sections_open);
    if (s.timeouts != total.rc[AIORCU_TIMEDOUT])
        invariant_fail("stats count %" PRIu64 " timeouts, callers saw %" PRIu64, s.timeouts,
                       total.rc[AIORCU_TIMEDOUT]);
    if (s.completed > s.started || s.grace_periods > s.started)
        invariant_fail("completed %" PRIu64 " / grace_periods %" PRIu64 " beyond started %" PRIu64,
                       s.completed, s.grace_periods, s.started);
    if (s.backstop_timeouts != 0)
        invariant_fail("%" PRIu64 " lost wake-ups caught only by the backstop",
                       s.backstop_timeouts);
    if (g_mech == AIORCU_MECH_FENCE && (s.membarrier_calls || s.barrier_fallbacks))
        invariant_fail("fence mode made %" PRIu64 " membarrier calls", s.membarrier_calls);
    if (opt.hogs && total.peak_slots > AIORCU_CHUNK_SLOTS && s.slots_capacity <= AIORCU_CHUNK_SLOTS)
        invariant_fail("%" PRIu64 " slots held at once but capacity %" PRIu64, total.peak_slots,
                       s.slots_capacity);
    if (s.dead_readers_released != total.released_open)
        invariant_fail("dead_readers_released = %" PRIu64 ", but %" PRIu64
                       " slot releases dropped open sections",
                       s.dead_readers_released, total.released_open);
    if (total.updates != total.retired)
        invariant_fail("%" PRIu64 " updates but %" PRIu64 " objects retired", total.updates,
                       total.retired);
    /* Progress: every long-lived reader read, every writer finished grace
     * periods, every forker forked, the auditor sampled. */
    for (int i = first_reader; i < first_churner; i++)
        if (ws[i].c.reads == 0)
            invariant_fail("reader thread %d made no reads", i);
    for (int i = first_writer; i < end_writers; i++)
        if (ws[i].c.retired == 0)
            invariant_fail("writer thread %d retired nothing", i);
    for (int i = first_forker; i < auditor; i++)
        if (ws[i].c.forks == 0)
            invariant_fail("forker thread %d never forked", i);
    if (ws[auditor].c.sweeps == 0)
        invariant_fail("the auditor never swept the slots");
    if (s.grace_periods == 0)
        invariant_fail("no grace period completed");

    aiorcu_domain_free(g_d);
    free(ws);
    uint64_t broken = atomic_load(&g_invariant_failures);
    printf("stress: reads=%" PRIu64 " grace_periods=%" PRIu64 " foreign_leaves=%" PRIu64
           " forks=%" PRIu64 " violations=%" PRIu64 " invariant_failures=%" PRIu64 "\n",
           total.reads, s.grace_periods, total.foreign_leaves, total.forks, violations, broken);
    if (broken) {
        printf("stress: FAIL: core invariants broken (see messages above)\n");
        return EXIT_INVARIANT;
    }
    if (violations) {
        printf("stress: %s: %" PRIu64 " read-section violations\n",
               opt.busted ? "negative control caught" : "FAIL", violations);
        return EXIT_VIOLATION;
    }
    if (opt.busted) {
        printf("stress: busted grace periods but no violation seen: negative control NOT "
               "caught\n");
        return 0;
    }
    printf("stress: PASS\n");
    return 0;
}
