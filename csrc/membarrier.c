/* The barrier backend: membarrier(2) PRIVATE_EXPEDITED, or plain fences. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static int mechanism = AIORCU_MECH_FENCE;
static char reason[160] = "backend not initialised";
static _Atomic int fail_count; /* fault injection: calls left to fail */
static _Atomic int fail_errno;

static int sys_membarrier(int cmd, unsigned int flags)
{
    return (int)syscall(__NR_membarrier, cmd, flags, 0);
}

int aiorcu_backend_init(int force_fence)
{
    if (force_fence) {
        mechanism = AIORCU_MECH_FENCE;
        snprintf(reason, sizeof reason, "AIORCU_MEMBARRIER=off in the environment");
        return mechanism;
    }
    int cmds = sys_membarrier(MEMBARRIER_CMD_QUERY, 0);
    if (cmds < 0) {
        mechanism = AIORCU_MECH_FENCE;
        snprintf(reason, sizeof reason, "membarrier QUERY failed: %s", strerror(errno));
        return mechanism;
    }
    if (!(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) {
        mechanism = AIORCU_MECH_FENCE;
        snprintf(reason, sizeof reason,
                 "kernel lacks MEMBARRIER_CMD_PRIVATE_EXPEDITED (QUERY mask 0x%x)", cmds);
        return mechanism;
    }
    if (sys_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0) < 0) {
        mechanism = AIORCU_MECH_FENCE;
        snprintf(reason, sizeof reason, "REGISTER_PRIVATE_EXPEDITED failed: %s", strerror(errno));
        return mechanism;
    }
    mechanism = AIORCU_MECH_MEMBARRIER;
    reason[0] = '\0';
    return mechanism;
}

int aiorcu_backend_mechanism(void)
{
    return mechanism;
}

const char *aiorcu_backend_reason(void)
{
    return reason[0] ? reason : NULL;
}

void aiorcu_fence(void)
{
    atomic_thread_fence(memory_order_seq_cst);
}

void aiorcu_debug_fail_membarrier(int count, int err)
{
    atomic_store(&fail_errno, err);
    atomic_store(&fail_count, count);
}

/* One membarrier attempt; fault injection makes the next `fail_count`
 * attempts fail with `fail_errno` instead of entering the kernel. */
static int attempt(int cmd)
{
    int left = atomic_load(&fail_count);
    while (left > 0) {
        if (atomic_compare_exchange_weak(&fail_count, &left, left - 1)) {
            errno = atomic_load(&fail_errno);
            return -1;
        }
    }
    return sys_membarrier(cmd, 0);
}

/* 1 when the kernel offers MEMBARRIER_CMD_GLOBAL_EXPEDITED (shared domains). */
int aiorcu_backend_global_available(void)
{
    int cmds = sys_membarrier(MEMBARRIER_CMD_QUERY, 0);
    return cmds >= 0 && (cmds & MEMBARRIER_CMD_GLOBAL_EXPEDITED) &&
           (cmds & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED);
}

/* Registers this process for GLOBAL_EXPEDITED: its threads then take the
 * barrier IPI of any process's writer.  Per process (per address space):
 * a fork child registers again.  0, or -1 with errno (fault injection
 * reaches it too, so a refused registration can be tested). */
int aiorcu_backend_register_global(void)
{
    return attempt(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0 ? 0 : -1;
}

int aiorcu__heavy_barrier(struct aiorcu_domain *d)
{
    if (d->mechanism == AIORCU_MECH_FENCE) {
        /* Readers run full fences F1/F2/F3 themselves; a fence here pairs
         * with them as in classic RCU. */
        atomic_thread_fence(memory_order_seq_cst);
        return 0;
    }
    atomic_fetch_add_explicit(&d->st->membarrier_calls, 1, memory_order_relaxed);
    if (d->mechanism == AIORCU_MECH_MEMBARRIER_GLOBAL) {
        /* Every CPU running a thread of a registered process (every
         * attached process registered before its first section). */
        if (attempt(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0)
            return 0;
    } else {
        if (attempt(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0)
            return 0;
        /* Registration lost (possible after fork on some kernels): register
         * again and retry rather than skip the barrier. */
        if (errno == EPERM && sys_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0) == 0 &&
            attempt(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0)
            return 0;
    }
    /* Slower but still correct: GLOBAL returns once every running thread of
     * the system has passed a full barrier (a scheduler quiescent state). */
    atomic_fetch_add_explicit(&d->st->barrier_fallbacks, 1, memory_order_relaxed);
    if (attempt(MEMBARRIER_CMD_GLOBAL) == 0)
        return 0;
    return -1;
}
