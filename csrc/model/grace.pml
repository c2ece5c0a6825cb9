/*
 * Promela model of aiorcu's grace period (csrc/grace.c, run_grace_period)
 * against the reader protocol of csrc/reader.h: one reader thread runs two
 * read sections, each of which loads the phase when it enters and counts in
 * (its kind, that phase) until it leaves; a second reader-side thread may
 * release one of them (aiorcu_section_release, csrc/domain.c); and the
 * reader thread may exit, its slot released (drop_owner) and claimed by a
 * new thread that runs the sections not entered yet.  See README.md beside
 * this file for the mapping to the code, the variants and what is
 * abstracted away.
 *
 * Memory model.  Each thread's stores go through its own store buffer; a
 * buffered store reaches memory at any later time, and stores to different
 * addresses may reach it out of order (stores to one address keep their
 * order).  A load first looks in its own thread's buffer (store forwarding).
 * The reader's count updates are relaxed atomic read-modify-writes: each is
 * buffered as a delta (+1 or -1) that is added to the count in memory, in
 * one step, when it leaves the buffer, so updates by several threads never
 * get lost (under -DTSO they are locked instructions, as on x86: they drain
 * the buffer and reach memory at once).  On top of that, the data loads of
 * each section may be performed at any time between the membarrier IPIs
 * (or reader fences) that surround their place in program order: early
 * (before the increment is visible, before the phase load, before the other
 * section's loads) or late (after the section's decrement is visible).  A
 * membarrier is one atomic step: it drains both store buffers, performs
 * every reader-side load whose place in program order is already passed,
 * and discards every early value of a load whose place is not yet reached.
 *
 * Safety, checked three ways:
 *  - at the writer's `completed` store of grace period k, no section that
 *    loaded a version published before k started (version < k) still has
 *    a data load to perform ("a section that began before the grace period
 *    is still inside when it ends");
 *  - a data load never reads a freed version (use after free);
 *  - no decrement finds its count at 0 (the counts are 64-bit and never
 *    wrap in the code; a decrement with no increment to match is a bug).
 *
 * Across processes (csrc/shared.c, a shared domain): -DPROC_DEATH lets the
 * reader's process die at any point; its counts stay until a writer, waiting
 * for a phase they hold, proves the death (the lifeline's robust mutex comes
 * back owner-dead) and releases the slot (reap_locked, drop_process,
 * drop_owner), which a thread of another process may then claim.
 * -DWRITER_DEATH lets the writer die at any point of a grace period but the
 * last (in either wait, with the flip still in its store buffer, inside a
 * reap); the next one finds the writer mutex owner-dead (writer_locked) and
 * runs its own grace period.  -DREAP_DEATH: the writer dies only inside a
 * reap (the combined runs with PROC_DEATH stay small).
 *
 * Variants (-D): BUSTED, BUSTED_CLOSED, NO_M1, NO_M3, NO_FLIP_FENCES,
 * TIMEOUT, UNFLIP_ON_TIMEOUT, FENCE_MODE, NO_F1, NO_F2, TSO, NGP=n, NSEC=3,
 * NO_FOREIGN, NO_SLOT_RELEASE, BUSTED_GEN, NO_WRAP_CHECK, FOREIGN_NO_F2,
 * PROC_DEATH, SIBLING_RUNS, JOIN_RACE, BUSTED_REAP, WRITER_DEATH, REAP_DEATH, REAP_HOLD,
 * BUSTED_RECOVERY, BUSTED_RECOVER_CLOSED, BUSTED_RECOVER_NO_STRAGGLER, and the reachability probes
 * PROBE_OVERLAP, PROBE_STRAGGLER, PROBE_LATE, PROBE_LEFTOVER, PROBE_FOREIGN,
 * PROBE_STALE, PROBE_RECLAIM, PROBE_RECOVERY.  check.sh runs them and says
 * what each must give.
 */

#ifdef REAP_DEATH
#define WRITER_DEATH            /* the recovery, ... */
#define DEATH_IN_REAP_ONLY      /* ... but the writer dies only inside a reap */
#endif
/* The writer may leave a grace period in the middle of a wait. */
#if defined(TIMEOUT) || (defined(WRITER_DEATH) && !defined(DEATH_IN_REAP_ONLY))
#define GIVES_UP
#endif

#ifndef NGP
#define NGP 2                   /* grace periods the writer runs */
#endif
#ifdef PROC_DEATH
#define NO_FOREIGN              /* the reader's process: one thread, no foreign release */
#endif
#ifndef NSEC
#define NSEC 2                  /* sections of the reader thread: 2 or 3 */
#endif

#if NSEC > 2
#define SB 6                    /* store-buffer entries per thread */
#else
#define SB 4
#endif
#define RD 0                    /* thread ids: the reader thread */
#define WR 1                    /* the writer (synchronize's caller) */

/* Addresses.  The counts keep the layout of struct aiorcu_reader_line:
 * count[AIORCU_COUNT(kind, phase)] = count[kind * 2 + phase]. */
