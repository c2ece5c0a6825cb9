"""The torture run: passes clean, catches a busted grace period, judges its own figures.

Runs go through a subprocess (``python -m aiorcu._tools.cli torture --json``) so
their threads, domain and debug hooks never outlive them; one plain-text
run goes through the CLI in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import aiorcu
from aiorcu import _lowlevel, testing
from aiorcu._tools import cli, torture
from aiorcu._tools.torture.processes import Kills

from .conftest import HANG_GUARD, STRESS_SECONDS, Background, hold_section


def _torture_json(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "aiorcu._tools.cli", "torture", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120 + 2 * STRESS_SECONDS,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _assert_clean(code: int, figures: dict[str, Any]) -> None:
    assert (code, figures["errors"], figures["failures"]) == (0, 0, []), figures
    assert figures["reads"] > 0
    assert figures["thread_reads"] > 0
    assert figures["task_reads"] > 0
    assert sum(figures["age_histogram"]) == figures["reads"]
    assert sum(figures["pipeline"]) == figures["reads"]
    assert figures["pipeline"][2] == 0  # no read after its replacement's grace period
    assert figures["grace_periods"] > 0
    assert figures["backstop_timeouts"] <= figures["long_sections"]
    # Every replaced object was retired, every deferred retirement ran.
    assert figures["retired"] == sum(figures["published"].values()) > 0
    assert figures["callbacks_run"] == figures["callbacks_queued"] > 0


@pytest.mark.fallback
def test_clean_run_passes() -> None:
    code, figures = _torture_json("--seconds", "2", "--report-rss")
    _assert_clean(code, figures)
    assert set(figures["published"]) == {"sync", "deferred", "poll", "async"}
    rss = figures["rss"]
    assert rss["judged"] is False  # too short to judge
    assert rss["end"] > 0 and rss["warm"] > 0


@pytest.mark.fallback
def test_busted_grace_period_is_caught() -> None:
    code, figures = _torture_json("--seconds", "5", "--busted")
    assert code == 1
    assert figures["errors"] > 0
    assert figures["error_messages"]
    assert figures["first_error_seconds"] is not None


def test_busted_with_expect_failure_succeeds() -> None:
    code, figures = _torture_json("--seconds", "5", "--busted", "--expect-failure")
    assert code == 0
    assert figures["errors"] > 0


def test_expect_failure_fails_on_a_clean_run() -> None:
    code, figures = _torture_json("--seconds", "1", "--expect-failure", "--tasks", "4")
    assert code == 1
    assert figures["errors"] == 0


def test_jitter_run_passes() -> None:
    code, figures = _torture_json("--seconds", "2", "--jitter")
    _assert_clean(code, figures)
    assert figures["jitter"] is True


def test_plain_output(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["torture", "--seconds", "1.5", "--threads", "1", "--tasks", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "age of the objects read" in out
    assert "   10+" in out
    # stdout is not a terminal: plain progress lines (n of N seconds, time left), no bar.
    progress = r"^\[torture \d+\.\d/1\.5 s\] reads [\d,]+  grace periods .*\(about \d+ s left\)$"
    assert re.search(progress, out, re.MULTILINE), out
    assert out.rstrip().endswith("OK: no reader saw a retired object")


def test_rejects_a_run_without_readers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["torture", "--threads", "0", "--tasks", "0"])
    assert exit_info.value.code == 2
    assert "at least one reader" in capsys.readouterr().err


def test_backstops_are_excused_only_by_long_sections() -> None:
    assert torture.judge_backstops(0, 0) is None
    assert torture.judge_backstops(2, 2) is None
    message = torture.judge_backstops(3, 1)
    assert message is not None
    assert "at least 2 wake-up(s) were lost" in message


def test_rss_growth_is_judged_on_long_runs_only() -> None:
    mib = 2**20
    assert torture.judge_rss(600, 40 * mib, 44 * mib) is None
    message = torture.judge_rss(600, 40 * mib, 46 * mib)
    assert message is not None
    assert "grew 6.0 MiB" in message
    assert torture.judge_rss(10, 40 * mib, 60 * mib) is None


def test_rss_bytes_reads_statm() -> None:
    before = torture.rss_bytes()
    block = b"x" * (32 * 2**20)  # written, so resident
    assert torture.rss_bytes() > before + 16 * 2**20
    del block


def test_writer_jitter_restores_and_keeps_grace_periods_correct() -> None:
    domain = aiorcu.Domain(name="jitter")
    with testing.writer_jitter(0.0005):
        assert _lowlevel.debug_set_writer_jitter(500_000) == 500_000
        for _ in range(20):
            domain.synchronize_blocking()
        thread, leave = hold_section(domain)
        waiter = Background(domain.synchronize_blocking, name="jittered-writer")
        time.sleep(0.05)
        assert not waiter.done.is_set()  # still waits for the held section
        leave.set()
        assert waiter.done.wait(HANG_GUARD)
        assert waiter.error is None
        thread.join(HANG_GUARD)
    assert _lowlevel.debug_set_writer_jitter(0) == 0


def test_completed_sequence_follows_grace_periods() -> None:
    domain = aiorcu.Domain(name="sequence")
    completed = testing.completed_sequence(domain)
    token = domain.snapshot()
    assert completed() < token
    done = threading.Event()
    domain.call_after_grace_period(done.set)
    domain.synchronize_blocking()
    assert completed() >= token
    assert done.wait(HANG_GUARD)


@pytest.mark.stress
@pytest.mark.fallback
def test_many_readers_with_jitter() -> None:
    code, figures = _torture_json(
        "--seconds", str(max(2.0, STRESS_SECONDS)), "--threads", "4", "--tasks", "50", "--jitter"
    )
    _assert_clean(code, figures)


@pytest.mark.stress
def test_busted_is_caught_under_jitter() -> None:
    code, figures = _torture_json(
        "--seconds", str(max(3.0, STRESS_SECONDS)), "--busted", "--jitter", "--expect-failure"
    )
    assert code == 0
    assert figures["errors"] > 0


# -- across processes (--processes) ----------------------------------------------
def _left_behind(figures: dict[str, Any]) -> list[str]:
    names = figures["names"]
    paths = [f"/dev/shm/aiorcu-{names['domain']}", f"/dev/shm/{names['shared_memory']}"]
    return [path for path in paths if os.path.exists(path)]


def test_processes_with_kills_run_clean() -> None:
    # Seed 22: the victims are reader 0, the writer, reader 0, the writer, reader 1, ...
    code, figures = _torture_json(
        "--processes", "2", "--writer-processes", "1", "--kill", "--seconds", "3",
        "--tasks", "4", "--seed", "22",
    )  # fmt: skip
    assert (code, figures["errors"], figures["failures"]) == (0, 0, []), figures
    kills = figures["kills"]
    assert kills["readers"] >= 1 and kills["writers"] >= 1, kills
    assert kills["inside_sections"] >= 1
    # Every reader process killed inside a section was proven dead and released.
    assert kills["inside_sections"] <= figures["dead_readers_released"]
    assert figures["dead_readers_released"] <= kills["readers"] + kills["writers"]
    assert kills["releases_timed"] == kills["inside_sections"]
    assert figures["thread_reads"] > 0 and figures["task_reads"] > 0
    assert figures["memory_reads"] > 0 and figures["revokes"] > 0
    # A reader killed between its two counts of one read: one count each of its rows.
    rows_killed = (figures["threads"] + 1) * kills["readers"]
    assert 0 <= figures["reads"] - sum(figures["pipeline"]) <= rows_killed
    assert figures["pipeline"][2] == 0
    assert figures["backstop_timeouts"] <= figures["long_sections"]
    assert figures["processes_attached"] == 1  # the parent: every child left or was reaped
    assert _left_behind(figures) == []


def test_processes_busted_grace_period_is_caught() -> None:
    code, figures = _torture_json(
        "--processes", "2", "--busted", "--expect-failure", "--seconds", "10", "--tasks", "4"
    )
    assert code == 0, figures
    assert figures["errors"] > 0
    assert figures["elapsed"] < 10  # the first error ends the run
    assert any("grace period" in message for message in figures["error_messages"])
    assert _left_behind(figures) == []


def test_kill_needs_processes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["torture", "--kill"])
    assert exit_info.value.code == 2
    assert "--kill needs --processes" in capsys.readouterr().err


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZXx":
                found.append(int(entry))
    return found


def _command(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        words = f.read().split(b"\0")
        return f"{pid}: {b' '.join(words).decode(errors='replace')[:120]}"
    return f"{pid}: gone"


def _shm_mapped(pids: list[int]) -> set[str]:
    names = set()
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as f:
            names.update(m.group(1) for m in re.finditer(r"/dev/shm/(\S+)", f.read()))
    return names


def test_processes_children_clean_up_when_the_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-m", "aiorcu._tools.cli", "torture", "--processes", "2", "--kill",
         "--seconds", "60", "--tasks", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().startswith("aiorcu torture: 2 reader processes")
        deadline = time.monotonic() + HANG_GUARD
        while len(_group(parent.pid)) < 6:  # the parent, the forkserver, the tracker, children
            assert time.monotonic() < deadline, _group(parent.pid)
            time.sleep(0.05)
        time.sleep(0.5)
        names = {n for n in _shm_mapped(_group(parent.pid)) if n.startswith(("aiorcu-", "psm_"))}
        assert any(n.startswith(f"aiorcu-torture-{parent.pid}-") for n in names), names
        parent.kill()  # not reaped until the end: the children see a zombie parent
        killed = time.monotonic()
        # Within a couple of seconds on an idle machine; a loaded one gets more.
        while _group(parent.pid) or any(os.path.exists(f"/dev/shm/{n}") for n in names):
            left = [_command(pid) for pid in _group(parent.pid)]
            left_names = [n for n in names if os.path.exists(f"/dev/shm/{n}")]
            assert time.monotonic() - killed < 10, (left, left_names)
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_backstops_while_a_victim_is_stopped_are_set_apart() -> None:
    kills = Kills()
    kills.note_backstops(1, now=1.0)  # before any kill: a lost wake-up
    kills.window_end = 2.0  # a victim stopped, killed, dead; its window ends at 2 s
    kills.note_backstops(3, now=1.5)
    kills.note_backstops(4, now=2.5)  # after the window: lost again
    assert (kills.backstops_seen, kills.backstops_during_kills) == (4, 2)
