/*
 * Promela model of aiorcu's grace period (csrc/grace.c, run_grace_period)
 * against one reader thread (aiorcu/_reader.py, ReadSection) that runs two
 * read sections which may nest or overlap, in the same phase or in different
 * ones.  See README.md beside this file for the mapping to the code, the
 * variants and what is abstracted away.
 *
 * Memory model.  Each thread's stores go through its own store buffer; a
 * buffered store reaches memory at any later time, and stores to different
 * addresses may reach it out of order (stores to one address keep their
 * order).  A load first looks in its own thread's buffer (store forwarding).
 * On top of that, the reader's two data loads of each section may be
 * performed at any time between the membarrier IPIs (or reader fences) that
 * surround their place in program order: early (before the flag store is
 * visible, before the phase load, before the other section's loads) or late
 * (after the section's flag clear is visible).  A membarrier is one atomic
 * step: it drains both store buffers, performs every reader load whose place
 * in program order is already passed, and discards every early value of a
 * load whose place is not yet reached.
 *
 * Safety, checked two ways:
 *  - at the writer's `completed` store of grace period k, no section that
 *    loaded a version published before k started (version < k) still has a
 *    data load to perform ("a section that began before the grace period is
 *    still inside when it ends");
 *  - a data load never reads a freed version (use after free).
 *
 * Variants (-D): BUSTED, BUSTED_CLOSED, NO_M1, NO_M3, NO_FLIP_FENCES,
 * TIMEOUT, UNFLIP_ON_TIMEOUT, FENCE_MODE, NO_F1, NO_F2, TSO, NGP=n, and the
 * reachability probes PROBE_OVERLAP, PROBE_STRAGGLER, PROBE_LATE,
 * PROBE_LEFTOVER.  check.sh runs them and says what each must give.
 */

#ifndef NGP
#define NGP 2                   /* grace periods the writer runs */
#endif

#define SB 4                    /* store-buffer entries per thread */
#define RD 0                    /* thread ids: the reader thread */
#define WR 1                    /* the writer (synchronize's caller) */

/* Addresses.  The flag bytes keep the slot layout of csrc/aiorcu.h:
 * flag[AIORCU_FLAG_THREAD + p] and flag[AIORCU_FLAG_TASK + p]. */
#define A_PHASE 0               /* ctl.bytes[AIORCU_CTL_PHASE] */
#define A_FLAG 1                /* + AIORCU_FLAG_THREAD/TASK + phase */
#define FLAG_THREAD 0
#define FLAG_TASK 2
#define A_GPTR 5                /* the protected pointer: a version number */
#define A_FREED 6               /* + version: 1 once the writer freed it */
#define NADDR (A_FREED + NGP + 1)

byte mem[NADDR];

byte sb_addr[2 * SB];
byte sb_val[2 * SB];
byte sb_len[2];

/* Reader program counter of each section, in program order. */
#define PC_IDLE 0               /* not entered yet */
#define PC_LOADED 1             /* phase loaded (or joined), flag not stored */
#define PC_IN 2                 /* entered: count bumped, flag stored if 0->1 */
#define PC_L1 3                 /* past the place of L1: v = gptr */
#define PC_L2 4                 /* past the place of L2: the last use of *v */
#define PC_OUT 5                /* left: count dropped, flag cleared if 1->0 */

#define KIND_THREAD 0           /* `with`: ReadSection.__enter__/__exit__ */
#define KIND_TASK 1             /* `async with`: __aenter__/__aexit__ */

byte pc[2];
byte kind[2];
byte ph[2];                     /* the phase the section counts in */
byte cnt[4];                    /* Python-side counts per flag index: depth, tasks[p] */
byte tphase;                    /* ReadSection.phase: phase of the `with` sections */
byte l1[2];                     /* 0: L1 not performed; else version + 1 */
bit l2[2];                      /* L2 performed */
bit in_enter;                   /* a section is between its phase load and flag store */

/* Ghost state of the writer. */
byte gp_started;                /* `started` */
byte gp_completed;              /* `completed` */
bit freed_done[NGP + 1];        /* versions the writer has already freed */

byte sc_i;                      /* scratch for loops inside d_step */
byte sc_j;

/* ---- store buffers ------------------------------------------------------ */

/* Callers wrap these in d_step or atomic. */
inline sb_store(st_t, st_a, st_v)
{
    assert(sb_len[st_t] < SB);          /* the buffer bound loses no behaviour */
    sb_addr[st_t * SB + sb_len[st_t]] = st_a;
    sb_val[st_t * SB + sb_len[st_t]] = st_v;
    sb_len[st_t]++
}

