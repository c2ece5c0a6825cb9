"""Membarrier faults: the kernel refuses membarrier(2), or the library's calls fail.

Each test breaks the barrier machinery on purpose and checks the promise that
must survive it: a grace period still waits for every reader that began
before it, or it raises and says what to do; nothing is ever silently skipped.

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

import errno
import json
import logging
import os
import platform
import subprocess
import sys
import textwrap
import time

import pytest

import aiorcu
from aiorcu import testing

from .conftest import (
    PAUSE,
    assert_waits_for_a_reader,
    background_synchronize,
    hold_section,
    still_waiting,
    wait_for,
)

MEMBARRIER = aiorcu.backend_info().membarrier
needs_membarrier = pytest.mark.skipif(not MEMBARRIER, reason="membarrier not in use")

# membarrier(2) commands (linux/membarrier.h)
CMD_QUERY = 0
CMD_GLOBAL = 1
CMD_PRIVATE_EXPEDITED = 8
CMD_REGISTER_PRIVATE_EXPEDITED = 16


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
        assert still_waiting(writer)  # the fault neither aborted nor shortened it
    finally:
        leave.set()
        holder.join()
    writer.result()
    after = testing.raw_stats(d)
    assert after["barrier_fallbacks"] - before["barrier_fallbacks"] == fallbacks
    assert d.stats().barrier_fallbacks == after["barrier_fallbacks"]
    assert after["grace_periods"] == before["grace_periods"] + 1
    assert after["barriers_elided"] == before["barriers_elided"]  # another thread has a slot


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
        wait_for(lambda: d.stats().writer_sleeps >= 1, "the writer never slept")
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
        assert still_waiting(again)  # the same reader still holds it up
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
            wait_for(
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
