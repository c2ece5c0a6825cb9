/*
 * Bitmaps and guarded memory in a buffer the caller provides (an mmap'd
 * file, a device region, a shared-memory segment): a header, the bitmap's
 * words, and for guarded memory its pages.
 *
 *   header  magic, layout version, kind, pages, page size, offsets, total
 *           size, the domain's name ("" for a process-private Domain), the
 *           commit lock (robust, process-shared), the flush token and the
 *           "applying"/"unflushed" marks
 *   words   one bit per page, 64-byte aligned
 *   data    pages * page_size bytes (guarded memory only), 64-byte aligned
 *
 * Commits from any process that maps the buffer serialize on the commit
 * lock.  A committer that dies holding it leaves some words stored and no
 * word torn (each changed word is one 64-bit store); the next locker sees
 * the lock owner-dead, and the buffer is then treated as revoked but not
 * flushed: the next commit that needs a flush waits a fresh grace period.
 * Opening a buffer reads its sizes once and never trusts them again; every
 * offset is checked against the buffer's real length.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "aiorcu.h"

#define BUF_MAGIC   0x4d42554352494941ull /* "AIIRCUBM" */
#define BUF_VERSION 1u

struct buf_header {
    uint64_t magic;
    uint32_t version;
    uint32_t kind; /* AIORCU_BUF_BITMAP or AIORCU_BUF_MEMORY */
    uint64_t pages;
    uint64_t page_size; /* 0 for a bitmap */
    uint64_t words_off;
    uint64_t data_off; /* 0 for a bitmap */
    uint64_t total;
    char domain[AIORCU_NAME_MAX];
    pthread_mutex_t commit_lock;
    _Atomic uint64_t flush_token; /* a commit's grace period flushes every earlier revoke */
    _Atomic uint32_t applying;    /* 1 while a commit stores words */
    _Atomic uint32_t unflushed;   /* revoked, flush unknown: the next flush waits afresh */
    _Atomic uint32_t ready;
    uint32_t pad;
};

static size_t up(size_t n)
{
    return (n + AIORCU_CACHELINE - 1) & ~(size_t)(AIORCU_CACHELINE - 1);
}

/* The layout for pages/page_size; total 0 when the numbers are out of range. */
static void layout(uint64_t pages, uint64_t page_size, size_t *words_off, size_t *data_off,
                   size_t *total)
{
    *total = 0;
    if (pages < 1 || pages > (UINT64_C(1) << 48))
        return;
    size_t words = (size_t)((pages + 63) / 64) * 8;
    *words_off = up(sizeof(struct buf_header));
    *data_off = page_size ? up(*words_off + words) : 0;
    if (page_size) {
        if (page_size > (UINT64_C(1) << 40) || pages > (SIZE_MAX - *data_off) / page_size)
            return;
        *total = *data_off + (size_t)(pages * page_size);
    } else {
        *total = *words_off + words;
    }
}

size_t aiorcu_buffer_size(uint64_t pages, uint64_t page_size)
{
    size_t w, d, t;
    layout(pages, page_size, &w, &d, &t);
    return t;
}

int aiorcu_buffer_format(void *mem, size_t len, uint64_t pages, uint64_t page_size,
                         const char *domain)
{
    size_t words_off, data_off, total;
    layout(pages, page_size, &words_off, &data_off, &total);
    if (!mem || !total || len < total || ((uintptr_t)mem % AIORCU_CACHELINE) ||
        strlen(domain) >= AIORCU_NAME_MAX)
        return AIORCU_EINVAL;
    struct buf_header *h = mem;
    memset(h, 0, sizeof *h);
    memset((char *)mem + words_off, 0, (size_t)((pages + 63) / 64) * 8);
    h->magic = BUF_MAGIC;
    h->version = BUF_VERSION;
    h->kind = page_size ? AIORCU_BUF_MEMORY : AIORCU_BUF_BITMAP;
    h->pages = pages;
    h->page_size = page_size;
    h->words_off = words_off;
    h->data_off = data_off;
    h->total = total;
    memcpy(h->domain, domain, strlen(domain) + 1);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&h->commit_lock, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc)
        return AIORCU_ESYS;
    /* Release: an opener that reads ready (acquire) sees the header. */
    atomic_store_explicit(&h->ready, 1, memory_order_release);
    return AIORCU_OK;
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(why, whylen, __VA_ARGS__);                                                        \
        return AIORCU_ECORRUPT;                                                                    \
    } while (0)