/* Load with store forwarding: the newest buffered store to `a` wins. */
inline sb_load(ld_t, ld_a, ld_dst)
{
    ld_dst = mem[ld_a];
    for (sc_i : 0 .. SB - 1) {
        if
        :: sc_i < sb_len[ld_t] && sb_addr[ld_t * SB + sc_i] == ld_a ->
            ld_dst = sb_val[ld_t * SB + sc_i]
        :: else -> skip
        fi
    }
    sc_i = 0
}

/* Entry i may reach memory if no older entry of the same thread has the
 * same address (per-address order; TSO: only the oldest entry). */
#ifdef TSO
#define CAN_DRAIN(t, i) (i == 0 && sb_len[t] > 0)
#else
#define CAN_DRAIN(t, i) (i < sb_len[t] && \
    (i < 1 || sb_addr[t * SB + 0] != sb_addr[t * SB + i]) && \
    (i < 2 || sb_addr[t * SB + 1] != sb_addr[t * SB + i]) && \
    (i < 3 || sb_addr[t * SB + 2] != sb_addr[t * SB + i]))
#endif

/* Callers wrap this in atomic. */
inline sb_drain_one(t, i)
{
    printf("MSC: thread %d (0 reader, 1 writer): store mem[%d] = %d reaches memory\n", t,
           sb_addr[t * SB + i], sb_val[t * SB + i]);
    mem[sb_addr[t * SB + i]] = sb_val[t * SB + i];
    for (sc_j : i .. SB - 2) {
        sb_addr[t * SB + sc_j] = sb_addr[t * SB + sc_j + 1];
        sb_val[t * SB + sc_j] = sb_val[t * SB + sc_j + 1]
    }
    sc_j = 0;
    sb_len[t]--;
    sb_addr[t * SB + SB - 1] = 0;
    sb_val[t * SB + SB - 1] = 0
}

/* A full fence of thread t: every buffered store reaches memory, oldest
 * first (so the newest store to an address is the one left). */
inline sb_flush(t)
{
    for (sc_i : 0 .. SB - 1) {
        if
        :: sc_i < sb_len[t] -> mem[sb_addr[t * SB + sc_i]] = sb_val[t * SB + sc_i]
        :: else -> skip
        fi;
        sb_addr[t * SB + sc_i] = 0;
        sb_val[t * SB + sc_i] = 0
    }
    sc_i = 0;
    sb_len[t] = 0
}

/* ---- reader loads ------------------------------------------------------- */

/* L2 dereferences the version L1 loaded: it must not be freed. */
inline perform_l2(s)
{
#ifdef PROBE_LATE
    /* reachable: L2 performed after its section's flag clear is visible */
    assert(!(pc[s] == PC_OUT && mem[A_FLAG + (kind[s] == KIND_THREAD -> FLAG_THREAD : FLAG_TASK) + ph[s]] == 0));
#endif
    printf("MSC: reader performs L2 of section %d (version %d)\n", s, l1[s] - 1);
    assert(mem[A_FREED + l1[s] - 1] == 0);      /* use after free */
    l2[s] = 1
}

/* The reader's side of a full barrier (its fence, or the membarrier IPI):
 * loads placed before it are performed now, early values of loads placed
 * after it are dropped. */
inline reader_barrier()
{
    sb_flush(RD);
    for (sc_j : 0 .. 1) {
        if
        :: pc[sc_j] < PC_L1 -> l1[sc_j] = 0; l2[sc_j] = 0   /* early values dropped */
        :: else ->
            if
            :: l1[sc_j] == 0 ->
                l1[sc_j] = mem[A_GPTR] + 1;
                printf("MSC: barrier performs L1 of section %d: version %d\n", sc_j, l1[sc_j] - 1)
            :: else -> skip
            fi;
            if
            :: pc[sc_j] < PC_L2 -> l2[sc_j] = 0
            :: pc[sc_j] >= PC_L2 && !l2[sc_j] ->
                printf("MSC: barrier performs L2 of section %d\n", sc_j);
                assert(mem[A_FREED + l1[sc_j] - 1] == 0);   /* use after free */
                l2[sc_j] = 1
            :: else -> skip
            fi
        fi
    }
    sc_j = 0
}

/* ---- writer barriers ------------------------------------------------------ */

