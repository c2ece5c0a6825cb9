/* Page-visibility bitmaps: one bit per page, 64 pages per word.
 *
 * The words live in memory that Python readers load with plain 8-byte loads
 * through a memoryview, inside read sections.  The writer (one at a time;
 * the Python Bitmap serializes commits) computes the final value of every
 * word a transaction touches before it stores any, and stores each changed
 * word exactly once, with a single 64-bit store.  So a reader sees each page
 * either as it was before the whole commit or as it is after it, never an
 * intermediate value; that is what makes the net counts of a commit report
 * (bits that differ between before and after) meaningful.
 *
 * No fence here: the commit's stores are ordered before the readers that
 * must not see them by the grace period that follows a restriction (its
 * first heavy barrier, M1 in grace.c, pairs with the reader's flag store),
 * and readers that see a grant early only see a page they are allowed to.
 */
#include <errno.h>
#include <stdlib.h>

#include "aiorcu.h"

#define WORD_BITS 64

/* Bits [lo, hi) of a word, 0 <= lo < hi <= 64. */
static inline uint64_t bits_mask(unsigned lo, unsigned hi)
{
    uint64_t upper = hi == WORD_BITS ? ~UINT64_C(0) : (UINT64_C(1) << hi) - 1;
    return upper & ~((UINT64_C(1) << lo) - 1);
}

static inline uint64_t load_word(const uint64_t *w)
{
    /* Relaxed: a plain single-copy-atomic load; ordering comes from the
     * read section (see the file comment). */
    return __atomic_load_n(w, __ATOMIC_RELAXED);
}

int64_t aiorcu_bitmap_first_clear(const uint64_t *words, uint64_t start, uint64_t count)
{
    uint64_t end = start + count;
    uint64_t pos = start;
    while (pos < end) {
        uint64_t w = pos / WORD_BITS;
        unsigned lo = (unsigned)(pos % WORD_BITS);
        unsigned hi =
            end - w * WORD_BITS >= WORD_BITS ? WORD_BITS : (unsigned)(end - w * WORD_BITS);
        uint64_t clear = ~load_word(&words[w]) & bits_mask(lo, hi);
        if (clear)
            return (int64_t)(w * WORD_BITS + (unsigned)__builtin_ctzll(clear));
        pos = w * WORD_BITS + hi;
    }
    return -1;
}

/* --- commits ------------------------------------------------------------ */

/* An op endpoint: at `pos`, op `index` starts (open=1) or ends (open=0). */
struct endpoint {
    uint64_t pos;
    uint32_t index;
    uint32_t open;
};

static int endpoint_cmp(const void *a, const void *b)
{
    const struct endpoint *x = a, *y = b;
    if (x->pos != y->pos)
        return x->pos < y->pos ? -1 : 1;
    return (int)x->open - (int)y->open; /* ends before starts: no empty segments */
}

/* A max-heap of op indices: the last op (in transaction order) that covers a
 * page decides its final value, since every op sets its pages to one value. */
struct heap {
    uint32_t *v;
    size_t n, cap; /* each op is pushed once (at its start), so n <= cap */
};

static void heap_push(struct heap *h, uint32_t x)
{
    if (h->n >= h->cap)
        return; /* never: every op opens once */
    size_t i = h->n++;
    while (i > 0 && h->v[(i - 1) / 2] < x) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = x;
}

static void heap_pop(struct heap *h)
{
    uint32_t x = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && h->v[c + 1] > h->v[c])
            c++;
        if (h->v[c] <= x)
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = x;
}

/* The word being assembled: masks of bits to set and to clear. */
struct pending {
    uint64_t word; /* UINT64_MAX: none */
    uint64_t set, clear;
};

static void store_word(uint64_t *words, uint64_t w, uint64_t value, uint64_t out[2])
{
    uint64_t old = load_word(&words[w]);
    if (value == old)
        return;
    out[0] += (uint64_t)__builtin_popcountll(value & ~old); /* granted */
    out[1] += (uint64_t)__builtin_popcountll(old & ~value); /* revoked */
    /* One 64-bit store per changed word; readers load it whole. */
    __atomic_store_n(&words[w], value, __ATOMIC_RELAXED);
}

