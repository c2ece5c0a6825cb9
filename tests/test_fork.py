"""After fork() the child has a working domain and no phantom readers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import multiprocessing
import os
import threading
import time

import aiorcu

from .conftest import hold_section


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