/* smp_mb on the writer: atomic_thread_fence(seq_cst). */
inline writer_fence()
{
    d_step { printf("MSC: gp %d: writer fence\n", k); sb_flush(WR) }
}

/* aiorcu__heavy_barrier: membarrier(PRIVATE_EXPEDITED), a full barrier on
 * the writer and on every running reader thread; a plain fence in fence
 * mode, where the readers' own F1/F2 fences pair with it. */
inline heavy_barrier(n)
{
#ifdef FENCE_MODE
    d_step { printf("MSC: gp %d: M%d (a fence)\n", k, n); sb_flush(WR) }
#else
    d_step { printf("MSC: gp %d: M%d (membarrier)\n", k, n); sb_flush(WR); reader_barrier() }
#endif
}

/* ---- reader -------------------------------------------------------------- */

/* First half of an enter: ReadSection.__enter__ loads ctl[0] unless depth>0
 * (then it joins self.phase); __aenter__ loads ctl[0] unless it is nested
 * in an open task section of the same context (then it joins its phase). */
inline enter_load(s)
{
    if
    :: kind[s] = KIND_THREAD
    :: kind[s] = KIND_TASK
    fi;
    if
    :: kind[s] == KIND_THREAD && cnt[FLAG_THREAD + tphase] > 0 ->
        ph[s] = tphase                          /* depth > 0: join */
    :: kind[s] == KIND_THREAD && cnt[FLAG_THREAD + tphase] == 0 ->
        sb_load(RD, A_PHASE, ph[s])             /* p = self.ctl[0] */
    :: kind[s] == KIND_TASK && kind[1 - s] == KIND_TASK &&
       pc[1 - s] >= PC_IN && pc[1 - s] < PC_OUT ->
        ph[s] = ph[1 - s]                       /* nested in the other's context */
    :: kind[s] == KIND_TASK ->
        sb_load(RD, A_PHASE, ph[s])             /* p = self.ctl[0] */
    fi;
    printf("MSC: section %d (kind %d: 0 with, 1 async with) enters in phase %d\n", s,
           kind[s], ph[s]);
    pc[s] = PC_LOADED;
    in_enter = 1
}

/* Second half: count += 1, and on 0 -> 1 the flag store (plus F1 in fence
 * mode: after the flag store of a `with` entry, after every `async with`
 * entry). */
inline enter_store(s)
{
    f = (kind[s] == KIND_THREAD -> FLAG_THREAD + ph[s] : FLAG_TASK + ph[s]);
    if
    :: kind[s] == KIND_THREAD -> tphase = ph[s]  /* self.phase = p (same when joining) */
    :: else -> skip
    fi;
    cnt[f]++;
    if
    :: cnt[f] == 1 ->
        printf("MSC: section %d stores flag %d = 1 (buffered)\n", s, f);
        sb_store(RD, A_FLAG + f, 1)             /* self.flags[...] = 1 */
    :: else -> skip
    fi;
#if defined(FENCE_MODE) && !defined(NO_F1)
    if
    :: kind[s] == KIND_TASK || cnt[f] == 1 -> reader_barrier()   /* F1 */
    :: else -> skip
    fi;
#endif
    pc[s] = PC_IN;
    in_enter = 0;
    f = 0
}

/* Leave: count -= 1, and on 1 -> 0 the flag clear (F2 before it in fence
 * mode, inside aiorcu_fence_flag_clear; F3 and the waiting check after it
 * are not modelled, see README). */
inline leave(s)
{
    f = (kind[s] == KIND_THREAD -> FLAG_THREAD + ph[s] : FLAG_TASK + ph[s]);
    cnt[f]--;
    if
    :: cnt[f] == 0 ->
#if defined(FENCE_MODE) && !defined(NO_F2)
        reader_barrier();                       /* F2 */
#endif
        printf("MSC: section %d stores flag %d = 0 (buffered)\n", s, f);
        sb_store(RD, A_FLAG + f, 0)             /* self.flags[...] = 0 */
    :: else -> skip
    fi;
    printf("MSC: section %d leaves\n", s);
    pc[s] = PC_OUT;
    f = 0
}

/* Passing the place of L1 (v = gptr) and of L2 (the last use of *v) in
 * program order.  Under TSO the loads are performed right there; otherwise
 * the CPU performs them on its own schedule (below). */
inline pass_l1(s)
{
#ifdef TSO
    l1[s] = mem[A_GPTR] + 1;
#endif
    printf("MSC: section %d passes L1 in program order\n", s);
    pc[s] = PC_L1
}

