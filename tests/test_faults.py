"""Fault injection: the machinery fails, readers die, processes fork, tasks are cancelled.

Each test breaks one thing on purpose and checks the promise that must
survive it: a grace period still waits for every reader that began before
it, or it raises and says what to do; nothing is ever silently skipped.

Kernel faults come from two places.  ``aiorcu.testing.fail_membarrier`` makes
the library's own membarrier attempts fail (the run-time hook).  For the
kernel itself, a subprocess installs a seccomp filter that makes the
membarrier(2) system call fail with a chosen errno for chosen commands: that
is how "membarrier unavailable at start" is produced without a debug hook,
since the backend is chosen once, at import, from real system calls.

Waits are hang guards only (see conftest): where a test shows that a grace
period keeps waiting, it checks that it has not finished after a short pause
and that it does finish once the reader leaves.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import os
import platform
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from _thread import get_ident
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import aiorcu
from aiorcu import testing

from .conftest import (
    HANG_GUARD,
    Background,
    assert_waits_for_a_reader,
    background_synchronize,
    hold_section,
)

MEMBARRIER = aiorcu.backend_info().membarrier
needs_membarrier = pytest.mark.skipif(not MEMBARRIER, reason="membarrier not in use")

PAUSE = 0.2  # "still waiting after this long" checks; never a timing assertion

# membarrier(2) commands (linux/membarrier.h)
CMD_QUERY = 0
CMD_GLOBAL = 1
CMD_PRIVATE_EXPEDITED = 8
CMD_REGISTER_PRIVATE_EXPEDITED = 16


def _still_waiting(call: Background) -> bool:
    return not call.done.wait(PAUSE)


# -- the kernel refuses membarrier: subprocesses with a seccomp filter ---------------

# Installs a seccomp filter making membarrier(cmd) fail with errno for each
# (cmd, errno) in FAULTS; every other system call is allowed.  Filters stack,
# so calling it twice refuses the union.
SECCOMP_HELPER = r"""
import ctypes, errno, json, platform, struct, sys, threading, time

_ARCH = {"x86_64": (324, 0xC000003E), "aarch64": (283, 0xC00000B7)}

def refuse_membarrier(faults):
    nr, arch = _ARCH[platform.machine()]
    def ins(code, jt, jf, k):
        return struct.pack("HBBI", code, jt, jf, k)
    LD, JEQ, RET, ALLOW = 0x20, 0x15, 0x06, 0x7FFF0000
    prog = [ins(LD, 0, 0, 4), ins(JEQ, 1, 0, arch), ins(RET, 0, 0, ALLOW),
            ins(LD, 0, 0, 0), ins(JEQ, 1, 0, nr), ins(RET, 0, 0, ALLOW),
            ins(LD, 0, 0, 16)]  # low word of args[0]: the command
    for cmd, err in faults:
        prog += [ins(JEQ, 0, 1, cmd), ins(RET, 0, 0, 0x00050000 | err)]
    prog.append(ins(RET, 0, 0, ALLOW))
    code = b"".join(prog)
    buf = ctypes.create_string_buffer(code, len(code))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        print(json.dumps({"seccomp": "unavailable: errno %d" % ctypes.get_errno()}))
        sys.exit(0)

def waits_for_a_reader(d):
    # A grace period started while another thread is inside must wait for it.
    entered, leave, done = threading.Event(), threading.Event(), threading.Event()
    def reader():
        with d.read():
            entered.set()
            leave.wait(30)
    def writer():
        d.synchronize_blocking(timeout=30)
        done.set()
    r = threading.Thread(target=reader); r.start(); entered.wait(5)
    w = threading.Thread(target=writer); w.start()
    waited = not done.wait(0.2)
    leave.set(); r.join(); w.join(30)
    return waited and done.is_set()
