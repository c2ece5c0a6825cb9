"""Stress run in the style of Linux's rcutorture: no reader may see a retired object.

Readers on threads (``with``) and on asyncio tasks (``async with``; half of
them await inside their sections), the tasks on an event loop of their own
thread, read an object published in an `RcuCell`.  Writers replace it in a
pipeline, each retiring what it replaced another way:

- ``sync`` (thread): publish, ``synchronize_blocking()``, retire; every
  fourth time ``RcuCell.replace_blocking()``;
- ``deferred`` (thread): publish, retire with ``call_after_grace_period()``;
- ``poll`` (thread): publish, ``start_grace_period()``, retire once ``poll()``
  says its token completed;
- ``async`` (task): publish, ``await synchronize()``, retire; every other
  time ``await RcuCell.replace()``.

Retiring marks the object dead and drops its payload.  Each object records
the number of the last completed grace period when it was published (its
generation) and, once replaced, the token of the first grace period that
starts after its replacement (`Domain.snapshot()`).  Every read, at the end
of its section, records the object's age in grace periods (completed number
minus generation) in a histogram, like rcutorture's pipeline, and is an
error if the object was retired, or if the grace period named by its token
completed while the reader still held it: that grace period must wait for it.

The run stops at the first error and fails (exit 1).  It also fails when
more writer sleeps were ended by their 50 ms backstop timer (readers gone,
no wake-up) than read sections lasted 50 ms or more: only such a section's
wake-up can have come that late, so the rest were lost; when no grace
period completes for 20 s; and, with ``--report-rss`` on runs of 60 s or
more, when RSS grows more than 5 MiB between the end of the warm-up (a fifth
of the run, 60 s at most) and the end.  ``--busted`` makes grace periods
skip their waits: the run must catch that within seconds, and with
``--expect-failure`` it succeeds only if it did.  ``--jitter`` adds random
delays inside read sections, in ``with`` entries between the phase load
and the count update, and between the C writer's grace-period steps.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import itertools
import json
import os
import random
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol, final

import aiorcu

from . import testing

AGES: Final = 10  # histogram buckets 0..9, then "10+"
BACKSTOP_NS: Final = 50_000_000  # BACKSTOP_NS in csrc/grace.c
STALL_WARNING_S: Final = 1.0  # first stall warning (the domain's default is 0.1 s)
STALL_S: Final = 20.0  # no grace period for this long while writers run: failure
HANG_S: Final = 30.0  # joins and the final callback flush give up after this
RSS_LIMIT: Final = 5 * 1024 * 1024
RSS_JUDGED_FROM_S: Final = 60.0  # shorter runs report RSS growth without judging it
MAX_CALLBACKS: Final = 512  # the deferred writer's callbacks in flight
POLL_PIPELINE: Final = 8  # the polling writer's tokens in flight
READER_JITTER_S: Final = 0.001
WRITER_JITTER_S: Final = 0.0002
KEPT_ERRORS: Final = 5


@final
class _Object:
    """What readers read.  ``payload`` goes away when the object is retired."""

    __slots__ = ("gen", "payload", "replaced", "retired", "serial")

    def __init__(self, serial: int, gen: int) -> None:
        self.serial = serial
        self.gen = gen
        self.payload: tuple[int, int] | None = (serial, serial * 7919)
        self.replaced: int | None = None  # snapshot() token taken after the replacement
        self.retired = False


@final
class _Tally:
    """Counts of one reader thread, or of all tasks of the loop: one writer thread each."""

    __slots__ = ("ages", "long_sections", "max_span_ns", "pipeline", "reads")

    def __init__(self) -> None:
        self.reads = 0
        self.ages = [0] * (AGES + 1)
        # At the end of the section: [still current, replaced but its grace
        # period pending, its grace period completed (an error)].
        self.pipeline = [0, 0, 0]
        self.max_span_ns = 0
        self.long_sections = 0  # sections that lasted BACKSTOP_NS or more

    def span(self, ns: int) -> None:
        self.max_span_ns = max(self.max_span_ns, ns)
        if ns >= BACKSTOP_NS:
            self.long_sections += 1


@final
class _Run:
    """State shared by the workers of one run."""

    def __init__(self, domain: aiorcu.Domain, seed: int, jitter: bool) -> None:
        self.domain = domain
        self.seed = seed
        self.jitter = jitter
        self.completed = testing.completed_sequence(domain)
        self.cell: aiorcu.RcuCell[_Object] = aiorcu.RcuCell(self._new(0), domain)
        self._serials = itertools.count(1)
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.errors = 0
        self.messages: list[str] = []
        self.first_error_at: float | None = None
        self.failures: list[str] = []  # failures that are not reader errors
        self.published: dict[str, int] = {}
        self.retired = 0
        self.callbacks_queued = 0
        self.callbacks_run = 0
        self.callback_room = threading.Semaphore(MAX_CALLBACKS)

    def _new(self, serial: int) -> _Object:
        return _Object(serial, self.completed())

    def new(self) -> _Object:
        return self._new(next(self._serials))

    def retire(self, obj: _Object) -> None:
        obj.retired = True
        obj.payload = None
        with self.lock:
            self.retired += 1

    def retire_callback(self, obj: _Object) -> None:
        self.retire(obj)
        self.callbacks_run += 1  # only the callback thread writes it
        self.callback_room.release()

    def error(self, message: str) -> None:
        with self.lock:
            self.errors += 1
            if self.first_error_at is None:
                self.first_error_at = time.monotonic() - self.started
            if len(self.messages) < KEPT_ERRORS:
                self.messages.append(message)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)
        self.stop.set()

    def check(self, tally: _Tally, obj: _Object, who: str) -> None:
        """Called at the end of a read section, still inside it."""
        now = self.completed()
        tally.reads += 1
        age = now - obj.gen
        tally.ages[min(max(age, 0), AGES)] += 1
        token = obj.replaced
        late = token is not None and now >= token
        tally.pipeline[0 if token is None else 2 if late else 1] += 1
        payload = obj.payload
        if late or obj.retired or payload is None or payload[0] != obj.serial or age < 0:
            self.error(
                f"{who} read object #{obj.serial} (generation {obj.gen}) at completed grace "
                f"period {now}: "
                + (
                    "it was retired"
                    if obj.retired or payload is None
                    else f"the grace period {token} of its replacement had completed"
                    if late
                    else "its payload or generation is wrong"
                )
            )

    def reader_delay(self) -> None:
        """``--jitter``: between a ``with`` entry's phase load and its count update."""
        r = random.random()
        if r < 0.01:
            time.sleep(r * 100 * READER_JITTER_S)
        elif r < 0.02:
            time.sleep(0)