inline pass_l2(s)
{
#ifdef TSO
    perform_l2(s);
#endif
    printf("MSC: section %d passes L2 in program order\n", s);
    pc[s] = PC_L2
}

/* An early value is committed once no barrier of the reader's own program
 * can come between it and the load's place: always in membarrier mode (the
 * reader has no fences), from PC_IN on in fence mode (F1 is in the enter).
 * The safety checks look at committed values only; an uncommitted L1 value
 * that survives reaches the use-after-free check through L2, and L2 waits
 * for its section to be committed (performing it later only makes a
 * violation easier to reach). */
#ifdef FENCE_MODE
#define COMMITTED(s) (pc[s] >= PC_IN)
#else
#define COMMITTED(s) 1
#endif

#define probe_straggler_free(p) \
    (mem[A_FLAG + FLAG_THREAD + (p)] == 0 && mem[A_FLAG + FLAG_TASK + (p)] == 0)

active proctype reader()
{
    byte s;
    byte f;
    do
    /* Program steps.  An enter runs to its flag store before anything else
     * of this thread (enter and exit are synchronous calls); other threads
     * and the memory system may act in between. */
    :: atomic { !in_enter && pc[0] == PC_IDLE -> s = 0; enter_load(s); s = 0 }
    :: atomic { !in_enter && pc[1] == PC_IDLE -> s = 1; enter_load(s); s = 0 }
    :: d_step { pc[0] == PC_LOADED -> s = 0; enter_store(s); s = 0 }
    :: d_step { pc[1] == PC_LOADED -> s = 1; enter_store(s); s = 0 }
    :: d_step { !in_enter && pc[0] == PC_IN -> pass_l1(0) }
    :: d_step { !in_enter && pc[1] == PC_IN -> pass_l1(1) }
    :: d_step { !in_enter && pc[0] == PC_L1 -> pass_l2(0) }
    :: d_step { !in_enter && pc[1] == PC_L1 -> pass_l2(1) }
    :: d_step { !in_enter && pc[0] == PC_L2 -> s = 0; leave(s); s = 0 }
    :: d_step { !in_enter && pc[1] == PC_L2 -> s = 1; leave(s); s = 0 }
#ifndef TSO
    /* The CPU performing the data loads out of program order: L1 at any
     * time (a value taken before a barrier that precedes L1's place is
     * dropped by that barrier), L2 any time after L1 (address dependency),
     * both possibly after the section's flag clear. */
    :: d_step { l1[0] == 0 -> l1[0] = mem[A_GPTR] + 1;
                printf("MSC: reader performs L1 of section 0: version %d\n", l1[0] - 1) }
    :: d_step { l1[1] == 0 -> l1[1] = mem[A_GPTR] + 1;
                printf("MSC: reader performs L1 of section 1: version %d\n", l1[1] - 1) }
    :: d_step { l1[0] != 0 && !l2[0] && COMMITTED(0) -> perform_l2(0) }
    :: d_step { l1[1] != 0 && !l2[1] && COMMITTED(1) -> perform_l2(1) }
#endif
#ifdef PROBE_OVERLAP
    /* reachable: two sections open at once, in different phases */
    :: atomic { pc[0] >= PC_IN && pc[0] < PC_OUT && pc[1] >= PC_IN && pc[1] < PC_OUT ->
        assert(ph[0] == ph[1]) }
#endif
    :: pc[0] == PC_OUT && pc[1] == PC_OUT && l2[0] && l2[1] -> break
    od
}

/* ---- writer ---------------------------------------------------------------- */

/* wait_phase(d, p, ...): returns once a scan_clear pass saw flag[THREAD + p]
 * and flag[TASK + p] both 0.  Modelled as "one load saw THREAD+p == 0, a
 * later load saw TASK+p == 0", which allows every execution of the C loop
 * and a few more (see README).  With TIMEOUT every grace period but the
 * last may give up at any point of a wait (AIORCU_TIMEDOUT). */
inline wait_phase(p)
{
    if
    :: mem[A_FLAG + FLAG_THREAD + (p)] == 0
#ifdef TIMEOUT
    :: k < NGP -> timed_out = 1
#endif
    fi;
    if
    :: timed_out -> skip
    :: atomic { !timed_out && mem[A_FLAG + FLAG_TASK + (p)] == 0 ->
        printf("MSC: gp %d saw phase %d empty\n", k, p) }
#ifdef TIMEOUT
    :: !timed_out && k < NGP -> timed_out = 1
#endif
    fi;
    if
    :: timed_out -> printf("MSC: gp %d times out waiting for phase %d\n", k, p)
    :: else -> skip
    fi
}