int aiorcu_buffer_open(void *mem, size_t len, struct aiorcu_buffer_view *v, char *why,
                       size_t whylen)
{
    memset(v, 0, sizeof *v);
    if (!mem || len < sizeof(struct buf_header))
        FAIL("the buffer is %zu bytes, smaller than the header (%zu)", len,
             sizeof(struct buf_header));
    const struct buf_header *h = mem;
    if (h->magic != BUF_MAGIC)
        FAIL("not an aiorcu bitmap or guarded-memory buffer (magic %016llx)",
             (unsigned long long)h->magic);
    if (h->version != BUF_VERSION)
        FAIL("buffer layout version %u; this aiorcu reads version %u", h->version, BUF_VERSION);
    if (!atomic_load_explicit(&((struct buf_header *)mem)->ready, memory_order_acquire))
        FAIL("the buffer was never completely initialised");
    /* Read once; only the copies below are used from here on. */
    uint64_t pages = h->pages, page_size = h->page_size;
    uint32_t kind = h->kind;
    if (kind != AIORCU_BUF_BITMAP && kind != AIORCU_BUF_MEMORY)
        FAIL("corrupt buffer: unknown kind %u", kind);
    if ((kind == AIORCU_BUF_MEMORY) != (page_size != 0))
        FAIL("corrupt buffer: kind %u with page size %llu", kind, (unsigned long long)page_size);
    size_t words_off, data_off, total;
    layout(pages, page_size, &words_off, &data_off, &total);
    if (!total)
        FAIL("corrupt buffer: %llu pages of %llu bytes", (unsigned long long)pages,
             (unsigned long long)page_size);
    if (h->words_off != words_off || h->data_off != data_off || h->total != total)
        FAIL("corrupt buffer: its layout does not match %llu pages", (unsigned long long)pages);
    if (len < total)
        FAIL("the buffer is %zu bytes; its header needs %zu", len, total);
    if (!memchr(h->domain, 0, AIORCU_NAME_MAX))
        FAIL("corrupt buffer: the recorded domain name is not terminated");
    v->kind = (int)kind;
    v->pages = pages;
    v->page_size = page_size;
    v->words = (uint64_t *)((char *)mem + words_off);
    v->data = page_size ? (char *)mem + data_off : NULL;
    v->data_len = page_size ? (size_t)(pages * page_size) : 0;
    memcpy(v->domain, h->domain, AIORCU_NAME_MAX);
    v->header = (void *)h;
    return AIORCU_OK;
}

int aiorcu_buffer_lock(const struct aiorcu_buffer_view *v, int try_only)
{
    struct buf_header *h = v->header;
    int rc =
        try_only ? pthread_mutex_trylock(&h->commit_lock) : pthread_mutex_lock(&h->commit_lock);
    if (rc == 0)
        return AIORCU_OK;
    if (rc == EBUSY)
        return AIORCU_BUSY;
    if (rc == EOWNERDEAD) {
        /* A committer died holding the lock: some words may be stored and
         * not flushed.  No word is torn; what it revoked must be flushed
         * before anybody acts on it. */
        atomic_store(&h->unflushed, 1);
        atomic_store(&h->applying, 0);
        pthread_mutex_consistent(&h->commit_lock);
        return AIORCU_RECOVERED;
    }
    errno = rc;
    return AIORCU_ESYS;
}

void aiorcu_buffer_unlock(const struct aiorcu_buffer_view *v)
{
    pthread_mutex_unlock(&((struct buf_header *)v->header)->commit_lock);
}

int aiorcu_buffer_apply(const struct aiorcu_buffer_view *v, const struct aiorcu_bitmap_op *ops,
                        size_t n, uint64_t out[3])
{
    struct buf_header *h = v->header;
    atomic_store(&h->applying, 1);
    int rc = aiorcu_bitmap_apply(v->words, v->pages, ops, n, out);
    atomic_store(&h->applying, 0);
    return rc;
}

uint64_t aiorcu_buffer_flush_token(const struct aiorcu_buffer_view *v)
{
    return atomic_load(&((struct buf_header *)v->header)->flush_token);
}

void aiorcu_buffer_set_flush_token(const struct aiorcu_buffer_view *v, uint64_t token)
{
    atomic_store(&((struct buf_header *)v->header)->flush_token, token);
}

int aiorcu_buffer_take_unflushed(const struct aiorcu_buffer_view *v)
{
    return (int)atomic_exchange(&((struct buf_header *)v->header)->unflushed, 0);
}

void aiorcu_buffer_mark_unflushed(const struct aiorcu_buffer_view *v)
{
    atomic_store(&((struct buf_header *)v->header)->unflushed, 1);
}