def _guarded(run: _Run, name: str, fn: Callable[[], None]) -> Callable[[], None]:
    def main() -> None:
        try:
            fn()
        except BaseException as exc:
            run.fail(f"{name} raised {exc!r}")

    return main


# -- readers -------------------------------------------------------------------
def _thread_reader(run: _Run, tally: _Tally, index: int) -> None:
    domain, cell, stop = run.domain, run.cell, run.stop
    rng = random.Random(run.seed * 1009 + index)
    who = f"reader thread {index}"
    clock = time.monotonic_ns
    n = 0
    while not stop.is_set():
        n += 1
        t0 = clock()
        with domain.read():
            obj = cell.get()
            if n % 16 == 0:
                with domain.read():  # nested: joins the outer section's phase
                    run.check(tally, cell.get(), who)
            if run.jitter and rng.random() < 0.02:
                time.sleep(rng.random() * READER_JITTER_S)
            elif n % 64 == 0:
                time.sleep(0)  # let the writers run while this section is open
            run.check(tally, obj, who)
        tally.span(clock() - t0)


async def _task_reader(run: _Run, tally: _Tally, index: int) -> None:
    domain, cell, stop = run.domain, run.cell, run.stop
    rng = random.Random(run.seed * 2003 + index)
    awaits = index % 2 == 0
    who = f"reader task {index}"
    clock = time.monotonic_ns
    while not stop.is_set():
        t0 = clock()
        async with domain.read():
            obj = cell.get()
            if awaits:
                await asyncio.sleep(0)  # other tasks, and the async writer, run meanwhile
                if run.jitter and rng.random() < 0.05:
                    await asyncio.sleep(rng.random() * READER_JITTER_S)
            run.check(tally, obj, who)
        tally.span(clock() - t0)
        if not awaits:
            await asyncio.sleep(0)


