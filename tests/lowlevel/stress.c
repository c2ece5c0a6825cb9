/*
 * Plain-C stress harness for the aiorcu core (the .c files in csrc/), built and run by
 * run.sh (AddressSanitizer + UndefinedBehaviorSanitizer) and tsan.sh
 * (ThreadSanitizer).  README.md next to this file says what each run checks.
 *
 * The protected object: writers publish a fresh heap `struct obj` through the
 * atomic pointer `g_current`, wait for a grace period (aiorcu_synchronize, or a
 * snapshot token polled with aiorcu_completed), then poison the old object and
 * free it.  Readers load the pointer inside a read section and check that the
 * object is neither poisoned nor torn, at every point where the section still
 * protects it.  A poisoned read is a violation of the grace-period guarantee;
 * with `free()` on, AddressSanitizer also reports it as a use-after-free.
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
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
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
    __tsan_mutex_pre_lock(m, __tsan_mutex_try_lock);
    int rc = fn(m, clock, abstime);
    __tsan_mutex_post_lock(m, rc == 0 ? __tsan_mutex_try_lock
                                      : __tsan_mutex_try_lock | __tsan_mutex_try_lock_failed,
                           0);
    return rc;
}
#endif

#define EXIT_USAGE 2
#define EXIT_VIOLATION 3
#define EXIT_INVARIANT 4
#define EXIT_HANG 5
#define EXIT_SKIP 77

#define MODE_AUTO 0
#define MODE_FENCE 1
#define MODE_MEMBARRIER 2

#define OBJ_LIVE 0x4c4956454f424a31ull   /* "LIVEOBJ1" */
#define OBJ_POISON 0xdeaddeaddeaddeadull
#define OBJ_WORDS 6

#define HOG_MAX 150        /* slots one hog round may hold: > 2 chunks */
#define GROW_CHILDREN 3    /* threads registering at once on a fresh domain */
#define GROW_SLOTS 48      /* slots each of them takes: 3 * 48 > 2 chunks */
#define PENDING_MAX 1024   /* poll writer: objects waiting for their token */
#define STALL_SLOTS 512
#define MAX_TASKS 4
#define MAX_NEST 4
#define MAX_CHURN_CHILDREN 6

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

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("stress: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(EXIT_INVARIANT);
}

/* Per-thread counters; main() sums them after joining the thread. */
struct counters {
    uint64_t reads, sections, nested, overlapping, task_sections, long_sections;
    uint64_t reregistrations, registrations, spawns, dead_owner_releases;
    uint64_t hog_rounds, peak_slots, grow_rounds, grow_syncs;
    uint64_t updates, gps_waited, gps_polled, retired, stalls, stall_slots;
    uint64_t rc[4], faults_injected, mode_switches, jitter_switches;
};

static void counters_add(struct counters *to, const struct counters *from)
{
    const uint64_t *f = (const uint64_t *)from;
    uint64_t *t = (uint64_t *)to;
    for (size_t i = 0; i < sizeof *from / sizeof(uint64_t); i++)
        t[i] += f[i];
    /* peak_slots is a maximum, not a sum. */
    to->peak_slots -= from->peak_slots;
    if (from->peak_slots > to->peak_slots)
        to->peak_slots = from->peak_slots;
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
        fprintf(stderr, "stress: VIOLATION #%" PRIu64 ": %s (object %p, magic %#" PRIx64
                ", seq %" PRIu64 ")\n", n, what, (const void *)o, magic, seq);
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
 * reader's phase load and its flag store, the straggler case that the
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

/* "Task" sections: the protocol of the Python reader's `async with`
 * (aiorcu/_reader.py), on the FLAG_TASK bytes of a C reader's slot.  Each
 * section takes the current phase; they overlap in any order. */
struct tasks {
    unsigned count[2];
};

static int task_enter(struct aiorcu_reader *r, struct tasks *t)
{
    _Atomic uint8_t *ctl = (_Atomic uint8_t *)aiorcu_domain_ctl(r->d);
    _Atomic uint8_t *f = (_Atomic uint8_t *)r->flags;
    int p = atomic_load_explicit(&ctl[AIORCU_CTL_PHASE], memory_order_relaxed);
    reader_delay();
    if (t->count[p]++ == 0)
        atomic_store_explicit(&f[AIORCU_FLAG_TASK + p], 1, memory_order_relaxed);
    if (g_mech == AIORCU_MECH_FENCE)
        /* F1: pairs with the writer's M1 fence. */
        atomic_thread_fence(memory_order_seq_cst);
    else
        /* F1: compiler barrier; the writer's M1 membarrier pairs with it. */
        atomic_signal_fence(memory_order_seq_cst);
    return p;
}

static void task_exit(struct aiorcu_reader *r, struct tasks *t, int p)
{
    if (--t->count[p])
        return;
    if (g_mech == AIORCU_MECH_FENCE) {
        /* F2, clear, F3, waiting check: the Python fence-mode exit. */
        aiorcu_fence_flag_clear(r->d, r->flags, AIORCU_FLAG_TASK + p);
        return;
    }
    _Atomic uint8_t *ctl = (_Atomic uint8_t *)aiorcu_domain_ctl(r->d);
    _Atomic uint8_t *f = (_Atomic uint8_t *)r->flags;
    /* F2: compiler barrier; pairs with the writer's M3 membarrier. */
    atomic_signal_fence(memory_order_seq_cst);
    atomic_store_explicit(&f[AIORCU_FLAG_TASK + p], 0, memory_order_relaxed);
    /* F3: compiler barrier; pairs with the writer's wait membarrier. */
    atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&ctl[AIORCU_CTL_WAITING + p], memory_order_relaxed))
        aiorcu_wake(r->d);
}

