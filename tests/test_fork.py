"""After fork() the child has a working domain and no phantom readers.

Also the fault case: a fork while a thread writer, an async waiter and a
callback batch are all blocked on a reader.  The child starts with no
phantom readers, an empty callback queue and working grace periods; the
parent is not disturbed and runs its own callback once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import multiprocessing
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable

import anyio
import pytest

import aiorcu

from .conftest import (
    HANG_GUARD,
    Background,
    background_synchronize,
    hold_section,
    still_waiting,
    wait_for,
)


def _child_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_fork_drops_other_threads_readers() -> None:
    d = aiorcu.Domain(name="fork")
    t, leave = hold_section(d)
    pid = os.fork()
    if pid == 0:  # child: only this thread exists; the reader above is a phantom
        code = 0
        try:
            d.synchronize_blocking(timeout=2)
            with d.read():
                pass
            d.synchronize_blocking(timeout=2)
            if d.stats().readers_active != 0:
                code = 3
        except BaseException:
            code = 2
        os._exit(code)
    try:
        assert _child_status(pid) == 0
    finally:
        leave.set()
        t.join()


def test_fork_during_a_grace_period_and_inside_a_section() -> None:
    d = aiorcu.Domain(name="fork-gp")
    t, leave = hold_section(d)
    w = threading.Thread(target=d.synchronize_blocking, kwargs={"timeout": 10})
    w.start()
    time.sleep(0.05)  # the writer now holds the writer mutex, waiting
    with d.read():
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if not d._inside():
                    code = 4  # the forking thread's own section survives
            except BaseException:
                code = 2
            if code == 0:
                try:
                    d.synchronize_blocking()
                    code = 5  # would wait for itself: must raise
                except aiorcu.RcuUsageError:
                    pass
            os._exit(code)
    try:
        assert _child_status(pid) == 0
    finally:
        leave.set()
        w.join()
        t.join()
    child = os.fork()
    if child == 0:
        try:
            d.synchronize_blocking(timeout=2)
            os._exit(0)
        except BaseException:
            os._exit(2)
    assert _child_status(child) == 0


def _report_from_child(pipe_w: int, checks: dict[str, object]) -> None:
    os.write(pipe_w, json.dumps(checks).encode())
    os.close(pipe_w)


def _read_child(pid: int, pipe_r: int) -> dict[str, object]:
    data = b""
    while chunk := os.read(pipe_r, 65536):
        data += chunk
    os.close(pipe_r)
    assert _child_status(pid) == 0
    result: dict[str, object] = json.loads(data)
    return result


def test_fork_from_a_coroutine_keeps_only_the_forking_contexts_sections() -> None:
    """Defect: forking from an event-loop thread while another task was inside left
    that task's section as a phantom in the child."""
    d = aiorcu.Domain(name="fork-loop")
    result: dict[str, object] = {}

    async def main() -> None:
        other_inside, release = asyncio.Event(), asyncio.Event()

        async def other() -> None:
            async with d.read():
                other_inside.set()
                await release.wait()

        task = asyncio.create_task(other())
        await other_inside.wait()
        pipe_r, pipe_w = os.pipe()
        async with d.read():  # the forking context's own section
            pid = os.fork()
            if pid == 0:
                checks: dict[str, object] = {}
                try:
                    checks["inside"] = d._inside()
                    checks["active_inside"] = d.stats().readers_active
                except BaseException as exc:
                    checks["error"] = repr(exc)
        if pid == 0:
            try:
                checks["active_after"] = d.stats().readers_active
                d.synchronize_blocking(timeout=5)  # the other task's section is gone
                checks["synchronized"] = True
            except BaseException as exc:
                checks["error"] = repr(exc)
            _report_from_child(pipe_w, checks)
            os._exit(0)
        os.close(pipe_w)
        release.set()
        await task
        result.update(_read_child(pid, pipe_r))

    asyncio.run(main())
    assert result == {"inside": True, "active_inside": 1, "active_after": 0, "synchronized": True}


def _grace_period_in_a_worker(name: str) -> tuple[int, bool]:
    domain = next(d for d in _DOMAINS if d.name == name)
    domain.synchronize_blocking(timeout=5)
    return domain.stats().readers_active, True


_DOMAINS: list[aiorcu.Domain] = []


def test_fork_context_process_pool_started_from_a_coroutine_inside_a_section() -> None:
    d = aiorcu.Domain(name="fork-pool")
    _DOMAINS.append(d)

    async def main() -> list[tuple[int, bool]]:
        other_inside, release = asyncio.Event(), asyncio.Event()

        async def other() -> None:
            async with d.read():
                other_inside.set()
                await release.wait()

        task = asyncio.create_task(other())
        await other_inside.wait()
        loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("fork")
        try:
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
                results = await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            loop.run_in_executor(pool, _grace_period_in_a_worker, d.name)
                            for _ in range(4)
                        )
                    ),
                    30,
                )
        finally:
            release.set()
            await task
        return list(results)

    try:
        results = asyncio.run(main())
    finally:
        _DOMAINS.remove(d)
    assert results == [(0, True)] * 4


def test_a_dropped_sections_late_exit_in_the_child_changes_nothing() -> None:
    """Another context's section, left in the fork child, must not touch the counts."""
    d = aiorcu.Domain(name="fork-late")
    foreign = d.read()
    ctx = contextvars.copy_context()
    ctx.run(foreign.__aenter__)  # another context's task section on this thread
    pipe_r, pipe_w = os.pipe()
    with d.read():
        pid = os.fork()
        if pid == 0:
            checks: dict[str, object] = {}
            try:
                checks["before"] = d.stats().readers_active  # only the `with` section
                ctx.run(foreign.__aexit__, None, None, None)  # a phantom: changes nothing
                checks["after"] = d.stats().readers_active
            except BaseException as exc:
                checks["error"] = repr(exc)
    if pid == 0:
        try:
            checks["left"] = d.stats().readers_active
            d.synchronize_blocking(timeout=5)
            checks["synchronized"] = True
        except BaseException as exc:
            checks["error"] = repr(exc)
        _report_from_child(pipe_w, checks)
        os._exit(0)
    os.close(pipe_w)
    result = _read_child(pid, pipe_r)
    ctx.run(foreign.__aexit__, None, None, None)
    assert result == {"before": 1, "after": 1, "left": 0, "synchronized": True}
    assert d.stats().readers_active == 0


# -- fork while writers, waiters and callbacks are blocked on a reader -------------


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
        wait_for(lambda: d._worker.pending == 1, "the async waiter was not offloaded")
        wait_for(lambda: d._callbacks._in_flight == 1, "the callback batch was not taken")
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
            out["thread_writer_waited"] = still_waiting(sync)

            async def bounded_synchronize() -> None:
                with anyio.fail_after(10):
                    await d.synchronize()

            task = Background(lambda: asyncio.run(bounded_synchronize()), name="child-task")
            out["task_waiter_waited"] = still_waiting(task)
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
