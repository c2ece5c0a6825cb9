"""The cross-process torture run (``--processes N``): readers and writers in many processes.

The parent creates a `SharedDomain` with a unique name and a shared memory
block holding a `GuardedMemory` and the board (`board`), then starts N
reader processes and ``--writer-processes`` writer processes (`children`)
from a forkserver; each attaches by name.  The parent only watches: it
samples the completed grace periods (the longest gap between two), ends
the run at the first reader error, and with ``--kill`` SIGKILLs a random
child every 0.15 to 0.5 s and starts a new one in its slot.

Each victim is stopped first (SIGSTOP) so the parent can see what it was
doing: sections open (its rows' gauges) or a grace-period wait in
progress.  A child killed inside a section holds its readers' slots until
a writer proves its death and releases them: the parent times that, from
its death (the moment it is a zombie) until ``dead_readers_released``
grows.

The run fails on any reader error; on any writer sleep ended by its 50 ms
backstop timer with the readers gone (a lost wake-up), but for those that
a kill caused (from a victim's SIGSTOP until 100 ms after its death), and
those that released a dead process, which count as dead readers released
instead; when
fewer dead readers were released than children were killed inside a
section, or more than were killed; when a killed reader was not released
within 5 s; when no grace period completes for 20 s; or when a child
crashes or does not stop.  ``--busted`` makes the writer processes' grace
periods skip their waits: the readers must catch it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing import shared_memory
from multiprocessing.process import BaseProcess
from typing import Any, Final, final

import aiorcu
from aiorcu import testing

from .board import PAGE_SIZE, Board, Col, Lane, Layout
from .children import CRASH_STATUS, GONE_STATUS, ChildConfig, started
from .readers import reader_main
from .report import print_process_summary, print_verdict, progress_for
from .state import AGES, BACKSTOP_NS, HANG_S, STALL_S
from .writers import writer_main

KILL_EVERY_S: Final = (0.15, 0.5)  # the pause before each kill: uniform in this range
RELEASE_GOAL_S: Final = 0.5  # a dead reader's slots should be released this soon
RELEASE_LIMIT_S: Final = 5.0  # ... and the run fails past this
START_S: Final = 60.0  # the first children must be ready by then
STOP_WAIT_S: Final = 1.0  # how long a SIGSTOP may take to stop every thread of a victim
TICK_S: Final = 0.005  # the parent's sampling interval


@final
class Kills:
    """What the parent's SIGKILLs hit."""

    def __init__(self) -> None:
        self.readers = 0
        self.writers = 0
        self.inside_sections = 0  # victims with a read section open
        self.waiting = 0  # writer victims waiting for a grace period
        self.unconfirmed = 0  # victims that did not stop in time: gauges not read
        self.release_s: list[float] = []  # death to release, per victim inside a section
        self.pending: tuple[float, int] | None = None  # (killed at, released count before)
        # A victim stopped between its last section's exit and the wake-up of
        # the writer sleeping on it leaves that writer to its backstop timer:
        # the kill's doing, not a lost wake-up.  Backstops counted from the
        # SIGSTOP until BACKSTOP_NS after the death are set apart.
        self.backstops_seen = 0
        self.backstops_during_kills = 0
        self.window_end = 0.0
        self._lock = threading.Lock()

    def note_backstops(self, backstops: int, now: float) -> None:
        """Samples the domain's backstop count; new ones inside a kill's window are its."""
        with self._lock:  # the parent's loop and its sampler thread
            if backstops > self.backstops_seen and now <= self.window_end:
                self.backstops_during_kills += backstops - self.backstops_seen
            self.backstops_seen = max(self.backstops_seen, backstops)

    def as_dict(self) -> dict[str, Any]:
        return {
            "readers": self.readers,
            "writers": self.writers,
            "inside_sections": self.inside_sections,
            "waiting_for_grace_periods": self.waiting,
            "unconfirmed": self.unconfirmed,
            "releases_timed": len(self.release_s),
            "longest_release_ms": round(1000 * max(self.release_s, default=0.0), 1),
            "releases_over_goal": sum(s > RELEASE_GOAL_S for s in self.release_s),
            "backstops_during_kills": self.backstops_during_kills,
        }