static void reader_init_or_die(struct aiorcu_reader *r, struct aiorcu_domain *d, struct counters *c)
{
    if (aiorcu_reader_init(r, d) != 0)
        die("aiorcu_reader_init failed: registry full or out of memory");
    c->registrations++;
}

static void op_simple(struct aiorcu_reader *r, struct counters *c)
{
    aiorcu_read_lock(r);
    struct obj *o = section_load(c);
    check(o, c);
    aiorcu_read_unlock(r);
    c->sections++;
}

/* Nested sections: the outermost one protects what it loaded until its own
 * unlock, whatever the inner ones do. */
static void op_nested(struct aiorcu_reader *r, struct counters *c)
{
    struct obj *held[MAX_NEST];
    unsigned depth = 2 + rnd_below(MAX_NEST - 1);
    for (unsigned i = 0; i < depth; i++) {
        aiorcu_read_lock(r);
        held[i] = section_load(c);
        if (rnd_below(8) == 0)
            sched_yield();
    }
    for (unsigned i = depth; i-- > 0;) {
        for (unsigned j = 0; j <= i; j++)
            check(held[j], c);
        aiorcu_read_unlock(r);
    }
    c->sections += depth;
    c->nested++;
}

/* Two reader objects of one thread, sections overlapping out of order:
 * lock A, lock B, unlock A, unlock B. */
static void op_overlap(struct aiorcu_reader *a, struct aiorcu_reader *b, struct counters *c)
{
    aiorcu_read_lock(a);
    struct obj *oa = section_load(c);
    aiorcu_read_lock(b);
    struct obj *ob = section_load(c);
    check(oa, c);
    aiorcu_read_unlock(a);
    check(ob, c);
    struct obj *oc = section_load(c);
    if (rnd_below(4) == 0)
        sched_yield();
    check(ob, c);
    check(oc, c);
    aiorcu_read_unlock(b);
    c->sections += 2;
    c->overlapping++;
}

/* Task sections opened and closed in random order, with a thread section of
 * the same slot sometimes open across them. */
static void op_tasks(struct aiorcu_reader *r, struct tasks *t, struct counters *c)
{
    struct {
        int phase;
        struct obj *o;
    } open[MAX_TASKS];
    unsigned n = 0, opened = 0, target = 1 + rnd_below(MAX_TASKS * 2);
    int thread_section = 0;
    struct obj *to = NULL;
    while (opened < target || n > 0) {
        unsigned what = rnd_below(8);
        if (what == 0 && !thread_section) {
            aiorcu_read_lock(r);
            to = section_load(c);
            thread_section = 1;
        } else if (what == 1 && thread_section) {
            check(to, c);
            aiorcu_read_unlock(r);
            thread_section = 0;
            c->sections++;
        } else if (opened < target && n < MAX_TASKS && (what < 5 || n == 0)) {
            open[n].phase = task_enter(r, t);
            open[n].o = section_load(c);
            n++;
            opened++;
        } else if (n > 0) {
            unsigned k = rnd_below(n);
            for (unsigned j = 0; j < n; j++)
                check(open[j].o, c);
            task_exit(r, t, open[k].phase);
            open[k] = open[--n];
            c->task_sections++;
        }
    }
    if (thread_section) {
        check(to, c);
        aiorcu_read_unlock(r);
        c->sections++;
    }
}