#define A_PHASE 0               /* ctl.bytes[AIORCU_CTL_PHASE] */
#define A_COUNT 1               /* + AIORCU_COUNT(kind, phase) */
#define A_GPTR 5                /* the protected pointer: a version number */
#define A_FREED 6               /* + version: 1 once the writer freed it */
#define NADDR (A_FREED + NGP + 1)

#define KIND_THREAD 0           /* `with`: AIORCU_KIND_THREAD */
#define KIND_TASK 1             /* `async with`: AIORCU_KIND_TASK */
#define COUNT_OF(s) (A_COUNT + kind[s] * 2 + ph[s])

/* Count deltas in the reader's store buffer (bytes: -1 is 255). */
#define INC 1
#define DEC 255

byte mem[NADDR];                /* counts are bytes: at most NSEC here */

byte sb_addr[2 * SB];
byte sb_val[2 * SB];
byte sb_len[2];

/* Program counter of each section, in program order. */
#define PC_IDLE 0               /* not entered yet */
#define PC_LOADED 1             /* phase loaded, count not incremented */
#define PC_IN 2                 /* entered: increment issued (F1 passed) */
#define PC_L1 3                 /* past the place of L1: v = gptr */
#define PC_L2 4                 /* past the place of L2: the last use of *v */
#define PC_OUT 5                /* left: decrement issued, or nothing to drop */

byte pc[NSEC];
byte kind[NSEC];
byte ph[NSEC];                     /* the phase the section counts in */
byte sgen[NSEC];                   /* the generation of its kind at entry */
byte l1[NSEC];                     /* 0: L1 not performed; else version + 1 */
bit l2[NSEC];                      /* L2 performed */
bit in_enter;                   /* a section is between its phase load and increment */

/* The foreign release of section 0 and the release of the slot. */
byte gen[2];                    /* line->gen[kind] (ghost of the registry's state) */
bit handed;                     /* section 0 left the reader thread */
bit ft_l2;                      /* ... before its L2: the foreign thread does L2 */
bit exited;                     /* the slot was released and claimed again */

#ifdef PROC_DEATH
/* The reader's process P (one reader thread, T) and its slot in the
 * segment; the slot's next owner N is a thread of another process, which
 * never dies.  The `reader` process plays T, and N once N claimed the slot. */
#define LIFE_HELD 0             /* P's lifeline holds its entry's robust mutex */
#define LIFE_DEAD 1             /* ... the kernel marked it owner-dead */
#define LIFE_FREE 2             /* ... made consistent and unlocked by a reaper */
#define P_FREE 0                /* P's entry (seg_proc.state) */
#define P_LIVE 1
#define P_JOINING 2
bit rd_killed;                  /* P got a fatal signal */
bit rd_stopped;                 /* T runs no more code */
byte life;                      /* seg_proc.life, as a trylock would find it */
#ifdef JOIN_RACE
byte pstate = P_JOINING;
#else
byte pstate = P_LIVE;
#endif
bit in_use = 1;                 /* slot->in_use */
bit claimed;                    /* N claimed the slot (aiorcu_slot_alloc) */
bit sown[NSEC];                 /* the section was entered by N */
byte reaped_in;                 /* ghost: the grace period whose wait released the slot */
#endif

/* Ghost state of the writer. */
byte gp_started;                /* `started` */
byte gp_completed;              /* `completed` */
#ifdef WRITER_DEATH
bit wr_dead;                    /* the writer died holding the writer mutex */
byte recoveries;                /* writer_recoveries */
#endif
bit freed_done[NGP + 1];        /* versions the writer has already freed */

byte sc_i;                      /* scratch for loops inside d_step */
byte sc_j;
byte ca;                        /* scratch: the count a decrement hits */

#ifdef PROC_DEATH
/* A section of T once T stopped: it performs nothing more. */
#define GONE(s) (!sown[s] && rd_stopped && pc[s] != PC_IDLE)
/* Who enters an idle section: T while P has not been killed and the slot is
 * still its own; N once it claimed the slot. */
#define ENTERS (claimed || (!rd_killed && in_use))
/* Program steps of an entered section: N's always, T's until T stops. */
#define RUNS(s) (sown[s] || !rd_stopped)
#define LOADS(s) (pc[s] == PC_IDLE -> ENTERS : RUNS(s))
/* The safety checks are about live readers: not T once P was killed (T may
 * still run a little under -DSIBLING_RUNS; it dies before it returns). */
#define ALIVE(s) (sown[s] || !rd_killed || pc[s] == PC_IDLE)
#else
#define GONE(s) 0
#define ENTERS 1
#define RUNS(s) 1
#define LOADS(s) 1
#define ALIVE(s) 1
#endif

/* ---- counts ---------------------------------------------------------------- */

/* A decrement reaching memory: the count must hold what it drops. */
inline count_dec(a)
{
    ca = a;
#ifndef NO_WRAP_CHECK
#ifdef PROC_DEATH
    /* In a free slot a wrapped count is harmless: scans skip the slot and
     * aiorcu_slot_alloc zeroes the counts. */
    assert(mem[ca] > 0 || !in_use);     /* count underflow (64-bit counts never wrap) */
#else
    assert(mem[ca] > 0);                /* count underflow (64-bit counts never wrap) */
#endif
#endif
    mem[ca] = (mem[ca] + DEC) % 256;
    ca = 0
}