"""


def _run_script(body: str, membarrier_env: str | None = None) -> dict[str, object]:
    env = dict(os.environ)
    env.pop("AIORCU_MEMBARRIER", None)
    if membarrier_env is not None:
        env["AIORCU_MEMBARRIER"] = membarrier_env
    out = subprocess.run(
        [sys.executable, "-c", SECCOMP_HELPER + textwrap.dedent(body)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    if "seccomp" in result:
        pytest.skip(f"cannot install a seccomp filter here: {result['seccomp']}")
    return result


STARTUP_BODY = """
FAULTS = {faults!r}
if FAULTS:
    refuse_membarrier(FAULTS)
import aiorcu
info = aiorcu.backend_info()
d = aiorcu.Domain(name="startup")
waited = waits_for_a_reader(d)
print(json.dumps({{"membarrier": info.membarrier, "mechanism": info.mechanism,
                  "reason": info.reason, "waited": waited,
                  "membarrier_calls": d.stats().membarrier_calls,
                  "grace_periods": d.stats().grace_periods}}))
"""

needs_seccomp_arch = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64"), reason="seccomp helper knows x86_64/aarch64"
)


@pytest.mark.parametrize(
    ("env", "faults", "reason"),
    [
        pytest.param("off", [], "AIORCU_MEMBARRIER=off in the environment", id="env-off"),
        pytest.param(
            None,
            [(CMD_QUERY, errno.ENOSYS)],
            "membarrier QUERY failed: Function not implemented",
            id="query-enosys",
            marks=needs_seccomp_arch,
        ),
        pytest.param(
            None,
            [(CMD_REGISTER_PRIVATE_EXPEDITED, errno.EPERM)],
            "REGISTER_PRIVATE_EXPEDITED failed: Operation not permitted",
            id="register-eperm",
            marks=needs_seccomp_arch,
        ),
    ],
)
def test_membarrier_unavailable_at_start_selects_fences_and_still_waits(
    env: str | None, faults: list[tuple[int, int]], reason: str
) -> None:
    result = _run_script(STARTUP_BODY.format(faults=faults), env)
    assert result["membarrier"] is False
    assert result["mechanism"] == "fence"
    assert result["reason"] == reason
    assert result["waited"] is True  # the fence fallback still waits for a reader
    assert result["membarrier_calls"] == 0 and result["grace_periods"] == 1


RUNTIME_BODY = """
import errno
import aiorcu
from aiorcu import testing
if not aiorcu.backend_info().membarrier:
    print(json.dumps({"skip": aiorcu.backend_info().reason}))
    sys.exit(0)
d = aiorcu.Domain(name="kernel-faults")
out = {}
# The kernel starts refusing PRIVATE_EXPEDITED (here EPERM: re-registering
# succeeds, the retry is refused again), GLOBAL still works.
refuse_membarrier([(8, errno.EPERM)])
out["waited_on_global"] = waits_for_a_reader(d)
out["fallbacks"] = d.stats().barrier_fallbacks
# Now GLOBAL is refused too: no correct barrier is left.
refuse_membarrier([(1, errno.ENOSYS)])
entered, leave = threading.Event(), threading.Event()
def reader():
    with d.read():
        entered.set()
        leave.wait(30)
r = threading.Thread(target=reader); r.start(); entered.wait(5)
try:
    d.synchronize_blocking(timeout=30)
    out["error"] = None
except aiorcu.AiorcuError as exc:
    out["error"] = str(exc)