/* A section long enough that writers sleep, time out and see stalls. */
static void op_long(struct aiorcu_reader *r, struct counters *c)
{
    aiorcu_read_lock(r);
    struct obj *o = section_load(c);
    sleep_us(50 + rnd_below(1500));
    check(o, c);
    aiorcu_read_unlock(r);
    c->sections++;
    c->long_sections++;
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
    struct counters *c = &w->c;
    rng_seed(w->seed);
    struct aiorcu_reader r, r2;
    struct tasks t = {{0, 0}};
    reader_init_or_die(&r, g_d, c);
    reader_init_or_die(&r2, g_d, c);
    while (!stopping()) {
        unsigned op = rnd_below(100);
        if (op < 50)
            op_simple(&r, c);
        else if (op < 65)
            op_nested(&r, c);
        else if (op < 77)
            op_overlap(&r, &r2, c);
        else if (op < 90)
            op_tasks(&r, &t, c);
        else if (op < 92)
            op_long(&r, c);
        else if (op < 94) {
            /* Leave and register again on the same thread. */
            aiorcu_reader_fini(&r);
            reader_init_or_die(&r, g_d, c);
            c->reregistrations++;
        } else
            sleep_us(rnd_below(40));
    }
    aiorcu_reader_fini(&r2);
    aiorcu_reader_fini(&r);
    return NULL;
}

/* Short-lived reader threads: register, read a little, release, exit.
 * Some leave a section open and die; their parent releases the slot the way
 * the Python side does for a thread that is gone. */
struct churn_child {
    pthread_t tid;
    uint64_t seed;
    int dies_inside;
    int slot;
    struct counters c;
};

static void *churn_child_main(void *arg)
{
    struct churn_child *k = arg;
    struct counters *c = &k->c;
    rng_seed(k->seed);
    struct aiorcu_reader r;
    struct tasks t = {{0, 0}};
    reader_init_or_die(&r, g_d, c);
    k->slot = r.slot;
    unsigned n = 1 + rnd_below(20);
    for (unsigned i = 0; i < n; i++) {
        unsigned op = rnd_below(10);
        if (op < 6)
            op_simple(&r, c);
        else if (op < 8)
            op_nested(&r, c);
        else
            op_tasks(&r, &t, c);
    }
    if (k->dies_inside) {
        aiorcu_read_lock(&r);
        check(load_current(), c);
        return NULL; /* the slot stays registered, phase flag set */
    }
    aiorcu_reader_fini(&r);
    return NULL;
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
            pthread_join(kids[i].tid, NULL);
            if (kids[i].dies_inside) {
                /* A writer may be waiting on this slot right now. */
                aiorcu_slot_release(g_d, kids[i].slot);
                c->dead_owner_releases++;
            }
            counters_add(c, &kids[i].c);
        }
    }
    return NULL;
}