/* A buffered store of thread t reaching memory: the reader buffers count
 * deltas (atomic read-modify-writes), the writer plain stores. */
inline mem_apply(t, a, v)
{
    if
    :: t == RD && v == DEC -> count_dec(a)
    :: t == RD && v == INC -> mem[a] = mem[a] + 1
    :: else -> mem[a] = v
    fi
}

/* ---- store buffers ------------------------------------------------------ */

/* Callers wrap these in d_step or atomic. */
inline sb_store(st_t, st_a, st_v)
{
    assert(sb_len[st_t] < SB);          /* the buffer bound loses no behaviour */
    sb_addr[st_t * SB + sb_len[st_t]] = st_a;
    sb_val[st_t * SB + sb_len[st_t]] = st_v;
    sb_len[st_t]++
}

/* Load with store forwarding: the newest buffered store to `a` wins (only
 * the writer loads what it stores: the phase byte). */
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
    (i < 3 || sb_addr[t * SB + 2] != sb_addr[t * SB + i]) && \
    (i < 4 || sb_addr[t * SB + 3] != sb_addr[t * SB + i]) && \
    (i < 5 || sb_addr[t * SB + 4] != sb_addr[t * SB + i]))
#endif

/* Callers wrap this in atomic. */
inline sb_drain_one(t, i)
{
    printf("MSC: thread %d (0 reader, 1 writer): store mem[%d] (+)= %d reaches memory\n", t,
           sb_addr[t * SB + i], sb_val[t * SB + i]);
    mem_apply(t, sb_addr[t * SB + i], sb_val[t * SB + i]);
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
        :: sc_i < sb_len[t] -> mem_apply(t, sb_addr[t * SB + sc_i], sb_val[t * SB + sc_i])
        :: else -> skip
        fi;
        sb_addr[t * SB + sc_i] = 0;
        sb_val[t * SB + sc_i] = 0
    }
    sc_i = 0;
    sb_len[t] = 0
}

/* A count update of the reader thread (relaxed fetch_add / fetch_sub): a
 * buffered delta; under TSO (x86) a lock-prefixed instruction, which drains
 * the buffer and reaches memory at once. */
inline reader_rmw(a, d)
{
#ifdef TSO
    sb_flush(RD);
    mem_apply(RD, a, d)
#else
    sb_store(RD, a, d)
#endif
}

/* ---- reader loads ------------------------------------------------------- */

/* L2 dereferences the version L1 loaded: it must not be freed. */
inline perform_l2(s)
{
#ifdef PROBE_LATE
    /* reachable: L2 performed after its section's decrement is in memory */
    assert(!(pc[s] == PC_OUT && mem[COUNT_OF(s)] == 0));
#endif
    printf("MSC: L2 of section %d performed (version %d)\n", s, l1[s] - 1);
#ifdef PROC_DEATH
    assert(mem[A_FREED + l1[s] - 1] == 0 || !ALIVE(s));        /* use after free */
#else
    assert(mem[A_FREED + l1[s] - 1] == 0);      /* use after free */
#endif
    l2[s] = 1
}

/* The loads' side of a barrier: loads whose place in program order is
 * passed are performed now; with `drop` (a full barrier, not a release)
 * early values of loads whose place is still ahead are discarded.  `all`:
 * the membarrier IPI, which runs on every thread and so also covers the L2
 * the foreign thread owns; otherwise only the reader thread's own loads. */
inline reader_loads(drop, all)
{
    for (sc_j : 0 .. NSEC - 1) {
        if
#ifdef PROC_DEATH
        :: GONE(sc_j) -> skip                   /* T stopped: nothing of it runs */
#endif
        :: !GONE(sc_j) && pc[sc_j] < PC_L1 ->
            if
            :: drop -> l1[sc_j] = 0; l2[sc_j] = 0      /* early values dropped */
            :: else -> skip
            fi
        :: !GONE(sc_j) && pc[sc_j] >= PC_L1 ->
            if
            :: l1[sc_j] == 0 ->
                l1[sc_j] = mem[A_GPTR] + 1;
                printf("MSC: barrier performs L1 of section %d: version %d\n", sc_j, l1[sc_j] - 1)
            :: else -> skip
            fi;
            if
            :: sc_j == 0 && ft_l2 && !all -> skip     /* the foreign thread's load */
            :: else ->
                if
                :: pc[sc_j] < PC_L2 && drop -> l2[sc_j] = 0
                :: pc[sc_j] >= PC_L2 && !l2[sc_j] ->
                    printf("MSC: barrier performs L2 of section %d\n", sc_j);
                    assert(mem[A_FREED + l1[sc_j] - 1] == 0);   /* use after free */
                    l2[sc_j] = 1
                :: else -> skip
                fi
            fi
        fi
    }
    sc_j = 0
}

/* A full fence of the reader thread (F1/F2 in fence mode; the membarrier
 * IPI with all = 1). */
inline reader_barrier(all)
{
    sb_flush(RD);
    reader_loads(1, all)
}