leave.set(); r.join()
print(json.dumps(out))
"""


@needs_seccomp_arch
def test_kernel_refusing_membarrier_at_run_time_falls_back_then_raises() -> None:
    result = _run_script(RUNTIME_BODY)
    if "skip" in result:
        pytest.skip(f"membarrier not in use: {result['skip']}")
    assert result["waited_on_global"] is True
    # M1, each wait barrier and M3 went through GLOBAL: at least M1 and M3.
    assert isinstance(result["fallbacks"], int) and result["fallbacks"] >= 2
    error = str(result["error"])
    assert "MEMBARRIER_CMD_GLOBAL fallback failed too" in error
    assert "nothing was skipped" in error and "AIORCU_MEMBARRIER=off" in error


# -- membarrier failing at run time: the fault-injection hook --------------------------


@pytest.fixture
def clear_faults() -> object:
    yield None
    testing.fail_membarrier(0)


@needs_membarrier
@pytest.mark.usefixtures("clear_faults")
@pytest.mark.parametrize(
    ("count", "err", "fallbacks"),
    [
        # EPERM: registration lost; registering again and retrying absorbs one.
        pytest.param(1, errno.EPERM, 0, id="eperm-reregistered"),
        # The retry fails too: MEMBARRIER_CMD_GLOBAL takes over.
        pytest.param(2, errno.EPERM, 1, id="eperm-twice-global"),
        # Anything else goes to GLOBAL at once.
        pytest.param(1, errno.EINVAL, 1, id="einval-global"),
        pytest.param(1, errno.ENOMEM, 1, id="enomem-global"),
    ],
)
def test_absorbed_membarrier_fault_still_waits_for_a_reader(
    count: int, err: int, fallbacks: int
) -> None:
    d = aiorcu.Domain(name="absorbed")
    holder, leave = hold_section(d)
    before = testing.raw_stats(d)
    testing.fail_membarrier(count, err)
    writer = background_synchronize(d)
    try:
        assert _still_waiting(writer)  # the fault neither aborted nor shortened it
    finally:
        leave.set()
        holder.join()
    writer.result()
    after = testing.raw_stats(d)
    assert after["barrier_fallbacks"] - before["barrier_fallbacks"] == fallbacks
    assert d.stats().barrier_fallbacks == after["barrier_fallbacks"]
    assert after["grace_periods"] == before["grace_periods"] + 1
    assert after["barriers_elided"] == before["barriers_elided"]  # another thread has a slot


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < deadline, f"hang guard: {what}"
        time.sleep(0.002)


@needs_membarrier
@pytest.mark.usefixtures("clear_faults")
def test_unabsorbable_fault_mid_grace_period_raises_and_later_ones_still_wait() -> None:
    """The fault hits after the phase flip, while the writer sleeps on a reader.

    The grace period is abandoned there: `completed` must not move, and the
    reader, still inside, must hold up the next grace period (now as a
    straggler of the flipped phase).
    """
    d = aiorcu.Domain(name="unabsorbed")
    testing.set_wait_mode(d, "futex")
    holder, leave = hold_section(d)
    phase_before = testing.current_phase(d)
    completed_before = d.stats().completed_sequence
    writer = background_synchronize(d)
    try:
        _wait_for(lambda: d.stats().writer_sleeps >= 1, "the writer never slept")
        # Every attempt fails from now on; the writer's next wait barrier
        # (at the latest after its futex backstop) finds no correct barrier.
        testing.fail_membarrier(1_000_000, errno.EINVAL)
        assert writer.finished()
        with pytest.raises(aiorcu.AiorcuError) as info:
            writer.result()
        testing.fail_membarrier(0)
        message = str(info.value)
        assert f"grace period of domain {d.name!r} failed" in message
        assert "MEMBARRIER_CMD_GLOBAL fallback failed too" in message
        assert "nothing was skipped" in message
        assert "Run with AIORCU_MEMBARRIER=off" in message  # says what to do
        assert testing.current_phase(d) != phase_before  # it failed after the flip, as intended
        assert d.stats().completed_sequence == completed_before  # not reported complete

        again = background_synchronize(d)
        assert _still_waiting(again)  # the same reader still holds it up
    finally:
        testing.fail_membarrier(0)
        leave.set()
        holder.join()
    again.result()
    assert_waits_for_a_reader(d, "later-reader")
    assert d.stats().readers_active == 0


@needs_membarrier
@pytest.mark.usefixtures("clear_faults")
def test_failed_grace_period_keeps_callbacks_queued_until_a_real_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="cb-fault")
    holder, leave = hold_section(d)
    ran: list[int] = []
    try:
        with caplog.at_level(logging.ERROR, logger="aiorcu"):
            testing.fail_membarrier(1_000_000)
            d.call_after_grace_period(ran.append, 1)
            _wait_for(
                lambda: "grace period for 1 callback(s) of domain 'cb-fault' failed" in caplog.text,
                "the callback worker did not report the failed grace period",
            )
            testing.fail_membarrier(0)
        assert "they stay queued and the worker retries" in caplog.text
        assert ran == [] and d.stats().callbacks_pending == 1
        time.sleep(PAUSE)  # the retry now runs a real grace period: it waits
        assert ran == []
    finally:
        testing.fail_membarrier(0)
        leave.set()
        holder.join()
    d.barrier_blocking()
    assert ran == [1]


# -- a thread exits inside a read section -----------------------------------------------


def _die_inside(d: aiorcu.Domain, name: str, keep: list[object]) -> threading.Thread:
    """A thread that enters a section and ends without leaving it.

    It hands its section and its exit hook (the thread-local registration)
    to ``keep``: the hook then runs only when the test drops it, as when a
    thread's locals are torn down late.  Only then does the stall warning's
    own check for dead threads (the core's proof of death) have anything to do.
    """

    def body() -> None:
        section = d.read()
        section.__enter__()
        keep.append(section)
        keep.append(d._threads._local.reg)

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join()
    return thread


@pytest.mark.fallback
def test_stall_warning_names_a_dead_reader_and_releases_its_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="dead-reader")
    testing.set_stall_interval(d, 0.02, 0.05)
    kept: list[object] = []
    dead = _die_inside(d, "dies-inside", kept)
    assert d.stats().threads_registered == 1 and d.stats().readers_active == 1
    with caplog.at_level(logging.WARNING, logger="aiorcu"):
        d.synchronize_blocking(timeout=HANG_GUARD)  # must complete: the slot is reclaimed
    warnings = [r.getMessage() for r in caplog.records if r.name == "aiorcu"]
    assert any(
        "grace period of domain 'dead-reader' has waited" in m
        and f"thread 'dies-inside' (id {dead.ident})" in m
        and "the thread has exited; its slot was released" in m
        for m in warnings
    ), warnings
    stats = d.stats()
    assert stats.stall_warnings >= 1
    assert stats.threads_registered == 0 and stats.readers_active == 0
    # Later grace periods complete, and still wait for live readers.
    d.synchronize_blocking(timeout=HANG_GUARD)
    assert_waits_for_a_reader(d, "live-reader")
    kept.clear()  # the late exit hook runs now; nothing is left for it to do
    gc.collect()
    assert d.stats().threads_registered == 0
    d.synchronize_blocking(timeout=HANG_GUARD)


@pytest.mark.fallback
@pytest.mark.parametrize("first", ["stall-warning", "exit-hook"])
def test_a_dead_readers_slot_is_released_once(first: str) -> None:
    """Both ways to release a dead thread's slot may run; only one may free it.

    "stall-warning": the stall warning releases the slot, a new thread takes
    it, then the dead thread's exit hook runs late.  "exit-hook": the natural
    race: a stall warning looks the dead thread's reader up, the thread's exit
    hook releases the slot and a new thread takes it, then the warning finds
    the thread dead.  Either way the new thread's section must still hold up
    grace periods.
    """
    d = aiorcu.Domain(name=f"release-once-{first}")
    testing.set_stall_interval(d, 0.02, 0.05)
    newcomer: list[tuple[threading.Thread, threading.Event]] = []
    if first == "stall-warning":
        kept: list[object] = []
        dead = _die_inside(d, "dies-inside", kept)
        slot = _slot_of(d, dead)
        d.synchronize_blocking(timeout=HANG_GUARD)  # the stall warning releases it
        newcomer.append(hold_section(d, "newcomer"))
        kept.clear()  # the exit hook runs late
        gc.collect()
    else:
        entered, go = threading.Event(), threading.Event()

        kept_sections: list[aiorcu.ReadSection] = []

        def dies() -> None:
            section = d.read()
            section.__enter__()
            kept_sections.append(section)
            entered.set()
            go.wait(HANG_GUARD)

        dead = threading.Thread(target=dies, name="dies-while-reported")
        dead.start()
        assert entered.wait(5)
        slot = _slot_of(d, dead)
        registry = d._threads
        describe = registry.describe

        def racing(var: Any, slot: int, blocked_ns: int) -> str:
            text = describe(var, slot, blocked_ns)
            if not newcomer:  # between the report and the proof of death:
                go.set()
                dead.join()  # the thread exits; its exit hook frees the slot
                newcomer.append(hold_section(d, "newcomer"))
            return text

        registry.describe = racing  # type: ignore[method-assign]
        d.synchronize_blocking(timeout=HANG_GUARD)
        del registry.describe
    thread, leave = newcomer[0]
    try:
        assert _slot_of(d, thread) == slot  # the slot was reused
        assert d.stats().threads_registered == 1  # the newcomer's slot is still live
        writer = background_synchronize(d)
        assert _still_waiting(writer)  # and its section still counts
    finally:
        leave.set()
        thread.join()
    writer.result()
    assert not dead.is_alive()


@pytest.mark.fallback
def test_stall_warning_releases_a_dead_reader_whose_thread_object_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = aiorcu.Domain(name="dead-reader-gone")
    testing.set_stall_interval(d, 0.02, 0.05)
    kept: list[object] = []
    ident = _die_inside(d, "dies-forgotten", kept).ident
    gc.collect()  # nothing refers to the finished Thread object any more
    try:
        with caplog.at_level(logging.WARNING, logger="aiorcu"):
            d.synchronize_blocking(timeout=2)  # would wait forever otherwise
        assert f"thread 'dies-forgotten' (id {ident})" in caplog.text
        assert d.stats().threads_registered == 0
    finally:
        kept.clear()
        gc.collect()


def _slot_of(d: aiorcu.Domain, thread: threading.Thread) -> int:
    return next(i.slot for i in d._threads.owners() if i.ident == thread.ident)


# -- fork -------------------------------------------------------------------------


def _fork_and_collect(child: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Runs ``child()`` in a fork child; returns what it reported through a pipe.

    The child ends with os._exit (never returns into pytest); the parent
    kills it if it does not report within the hang guard.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(rfd)
            try:
                report = child()
            except BaseException:
                report, code = {"error": traceback.format_exc()}, 1
            os.write(wfd, json.dumps(report).encode())
            os.close(wfd)
        finally:
            os._exit(code)
    os.close(wfd)
    data = b""
    deadline = time.monotonic() + HANG_GUARD
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([rfd], [], [], max(left, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("fork child hung")
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
    result: dict[str, object] = json.loads(data or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0, result.get("error", result)
    return result


@pytest.mark.fallback
def test_fork_while_writers_waiters_and_callbacks_are_blocked_on_a_reader() -> None:
    """Forks while a thread writer, an async waiter and a callback batch wait.

    Documented (``call_after_grace_period``, ``aiorcu/_callbacks.py``): a fork
    child starts with an empty callback queue; what was queued belongs to the
    parent, which runs it (exactly once, there).
    """
    d = aiorcu.Domain(name="fork-faults")
    holder, leave = hold_section(d, "parent-reader")
    ran: list[str] = []
    writer = background_synchronize(d)

    async def async_waiter() -> None:
        await d.synchronize()

    waiter = Background(lambda: asyncio.run(async_waiter()), name="async-waiter")
    d.call_after_grace_period(ran.append, "parent")
    try:
        _wait_for(lambda: d._worker.pending == 1, "the async waiter was not offloaded")
        _wait_for(lambda: d._callbacks._in_flight == 1, "the callback batch was not taken")
        time.sleep(0.05)  # let the writers block inside the C wait
        assert not writer.done.is_set() and not waiter.done.is_set()

        def child() -> dict[str, object]:
            out: dict[str, object] = {}
            stats = d.stats()
            out["readers_active"] = stats.readers_active
            out["threads_registered"] = stats.threads_registered
            out["callbacks_pending"] = stats.callbacks_pending
            out["worker_pending"] = d._worker.pending
            d.synchronize_blocking(timeout=5)  # no phantom reader to wait for
            # A reader of the child's own is waited for, by threads and tasks.
            reader, child_leave = hold_section(d, "child-reader")
            sync = background_synchronize(d)
            out["thread_writer_waited"] = _still_waiting(sync)

            async def bounded_synchronize() -> None:
                with anyio.fail_after(10):
                    await d.synchronize()

            task = Background(lambda: asyncio.run(bounded_synchronize()), name="child-task")
            out["task_waiter_waited"] = _still_waiting(task)
            child_leave.set()
            reader.join()
            sync.result()
            task.result()
            d.call_after_grace_period(ran.append, "child")
            d.barrier_blocking()
            out["ran"] = list(ran)  # the parent's callback must not be among them
            out["readers_active_after"] = d.stats().readers_active
            return out

        result = _fork_and_collect(child)
    finally:
        # The parent was not disturbed: everything still waits for its reader.
        parent_still_waiting = not writer.done.is_set() and not waiter.done.is_set()
        parent_ran_early = list(ran)
        leave.set()
        holder.join()
    assert result == {
        "readers_active": 0,
        "threads_registered": 0,
        "callbacks_pending": 0,
        "worker_pending": 0,
        "thread_writer_waited": True,
        "task_waiter_waited": True,
        "ran": ["child"],
        "readers_active_after": 0,
    }
    assert parent_still_waiting and parent_ran_early == []
    writer.result()
    waiter.result()
    d.barrier_blocking()
    assert ran == ["parent"]
    assert d.stats().readers_active == 0


# -- cancellation at random points under load ---------------------------------------


class Box:
    __slots__ = ("generation", "retired")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.retired = False


def _start_thread_readers(
    d: aiorcu.Domain, current: list[Box], stop: threading.Event, violations: list[int], n: int = 2
) -> list[threading.Thread]:
    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            with d.read():
                box = current[0]
                if box.retired:
                    violations[0] += 1
                time.sleep(rng.uniform(0, 0.001))
                if box.retired:
                    violations[0] += 1

    threads = [
        threading.Thread(target=reader, args=(i,), name=f"chaos-reader-{i}") for i in range(n)
    ]
    for t in threads:
        t.start()
    return threads


async def _task_reader(
    d: aiorcu.Domain, current: list[Box], violations: list[int], rng: random.Random
) -> None:
    while True:
        async with d.read():
            box = current[0]
            if box.retired:
                violations[0] += 1
            await anyio.sleep(rng.choice((0, 0, 0.0005)))
            if box.retired:
                violations[0] += 1
        await anyio.sleep(0)


async def _cancel_at_random(d: aiorcu.Domain, seconds: float, seed: int) -> tuple[int, int]:
    """Many tasks call synchronize()/barrier() and get cancelled after random delays.

    Returns (completed calls, cancelled calls).
    """
    rng = random.Random(seed)
    completed = cancelled = 0
    deadline = time.monotonic() + seconds
    callbacks_ran = [0]

    async def caller() -> None:
        nonlocal completed, cancelled
        while time.monotonic() < deadline:
            which = rng.random()
            delay = rng.choice((0.0, rng.uniform(0, 0.002), rng.uniform(0, 0.02)))
            finished = False
            with anyio.move_on_after(delay):
                if which < 0.45:
                    await d.synchronize()
                elif which < 0.9:
                    await d.barrier()
                else:
                    d.call_after_grace_period(callbacks_ran.__setitem__, 0, 1)
                    await d.synchronize()
                finished = True
            if finished:
                completed += 1
            else:
                cancelled += 1
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(caller)
    return completed, cancelled


async def _publish_and_check(d: aiorcu.Domain, seconds: float, seed: int) -> tuple[int, int, int]:
    """publish / synchronize / retire with readers on threads and tasks.

    Some writers' waits are cancelled at random; a writer retires only what a
    completed grace period covers.  Returns (generations, retired, violations).
    """
    rng = random.Random(seed)
    current = [Box(0)]
    violations = [0]
    stop = threading.Event()
    threads = _start_thread_readers(d, current, stop, violations)
    generation = retired = 0
    try:
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(_task_reader, d, current, violations, random.Random(seed + i))
            unretired: list[Box] = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                generation += 1
                unretired.append(current[0])
                current[0] = Box(generation)
                finished = False
                with anyio.move_on_after(rng.choice((None, None, 0.0, 0.001))):
                    await d.synchronize()
                    finished = True
                if finished:  # covers every box unpublished before the call
                    for box in unretired:
                        box.retired = True
                    retired += len(unretired)
                    unretired = []
                await anyio.sleep(0)
            tg.cancel_scope.cancel()
    finally:
        stop.set()
        for t in threads:
            t.join(HANG_GUARD)
    return generation, retired, violations[0]


def _new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Threads alive now that were not in ``before``.

    Trio's own thread cache does not count: anyio's test runner drives trio
    in guest mode, which waits for I/O on "Trio thread N" workers.
    """
    return {
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    }


async def _chaos(d: aiorcu.Domain, seed: int) -> None:
    """Random cancellations under load, then checks that nothing was left behind."""
    threads_before = set(threading.enumerate())
    current = [Box(0)]
    violations = [0]
    stop = threading.Event()
    readers = _start_thread_readers(d, current, stop, violations)
    try:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(_task_reader, d, current, violations, random.Random(seed + i))
                completed, cancelled = await _cancel_at_random(d, 1.0, seed)
                tg.cancel_scope.cancel()
    finally:
        stop.set()
        for t in readers:
            t.join(HANG_GUARD)
    assert completed > 0 and cancelled > 0, (completed, cancelled)
    with anyio.fail_after(HANG_GUARD):
        await d.barrier()  # every callback queued by a cancelled barrier() runs
    stats = d.stats()
    assert stats.readers_active == 0
    assert stats.callbacks_pending == 0
    assert d._worker.pending == 0  # every cancelled waiter withdrew
    owners = d._threads.owners()
    assert {i.ident for i in owners} <= {get_ident()}  # only this (loop) thread keeps a slot
    assert stats.threads_registered == len(owners)
    assert stats.grace_periods > 0
    gc.collect()
    domain_threads = {d._worker.thread(), d._callbacks._thread}
    leaked = _new_threads(threads_before) - domain_threads
    assert not leaked, leaked  # one grace-period thread and one callback thread at most


@pytest.mark.anyio
@pytest.mark.fallback
async def test_random_cancellation_under_load_leaves_a_clean_domain() -> None:
    d = aiorcu.Domain(name="chaos")
    seed = random.randrange(1 << 30)
    await _chaos(d, seed)
    generations, retired, violations = await _publish_and_check(d, 1.0, seed)
    assert generations > 10 and retired > 0, (generations, retired, seed)
    assert violations == 0, f"seed {seed}"
    assert d.stats().backstop_timeouts == 0
    assert d.stats().readers_active == 0


@pytest.mark.anyio
@pytest.mark.fallback
async def test_negative_control_busted_domain_after_cancellation_is_caught() -> None:
    d = aiorcu.Domain(name="chaos-busted")
    seed = random.randrange(1 << 30)
    await _chaos(d, seed)
    testing.set_busted(d)
    _generations, _retired, violations = await _publish_and_check(d, 1.0, seed)
    assert violations > 0, f"a grace period that does not wait went unnoticed (seed {seed})"