/* One thread holding many slots at once: grows the registry past a chunk,
 * then releases everything in random order while writers scan. */
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
    struct obj **held = calloc(HOG_MAX, sizeof *held);
    unsigned *order = calloc(HOG_MAX, sizeof *order);
    if (!rs || !held || !order)
        die("out of memory");
    while (!stopping()) {
        unsigned n = 1 + rnd_below(HOG_MAX);
        for (unsigned i = 0; i < n; i++) {
            reader_init_or_die(&rs[i], g_d, c);
            held[i] = NULL;
            order[i] = i;
        }
        if (n > c->peak_slots)
            c->peak_slots = n;
        shuffle(order, n);
        unsigned m = rnd_below(n + 1);
        for (unsigned i = 0; i < m; i++) {
            aiorcu_read_lock(&rs[order[i]]);
            held[order[i]] = section_load(c);
        }
        if (rnd_below(4) == 0)
            sleep_us(rnd_below(300));
        shuffle(order, n);
        for (unsigned i = 0; i < n; i++) {
            unsigned k = order[i];
            if (held[k]) {
                check(held[k], c);
                aiorcu_read_unlock(&rs[k]);
                c->sections++;
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
        reader_init_or_die(&rs[i], k->d, &k->c);
        aiorcu_read_lock(&rs[i]);
        aiorcu_read_unlock(&rs[i]);
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
        if (s.slots_live != 0)
            invariant_fail("fresh domain: %" PRIu64 " slots live after every owner released",
                           s.slots_live);
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
                aiorcu_debug_fail_membarrier(1 + (int)rnd_below(3),
                                             rnd_below(2) ? EPERM : EINVAL);
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
/* Deterministic self-tests (single writer, helper readers)            */

static int st_failures;

#define EXPECT(cond, ...)                                                                     \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "stress: self-test failed (%s:%d): ", __FILE__, __LINE__);        \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            st_failures++;                                                                    \
        }                                                                                     \
    } while (0)

struct helper {
    pthread_t tid;
    struct aiorcu_domain *d;
    int wait_for_waiting; /* leave once a writer advertises it is asleep */
    unsigned hold_us;     /* else: leave after this long */
    _Atomic int inside;
    int saw_waiting;
};

static void *helper_main(void *arg)
{
    struct helper *h = arg;
    struct aiorcu_reader r;
    struct counters c;
    memset(&c, 0, sizeof c);
    reader_init_or_die(&r, h->d, &c);
    aiorcu_read_lock(&r);
    /* Release: pairs with the acquire load in the self-test's wait. */
    atomic_store_explicit(&h->inside, 1, memory_order_release);
    if (h->wait_for_waiting) {
        _Atomic uint8_t *ctl = (_Atomic uint8_t *)aiorcu_domain_ctl(h->d);
        uint64_t give_up = aiorcu_monotonic_ns() + 5000000000ull;
        while (aiorcu_monotonic_ns() < give_up) {
            /* Relaxed: only a progress signal; the test does not rely on it
             * for ordering. */
            if (atomic_load_explicit(&ctl[AIORCU_CTL_WAITING + r.phase], memory_order_relaxed)) {
                h->saw_waiting = 1;
                break;
            }
            sched_yield();
        }
    } else {
        sleep_us(h->hold_us);
    }
    aiorcu_read_unlock(&r);
    aiorcu_reader_fini(&r);
    return NULL;
}

static void helper_start(struct helper *h)
{
    if (pthread_create(&h->tid, NULL, helper_main, h) != 0)
        die("pthread_create failed");
    /* Acquire: pairs with the helper's release store of `inside`. */
    while (!atomic_load_explicit(&h->inside, memory_order_acquire))
        sched_yield();
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
               "%s: completed %" PRIu64 " -> %" PRIu64, cases[i].what, a.completed,
               b.completed);
    }
    rc = aiorcu_synchronize(d, aiorcu_snapshot(d), -1, 0, -1, stall_cb, sc);
    EXPECT(rc == AIORCU_OK, "after fault injection: rc %d", rc);
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
    int rc;
    int mb = g_mech == AIORCU_MECH_MEMBARRIER;

    /* A fresh domain. */
    aiorcu_domain_stats(d, &a);
    EXPECT(a.started == 0 && a.completed == 0 && a.grace_periods == 0 && a.slots_live == 0,
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
           " membarriers", b.grace_periods, b.barriers_elided, b.membarrier_calls);

    /* A completed token is shared: no new grace period. */
    rc = aiorcu_synchronize(d, t, -1, 0, -1, stall_cb, &sc);
    aiorcu_domain_stats(d, &a);
    EXPECT(rc == AIORCU_OK && a.started == b.started && a.grace_periods == b.grace_periods,
           "completed token ran a new grace period");

    /* One reader: elided when it is the caller's own slot, not otherwise. */
    struct aiorcu_reader r0;
    reader_init_or_die(&r0, d, &c);
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

    /* A section open on this thread: TRY gives BUSY, a timeout TIMEDOUT,
     * the stall callback names the slot, slot_clear unblocks. */
    aiorcu_read_lock(&r0);
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
    aiorcu_slot_clear(d, r0.slot);
    rc = aiorcu_synchronize(d, t, 1000000000, 0, -1, stall_cb, &sc);
    EXPECT(rc == AIORCU_OK, "after aiorcu_slot_clear: rc %d", rc);
    aiorcu_read_unlock(&r0);

    /* Futex wait: a reader in another thread leaves only once the writer
     * advertised that it sleeps; its exit must wake the writer. */
    struct helper h;
    memset(&h, 0, sizeof h);
    h.d = d;
    h.wait_for_waiting = 1;
    helper_start(&h);
    aiorcu_domain_stats(d, &a);
    rc = aiorcu_synchronize(d, aiorcu_snapshot(d), 10000000000, 0, -1, stall_cb, &sc);
    pthread_join(h.tid, NULL);
    aiorcu_domain_stats(d, &b);
    EXPECT(rc == AIORCU_OK, "futex wait: rc %d", rc);
    EXPECT(h.saw_waiting, "futex wait: the writer never set its waiting byte");
    EXPECT(b.backstop_timeouts == a.backstop_timeouts, "futex wait: lost wake-up");
    fprintf(stderr, "stress: self-test futex wait: futex_sleeps +%" PRIu64 ", wakeups +%" PRIu64
            "\n", b.futex_sleeps - a.futex_sleeps, b.wakeups - a.wakeups);

    /* Poll wait: never sleeps on the futex, never advertises waiting. */
    aiorcu_domain_set_wait_mode(d, AIORCU_WAIT_POLL);
    memset(&h, 0, sizeof h);
    h.d = d;
    h.hold_us = 3000;
    helper_start(&h);
    aiorcu_domain_stats(d, &a);
    rc = aiorcu_synchronize(d, aiorcu_snapshot(d), 10000000000, 0, -1, stall_cb, &sc);
    pthread_join(h.tid, NULL);
    aiorcu_domain_stats(d, &b);
    EXPECT(rc == AIORCU_OK, "poll wait: rc %d", rc);
    EXPECT(b.futex_sleeps == a.futex_sleeps && b.wakeups == a.wakeups,
           "poll wait used the futex");
    aiorcu_domain_set_wait_mode(d, AIORCU_WAIT_FUTEX);

    /* Polled tokens. */
    t = aiorcu_snapshot(d);
    EXPECT(aiorcu_completed(d) < t, "a new token is already complete");
    rc = aiorcu_synchronize(d, t, -1, 0, -1, stall_cb, &sc);
    EXPECT(rc == AIORCU_OK && aiorcu_completed(d) >= t, "token %" PRIu64 " not completed", t);

    /* Membarrier fault injection (r0 registered: barriers not elided). */
    selftest_faults(d, &sc);

    /* Growth past two chunks, release, reuse of the lowest free slot. */
    aiorcu_reader_fini(&r0);
    enum { N = 2 * AIORCU_CHUNK_SLOTS + 2 };
    static struct aiorcu_reader many[N];
    for (int i = 0; i < N; i++) {
        reader_init_or_die(&many[i], d, &c);
        for (int j = 0; j < i; j++)
            EXPECT(many[j].slot != many[i].slot, "slot %d handed out twice", many[i].slot);
    }
    aiorcu_domain_stats(d, &a);
    EXPECT(a.slots_live == N && a.slots_capacity == 3 * AIORCU_CHUNK_SLOTS,
           "%d readers: %" PRIu64 " live, capacity %" PRIu64, N, a.slots_live,
           a.slots_capacity);
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
    fprintf(f,
            "usage: stress [--seconds S] [--mode auto|fence|membarrier] [--busted]\n"
            "              [--retire free|keep] [--readers N] [--churners N] [--hogs N]\n"
            "              [--growers N] [--writers 1|2] [--seed N] [--no-selftest]\n"
            "              [--racy-control]\n"
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
    printf("stress: backend=%s%s%s%s busted=%d retire=%s seconds=%.2f seed=%" PRIu64
           " tsan=%d\n",
           mech_name, reason ? " (" : "", reason ? reason : "", reason ? ")" : "", opt.busted,
           retire_frees() ? "free" : "keep", opt.seconds, opt.seed, STRESS_TSAN);

    aiorcu_debug_reader_delay = reader_delay;

    double t0 = now_s();
    if (opt.selftest) {
        selftest();
        printf("stress: self-tests %s (%.2f s)\n", st_failures ? "FAILED" : "passed",
               now_s() - t0);
        if (st_failures)
            return EXIT_INVARIANT;
    }

    g_d = aiorcu_domain_new();
    if (!g_d)
        die("aiorcu_domain_new failed");
    aiorcu_domain_set_stall(g_d, 1000000, 8000000);
    atomic_store(&g_current, obj_new());

    int nthreads = opt.readers + opt.churners + opt.hogs + opt.growers + opt.writers;
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
    int first_writer = k;
    start(&ws[k], writer_sync_main, k);
    k++;
    if (opt.writers > 1) {
        start(&ws[k], writer_poll_main, k);
        k++;
    }

    double grace = opt.seconds + 60.0;
    pthread_t dog;
    if (pthread_create(&dog, NULL, watchdog_main, &grace) != 0)
        die("pthread_create failed");

    double t1 = now_s();
    sleep_us((uint64_t)(opt.seconds * 1e6));
    atomic_store(&g_stop, 1);
    struct counters total;
    memset(&total, 0, sizeof total);
    for (int i = 0; i < nthreads; i++) {
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
    printf("stress: readers: reads=%" PRIu64 " sections=%" PRIu64 " nested=%" PRIu64
           " overlapping=%" PRIu64 " task_sections=%" PRIu64 " long=%" PRIu64 "\n",
           total.reads, total.sections, total.nested, total.overlapping, total.task_sections,
           total.long_sections);
    printf("stress: slots: registrations=%" PRIu64 " reregistrations=%" PRIu64
           " thread_spawns=%" PRIu64 " dead_owner_releases=%" PRIu64 " hog_rounds=%" PRIu64
           " hog_peak=%" PRIu64 " grow_rounds=%" PRIu64 "\n",
           total.registrations, total.reregistrations, total.spawns, total.dead_owner_releases,
           total.hog_rounds, total.peak_slots, total.grow_rounds);
    printf("stress: writers: updates=%" PRIu64 " retired=%" PRIu64 " waited=%" PRIu64
           " polled=%" PRIu64 " rc_ok=%" PRIu64 " rc_timedout=%" PRIu64 " rc_busy=%" PRIu64
           " rc_ebarrier=%" PRIu64 " stalls=%" PRIu64 " stall_slots=%" PRIu64
           " faults_injected=%" PRIu64 " wait_mode_switches=%" PRIu64 " jitter_switches=%" PRIu64
           " graveyard=%" PRIu64 "\n",
           total.updates, total.retired, total.gps_waited, total.gps_polled,
           total.rc[AIORCU_OK], total.rc[AIORCU_TIMEDOUT], total.rc[AIORCU_BUSY],
           total.rc[AIORCU_EBARRIER], total.stalls, total.stall_slots, total.faults_injected,
           total.mode_switches, total.jitter_switches, graveyard);
    printf("stress: core: started=%" PRIu64 " completed=%" PRIu64 " grace_periods=%" PRIu64
           " membarrier_calls=%" PRIu64 " barriers_elided=%" PRIu64
           " barrier_fallbacks=%" PRIu64 " futex_sleeps=%" PRIu64 " wakeups=%" PRIu64
           " backstop_timeouts=%" PRIu64 " timeouts=%" PRIu64 " slots_live=%" PRIu64
           " slots_capacity=%" PRIu64 "\n",
           s.started, s.completed, s.grace_periods, s.membarrier_calls, s.barriers_elided,
           s.barrier_fallbacks, s.futex_sleeps, s.wakeups, s.backstop_timeouts, s.timeouts,
           s.slots_live, s.slots_capacity);

    /* Invariants of the core's bookkeeping, whatever the mode. */
    if (s.slots_live != 0)
        invariant_fail("%" PRIu64 " slots live after every thread released its own", s.slots_live);
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
    if (total.updates != total.retired)
        invariant_fail("%" PRIu64 " updates but %" PRIu64 " objects retired", total.updates,
                       total.retired);
    /* Progress: every long-lived reader read, every writer finished grace periods. */
    for (int i = first_reader; i < first_churner; i++)
        if (ws[i].c.reads == 0)
            invariant_fail("reader thread %d made no reads", i);
    for (int i = first_writer; i < nthreads; i++)
        if (ws[i].c.retired == 0)
            invariant_fail("writer thread %d retired nothing", i);
    if (s.grace_periods == 0)
        invariant_fail("no grace period completed");

    aiorcu_domain_free(g_d);
    free(ws);
    uint64_t broken = atomic_load(&g_invariant_failures);
    printf("stress: reads=%" PRIu64 " grace_periods=%" PRIu64 " violations=%" PRIu64
           " invariant_failures=%" PRIu64 "\n",
           total.reads, s.grace_periods, violations, broken);
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