/* ---- writer barriers ------------------------------------------------------ */

/* smp_mb on the writer: atomic_thread_fence(seq_cst). */
inline writer_fence()
{
    d_step { printf("MSC: gp %d: writer fence\n", k); sb_flush(WR) }
}

/* aiorcu__heavy_barrier: membarrier(PRIVATE_EXPEDITED), a full barrier on
 * the writer and on every running thread of the process; a plain fence in
 * fence mode, where the readers' own F1/F2 fences pair with it. */
inline heavy_barrier(n)
{
#ifdef FENCE_MODE
    d_step { printf("MSC: gp %d: M%d (a fence)\n", k, n); sb_flush(WR) }
#else
    d_step { printf("MSC: gp %d: M%d (membarrier)\n", k, n); sb_flush(WR); reader_barrier(1) }
#endif
}

/* ---- reader thread -------------------------------------------------------- */

/* p = aiorcu_read_phase(ctl): a relaxed load; every section loads it, there
 * is no joining of an enclosing section's phase. */
inline enter_load(s)
{
    if
    :: kind[s] = KIND_THREAD
    :: kind[s] = KIND_TASK
    fi;
    sb_load(RD, A_PHASE, ph[s]);
#ifdef PROC_DEATH
    sown[s] = claimed;
#endif
    printf("MSC: section %d (kind %d: 0 with, 1 async with) loads phase %d\n", s, kind[s], ph[s]);
    pc[s] = PC_LOADED;
    in_enter = 1
}

/* aiorcu_read_count: count[kind, p] += 1 (relaxed fetch_add), then F1;
 * the entry records line->gen[kind]. */
inline enter_count(s)
{
    printf("MSC: section %d increments count %d\n", s, COUNT_OF(s) - A_COUNT);
    reader_rmw(COUNT_OF(s), INC);
    sgen[s] = gen[kind[s]];
#ifdef PROBE_RECLAIM
    /* reachable: N counts in the slot while the grace period whose wait
     * released it from the dead T is still running */
    assert(!(sown[s] && reaped_in == gp_started && gp_completed < gp_started));
#endif
#if defined(FENCE_MODE) && !defined(NO_F1)
    reader_barrier(0);                          /* F1 */
#endif
    pc[s] = PC_IN;
    in_enter = 0
}

/* The owner's leave (aiorcu_section_leave / section_uncount on the entering
 * thread): generation check, then aiorcu_read_uncount: F2, count -= 1
 * (relaxed fetch_sub).  F3 and the waiting byte are not modelled (see
 * README). */
inline leave(s)
{
    if
    :: gen[kind[s]] == sgen[s] ->
#if defined(FENCE_MODE) && !defined(NO_F2)
        reader_barrier(0);                      /* F2 */
#endif
        printf("MSC: section %d decrements count %d\n", s, COUNT_OF(s) - A_COUNT);
        reader_rmw(COUNT_OF(s), DEC)
    :: else ->
        printf("MSC: section %d leaves a released slot: nothing to drop\n", s)
    fi;
    pc[s] = PC_OUT
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

/* Section 0 moves to the foreign thread (a generator resumed there, a task
 * run by another loop, a section object whose last reference dies there)
 * after its L1 or its L2.  The hand-over synchronizes the two threads (a
 * lock, the GIL): a release on the reader thread, so its earlier stores are
 * visible and its loads whose place is passed are performed; early values
 * of later loads may stay.  An L2 still ahead is now the foreign thread's
 * load: an early value the reader thread took for it does not count. */
inline hand_over()
{
    sb_flush(RD);
    reader_loads(0, 0);
    if
    :: pc[0] == PC_L1 -> ft_l2 = 1; l2[0] = 0
    :: else -> skip
    fi;
    printf("MSC: section 0 moves to the foreign thread (before its L2: %d)\n", ft_l2);
    handed = 1
}

/* The reader thread exits with section 0 still open on the foreign thread
 * (all its data uses done), and the slot is released under the registry
 * lock (drop_owner: counts exchanged with 0, generations bumped); a new
 * thread claims the slot and runs the sections not entered yet.  Thread
 * exit and claiming the slot order everything before them: a full barrier
 * of the reader thread. */
inline slot_release()
{
    reader_barrier(0);
    mem[A_COUNT + 0] = 0;
    mem[A_COUNT + 1] = 0;
    mem[A_COUNT + 2] = 0;
    mem[A_COUNT + 3] = 0;
    gen[KIND_THREAD]++;
    gen[KIND_TASK]++;
    printf("MSC: the reader thread exits; drop_owner zeroes the counts and bumps the\n");
    printf("MSC: generations; a new thread claims the slot\n");
    exited = 1
}

#ifdef PROC_DEATH
/* ---- the reader's process dies; its slot is released and claimed ------- */

/* T stops: the kernel took it off its CPU for good (SIGKILL, exec).  Its
 * stores already issued still reach memory (the `memory` process drains
 * them); its open sections never perform another load. */
inline stop_thread()
{
    printf("MSC: the reader thread T stops for good\n");
    if
    :: (pc[0] == PC_LOADED && !sown[0]) || (pc[1] == PC_LOADED && !sown[1]) -> in_enter = 0
    :: else -> skip
    fi;
    rd_stopped = 1
}

/* P gets a fatal signal.  By the code's argument the whole process is gone
 * at once; -DSIBLING_RUNS lets T go on until a later step stops it. */
inline kill()
{
    printf("MSC: the reader's process P is killed\n");
    rd_killed = 1;
#ifndef SIBLING_RUNS
    stop_thread()
#endif
}

/* drop_owner (domain.c), registry lock held: every count exchanged with 0,
 * both generations bumped, the slot free.  In one step: the registry lock
 * makes it one with respect to the claim and to every scan. */
inline drop_owner()
{
    mem[A_COUNT + 0] = 0;
    mem[A_COUNT + 1] = 0;
    mem[A_COUNT + 2] = 0;
    mem[A_COUNT + 3] = 0;
    gen[KIND_THREAD]++;
    gen[KIND_TASK]++;
    in_use = 0;
    reaped_in = k
}

/* aiorcu_slot_alloc by N, a thread of another process, under the registry
 * lock: the counts stored 0, a new owner.  The lock is an acquire for N: no
 * load of N's sections is performed before it (early values dropped). */
inline claim()
{
    printf("MSC: a thread N of another process claims the free slot\n");
    mem[A_COUNT + 0] = 0;
    mem[A_COUNT + 1] = 0;
    mem[A_COUNT + 2] = 0;
    mem[A_COUNT + 3] = 0;
    in_use = 1;
    claimed = 1;
    for (sc_j : 0 .. NSEC - 1) {
        if
        :: pc[sc_j] == PC_IDLE -> l1[sc_j] = 0; l2[sc_j] = 0
        :: else -> skip
        fi
    }
    sc_j = 0
}

/* The counts of phase p hold the slot in a scan: reap_locked's test. */
#define HOLDS(p) (mem[A_COUNT + KIND_THREAD * 2 + (p)] != 0 || \
                  mem[A_COUNT + KIND_TASK * 2 + (p)] != 0)
