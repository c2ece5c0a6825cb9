"""After fork() the child has a working domain and no phantom readers."""

from __future__ import annotations

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