@final
class Fleet:
    """The children: start one in a slot, kill one, stop them all."""

    def __init__(self, base: ChildConfig, context: Any, seed: int) -> None:
        self.base = base
        self.layout = base.layout
        self.context = context
        self.rng = random.Random(seed)
        self.procs: dict[int, BaseProcess] = {}
        self.killed: list[BaseProcess] = []  # dead, not necessarily joined yet
        self.starts = 0

    def role(self, slot: int) -> str:
        if slot < self.layout.readers:
            return f"reader process {slot}"
        return f"writer process {slot - self.layout.readers}"

    def rows(self, slot: int) -> range:
        """The board rows of the child in ``slot``."""
        if slot < self.layout.readers:
            return self.layout.reader_rows(slot)
        return self.layout.writer_rows(slot - self.layout.readers)

    def start(self, slot: int, board: Board) -> None:
        self.starts += 1
        config = dataclasses.replace(self.base, slot=slot, seed=self.base.seed * 7919 + self.starts)
        board.set_ready(slot, 0)
        # The gauges of a killed child's rows stay as it left them.
        for row in self.rows(slot):
            board.put(row, Col.INSIDE, 0)
            board.put(row, Col.WAITING, 0)
        target = reader_main if slot < self.layout.readers else writer_main
        proc = self.context.Process(target=target, args=(config,), name=f"torture-{slot}")
        proc.daemon = True
        proc.start()
        self.procs[slot] = proc

    def crashed(self) -> list[str]:
        """Children that exited on their own, and how."""
        found = []
        for slot, proc in self.procs.items():
            if proc.exitcode is not None:
                how = {
                    CRASH_STATUS: "a worker raised (traceback on stderr)",
                    GONE_STATUS: "the shared domain or memory was gone when it attached",
                }.get(proc.exitcode, f"status {proc.exitcode}")
                found.append(f"{self.role(slot)} exited during the run: {how}")
        return found

    def kill(self, slot: int, board: Board, kills: Kills, domain: aiorcu.SharedDomain) -> None:
        """Stops the child, reads what it was doing, SIGKILLs it and waits for its end."""
        proc = self.procs[slot]
        pid = proc.pid
        assert pid is not None
        inside = waiting = False
        kills.note_backstops(domain.stats().backstop_timeouts, time.monotonic())
        kills.window_end = math.inf
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        if _stopped(pid, STOP_WAIT_S):
            inside = board.total(Col.INSIDE, self.rows(slot)) > 0
            waiting = board.total(Col.WAITING, self.rows(slot)) > 0
        else:
            kills.unconfirmed += 1
        released = domain.stats().dead_readers_released  # the stopped child cannot be reaped
        identity = started(pid)
        proc.kill()
        # Dead once the kernel made it a zombie: the forkserver, which reaps
        # it and only then lets join() return, can lag by seconds on a busy
        # machine, and the release is timed from the death.
        deadline = time.monotonic() + HANG_S
        while started(pid) == identity and time.monotonic() < deadline:
            time.sleep(0.0005)
        self.killed.append(proc)
        kills.window_end = time.monotonic() + 2 * BACKSTOP_NS / 1e9
        if slot < self.layout.readers:
            kills.readers += 1
        else:
            kills.writers += 1
        kills.waiting += waiting
        if inside:
            kills.inside_sections += 1
            if not self.base.busted:  # busted grace periods reap nothing
                kills.pending = (time.monotonic(), released)

    def stop(self, board: Board) -> list[str]:
        """Ends the run: the stop word, then the joins; returns the children that hung."""
        board.stop()
        deadline = time.monotonic() + HANG_S
        stuck = []
        for slot, proc in self.procs.items():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                stuck.append(f"{self.role(slot)} did not stop within {HANG_S:g} s")
        self.kill_all()
        return stuck

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.exitcode is None:
                proc.kill()
        for proc in [*self.procs.values(), *self.killed]:
            proc.join()