#ifdef BUSTED_REAP
#define PROVEN_DEAD 1                   /* a variant: a slow owner taken for a dead one */
#else
#define PROVEN_DEAD (life == LIFE_DEAD) /* proc_dead: trylock returns EOWNERDEAD */
#endif
/* reap_locked (shared.c) finds something to do for P's slot. */
#define REAPABLE(p) (in_use && !claimed && HOLDS(p) && (pstate != P_LIVE || PROVEN_DEAD))
/* scan_clear: a slot not in use is skipped. */
#define SLOT_ZERO(kd, p) (!in_use || mem[A_COUNT + (kd) * 2 + (p)] == 0)

/* aiorcu__reap_dead(d, p) from wait_phase, registry lock held throughout:
 * reap_locked on P's slot.  Under -DWRITER_DEATH the writer may die after
 * proc_dead left the lifeline mutex consistent and unlocked and before
 * drop_process freed the entry (the registry lock it held comes back
 * owner-dead and is made consistent: nothing else to model). */
inline reap(p)
{
    if
    :: pstate != P_LIVE ->
        /* "Its process left or was reaped": released without proof */
        printf("MSC: gp %d: reap: P's entry is not LIVE: drop_owner\n", k);
        drop_owner()
    :: else ->
        printf("MSC: gp %d: reap: P's lifeline mutex is owner-dead: drop_process\n", k);
        if
        :: life == LIFE_DEAD ->
#ifdef REAP_HOLD
            skip                        /* a fix: held until drop_process is done */
#else
            life = LIFE_FREE            /* proc_dead: consistent, unlock */
#endif
        :: else -> skip                 /* BUSTED_REAP: trylock said EBUSY */
        fi;
        if
#ifdef WRITER_DEATH
        :: k < NGP ->
            printf("MSC: gp %d: the writer dies inside the reap\n", k);
#ifdef REAP_HOLD
            life = LIFE_DEAD;           /* it held the mutex: owner-dead again */
#endif
            timed_out = 1;
            wr_dead = 1
#endif
        :: true ->
            drop_owner();               /* drop_process: every slot of P */
            pstate = P_FREE;
#ifdef REAP_HOLD
            life = LIFE_FREE;           /* now unlocked */
#endif
            skip
        fi
    fi
}
#endif

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

#define OPEN(s) (pc[s] >= PC_IN && pc[s] < PC_OUT)

/* Section 2 (-DNSEC=3) runs like section 1: on the reader thread only. */
#if NSEC > 2
#define S2_DONE (pc[2] == PC_OUT && l2[2])
#define S2_IDLE_OR_OUT (pc[2] == PC_IDLE || pc[2] == PC_OUT)
#else
#define S2_DONE 1
#define S2_IDLE_OR_OUT 1
#endif

#define probe_straggler_free(p) \
    (mem[A_COUNT + KIND_THREAD * 2 + (p)] == 0 && mem[A_COUNT + KIND_TASK * 2 + (p)] == 0)

