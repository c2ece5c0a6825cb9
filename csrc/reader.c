/* C readers, for the plain-C stress harness.  Same protocol as the Python
 * reader in aiorcu/_reader.py: the outermost section takes the phase. */
#include "internal.h"

int aiorcu_reader_init(struct aiorcu_reader *r, struct aiorcu_domain *d)
{
    r->d = d;
    r->slot = aiorcu_slot_alloc(d, 0);
    if (r->slot < 0)
        return -1;
    r->flags = aiorcu_slot_flags(d, r->slot);
    r->depth = 0;
    r->phase = 0;
    return 0;
}

void aiorcu_reader_fini(struct aiorcu_reader *r)
{
    aiorcu_slot_release(r->d, r->slot);
    r->slot = -1;
}

void aiorcu_read_lock(struct aiorcu_reader *r)
{
    if (r->depth++)
        return;
    _Atomic uint8_t *f = (_Atomic uint8_t *)r->flags;
    int p = atomic_load_explicit(&r->d->ctl.bytes[AIORCU_CTL_PHASE], memory_order_relaxed);
    if (aiorcu_debug_reader_delay)
        aiorcu_debug_reader_delay();
    r->phase = p;
    atomic_store_explicit(&f[AIORCU_FLAG_THREAD + p], 1, memory_order_relaxed);
    if (aiorcu_backend_mechanism() == AIORCU_MECH_FENCE)
        /* F1: pairs with the writer's M1 fence. */
        atomic_thread_fence(memory_order_seq_cst);
    else
        /* F1: compiler barrier only; the writer's M1 membarrier pairs here. */
        atomic_signal_fence(memory_order_seq_cst);
}

void aiorcu_read_unlock(struct aiorcu_reader *r)
{
    if (--r->depth)
        return;
    _Atomic uint8_t *f = (_Atomic uint8_t *)r->flags;
    int fence = aiorcu_backend_mechanism() == AIORCU_MECH_FENCE;
    /* F2: data loads before the clear; pairs with the writer's M3. */
    if (fence)
        atomic_thread_fence(memory_order_seq_cst);
    else
        atomic_signal_fence(memory_order_seq_cst);
    atomic_store_explicit(&f[AIORCU_FLAG_THREAD + r->phase], 0, memory_order_relaxed);
    /* F3: clear before the waiting check; pairs with the writer's wait
     * barrier (a membarrier IPI in membarrier mode). */
    if (fence)
        atomic_thread_fence(memory_order_seq_cst);
    else
        atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&r->d->ctl.bytes[AIORCU_CTL_WAITING + r->phase], memory_order_relaxed))
        aiorcu_wake(r->d);
}