def _stopped(pid: int, within: float) -> bool:
    """Whether every thread of ``pid`` is in the stopped state (polled from /proc)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
            states = []
            for tid in tids:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError):
            return False
        if states and all(s in "Tt" for s in states):
            return True
        time.sleep(0.0005)
    return False


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C: through the cleanup."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@final
class Watch:
    """The parent's samples: completed grace periods and their longest gap."""

    def __init__(self, domain: aiorcu.SharedDomain) -> None:
        self.completed = testing.completed_sequence(domain)
        self.last = self.completed()
        self.last_at = time.monotonic()
        self.longest_gap = 0.0

    def sample(self) -> float:
        """Samples; returns how long since the last grace period completed."""
        now = time.monotonic()
        done = self.completed()
        if done != self.last:
            self.longest_gap = max(self.longest_gap, now - self.last_at)
            self.last, self.last_at = done, now
        return now - self.last_at


@final
class ProcessRun:
    """The parent's view of one run: the board, the domain, the children, what went wrong."""

    def __init__(
        self, args: argparse.Namespace, seed: int, board: Board, domain: aiorcu.SharedDomain
    ) -> None:
        self.args = args
        self.seed = seed
        self.board = board
        self.domain = domain
        self.kills = Kills()
        self.failures: list[str] = []
        self.started = time.monotonic()
        self.longest_gap = 0.0

    def wait_ready(self, fleet: Fleet) -> bool:
        """Waits until every child has attached; False (and a failure) if one did not."""
        deadline = time.monotonic() + START_S
        while not all(self.board.ready(slot) for slot in fleet.procs):
            crashed = fleet.crashed()
            if crashed or time.monotonic() > deadline:
                self.failures.extend(crashed or [f"children not ready within {START_S:g} s"])
                return False
            time.sleep(0.01)
        return True

    def watch(self, fleet: Fleet) -> None:
        """The parent's loop until the time is up or an error shows.

        A sampler thread times grace periods and releases meanwhile: this
        loop blocks in kills and in starts, which wait for the forkserver.
        """
        args, board, kills = self.args, self.board, self.kills
        watch = Watch(self.domain)
        done = threading.Event()
        sampler = threading.Thread(
            target=self._sample, args=(watch, done), name="torture-sampler", daemon=True
        )
        progress = progress_for(args)
        self.started = time.monotonic()
        board.go()
        sampler.start()
        next_kill = self.started + fleet.rng.uniform(*KILL_EVERY_S)
        next_report = self.started
        try:
            while True:
                now = time.monotonic()
                self.failures.extend(fleet.crashed())
                errors = board.total(Col.ERRORS)
                elapsed = now - self.started
                if progress is not None and now >= next_report:
                    next_report = now + 0.2
                    status = (
                        f"reads {board.total(Col.READS):,}  grace periods "
                        f"{self.domain.stats().grace_periods:,}  kills "
                        f"{kills.readers + kills.writers}  errors {errors}"
                    )
                    progress.update(min(elapsed, args.seconds), status)
                if elapsed >= args.seconds or errors or self.failures:
                    break
                if args.kill and now >= next_kill and kills.pending is None:
                    slot = fleet.rng.randrange(fleet.layout.slots)
                    fleet.kill(slot, board, kills, self.domain)
                    fleet.start(slot, board)
                    next_kill = time.monotonic() + fleet.rng.uniform(*KILL_EVERY_S)
                time.sleep(TICK_S)
        finally:
            done.set()
            sampler.join()
            if progress is not None:
                progress.close()
        self.longest_gap = max(watch.longest_gap, watch.sample())

    def _sample(self, watch: Watch, done: threading.Event) -> None:
        """The sampler thread: grace-period gaps, the stall check, releases, backstops."""
        while not done.wait(TICK_S):
            now = time.monotonic()
            if watch.sample() > STALL_S:
                self.failures.append(f"no grace period completed for {STALL_S:g} s")
                return
            self._check_release(now)
            self.kills.note_backstops(self.domain.stats().backstop_timeouts, now)

    def _check_release(self, now: float) -> None:
        """Times the release of the last child killed inside a section."""
        if self.kills.pending is None:
            return
        killed_at, before = self.kills.pending
        if self.domain.stats().dead_readers_released > before:
            self.kills.release_s.append(now - killed_at)
            self.kills.pending = None
        elif now - killed_at > RELEASE_LIMIT_S:
            self.failures.append(
                f"a child killed inside a read section was not released within "
                f"{RELEASE_LIMIT_S:g} s"
            )
            self.kills.pending = None

    def judge(self, errors: int, reads: int, thread_reads: int) -> None:
        """Adds the failures that the final figures show."""
        args, kills, stats = self.args, self.kills, self.domain.stats()
        kills.note_backstops(stats.backstop_timeouts, time.monotonic())
        lost = stats.backstop_timeouts - kills.backstops_during_kills
        if lost:
            self.failures.append(
                f"{lost} writer sleep(s) ended by the "
                f"{BACKSTOP_NS // 1_000_000} ms backstop timer with the readers gone and none "
                "of them dead: lost wake-up(s) (read sections of 50 ms or more: "
                f"{self.board.total(Col.LONG_SECTIONS)})"
            )
        killed = kills.readers + kills.writers
        released = stats.dead_readers_released
        if not args.busted and not errors and not kills.unconfirmed:
            if released < kills.inside_sections:
                self.failures.append(
                    f"{kills.inside_sections} children were killed inside a read section, and "
                    f"only {released} dead reader(s) were released"
                )
            if released > killed:
                self.failures.append(f"{released} dead readers released, but only {killed} kills")
        if not errors:
            if reads == 0 or stats.grace_periods == 0:
                self.failures.append("the run was too short to read or complete a grace period")
            elif args.tasks and reads == thread_reads:
                self.failures.append("no reader task read anything")
            elif args.kill and killed == 0:
                self.failures.append("the run was too short to kill a child")

    def figures(self, elapsed: float) -> dict[str, Any]:
        args, board, kills = self.args, self.board, self.kills
        layout = board.layout
        reads = board.total(Col.READS)
        thread_reads = sum(
            board.get(row, Col.READS)
            for r in range(layout.readers)
            for row in layout.reader_rows(r)[: layout.threads]
        )
        errors = board.total(Col.ERRORS)
        self.judge(errors, reads, thread_reads)
        stats = self.domain.stats()
        first = board.first_errors()
        caught = errors > 0
        code = 0 if caught == bool(args.expect_failure) and not self.failures else 1
        published = {
            lane.name.lower(): sum(
                board.get(layout.writer_row(w, lane), Col.PUBLISHED) for w in range(layout.writers)
            )
            for lane in (Lane.SYNC, Lane.ASYNC)
        }
        return {
            "seconds": args.seconds,
            "elapsed": round(elapsed, 3),
            "seed": self.seed,
            "processes": layout.readers,
            "writer_processes": layout.writers,
            "threads": layout.threads,
            "tasks": args.tasks,
            "kill": args.kill,
            "busted": args.busted,
            "jitter": args.jitter,
            "backend": self.domain.backend_info().mechanism,
            "reads": reads,
            "thread_reads": thread_reads,
            "task_reads": reads - thread_reads,
            "memory_reads": board.total(Col.MEMORY_READS),
            "memory_denied": board.total(Col.MEMORY_DENIED),
            "age_histogram": [board.total(Col.AGES + i) for i in range(AGES + 1)],
            "pipeline": [board.total(Col.PIPELINE + i) for i in range(3)],
            "grace_periods": stats.grace_periods,
            "longest_gap_ms": round(1000 * self.longest_gap, 1),
            "release_goal_ms": 1000 * RELEASE_GOAL_S,
            "published": published,
            "retired": board.total(Col.RETIRED) + board.total(Col.CALLBACKS_RUN),
            "callbacks_queued": board.total(Col.CALLBACKS_QUEUED),
            "callbacks_run": board.total(Col.CALLBACKS_RUN),
            "revokes": board.total(Col.REVOKES),
            "kills": kills.as_dict(),
            "dead_readers_released": stats.dead_readers_released,
            "processes_attached": stats.processes_attached,
            "writer_sleeps": stats.writer_sleeps,
            "reader_wakeups": stats.reader_wakeups,
            "backstop_timeouts": stats.backstop_timeouts,
            "long_sections": board.total(Col.LONG_SECTIONS),
            "longest_section_ms": round(board.most(Col.MAX_SPAN_NS) / 1e6, 3),
            "errors": errors,
            "first_error_seconds": (
                None if not first else round(max(0.0, first[0][0] / 1e9 - self.started), 3)
            ),
            "error_messages": [message for _, message in first[:5]],
            "failures": self.failures,
            "exit_code": code,
        }


