"""examples/shared_pages: no page changes under a read section open in any worker process.

The example (``demo.py``) runs uvicorn with several worker processes, each
attached to one `aiorcu.SharedDomain` and one `GuardedMemory` in shared
memory; a controller revokes pages through the workers' control endpoint
(the committing worker wipes them as soon as the commit returns), rewrites
them and grants them back, while clients read pages.  The invariant it
checks live: while a read section is open, in any worker, no page read in it
changes in shared memory.  These tests run it for a few seconds, show with
busted grace periods (in the workers, which commit) that the same check
catches revokes that return early, and check that nothing is left behind,
after Ctrl-C too.  About 45 s on a 2-core machine that other jobs kept busy
(load average about 15), most of it the workers' start and stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .examples import example_path, load_example

SECONDS = 3.0
WORKERS = 2  # several processes with the launcher; each one's start costs seconds
CLIENTS = 4
SHM = Path("/dev/shm")


def _run_demo(*, busted: bool) -> Any:
    demo = load_example("shared_pages", "demo")
    return demo.run_demo(SECONDS, workers=WORKERS, clients=CLIENTS, busted=busted)


def _processes_with(entry: str) -> list[int]:
    """The live processes whose environment holds ``entry`` (``NAME=value``)."""
    found = []
    needle = entry.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in environ and state != "Z":
            found.append(int(proc.name))
    return found


def _assert_nothing_left(domain: str, memory: str) -> None:
    assert not (SHM / f"aiorcu-{domain}").exists()
    assert not (SHM / memory).exists()
    # The workers were stopped before the run returned; allow the reaper a moment.
    deadline = time.monotonic() + 10.0
    while _processes_with(f"SHARED_PAGES_DOMAIN={domain}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(f"SHARED_PAGES_DOMAIN={domain}") == []


def test_invariant_holds_across_worker_processes() -> None:
    result = _run_demo(busted=False)
    assert result.violations == 0, result.examples
    assert result.held
    assert not result.unexpected
    # There was something to check, in every worker.
    assert result.processes_attached == 1 + WORKERS
    assert result.reads > 0
    assert result.revokes > 0
    assert result.grants == result.revokes
    assert result.pages_wiped == result.pages_rewritten > 0
    assert len(result.sentinels_final) >= WORKERS
    assert all(rounds > 0 for rounds, _pages, _changed in result.sentinels.values())
    assert result.stats.grace_periods >= result.revokes
    assert all(seconds > 0 for seconds in result.grace_seconds)
    assert result.control_answers == {"malformed": 422, "past the end": 409}
    assert result.ok
    _assert_nothing_left(result.domain, result.memory)


def test_negative_control_busted_grace_periods_are_caught() -> None:
    """Revokes that do not wait let the wipe land under open sections: the check sees it."""
    result = _run_demo(busted=True)
    assert result.revokes > 0
    assert result.violations > 0
    assert result.sentinel_changed > 0
    assert not result.held
    assert not result.ok
    demo = load_example("shared_pages", "demo")
    assert "INVARIANT VIOLATED" in demo.summary(result)[-1 - len(result.examples)]
    _assert_nothing_left(result.domain, result.memory)


def test_ctrl_c_stops_the_workers_and_removes_the_segments() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(example_path("shared_pages", "demo")),
            *("--seconds", "60", "--workers", str(WORKERS)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        announced = proc.stdout.readline()  # printed once the workers serve
        assert "serve on" in announced, announced + proc.communicate(timeout=60)[1]
        domain = f"shared-pages-{proc.pid}"
        assert f"domain {domain!r}" in announced
        memory = announced.split("memory '", 1)[1].split("'", 1)[0]
        assert (SHM / f"aiorcu-{domain}").exists()
        assert (SHM / memory).exists()
        running = _processes_with(f"SHARED_PAGES_DOMAIN={domain}")
        assert len(running) >= 1 + WORKERS  # uvicorn and its workers
        time.sleep(1.0)  # under load
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "interrupted; workers stopped, domain and memory removed" in out
    assert "Traceback" not in err
    _assert_nothing_left(domain, memory)