active proctype reader()
{
    byte s;
#ifdef PROC_DEATH
end_rd:                                 /* T dead, N with nothing to do: a valid end */
#endif
    do
    /* Program steps.  An enter runs from its phase load to its increment
     * before anything else of this thread (enter is one synchronous call);
     * other threads and the memory system may act in between. */
    :: atomic { !in_enter && pc[0] == PC_IDLE && ENTERS -> s = 0; enter_load(s); s = 0 }
    :: atomic { !in_enter && pc[1] == PC_IDLE && ENTERS -> s = 1; enter_load(s); s = 0 }
    :: d_step { pc[0] == PC_LOADED && RUNS(0) -> s = 0; enter_count(s); s = 0 }
    :: d_step { pc[1] == PC_LOADED && RUNS(1) -> s = 1; enter_count(s); s = 0 }
    :: d_step { !in_enter && pc[0] == PC_IN && RUNS(0) -> pass_l1(0) }
    :: d_step { !in_enter && pc[1] == PC_IN && RUNS(1) -> pass_l1(1) }
    :: d_step { !in_enter && !handed && pc[0] == PC_L1 && RUNS(0) -> pass_l2(0) }
    :: d_step { !in_enter && pc[1] == PC_L1 && RUNS(1) -> pass_l2(1) }
    :: d_step { !in_enter && !handed && pc[0] == PC_L2 && RUNS(0) -> s = 0; leave(s); s = 0 }
    :: d_step { !in_enter && pc[1] == PC_L2 && RUNS(1) -> s = 1; leave(s); s = 0 }
#if NSEC > 2
    :: atomic { !in_enter && pc[2] == PC_IDLE && ENTERS -> s = 2; enter_load(s); s = 0 }
    :: d_step { pc[2] == PC_LOADED && RUNS(2) -> s = 2; enter_count(s); s = 0 }
    :: d_step { !in_enter && pc[2] == PC_IN && RUNS(2) -> pass_l1(2) }
    :: d_step { !in_enter && pc[2] == PC_L1 && RUNS(2) -> pass_l2(2) }
    :: d_step { !in_enter && pc[2] == PC_L2 && RUNS(2) -> s = 2; leave(s); s = 0 }
#endif
#ifndef NO_FOREIGN
    :: d_step { !in_enter && !handed && (pc[0] == PC_L1 || pc[0] == PC_L2) -> hand_over() }
#ifndef NO_SLOT_RELEASE
    :: d_step { !in_enter && !exited && handed && pc[0] == PC_L2 && l2[0] &&
                (pc[1] == PC_IDLE || pc[1] == PC_OUT) && S2_IDLE_OR_OUT -> slot_release() }
#endif
#endif
#ifndef TSO
    /* The CPU performing the data loads out of program order: L1 at any
     * time (a value taken before a barrier that precedes L1's place is
     * dropped by that barrier), L2 any time after L1 (address dependency),
     * both possibly after the section's decrement is visible. */
    :: d_step { l1[0] == 0 && LOADS(0) -> l1[0] = mem[A_GPTR] + 1;
                printf("MSC: reader performs L1 of section 0: version %d\n", l1[0] - 1) }
    :: d_step { l1[1] == 0 && LOADS(1) -> l1[1] = mem[A_GPTR] + 1;
                printf("MSC: reader performs L1 of section 1: version %d\n", l1[1] - 1) }
    :: d_step { l1[0] != 0 && !l2[0] && !ft_l2 && COMMITTED(0) && LOADS(0) -> perform_l2(0) }
    :: d_step { l1[1] != 0 && !l2[1] && COMMITTED(1) && LOADS(1) -> perform_l2(1) }
#if NSEC > 2
    :: d_step { l1[2] == 0 && LOADS(2) -> l1[2] = mem[A_GPTR] + 1;
                printf("MSC: reader performs L1 of section 2: version %d\n", l1[2] - 1) }
    :: d_step { l1[2] != 0 && !l2[2] && COMMITTED(2) && LOADS(2) -> perform_l2(2) }
#endif
#endif
#ifdef PROC_DEATH
    /* P dies: at once (the code's argument), or -DSIBLING_RUNS: T may go on
     * for a while, and the lifeline's robust mutex may be marked owner-dead
     * before T stops (each thread runs its own exit; see README). */
    :: atomic { !rd_killed -> kill() }
#ifdef SIBLING_RUNS
    :: atomic { rd_killed && !rd_stopped -> stop_thread() }
    :: atomic { rd_killed && life == LIFE_HELD ->
        printf("MSC: P's lifeline exits: its mutex is owner-dead\n"); life = LIFE_DEAD }
#else
    :: atomic { rd_stopped && sb_len[RD] == 0 && life == LIFE_HELD ->
        printf("MSC: P is gone: its lifeline mutex is owner-dead\n"); life = LIFE_DEAD }
#endif
    /* N claims the slot once a reaper freed it; it runs the sections that
     * T never entered. */
    :: atomic { !in_use && !claimed && (pc[0] == PC_IDLE || pc[1] == PC_IDLE) -> claim() }
#ifdef JOIN_RACE
    /* P's join completes: the lifeline holds the entry's mutex, state LIVE */
    :: atomic { pstate == P_JOINING -> printf("MSC: P's entry becomes LIVE\n"); pstate = P_LIVE }
#endif
#endif
#ifdef PROBE_OVERLAP
    /* reachable: two sections of one kind open at once, in different phases */
    :: atomic { OPEN(0) && OPEN(1) && kind[0] == kind[1] -> assert(ph[0] == ph[1]) }
#endif
    :: pc[0] == PC_OUT && pc[1] == PC_OUT && l2[0] && l2[1] && S2_DONE -> break
    od
}