active proctype writer()
{
    byte k = 1;
    byte cur;
    byte v;
    bit timed_out;
    do
    :: k > NGP -> break
    :: k <= NGP ->
        /* The caller's update, published before aiorcu_synchronize(). */
        d_step {
            printf("MSC: writer publishes version %d (buffered)\n", k);
            sb_store(WR, A_GPTR, k)
        };
        /* run_grace_period: started += 1 (relaxed; a ghost here). */
        gp_started = k;
#ifndef NO_M1
        heavy_barrier(1);                       /* M1: pairs with F1 */
#endif
        d_step { sb_load(WR, A_PHASE, cur) };   /* cur = ctl[PHASE] */
#ifdef PROBE_STRAGGLER
        /* reachable: the straggler wait has a reader to wait for */
        assert(probe_straggler_free(1 - cur));
#endif
#ifdef PROBE_LEFTOVER
        /* reachable: an abandoned grace period left a reader of a version
         * older than the previous grace period inside */
        assert(!(l1[0] != 0 && l1[0] < k && !l2[0] && pc[0] >= PC_IN));
#endif
        timed_out = 0;
#ifndef BUSTED
        wait_phase(1 - cur);                    /* stragglers */
#endif
        if
        :: timed_out -> goto abandoned          /* nothing flipped */
        :: else -> skip
        fi;
#ifndef NO_FLIP_FENCES
        writer_fence();                         /* smp_mb before the flip */
#endif
        d_step {
            printf("MSC: gp %d flips the phase to %d (buffered)\n", k, 1 - cur);
            sb_store(WR, A_PHASE, 1 - cur)      /* the flip */
        };
#ifndef NO_FLIP_FENCES
        writer_fence();                         /* smp_mb after the flip */
#endif
#ifndef BUSTED_CLOSED
        wait_phase(cur);                        /* the phase just closed */
#endif
        if
        :: timed_out ->
#ifdef UNFLIP_ON_TIMEOUT
            d_step { sb_store(WR, A_PHASE, cur) };   /* a variant: undo the flip */
#endif
            goto abandoned                      /* grace.c: the flip stays */
        :: else -> skip
        fi;
#ifdef TIMEOUT
        if
        :: k < NGP -> printf("MSC: gp %d: M3 fails (AIORCU_EBARRIER)\n", k); goto abandoned
        :: true
        fi;
#endif
#ifndef NO_M3
        heavy_barrier(3);                       /* M3: pairs with F2 */
#endif
        /* completed = started (release): every section that read a version
         * older than k has performed its last use of it. */
        d_step {
            printf("MSC: gp %d completes\n", k);
            gp_completed = k;
            assert(!(COMMITTED(0) && l1[0] != 0 && l1[0] - 1 < k && !l2[0]));  /* section 0 inside */
            assert(!(COMMITTED(1) && l1[1] != 0 && l1[1] - 1 < k && !l2[1]))   /* section 1 inside */
        }
        /* The caller frees what the grace period covered: every version
         * older than k (more than one after a timed-out grace period). */
        for (v : 0 .. k - 1) {
            if
            :: !freed_done[v] ->
                d_step {
                    printf("MSC: writer frees version %d (buffered)\n", v);
                    freed_done[v] = 1;
                    sb_store(WR, A_FREED + v, 1)
                }
            :: else -> skip
            fi
        }
        v = 0;
abandoned:
        k++
    od
}

/* Store buffers drain on their own, at any time. */
active proctype memory()
{
end:
    do
    :: atomic { CAN_DRAIN(RD, 0) -> sb_drain_one(RD, 0) }
    :: atomic { CAN_DRAIN(WR, 0) -> sb_drain_one(WR, 0) }
#ifndef TSO
    :: atomic { CAN_DRAIN(RD, 1) -> sb_drain_one(RD, 1) }
    :: atomic { CAN_DRAIN(RD, 2) -> sb_drain_one(RD, 2) }
    :: atomic { CAN_DRAIN(RD, 3) -> sb_drain_one(RD, 3) }
    :: atomic { CAN_DRAIN(WR, 1) -> sb_drain_one(WR, 1) }
    :: atomic { CAN_DRAIN(WR, 2) -> sb_drain_one(WR, 2) }
    :: atomic { CAN_DRAIN(WR, 3) -> sb_drain_one(WR, 3) }
#endif
    od
}
