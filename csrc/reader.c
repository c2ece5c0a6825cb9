/* C read sections, for C programs and the plain-C stress harness.  The
 * protocol steps are the inline functions of reader.h, which the Python
 * extension (hotpath.c) uses too. */
#define _GNU_SOURCE /* pthread_mutex_consistent, via internal.h */
#include "internal.h"
#include "reader.h"

void (*aiorcu_debug_reader_delay)(void);

int aiorcu_reader_init(struct aiorcu_reader *r, struct aiorcu_domain *d)
{
    r->d = d;
    r->slot = aiorcu_slot_alloc(d, 0);
    if (r->slot < 0)
        return -1;
    r->line = aiorcu_slot_line(d, r->slot);
    /* Relaxed: this thread stored it, claiming the slot, a moment ago. */
    r->token =
        atomic_load_explicit(&((struct aiorcu_reader_line *)r->line)->owner, memory_order_relaxed);
    r->fence = aiorcu_domain_mechanism(d) == AIORCU_MECH_FENCE;
    return 0;
}

void aiorcu_reader_fini(struct aiorcu_reader *r)
{
    /* This reader's own claim: never a later claim of the same slot. */
    aiorcu_slot_release(r->d, r->slot, r->token);
    r->slot = -1;
    r->line = NULL;
}

void aiorcu_section_enter(struct aiorcu_reader *r, struct aiorcu_section *s, int kind)
{
    struct aiorcu_reader_line *line = r->line;
    int p = aiorcu_read_phase(r->d->st->ctl.bytes);
    if (aiorcu_debug_reader_delay)
        aiorcu_debug_reader_delay();
    aiorcu_read_count(line, kind, p, r->fence);
    s->line = line;
    /* Relaxed: gen changes only under the registry lock when the slot is
     * released, which cannot happen while its owner (this thread) runs. */
    s->gen = atomic_load_explicit(&line->gen[kind], memory_order_relaxed);
    s->thread = aiorcu_thread_serial();
    s->kind = kind;
    s->phase = p;
    atomic_store_explicit((_Atomic int *)&s->state, AIORCU_SECTION_OPEN, memory_order_relaxed);
}

int aiorcu_section_leave(struct aiorcu_reader *r, struct aiorcu_section *s)
{
    int open = AIORCU_SECTION_OPEN;
    /* Exactly once, whoever leaves: the compare-and-swap picks one. */
    if (!atomic_compare_exchange_strong_explicit((_Atomic int *)&s->state, &open,
                                                 AIORCU_SECTION_CLOSED, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return -1;
    struct aiorcu_reader_line *line = s->line;
    if (s->thread != aiorcu_thread_serial()) {
        aiorcu_section_release(r->d, line, s->kind, s->phase, s->gen);
        return 0;
    }
    if (atomic_load_explicit(&line->gen[s->kind], memory_order_relaxed) != s->gen)
        return 0; /* the slot was released (fork): its counts are gone */
    if (aiorcu_read_uncount(r->d->st->ctl.bytes, line, s->kind, s->phase, r->fence))
        aiorcu_wake(r->d);
    return 0;
}