/* ---- foreign thread ------------------------------------------------------- */

/* aiorcu_section_release on a thread that is not the section's owner: under
 * the registry lock (so one step with respect to drop_owner), if the
 * generation still matches: F2 (full fence), count -= 1, F3 (full fence).
 * The foreign thread has nothing else in flight, so its fences reduce to
 * the decrement reaching memory in this step. */
inline foreign_release()
{
#ifdef PROBE_FOREIGN
    /* reachable: the owner thread has its other section open meanwhile */
    assert(!OPEN(1));
#endif
#ifdef PROBE_STALE
    /* reachable: a stale release while the new owner counts in the same place */
    assert(!(gen[kind[0]] != sgen[0] && OPEN(1) && kind[1] == kind[0] && ph[1] == ph[0]));
#endif
    if
#ifdef BUSTED_GEN
    :: true ->                                  /* a variant: no generation check */
#else
    :: gen[kind[0]] == sgen[0] ->
#endif
        printf("MSC: foreign thread releases section 0: count %d -= 1\n", COUNT_OF(0) - A_COUNT);
        count_dec(COUNT_OF(0))
    :: else ->
        printf("MSC: foreign thread: section 0's slot was released, nothing to drop\n")
    fi;
    pc[0] = PC_OUT
}

active proctype foreign()
{
end:
    do
    /* The section's last use, on this thread (handed over before L2).
     * F2 follows in program order, so the load is performed here. */
    :: d_step { handed && pc[0] == PC_L1 ->
#ifdef FOREIGN_NO_F2
                printf("MSC: section 0 passes L2 on the foreign thread\n")
#else
                perform_l2(0)
#endif
                ; pc[0] = PC_L2 }
#ifdef FOREIGN_NO_F2
    /* A variant without F2: the foreign thread's L2 may be performed after
     * its decrement (only a membarrier IPI or a fence of its own orders it). */
    :: d_step { handed && ft_l2 && pc[0] >= PC_L2 && !l2[0] -> perform_l2(0) }
    :: d_step { handed && pc[0] == PC_L2 -> foreign_release() }
#else
    :: d_step { handed && pc[0] == PC_L2 && l2[0] -> foreign_release() }
#endif
    od
}

/* ---- writer ---------------------------------------------------------------- */

/* wait_phase(d, p, ...): returns once a scan_clear pass saw
 * count[THREAD, p] and count[TASK, p] both 0.  Modelled as "one load saw
 * THREAD+p == 0, a later load saw TASK+p == 0", which allows every
 * execution of the C loop and a few more (see README).  With TIMEOUT every
 * grace period but the last may give up at any point of a wait
 * (AIORCU_TIMEDOUT); with WRITER_DEATH its writer may die there instead.
 * With PROC_DEATH the writer may reap between its loads (the backstop's
 * aiorcu__reap_dead), and a slot not in use counts as empty. */
#ifdef BUSTED_RECOVER_CLOSED
#define CAN_GIVE_UP (k < NGP && !recovering)
#else
#define CAN_GIVE_UP (k < NGP)
#endif
inline give_up()
{
#if defined(TIMEOUT) && defined(WRITER_DEATH) && !defined(DEATH_IN_REAP_ONLY)
    if
    :: wr_dead = 1
    :: skip
    fi;
#elif defined(WRITER_DEATH) && !defined(DEATH_IN_REAP_ONLY)
    wr_dead = 1;
#endif
    timed_out = 1
}

#ifdef PROC_DEATH
inline wait_phase(p)
{
    do
    :: SLOT_ZERO(KIND_THREAD, p) -> break
    :: atomic { REAPABLE(p) -> reap(p) };
        if
        :: timed_out -> break           /* the writer died inside the reap */
        :: else -> skip
        fi
#ifdef GIVES_UP
    :: CAN_GIVE_UP -> give_up(); break
#endif
    od;
    do
    :: timed_out -> break
    :: atomic { !timed_out && SLOT_ZERO(KIND_TASK, p) ->
        printf("MSC: gp %d saw phase %d empty\n", k, p) }; break
    :: atomic { !timed_out && REAPABLE(p) -> reap(p) }
#ifdef GIVES_UP
    :: !timed_out && CAN_GIVE_UP -> give_up(); break
#endif
    od;
    if
    :: timed_out -> printf("MSC: gp %d gives up waiting for phase %d\n", k, p)
    :: else -> skip
    fi
}
#else
inline wait_phase(p)
{
    if
    :: mem[A_COUNT + KIND_THREAD * 2 + (p)] == 0
#ifdef GIVES_UP
    :: CAN_GIVE_UP -> give_up()
#endif
    fi;
    if
    :: timed_out -> skip
    :: atomic { !timed_out && mem[A_COUNT + KIND_TASK * 2 + (p)] == 0 ->
        printf("MSC: gp %d saw phase %d empty\n", k, p) }
#ifdef GIVES_UP
    :: !timed_out && CAN_GIVE_UP -> give_up()
#endif
    fi;
    if
    :: timed_out -> printf("MSC: gp %d gives up waiting for phase %d\n", k, p)
    :: else -> skip
    fi
}
#endif