# -- writers -------------------------------------------------------------------
def _sync_writer(run: _Run) -> None:
    domain, cell = run.domain, run.cell
    rng = random.Random(run.seed * 3001)
    published = 0
    while not run.stop.is_set():
        if published % 4 == 3:
            cell.replace_blocking(run.new(), run.retire)
        else:
            old = cell.publish(run.new())
            old.replaced = domain.snapshot()  # after the publication, never before
            if run.jitter and rng.random() < 0.1:
                time.sleep(rng.random() * READER_JITTER_S)
            domain.synchronize_blocking()
            run.retire(old)
        published += 1
        run.published["sync"] = published


def _deferred_writer(run: _Run) -> None:
    domain, cell = run.domain, run.cell
    rng = random.Random(run.seed * 3011)
    published = 0
    while not run.stop.is_set():
        if not run.callback_room.acquire(timeout=0.1):
            continue
        old = cell.publish(run.new())
        old.replaced = domain.snapshot()
        run.callbacks_queued += 1
        domain.call_after_grace_period(run.retire_callback, old)
        published += 1
        run.published["deferred"] = published
        time.sleep(rng.random() * 0.0002)


def _poll_writer(run: _Run) -> None:
    domain, cell = run.domain, run.cell
    rng = random.Random(run.seed * 3019)
    pending: collections.deque[tuple[int, _Object]] = collections.deque()
    published = 0
    while not run.stop.is_set():
        old = cell.publish(run.new())
        old.replaced = domain.start_grace_period()
        pending.append((old.replaced, old))
        published += 1
        run.published["poll"] = published
        while pending and domain.poll(pending[0][0]):
            run.retire(pending.popleft()[1])
        if len(pending) >= POLL_PIPELINE:
            domain.wait_blocking(pending[0][0])
        time.sleep(rng.random() * 0.001)
    if pending:
        domain.wait_blocking(pending[-1][0])
        for _, obj in pending:
            run.retire(obj)


async def _async_writer(run: _Run) -> None:
    domain, cell = run.domain, run.cell
    rng = random.Random(run.seed * 3023)
    published = 0
    while not run.stop.is_set():
        if published % 2:
            await cell.replace(run.new(), run.retire)
        else:
            old = cell.publish(run.new())
            old.replaced = domain.snapshot()
            await domain.synchronize()
            run.retire(old)
        published += 1
        run.published["async"] = published
        await asyncio.sleep(rng.random() * 0.002)


def _loop_main(run: _Run, tally: _Tally, tasks: int) -> None:
    async def main() -> None:
        async def guarded(name: str, coro: Any) -> None:
            try:
                await coro
            except BaseException as exc:
                run.fail(f"{name} raised {exc!r}")

        workers = [asyncio.create_task(guarded("async writer", _async_writer(run)), name="writer")]
        workers += [
            asyncio.create_task(
                guarded(f"reader task {i}", _task_reader(run, tally, i)), name=f"reader-{i}"
            )
            for i in range(tasks)
        ]
        await asyncio.gather(*workers)

    asyncio.run(main())


# -- progress and figures ------------------------------------------------------
class _Progress(Protocol):
    def update(self, elapsed: float, status: str) -> None: ...
    def close(self) -> None: ...


