/*
 * Thread records: a serial that names a thread for as long as the process
 * lives (thread ids and pthread_t values are reused; serials are not), and
 * proof that a thread has exited.
 *
 * The proof comes from the kernel, not from anything the thread runs: each
 * record holds a robust mutex that its thread locks when the record is made
 * and never unlocks.  When the thread exits, after the very last code it
 * runs (pthread key destructors included), the kernel walks the thread's
 * robust list and marks the mutex owner-dead; a later trylock by anybody
 * returns EOWNERDEAD.  EBUSY means the owner is alive; nothing short of
 * EOWNERDEAD counts as death.
 *
 * A record's memory stays on the robust list of its thread while the thread
 * lives, so it is freed only once its death was observed and no slot refers
 * to it (`sweep`, run when a new thread makes its record).  In a fork child
 * the records of the parent's other threads can never be proven dead (the
 * kernel only marks mutexes of a thread that exits in this process): their
 * slots are released by the fork handler instead, and the records stay.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

/* ThreadSanitizer cannot see the kernel's hand-over at thread exit (the
 * robust-list walk that makes our trylock return EOWNERDEAD), so in TSan
 * builds the thread releases its record from a pthread key destructor and
 * the prover acquires it: the happens-before TSan needs to accept the free. */
#if defined(__SANITIZE_THREAD__)
#define AIORCU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AIORCU_TSAN 1
#endif
#endif
#ifdef AIORCU_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static pthread_key_t tsan_key;
static pthread_once_t tsan_once = PTHREAD_ONCE_INIT;
static void tsan_thread_exit(void *t)
{
    __tsan_release(t);
}
static void tsan_make_key(void)
{
    pthread_key_create(&tsan_key, tsan_thread_exit);
}
#endif

static pthread_mutex_t records_lock = PTHREAD_MUTEX_INITIALIZER;
static struct aiorcu_thread *records; /* every record not yet freed */
static _Atomic uint64_t next_serial;
static _Thread_local struct aiorcu_thread *self;

/* 1 when t's thread has provably exited.  Concurrent callers may see 0
 * while another one is taking the proof: that only delays a release. */
int aiorcu__thread_dead(struct aiorcu_thread *t)
{
    /* Acquire: pairs with the release store below. */
    if (atomic_load_explicit(&t->dead, memory_order_acquire))
        return 1;
    int rc = pthread_mutex_trylock(&t->life);
    if (rc == EOWNERDEAD) {
#ifdef AIORCU_TSAN
        __tsan_acquire(t);
#endif
        pthread_mutex_consistent(&t->life);
        pthread_mutex_unlock(&t->life);
        /* Release: whoever reads dead == 1 also sees that the mutex is
         * left unlocked and consistent. */
        atomic_store_explicit(&t->dead, 1, memory_order_release);
        return 1;
    }
    if (rc == 0) /* never: the owner does not unlock; undo and call it alive */
        pthread_mutex_unlock(&t->life);
    return 0;
}

/* Frees records whose thread is proven dead and that no slot refers to
 * (records_lock held). */
static void sweep(void)
{
    struct aiorcu_thread **link = &records;
    while (*link) {
        struct aiorcu_thread *t = *link;
        if (atomic_load_explicit(&t->refs, memory_order_acquire) == 0 && aiorcu__thread_dead(t)) {
            *link = t->next;
            pthread_mutex_destroy(&t->life);
            free(t);
        } else {
            link = &t->next;
        }
    }
}

struct aiorcu_thread *aiorcu__thread_self(void)
{
    if (self)
        return self;
    struct aiorcu_thread *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&t->life, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0 || pthread_mutex_lock(&t->life) != 0) {
        free(t);
        return NULL;
    }
    t->serial = atomic_fetch_add_explicit(&next_serial, 1, memory_order_relaxed) + 1;
    pthread_mutex_lock(&records_lock);
    sweep();
    t->next = records;
    records = t;
    pthread_mutex_unlock(&records_lock);
#ifdef AIORCU_TSAN
    pthread_once(&tsan_once, tsan_make_key);
    pthread_setspecific(tsan_key, t);
#endif
    self = t;
    return t;
}

struct aiorcu_thread *aiorcu__thread_peek(void)
{
    return self;
}

uint64_t aiorcu_thread_serial(void)
{
    struct aiorcu_thread *t = aiorcu__thread_self();
    return t ? t->serial : 0;
}

void aiorcu__thread_get(struct aiorcu_thread *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void aiorcu__thread_put(struct aiorcu_thread *t)
{
    /* Release: pairs with the acquire load in sweep(), which frees the
     * record only after every slot let go of it. */
    atomic_fetch_sub_explicit(&t->refs, 1, memory_order_release);
}

void aiorcu__threads_before_fork(void)
{
    pthread_mutex_lock(&records_lock);
}

void aiorcu__threads_after_fork(int child)
{
    if (child)
        pthread_mutex_init(&records_lock, NULL);
    else
        pthread_mutex_unlock(&records_lock);
}
