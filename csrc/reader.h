/*
 * The reader side of a grace period, step by step.  Shared by the C readers
 * (reader.c) and the Python extension (hotpath.c), so the protocol exists
 * once.  Each function is a few lines and inlines into its caller.
 *
 *   enter:  p = load(phase)              relaxed
 *           count[kind, p] += 1          relaxed fetch_add on the reader line
 *           F1                           full fence in fence mode, else a
 *                                        compiler barrier: M1 pairs with it
 *   leave:  F2                           full fence in fence mode, else a
 *                                        compiler barrier: M3 pairs with it
 *           old = count[kind, p]--       relaxed fetch_sub; any thread may
 *                                        do it (see aiorcu_section_release)
 *           if old == 1:                 the phase count went 1 -> 0
 *               F3                       full fence in fence mode, else a
 *                                        compiler barrier: M2 pairs with it
 *               load(waiting[p])         acquire: pairs with the writer's
 *                                        release store before M2
 *               -> wake the writer
 *
 * Nothing between the phase load and the increment may run other code that
 * enters or leaves sections on this thread (Python code, a finalizer, an
 * allocation): callers allocate first, then call these.  Even so, such code
 * would only add balanced increments and decrements, which are atomic.
 */
#ifndef AIORCU_READER_H
#define AIORCU_READER_H

#include "aiorcu.h"

/* The phase a section entering now counts in. */
static inline int aiorcu_read_phase(_Atomic uint8_t *ctl)
{
    /* Relaxed: a stale phase is the straggler case, which the writer's
     * two waits cover (the "why wait twice" argument). */
    return atomic_load_explicit(&ctl[AIORCU_CTL_PHASE], memory_order_relaxed) & 1;
}

/* Counts a section in (kind, phase); the section is protected from here. */
static inline void aiorcu_read_count(struct aiorcu_reader_line *line, int kind, int phase,
                                     int fence)
{
    atomic_fetch_add_explicit(&line->count[AIORCU_COUNT(kind, phase)], 1, memory_order_relaxed);
    if (fence)
        /* F1: the increment before the section's data loads; pairs with
         * the writer's M1 (a full fence in this mode). */
        atomic_thread_fence(memory_order_seq_cst);
    else
        /* F1: compiler barrier only; the writer's M1 membarrier pairs here. */
        atomic_signal_fence(memory_order_seq_cst);
}

/* Uncounts a section; returns 1 when the caller must wake the writer. */
static inline int aiorcu_read_uncount(_Atomic uint8_t *ctl, struct aiorcu_reader_line *line,
                                      int kind, int phase, int fence)
{
    if (fence)
        /* F2: the section's data loads before the decrement; pairs with
         * the writer's M3 (a full fence in this mode). */
        atomic_thread_fence(memory_order_seq_cst);
    else
        /* F2: compiler barrier only; the writer's M3 membarrier pairs here. */
        atomic_signal_fence(memory_order_seq_cst);
    uint64_t old =
        atomic_fetch_sub_explicit(&line->count[AIORCU_COUNT(kind, phase)], 1, memory_order_relaxed);
    if (old != 1)
        return 0;
    if (fence)
        /* F3: the decrement before the load of the waiting byte; pairs
         * with the writer's M2 (a full fence in this mode). */
        atomic_thread_fence(memory_order_seq_cst);
    else
        /* F3: compiler barrier only; the writer's M2 membarrier pairs here. */
        atomic_signal_fence(memory_order_seq_cst);
    /* Acquire: pairs with the writer's release store of the waiting byte,
     * so the wake-up sees the futex word the writer set before it. */
    return atomic_load_explicit(&ctl[AIORCU_CTL_WAITING + phase], memory_order_acquire) != 0;
}

#endif /* AIORCU_READER_H */