@final
class _PlainProgress:
    """A line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = interval

    def update(self, elapsed: float, status: str) -> None:
        if elapsed >= self._next:
            self._next += self._interval
            print(f"[{elapsed:7.1f} s] {status}", flush=True)

    def close(self) -> None:
        pass


@final
class _RichProgress:
    """A progress bar on a terminal (the ``cli`` extra)."""

    def __init__(self, seconds: float) -> None:
        from rich.progress import (  # noqa: PLC0415 - optional, terminals only
            BarColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("torture"),
            BarColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self._task = self._progress.add_task("torture", total=seconds, status="")
        self._progress.start()

    def update(self, elapsed: float, status: str) -> None:
        self._progress.update(self._task, completed=elapsed, status=status)

    def close(self) -> None:
        self._progress.stop()


def _make_progress(args: argparse.Namespace) -> _Progress | None:
    if args.json:
        return None
    if sys.stdout.isatty():
        try:
            return _RichProgress(args.seconds)
        except ImportError:
            pass
    return _PlainProgress(min(30.0, max(1.0, args.seconds / 5)))


@final
class _RssSamples:
    """RSS after the warm-up, at the end of the run (workers still running), and the peak."""

    def __init__(self, warmup: float) -> None:
        self.warmup = warmup
        self.warm: int | None = None
        self.end: int | None = None
        self.peak = 0

    def sample(self, elapsed: float) -> int:
        now = rss_bytes()
        self.peak = max(self.peak, now)
        if self.warm is None and elapsed >= self.warmup:
            self.warm = now
        return now

    def finish(self) -> None:
        self.end = self.sample(0.0)
        if self.warm is None:
            self.warm = self.end


def _watch(
    state: _Run, args: argparse.Namespace, tallies: list[_Tally], rss: _RssSamples | None
) -> None:
    """The main thread's part: progress, the stall check and RSS samples, then stop."""
    progress = _make_progress(args)
    last_gp, last_gp_at = state.completed(), time.monotonic()
    try:
        while not state.stop.is_set():
            elapsed = time.monotonic() - state.started
            gp = state.completed()
            if gp != last_gp:
                last_gp, last_gp_at = gp, time.monotonic()
            elif time.monotonic() - last_gp_at > STALL_S:
                state.fail(f"no grace period completed for {STALL_S:g} s")
            status = f"reads {sum(t.reads for t in tallies):,}  grace periods {gp:,}"
            status += f"  errors {state.errors}"
            if rss is not None:
                status += f"  RSS {rss.sample(elapsed) / 2**20:.1f} MiB"
            if progress is not None:
                progress.update(min(elapsed, args.seconds), status)
            if elapsed >= args.seconds or state.errors:
                break
            time.sleep(0.2)
        if rss is not None:
            rss.finish()
    finally:
        state.stop.set()
        if progress is not None:
            progress.close()


def rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def judge_rss(seconds: float, warm: int | None, end: int | None) -> str | None:
    """Why the RSS figures fail the run, or None.  Short runs are not judged."""
    if seconds < RSS_JUDGED_FROM_S or warm is None or end is None:
        return None
    if end - warm > RSS_LIMIT:
        return (
            f"RSS grew {(end - warm) / 2**20:.1f} MiB after the warm-up (limit "
            f"{RSS_LIMIT / 2**20:.0f} MiB): something keeps memory per read or grace period"
        )
    return None


def judge_backstops(backstops: int, long_sections: int) -> str | None:
    """Why the writer's backstop wake-ups fail the run, or None.

    A writer sleep ends by its backstop timer, with the readers gone, only
    if the last reader's wake-up came more than BACKSTOP_NS after the writer
    saw that reader inside: so that reader's section, timed from before its
    phase load to after its wake-up, lasted that long.  Each such section
    can excuse one backstop (it clears its flag once); the rest are wake-ups
    that were lost.
    """
    lost = backstops - long_sections
    if lost > 0:
        return (
            f"{backstops} writer sleep(s) ended by the {BACKSTOP_NS // 1_000_000} ms backstop "
            f"timer with the readers gone, and only {long_sections} read section(s) lasted "
            f"that long: at least {lost} wake-up(s) were lost"
        )
    return None


def _sum_tallies(tallies: list[_Tally]) -> tuple[int, list[int], list[int], int, int]:
    reads = sum(t.reads for t in tallies)
    ages = [sum(t.ages[i] for t in tallies) for i in range(AGES + 1)]
    pipeline = [sum(t.pipeline[i] for t in tallies) for i in range(3)]
    longest = max((t.max_span_ns for t in tallies), default=0)
    long_sections = sum(t.long_sections for t in tallies)
    return reads, ages, pipeline, longest, long_sections