def run_processes(args: argparse.Namespace, seed: int) -> int:
    """The whole cross-process run: set up, watch, judge, report, clean up."""
    layout = Layout(readers=args.processes, writers=args.writer_processes, threads=args.threads)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([reader_main.__module__, writer_main.__module__])
    try:
        with _terminate_as_interrupt():
            figures = _run(args, seed, layout, context)
    except KeyboardInterrupt:
        # The cleanup has run: the children are gone, and so are the names.
        print("aiorcu torture: interrupted", file=sys.stderr)
        return 130
    code: int = figures["exit_code"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return code
    print_process_summary(figures)
    print_verdict(figures, args.expect_failure)
    return code


def _run(args: argparse.Namespace, seed: int, layout: Layout, context: Any) -> dict[str, Any]:
    """Sets up, runs and judges; the exit stack removes everything, however it ends."""
    name = f"torture-{os.getpid()}-{secrets.token_hex(4)}"
    memory_bytes = aiorcu.GuardedMemory.buffer_size(layout.pages, PAGE_SIZE)
    board_offset = (memory_bytes + 4095) // 4096 * 4096
    parent_started = started(os.getpid())
    assert parent_started is not None
    with contextlib.ExitStack() as cleanup:
        domain = aiorcu.SharedDomain(name, create=True)
        cleanup.callback(domain.unlink)
        cleanup.callback(domain.close)
        if not args.json:
            print(
                f"aiorcu torture: {layout.readers} reader processes ({layout.threads} threads, "
                f"{args.tasks} tasks each), {layout.writers} writer processes, {args.seconds:g} s, "
                f"backend {domain.backend_info().mechanism}, seed {seed}"
                + (" [kills]" if args.kill else "")
                + (" [jitter]" if args.jitter else "")
                + (" [BUSTED grace periods]" if args.busted else ""),
                flush=True,
            )
        shm = shared_memory.SharedMemory(create=True, size=board_offset + layout.size)
        cleanup.callback(shm.unlink)
        cleanup.callback(shm.close)
        buf = shm.buf
        assert buf is not None
        memory_view = buf[:memory_bytes]
        cleanup.callback(memory_view.release)
        memory = aiorcu.GuardedMemory(
            layout.pages, PAGE_SIZE, domain=domain, initial=True, buffer=memory_view
        )
        cleanup.callback(memory.close)
        data_offset = _pages_offset(memory, memory_view)
        board = Board(buf[board_offset:], layout)
        cleanup.callback(board.release)
        board.format(testing.completed_sequence(domain)())
        base = ChildConfig(
            domain=name,
            shm=shm.name,
            layout=layout,
            memory_bytes=memory_bytes,
            data_offset=data_offset,
            board_offset=board_offset,
            slot=-1,
            seed=seed,
            tasks=args.tasks,
            busted=args.busted,
            jitter=args.jitter,
            parent=os.getpid(),
            parent_started=parent_started,
        )
        fleet = Fleet(base, context, seed)
        cleanup.callback(fleet.kill_all)
        run = ProcessRun(args, seed, board, domain)
        for slot in range(layout.slots):
            fleet.start(slot, board)
        if run.wait_ready(fleet):
            run.watch(fleet)
        elapsed = time.monotonic() - run.started
        run.failures.extend(fleet.stop(board))
        # Dead readers that no busted writer reaped: this grace period releases them.
        try:
            domain.synchronize_blocking(timeout=HANG_S)
        except aiorcu.GracePeriodTimeout:
            run.failures.append(f"the final grace period did not complete within {HANG_S:g} s")
        figures = run.figures(elapsed)
        figures["names"] = {"domain": name, "shared_memory": shm.name}
        return figures


def _pages_offset(memory: aiorcu.GuardedMemory, buffer: memoryview) -> int:
    """Where the guarded memory's pages start in its buffer: found by a marker written."""
    marker = secrets.token_bytes(16)
    memory.write(0, marker)
    offset = bytes(buffer).find(marker)
    memory.write(0, bytes(len(marker)))
    if offset < 0:
        raise RuntimeError("the guarded memory's pages are not in its buffer")
    return offset
