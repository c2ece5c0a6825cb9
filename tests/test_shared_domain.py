"""SharedDomain: one domain across processes; names, modes, attach, close, stats.

Each test creates its own uniquely named domain and runs its other
processes as fresh interpreters that attach by name (tests/children.py).
Deaths, exec, fork and damaged segments are in test_shared_faults.py.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

import pytest

import aiorcu

from .children import (
    Child,
    children,
    shared_domain,
    unique_name,
    wait_until,
)
from .conftest import background_synchronize

HOLD = """
d = aiorcu.SharedDomain(sys.argv[1] if len(sys.argv) > 1 else os.environ["NAME"])
def hold():
    with d.read():
        say("inside", os.getpid())
        hear()
    say("left")
t = threading.Thread(target=hold, name=os.environ.get("THREAD", "holder"))
t.start()
t.join()
say("stats", d.stats().processes_attached)
hear()
"""


def test_a_grace_period_waits_for_a_thread_reader_in_another_process() -> None:
    with shared_domain("gp-thread") as domain, children() as kids:
        kids.append(child := Child(HOLD, env={"NAME": domain.name}))
        assert int(child.expect("inside")) == child.pid
        writer = background_synchronize(domain)
        time.sleep(0.3)
        assert not writer.done.is_set(), (
            "the grace period ended while a reader in another process was inside"
        )
        left_at = time.monotonic()
        child.send()
        child.expect("left")
        assert writer.finished(10)
        writer.result()
        assert writer.finished_at is not None and writer.finished_at >= left_at
        assert child.expect("stats") == "2"
        child.send()
        assert child.finish() == 0


def test_a_grace_period_waits_for_a_task_reader_in_another_process() -> None:
    script = """
    import asyncio
    d = aiorcu.SharedDomain(os.environ["NAME"])
    async def main():
        async with d.read():
            say("inside")
            await asyncio.get_running_loop().run_in_executor(None, hear)
        say("left")
    asyncio.run(main())
    """
    with shared_domain("gp-task") as domain, children() as kids:
        kids.append(child := Child(script, env={"NAME": domain.name}))
        child.expect("inside")
        writer = background_synchronize(domain)
        time.sleep(0.3)
        assert not writer.done.is_set()
        assert domain.stats().readers_active == 1
        child.send()
        child.expect("left")
        assert writer.finished(10)
        writer.result()
        assert child.finish() == 0


def test_readers_here_hold_writers_there() -> None:
    script = """
    d = aiorcu.SharedDomain(os.environ["NAME"])
    say("ready")
    hear()
    start = time.monotonic()
    d.synchronize_blocking(timeout=30)
    say("waited", time.monotonic() - start)
    """
    with shared_domain("gp-here") as domain, children() as kids:
        kids.append(child := Child(script, env={"NAME": domain.name}))
        child.expect("ready")
        with domain.read():
            child.send()
            time.sleep(0.4)
        assert float(child.expect("waited")) >= 0.3
        assert child.finish() == 0


def test_names_and_create_or_attach() -> None:
    name = unique_name("names")
    with pytest.raises(FileNotFoundError, match="there is no shared domain"):
        aiorcu.SharedDomain(name)
    domain = aiorcu.SharedDomain(name, create=True)
    try:
        with pytest.raises(FileExistsError):
            aiorcu.SharedDomain(name, create=True)
        assert stat.S_IMODE(os.stat(domain.path).st_mode) == 0o600
        assert repr(domain) == f"<aiorcu.SharedDomain {name!r} attached>"
        again = aiorcu.SharedDomain(name)
        assert again.name == name
        again.close()
    finally:
        domain.close()
        domain.unlink()
    for bad, error, match in [
        ("a/b", ValueError, "/"),
        ("a\0b", ValueError, "NUL"),
        ("", ValueError, "empty"),
        ("x" * 101, ValueError, "100 bytes"),
        (7, TypeError, "str"),
    ]:
        with pytest.raises(error, match=match):
            aiorcu.SharedDomain(bad, create=True)  # type: ignore[arg-type]
    for bad_threads, error in [(0, ValueError), (10**9, ValueError), (True, TypeError)]:
        with pytest.raises(error, match="max_threads"):
            aiorcu.SharedDomain(unique_name("x"), create=True, max_threads=bad_threads)
    for bad_mode in (0o1777, -1, "0o600", True):
        with pytest.raises(ValueError, match="permission bits"):
            aiorcu.SharedDomain(unique_name("x"), create=True, mode=bad_mode)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stall_warning"):
        aiorcu.SharedDomain(unique_name("x"), create=True, stall_warning=-1.0)


def test_the_mode_is_what_the_creator_asked_whatever_the_umask() -> None:
    old = os.umask(0o077)
    try:
        with shared_domain("mode", mode=0o640) as domain:
            assert stat.S_IMODE(os.stat(domain.path).st_mode) == 0o640
    finally:
        os.umask(old)


def test_close_and_unlink() -> None:
    with shared_domain("close") as domain:
        with domain.read(), pytest.raises(aiorcu.RcuUsageError, match="1 read section"):
            domain.close()
        domain.call_after_grace_period(lambda: None)
        if domain.stats().callbacks_pending:
            with pytest.raises(aiorcu.RcuUsageError, match="barrier_blocking"):
                domain.close()
        domain.barrier_blocking()
        attached = aiorcu.SharedDomain(domain.name)
        domain.unlink()
        with pytest.raises(FileNotFoundError):
            aiorcu.SharedDomain(domain.name)
        # Attached processes keep working after the unlink.
        with attached.read():
            pass
        attached.synchronize_blocking()
        with attached:
            pass
        assert attached.closed and repr(attached).endswith("closed>")
        attached.close()  # again: nothing
        for use in (
            attached.read,
            attached.synchronize_blocking,
            attached.stats,
            attached.snapshot,
            lambda: attached.call_after_grace_period(print),
        ):
            with pytest.raises(aiorcu.RcuUsageError, match="was closed in this process"):
                use()
        with pytest.raises(FileNotFoundError):
            domain.unlink()  # the fixture's unlink after this one is a no-op


def test_max_threads_exhausted_is_a_clear_error() -> None:
    with shared_domain("full", max_threads=2) as domain:
        release = threading.Event()
        inside = threading.Barrier(3)

        def hold() -> None:
            with domain.read():
                inside.wait()
                release.wait()

        holders = [threading.Thread(target=hold) for _ in range(2)]
        for t in holders:
            t.start()
        inside.wait()
        try:
            errors: list[BaseException] = []

            def third() -> None:
                try:
                    with domain.read():
                        pass
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=third)
            t.start()
            t.join()
            assert len(errors) == 1
            assert "larger max_threads" in str(errors[0]) and "2 slots" in str(errors[0])
        finally:
            release.set()
            for t in holders:
                t.join()
        # Once those threads exit, their slots serve new threads.
        wait_until(lambda: domain.stats().threads_registered <= 1, what="slots released")
        served: list[bool] = []

        def fourth() -> None:
            with domain.read():
                served.append(True)

        t = threading.Thread(target=fourth)
        t.start()
        t.join()
        assert served == [True]


def test_stats_say_what_is_whole_domain_and_what_is_this_process() -> None:
    with shared_domain("stats") as domain, children() as kids:
        kids.append(child := Child(HOLD, env={"NAME": domain.name}))
        child.expect("inside")
        stats = domain.stats()
        assert stats.processes_attached == 2  # this process joined at its first use
        assert stats.readers_active == 1 and stats.threads_registered == 1
        child.send()
        child.expect("left")
        domain.synchronize_blocking()
        assert child.expect("stats") == "2"
        child.send()
        assert child.finish() == 0
        # A process that exits normally releases its entry and slots, close() or not.
        after = domain.stats()
        assert after.processes_attached == 1 and after.threads_registered == 0
        assert after.grace_periods >= 1 and after.dead_readers_released == 0


def test_a_stall_warning_names_the_pid_and_thread_of_a_reader_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = unique_name("stall")
    domain = aiorcu.SharedDomain(name, create=True, stall_warning=0.1)
    try:
        with children() as kids:
            kids.append(child := Child(HOLD, env={"NAME": name, "THREAD": "slow-reader"}))
            child.expect("inside")
            with caplog.at_level(logging.WARNING, logger="aiorcu"):
                writer = background_synchronize(domain)
                wait_until(lambda: domain.stats().stall_warnings > 0, what="a stall warning")
                child.send()
                assert writer.finished(10)
                writer.result()
            text = caplog.text
            assert "thread 'slow-reader' (native id " in text, text
            assert f") of process {child.pid}" in text, text
            child.send()
            assert child.finish() == 0
    finally:
        domain.close()
        domain.unlink()


@pytest.mark.skipif(not aiorcu.backend_info().membarrier, reason="needs membarrier")
def test_fence_mode_belongs_to_the_creator() -> None:
    script = """
    d = aiorcu.SharedDomain(os.environ["NAME"], create=os.environ["CREATE"] == "1")
    say("mode", d.backend_info().mechanism)
    with d.read():
        say("inside")
        hear()
    hear()
    d.close()
    if os.environ["CREATE"] == "1":
        d.unlink()
    """
    name = unique_name("fence")
    with children() as kids:
        # A creator with AIORCU_MEMBARRIER=off makes a fence domain for everyone.
        kids.append(
            creator := Child(script, env={"NAME": name, "CREATE": "1", "AIORCU_MEMBARRIER": "off"})
        )
        assert creator.expect("mode") == "fence"
        creator.expect("inside")
        attached = aiorcu.SharedDomain(name)
        assert attached.backend_info().mechanism == "fence"
        writer = background_synchronize(attached)
        time.sleep(0.2)
        assert not writer.done.is_set()  # fences still order the other process's reader
        creator.send()
        assert writer.finished(10)
        writer.result()
        attached.close()
        creator.send()
        assert creator.finish() == 0
    # And an attacher with AIORCU_MEMBARRIER=off follows a membarrier domain.
    with shared_domain("fence2") as domain, children() as kids:
        assert domain.backend_info().mechanism == "membarrier-global-expedited"
        kids.append(
            child := Child(
                script, env={"NAME": domain.name, "CREATE": "0", "AIORCU_MEMBARRIER": "off"}
            )
        )
        assert child.expect("mode") == "membarrier-global-expedited"
        child.expect("inside")
        writer = background_synchronize(domain)
        time.sleep(0.2)
        assert not writer.done.is_set()
        child.send()
        assert writer.finished(10)
        writer.result()
        child.send()
        assert child.finish() == 0


def test_callbacks_and_polled_grace_periods_wait_for_readers_elsewhere() -> None:
    """Callbacks run here, after readers there left; a token means the same everywhere."""
    script = """
    d = aiorcu.SharedDomain(os.environ["NAME"])
    with d.read():
        say("inside")
        token = int(hear())
        say("polled", d.poll(token))
        hear()
    say("left")
    token = int(hear())
    d.wait_blocking(token, timeout=10)
    say("polled", d.poll(token))
    hear()
    """
    with shared_domain("callbacks") as domain, children() as kids:
        kids.append(child := Child(script, env={"NAME": domain.name}))
        child.expect("inside")
        ran: list[float] = []
        domain.call_after_grace_period(lambda: ran.append(time.monotonic()))
        token = domain.snapshot()
        time.sleep(0.3)
        assert not ran and not domain.poll(token)
        child.send(str(token))
        # The reader elsewhere polls our token from inside its own section.
        assert child.expect("polled") == "False"
        assert not ran  # it is still inside
        child.send()
        child.expect("left")
        domain.wait_blocking(token, timeout=10)
        assert domain.poll(token)
        domain.barrier_blocking()  # the callback ran, in this process
        assert ran
        child.send(str(token))
        assert child.expect("polled") == "True"
        child.send()
        assert child.finish() == 0