def _print_summary(figures: dict[str, Any]) -> None:
    reads = figures["reads"]
    print("age of the objects read, in grace periods completed since their publication:")
    top = max(figures["age_histogram"]) or 1
    for age, count in enumerate(figures["age_histogram"]):
        label = f"{age}" if age < AGES else f"{AGES}+"
        share = 100 * count / reads if reads else 0.0
        print(f"  {label:>4}  {count:>13,}  {share:5.1f}%  {'#' * round(40 * count / top)}")
    current, pending, late = figures["pipeline"]
    print(
        f"objects read: still current {current:,}; replaced, grace period pending "
        f"{pending:,}; replaced, grace period completed (errors) {late:,}"
    )
    published = figures["published"]
    rss = figures.get("rss")
    lines = [
        (
            "reads",
            f"{reads:,} ({reads / figures['elapsed']:,.0f}/s): threads "
            f"{figures['thread_reads']:,}, tasks {figures['task_reads']:,}",
        ),
        ("grace periods", f"{figures['grace_periods']:,}"),
        (
            "objects published",
            f"{sum(published.values()):,} ("
            + ", ".join(f"{k} {v:,}" for k, v in sorted(published.items()))
            + f"), retired {figures['retired']:,}",
        ),
        ("callbacks", f"{figures['callbacks_queued']:,} queued, {figures['callbacks_run']:,} run"),
        ("offloaded waits", f"{figures['offloaded_waits']:,}"),
        (
            "writer sleeps",
            f"{figures['writer_sleeps']:,}, reader wake-ups {figures['reader_wakeups']:,}",
        ),
        (
            "backstop timeouts",
            f"{figures['backstop_timeouts']:,} (read sections of 50 ms or more: "
            f"{figures['long_sections']:,}, longest {figures['longest_section_ms']:.1f} ms)",
        ),
        ("stall warnings", f"{figures['stall_warnings']:,} (grace periods waiting 1 s or more)"),
    ]
    if rss is not None:
        lines.append(
            (
                "RSS",
                f"{rss['warm'] / 2**20:.1f} MiB after {rss['warmup_seconds']:g} s warm-up, "
                f"{rss['end'] / 2**20:.1f} MiB at the end: growth "
                f"{(rss['end'] - rss['warm']) / 2**20:+.2f} MiB, peak {rss['peak'] / 2**20:.1f} MiB"
                + ("" if rss["judged"] else " (not judged: run shorter than 60 s)"),
            )
        )
    lines.append(("errors", f"{figures['errors']:,}"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")
    for message in figures["error_messages"]:
        print(f"  error: {message}")
    for message in figures["failures"]:
        print(f"  failure: {message}")


# -- the run -------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to run (default: 5)")
    parser.add_argument(
        "--threads", "--readers", type=int, default=2, help="reader threads (default: 2)"
    )
    parser.add_argument(
        "--tasks", type=int, default=16, help="reader tasks on the event loop (default: 16)"
    )
    parser.add_argument("--busted", action="store_true", help="grace periods do not wait")
    parser.add_argument(
        "--jitter",
        action="store_true",
        help="random delays inside read sections, in section entries and between writer steps",
    )
    parser.add_argument(
        "--expect-failure", action="store_true", help="succeed only if an error was caught"
    )
    parser.add_argument(
        "--report-rss",
        action="store_true",
        help="report RSS growth after the warm-up; over 5 MiB fails runs of 60 s or more",
    )
    parser.add_argument("--json", action="store_true", help="print the final figures as JSON")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choices")


@contextlib.contextmanager
def _jitter(run: _Run, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with (
        testing.reader_delay(run.domain, run.reader_delay),
        testing.writer_jitter(WRITER_JITTER_S),
    ):
        yield


def run(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.threads < 0 or args.tasks < 0 or args.threads + args.tasks < 1:
        print("aiorcu torture: need --seconds > 0 and at least one reader thread or task")
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    domain = aiorcu.Domain(name="torture")
    # Warn about grace periods stuck for a second, not the 100 ms that a busy
    # machine reaches now and then; each warning names who is inside.
    testing.set_stall_interval(domain, STALL_WARNING_S, 10.0)
    if args.busted:
        testing.set_busted(domain)
    state = _Run(domain, seed, args.jitter)
    thread_tallies = [_Tally() for _ in range(args.threads)]
    task_tally = _Tally()
    workers = [
        threading.Thread(
            target=_guarded(
                state, f"reader thread {i}", functools.partial(_thread_reader, state, t, i)
            ),
            name=f"torture-reader-{i}",
            daemon=True,
        )
        for i, t in enumerate(thread_tallies)
    ]
    writers = {"sync": _sync_writer, "deferred": _deferred_writer, "poll": _poll_writer}
    for name, fn in writers.items():
        workers.append(
            threading.Thread(
                target=_guarded(state, f"{name} writer", functools.partial(fn, state)),
                name=f"torture-{name}-writer",
                daemon=True,
            )
        )
    workers.append(
        threading.Thread(
            target=functools.partial(_loop_main, state, task_tally, args.tasks),
            name="torture-event-loop",
            daemon=True,
        )
    )
    if not args.json:
        print(
            f"aiorcu torture: {args.threads} reader threads, {args.tasks} reader tasks, "
            f"4 writers, {args.seconds:g} s, backend {aiorcu.backend_info().mechanism}, "
            f"seed {seed}"
            + (" [jitter]" if args.jitter else "")
            + (" [BUSTED grace periods]" if args.busted else ""),
            flush=True,
        )
    tallies = [*thread_tallies, task_tally]
    rss = _RssSamples(min(60.0, args.seconds / 5)) if args.report_rss else None
    with _jitter(state, args.jitter):
        state.started = time.monotonic()
        for w in workers:
            w.start()
        _watch(state, args, tallies, rss)
        deadline = time.monotonic() + HANG_S
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        stuck = [w.name for w in workers if w.is_alive()]
        if stuck:
            state.fail(f"{', '.join(stuck)} did not stop within {HANG_S:g} s")
        else:
            flushed = threading.Event()
            domain.call_after_grace_period(flushed.set)
            if not flushed.wait(HANG_S):
                state.fail(f"queued callbacks did not run within {HANG_S:g} s")
    elapsed = time.monotonic() - state.started

    stats = domain.stats()
    raw = testing.raw_stats(domain)
    reads, ages, pipeline, longest, long_sections = _sum_tallies(tallies)
    thread_reads = sum(t.reads for t in thread_tallies)
    failures = list(state.failures)
    backstop = judge_backstops(raw["backstop_timeouts"], long_sections)
    if backstop:
        failures.append(backstop)
    if not state.errors:
        if reads == 0 or stats.grace_periods == 0:
            failures.append("the run was too short to read or complete a grace period")
        elif args.tasks and task_tally.reads == 0:
            failures.append("no reader task read anything")
    rss_figures: dict[str, Any] | None = None
    if rss is not None and rss.warm is not None and rss.end is not None:
        rss_figures = {
            "warmup_seconds": round(rss.warmup, 1),
            "warm": rss.warm,
            "end": rss.end,
            "growth": rss.end - rss.warm,
            "peak": max(rss.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "judged": args.seconds >= RSS_JUDGED_FROM_S,
        }
        rss_failure = judge_rss(args.seconds, rss.warm, rss.end)
        if rss_failure:
            failures.append(rss_failure)

    caught = state.errors > 0
    # A crash, hang or leak fails the run even when errors were expected.
    code = 0 if caught == bool(args.expect_failure) and not failures else 1
    figures: dict[str, Any] = {
        "seconds": args.seconds,
        "elapsed": round(elapsed, 3),
        "seed": seed,
        "threads": args.threads,
        "tasks": args.tasks,
        "busted": args.busted,
        "jitter": args.jitter,
        "backend": aiorcu.backend_info().mechanism,
        "reads": reads,
        "thread_reads": thread_reads,
        "task_reads": task_tally.reads,
        "age_histogram": ages,
        "pipeline": pipeline,
        "grace_periods": stats.grace_periods,
        "published": dict(state.published),
        "retired": state.retired,
        "callbacks_queued": state.callbacks_queued,
        "callbacks_run": state.callbacks_run,
        "offloaded_waits": stats.offloaded_waits,
        "writer_sleeps": stats.writer_sleeps,
        "reader_wakeups": stats.reader_wakeups,
        "backstop_timeouts": raw["backstop_timeouts"],
        "long_sections": long_sections,
        "longest_section_ms": round(longest / 1e6, 3),
        "stall_warnings": stats.stall_warnings,
        "errors": state.errors,
        "first_error_seconds": (
            None if state.first_error_at is None else round(state.first_error_at, 3)
        ),
        "error_messages": list(state.messages),
        "failures": failures,
        "rss": rss_figures,
        "exit_code": code,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return code
    _print_summary(figures)
    if caught and state.first_error_at is not None:
        when = f"first error after {state.first_error_at:.3f} s"
        if args.expect_failure and failures:
            print(f"FAILED: errors were caught ({when}), but {failures[0]}")
        elif args.expect_failure:
            print(f"OK (failure expected): the run caught {state.errors:,} error(s), {when}")
        else:
            print(f"FAILED: {state.errors:,} reader error(s), {when}")
    elif args.expect_failure:
        print("FAILED: an error was expected and none was caught")
    elif failures:
        print(f"FAILED: {failures[0]}")
    else:
        print("OK: no reader saw a retired object")
    return code