/* completed = started (release), and the caller frees what the grace
 * period covered: every version older than k (more than one after an
 * abandoned grace period).  The safety check: every live section that read
 * a version older than k has performed its last use of it. */
inline complete_gp()
{
    d_step {
        printf("MSC: gp %d completes\n", k);
        gp_completed = k;
        assert(!(ALIVE(0) && COMMITTED(0) && l1[0] != 0 && l1[0] - 1 < k && !l2[0]));  /* section 0 inside */
        assert(!(ALIVE(1) && COMMITTED(1) && l1[1] != 0 && l1[1] - 1 < k && !l2[1]));  /* section 1 inside */
#if NSEC > 2
        assert(!(ALIVE(2) && COMMITTED(2) && l1[2] != 0 && l1[2] - 1 < k && !l2[2]));  /* section 2 inside */
#endif
        skip
    }
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
    v = 0
}

active proctype writer()
{
    byte k = 1;
    byte cur;
    byte v;
    bit timed_out;
#ifdef BUSTED_RECOVER_CLOSED
    bit recovering;                     /* in the recovery's own wait */
#endif
#ifdef BUSTED_RECOVER_NO_STRAGGLER
    bit recovered;                      /* this grace period follows a recovery */
#endif
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
#if defined(BUSTED_RECOVER_NO_STRAGGLER)
        if
        :: recovered -> recovered = 0           /* a variant: "the mutex was owner-dead,
                                                 * the straggler wait can be skipped" */
        :: else -> wait_phase(1 - cur)
        fi;
#elif !defined(BUSTED)
        wait_phase(1 - cur);                    /* stragglers */
#endif
        if
        :: timed_out -> goto abandoned          /* nothing flipped */
        :: else -> skip
        fi;
#ifndef NO_FLIP_FENCES
        writer_fence();                         /* progress fence before the flip */
#endif
        d_step {
            printf("MSC: gp %d flips the phase to %d (buffered)\n", k, 1 - cur);
            sb_store(WR, A_PHASE, 1 - cur)      /* the flip */
        };
#if defined(WRITER_DEATH) && !defined(DEATH_IN_REAP_ONLY)
        if
        :: k < NGP ->                           /* dies with the flip in its store buffer */
            printf("MSC: gp %d: the writer dies right after its flip\n", k);
            wr_dead = 1;
            goto abandoned
        :: true
        fi;
#endif
#ifndef NO_FLIP_FENCES
        writer_fence();                         /* progress fence after the flip */
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
        complete_gp();                          /* completed = started, then free */
abandoned:
#ifdef WRITER_DEATH
        if
        :: wr_dead ->
            /* The process died holding the writer mutex.  Its exit hands the
             * mutex over owner-dead after every store it made (the kernel's
             * robust-list walk, then the next writer's lock), and the next
             * writer goes on: writer_locked() marks it consistent. */
            sb_len[WR] == 0;
            d_step {
                printf("MSC: the next writer locks the writer mutex: EOWNERDEAD, consistent\n");
                wr_dead = 0;
                timed_out = 0;
                recoveries++
            };
#ifdef BUSTED_RECOVER_NO_STRAGGLER
            recovered = 1;
#endif
#ifdef PROBE_RECOVERY
            /* reachable: the dead writer had flipped, and a reader of a
             * version older than its grace period is still inside */
            assert(!(mem[A_PHASE] != cur && ((l1[0] != 0 && l1[0] - 1 < k && !l2[0]) ||
                                             (l1[1] != 0 && l1[1] - 1 < k && !l2[1]))));
#endif
#ifdef BUSTED_RECOVERY
            /* a variant: the interrupted grace period is declared complete */
            complete_gp();
#endif
#ifdef BUSTED_RECOVER_CLOSED
            /* a variant: the recovery finishes the interrupted grace period
             * as if its flip had happened: waits for the phase it closed */
            recovering = 1;
            d_step { sb_load(WR, A_PHASE, cur) };
            wait_phase(1 - cur);
            heavy_barrier(3);
            complete_gp();
            recovering = 0;
#endif
            skip
        :: else -> skip
        fi;
#endif
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
#if SB > 4
    :: atomic { CAN_DRAIN(RD, 4) -> sb_drain_one(RD, 4) }
    :: atomic { CAN_DRAIN(RD, 5) -> sb_drain_one(RD, 5) }
#endif
    :: atomic { CAN_DRAIN(WR, 1) -> sb_drain_one(WR, 1) }
    :: atomic { CAN_DRAIN(WR, 2) -> sb_drain_one(WR, 2) }
    :: atomic { CAN_DRAIN(WR, 3) -> sb_drain_one(WR, 3) }
#endif
    od
}