static void flush(uint64_t *words, struct pending *p, uint64_t out[2])
{
    if (p->word == UINT64_MAX)
        return;
    uint64_t old = load_word(&words[p->word]);
    store_word(words, p->word, (old & ~p->clear) | p->set, out);
    p->word = UINT64_MAX;
}

/* Sets bits [a, b) to `value` (final values: each bit is touched once). */
static void apply_segment(uint64_t *words, uint64_t a, uint64_t b, int value, struct pending *p,
                          uint64_t out[2])
{
    while (a < b) {
        uint64_t w = a / WORD_BITS;
        unsigned lo = (unsigned)(a % WORD_BITS);
        if (lo == 0 && b - a >= WORD_BITS) {
            uint64_t full = (b - a) / WORD_BITS;
            flush(words, p, out);
            for (uint64_t k = w; k < w + full; k++)
                store_word(words, k, value ? ~UINT64_C(0) : 0, out);
            a += full * WORD_BITS;
            continue;
        }
        unsigned hi = b - w * WORD_BITS >= WORD_BITS ? WORD_BITS : (unsigned)(b - w * WORD_BITS);
        if (p->word != w) {
            flush(words, p, out);
            p->word = w;
            p->set = p->clear = 0;
        }
        if (value)
            p->set |= bits_mask(lo, hi);
        else
            p->clear |= bits_mask(lo, hi);
        a = w * WORD_BITS + hi;
    }
}

int aiorcu_bitmap_apply(uint64_t *words, uint64_t pages, const struct aiorcu_bitmap_op *ops,
                        size_t n, uint64_t out[3])
{
    out[0] = out[1] = out[2] = 0;
    if (n == 0)
        return AIORCU_OK;
    if (n > UINT32_MAX)
        return AIORCU_EINVAL;
    for (size_t i = 0; i < n; i++) {
        /* The Python side validated already; a second check costs nothing
         * next to the stores and keeps this function safe on its own. */
        if (ops[i].count == 0 || ops[i].start >= pages || ops[i].count > pages - ops[i].start)
            return AIORCU_EINVAL;
    }
    struct endpoint *ev = malloc(2 * n * sizeof *ev);
    struct heap h = {malloc(n * sizeof *h.v), 0, n};
    uint8_t *open = calloc(n, 1);
    if (!ev || !h.v || !open) {
        free(ev);
        free(h.v);
        free(open);
        return AIORCU_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        ev[2 * i] = (struct endpoint){ops[i].start, (uint32_t)i, 1};
        ev[2 * i + 1] = (struct endpoint){ops[i].start + ops[i].count, (uint32_t)i, 0};
    }
    qsort(ev, 2 * n, sizeof *ev, endpoint_cmp);

    /* Sweep: between consecutive endpoints, the highest open op index
     * decides the value of every page; ops that ended leave the heap lazily. */
    struct pending p = {UINT64_MAX, 0, 0};
    for (size_t e = 0; e < 2 * n;) {
        uint64_t pos = ev[e].pos;
        for (; e < 2 * n && ev[e].pos == pos; e++) {
            open[ev[e].index] = (uint8_t)ev[e].open;
            if (ev[e].open)
                heap_push(&h, ev[e].index);
        }
        while (h.n && !open[h.v[0]])
            heap_pop(&h);
        if (h.n && e < 2 * n) {
            int grant = ops[h.v[0]].grant != 0;
            if (!grant)
                out[2] += ev[e].pos - pos; /* pages this commit leaves revoked */
            apply_segment(words, pos, ev[e].pos, grant, &p, out);
        }
    }
    flush(words, &p, out);
    free(ev);
    free(h.v);
    free(open);
    return AIORCU_OK;
}
