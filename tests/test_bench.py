"""``aiorcu bench``: a quick run yields sane, self-consistent ratios (no timing asserts)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aiorcu._tools import bench, console
from aiorcu._tools.bench import (
    cases_app,
    cases_read,
    cases_shared,
    cases_writers,
    measure,
    members,
    report,
)
from aiorcu._tools.bench.measure import Result, Settings
from aiorcu._tools.bench.run import selected

TINY = Settings(number=200, repeat=1, scenario_seconds=0.03, quick=True)


@pytest.fixture(scope="module")
def quick_json() -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "aiorcu._tools.cli", "bench", "--quick", "--json", "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def _results(data: dict[str, object]) -> list[dict[str, object]]:
    results = data["results"]
    assert isinstance(results, list)
    return results


def test_json_rows_have_every_field(quick_json: dict[str, object]) -> None:
    rows = _results(quick_json)
    assert rows
    fields = {"name", "ns_per_op", "baseline", "baseline_ns_per_op", "ratio", "goal", "met"}
    for row in rows:
        assert set(row) >= fields | {"unit", "note", "needs_extra", "ratio_of"}
        ns = row["ns_per_op"]
        if row["needs_extra"] is not None:  # an optional package is missing here
            assert ns is None and "not measured" in str(row["note"])
            continue
        assert isinstance(ns, (int, float)) and math.isfinite(ns)
        assert ns > 0 if str(row["unit"]).startswith("ns") else ns >= 0  # a count may be 0
        base = row["baseline_ns_per_op"]
        if row["baseline"] is not None:
            assert isinstance(base, (int, float)) and base > 0
            ratio = row["ratio"]
            assert isinstance(ratio, (int, float))
            if row["ratio_of"] == "pairs":  # the median of paired trials' ratios
                assert ratio > 0 and math.isfinite(ratio)
            else:  # computed from the two figures of the same run
                assert row["ratio_of"] == "figures"
                assert ratio == pytest.approx(ns / base, rel=0.01, abs=0.002)
        if row["goal"] is not None:
            assert isinstance(row["met"], bool)


def test_json_covers_the_required_comparisons(quick_json: dict[str, object]) -> None:
    baselines = {(row["name"], row["baseline"]) for row in _results(quick_json)}
    assert ("with domain.read(): pass", "with threading.Lock(): pass") in baselines
    assert ("with domain.read(): pass", "readerwriterlock RWLockFairD read lock") in baselines
    assert ("async with domain.read(): pass", "async with asyncio.Lock(): pass") in baselines
    assert ("async with domain.read(): pass", "aiorwlock reader") in baselines
    names = {row["name"] for row in _results(quick_json)}
    assert "synchronize_blocking(), no reader active" in names
    assert "await synchronize(), no reader active" in names
    assert any("futex" in str(n) for n in names)
    assert any("poll" in str(n) for n in names)
    assert "threads: with domain.read() p99, writer active" in names
    assert "tasks: aiorwlock reader p99, writer active" in names
    assert ("with shared_domain.read(): pass", "with domain.read(): pass (a Domain)") in baselines
    assert (
        "async with shared_domain.read(): pass",
        "async with domain.read(): pass (a Domain)",
    ) in baselines
    assert "synchronize_blocking(), 4 processes attached, nobody inside (median)" in names
    assert "await synchronize(), 4 processes attached, nobody inside: thread hops" in names
    assert "worker processes: GuardedMemory.read() p99, revoking writer (worst of 2)" in names
    assert quick_json["backend"] in ("membarrier-private-expedited", "fence")


def test_met_follows_the_goal() -> None:
    row = Result("x", 250.0, "y", 100.0, goal="<= 2.5x", goal_ratio=2.5)
    assert row.ratio == 2.5 and row.met is True
    row = Result("x", 251.0, "y", 100.0, goal="<= 2.5x", goal_ratio=2.5)
    assert row.met is False
    row = Result("x", 30_000.0, goal="<= 20 us", goal_ns=20_000)
    assert row.ratio is None and row.met is False
    assert Result("x", 1.0).met is None
    assert Result("x", 1.0, "y", 10.0).to_json()["ratio"] == 0.1


def _rows() -> list[Result]:
    return [
        Result("fast thing", 100.0, "lock", 50.0, goal="<= 2.5x", goal_ratio=2.5),
        Result("slow thing", 30_000.0, goal="<= 20 us", goal_ns=20_000, note="why"),
        Result(
            "a very long benchmark name that keeps going well past any sensible width, on purpose",
            1234.0,
            "an equally long baseline name that would push the table past a hundred columns",
            5678.0,
            goal=">= 8x faster",
            goal_ratio=1 / 8,
            note="a note " * 40,
        ),
    ]


def _print(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    report.print_plain(_rows(), ["header"], wide="--wide" in flags, goals="--goals" in flags)
    return capsys.readouterr().out


def test_default_table_fits_in_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    out = _print(capsys)
    assert "fast thing" in out and "2.00x" in out and "30.0 µs" in out
    assert max(len(line) for line in out.splitlines()) <= report.WIDTH
    assert "…" in out  # the long names were shortened to fit
    assert "a note" not in out  # notes are behind --wide


def test_no_goal_columns_without_goals(capsys: pytest.CaptureFixture[str]) -> None:
    out = _print(capsys)
    head = out.splitlines()[1].split()
    assert "goal" not in head and "met" not in head
    assert "yes" not in out and "NO" not in out
    assert "goals met" not in out
    assert "--goals" in out  # the hint says where they are


def test_goals_shows_goal_and_met(capsys: pytest.CaptureFixture[str]) -> None:
    out = _print(capsys, "--goals")
    head = out.splitlines()[1].split()
    assert head[-2:] == ["goal", "met"]
    assert "<= 2.5x" in out and "yes" in out and "NO" in out
    assert "goals met: 1 of 3" in out


def test_wide_shows_everything(capsys: pytest.CaptureFixture[str]) -> None:
    out = _print(capsys, "--wide")
    assert "an equally long baseline name that would push the table past a hundred columns" in out
    assert "* slow thing: why" in out
    assert "…" not in out


def test_json_keeps_goal_and_met() -> None:
    data = report.to_json(_rows(), TINY, [])
    rows = data["results"]
    assert isinstance(rows, list)
    assert rows[0]["goal"] == "<= 2.5x" and rows[0]["met"] is True
    assert rows[1]["met"] is False and rows[1]["note"] == "why"


def test_quick_table_fits_and_hides_goals() -> None:
    """The real default table, end to end: 100 columns, no goal column."""
    proc = subprocess.run(
        [sys.executable, "-m", "aiorcu._tools.cli", "bench", "--quick", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= report.WIDTH, proc.stdout
    assert "benchmark" in proc.stdout and "goals met" not in proc.stdout
    assert not any(line.split()[-2:] == ["goal", "met"] for line in lines if line.strip())
    total = len(bench.CASES)
    assert f"[bench 1/{total}]" in proc.stderr and f"[bench {total}/{total}]" in proc.stderr
    assert "left)" in proc.stderr


# -- SharedDomain rows: helper processes and scratch names ------------------------------


def _leftovers() -> list[str]:
    """This process's scratch domain segments and pages files, and its live children."""
    names = [n for n in os.listdir("/dev/shm") if n.startswith(f"aiorcu-bench-{os.getpid()}-")]
    return names + [p.name for p in multiprocessing.active_children()]


def test_shared_rows_in_a_tiny_run(capsys: pytest.CaptureFixture[str]) -> None:
    """Structure only: every row, its unit and goal, and nothing left behind."""
    rows = cases_shared.bench_shared_read(TINY)
    reads = rows
    assert [r.short_name for r in rows] == [
        "with shared.read(): pass",
        "async with shared.read(): pass",
    ]
    for row in rows:
        assert row.goal_ratio == 1.1 and row.paired_ratio is not None
        assert row.ratio == row.paired_ratio and math.isfinite(row.paired_ratio)
        assert f"{cases_shared.PAIRS_PER_REPEAT * TINY.repeat} pairs of trials" in str(row.note)

    rows = cases_shared.bench_shared_grace(TINY)
    sync, hops, *spaced = rows
    assert sync.goal_ns == 50_000 and sync.baseline_label == "Domain, median"
    assert sync.paired_ratio is not None and f"{6 * TINY.repeat} pairs of rounds" in str(sync.note)
    assert "3 helper processes attached" in str(sync.note)
    assert hops.unit == "hops" and hops.goal_ns == 0 and hops.baseline is None
    assert hops.ns_per_op >= 0 and hops.ns_per_op == int(hops.ns_per_op)
    # The control shows the counter counts: a reader inside makes every await hop.
    assert "3 of 3 awaits hopped (Domain: 3 of 3)" in str(hops.note)
    assert [r.short_name for r in spaced] == [
        "shared grace p50, 1 attached",
        "shared grace p99, 1 attached",
        "shared grace p50, 4 attached",
        "shared grace p99, 4 attached",
    ]
    assert [r.unit for r in spaced] == ["ns (p50)", "ns (p99)"] * 2
    for p50, p99 in zip(spaced[::2], spaced[1::2], strict=True):
        assert p50.ns_per_op <= p99.ns_per_op  # the same samples: a percentile cannot fall
        assert p50.baseline_ns_per_op is not None and p99.baseline_ns_per_op is not None
        assert p50.baseline_ns_per_op <= p99.baseline_ns_per_op

    rows = cases_shared.bench_shared_readers(TINY)
    readers, revoke = rows
    assert readers.goal_ratio == 1.2 and readers.unit == "ns (p99)"
    assert readers.paired_ratio is not None and math.isfinite(readers.paired_ratio)
    for index in range(cases_shared.READER_PROCESSES):
        assert f"worker {index}: " in str(readers.note)
    assert revoke.goal is None and "revokes" in str(revoke.note)

    for row in [sync, *spaced, readers, revoke]:
        assert math.isfinite(row.ns_per_op) and row.ns_per_op > 0
    assert not _leftovers()
    report.print_plain([*reads, sync, hops, *spaced, readers, revoke], ["header"])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= report.WIDTH
    assert f"{hops.ns_per_op:,.0f} hops" in out  # a count, not a time
    assert f"x{report.PAIRED_MARK}" in out and "the median of paired trials' ratios" in out


def test_worker_reads_fall_into_their_windows() -> None:
    """Reads are sorted by start time; those outside every window are dropped."""
    windows = [
        cases_shared.Window(writer=False, pair=0, start=100, end=200),
        cases_shared.Window(writer=True, pair=0, start=200, end=300),
        cases_shared.Window(writer=True, pair=1, start=400, end=500),
        cases_shared.Window(writer=False, pair=1, start=500, end=600),
    ]
    stamps = [50, 150, 250, 350, 450, 550, 650]  # 50, 350 and 650 are outside
    durations = [9, 10, 30, 9, 20, 10, 9]
    worker = cases_shared._worker(stamps, durations, windows, groups=2)
    assert worker.reads == 4
    assert (worker.loaded, worker.plain) == (30.0, 10.0)
    assert worker.groups == [3.0, 2.0] and worker.ratio == 2.5


@pytest.mark.parametrize(
    ("case", "step"),
    [
        ("bench_shared_grace", "_spaced"),  # helpers attached, the domain still named
        ("bench_shared_readers", "attach"),  # readers spawned, domain and pages file named
        ("bench_shared_readers", "_revoke_every"),  # readers reading, names removed
    ],
)
def test_shared_rows_clean_up_when_they_fail(
    monkeypatch: pytest.MonkeyPatch, case: str, step: str
) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("a row failed half way")

    monkeypatch.setattr(members.Members if step == "attach" else cases_shared, step, fail)
    with pytest.raises(RuntimeError, match="half way"):
        getattr(cases_shared, case)(TINY)
    assert not _leftovers()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited; its new parent has not reaped it yet


def test_sigterm_mid_step_stops_the_helpers_and_removes_the_names() -> None:
    """``timeout`` or ``kill`` ends a run while its helpers are attached: nothing stays."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiorcu._tools.cli", "bench", "--quick", "--only", "with 1, 2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    prefix = f"aiorcu-bench-{proc.pid}-"
    helpers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            named = any(n.startswith(prefix) for n in os.listdir("/dev/shm"))
            helpers |= _children(proc.pid)
            if named and len(helpers) >= 3:  # the domain exists, helpers are starting
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the step ended before it could be interrupted"
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in helpers), helpers


def test_a_member_that_cannot_attach_says_why() -> None:
    name, _ = members.scratch_names()  # nobody created it
    with members.Members(name) as team:
        index = team.start("idle", 1)
        with pytest.raises(RuntimeError, match=r"helper process 0 failed: FileNotFoundError"):
            team.attach(index)
    assert not _leftovers()


def test_paired_trials_alternate_and_take_the_median_ratio() -> None:
    calls: list[str] = []
    figures = {"a": iter([99.0, 10.0, 30.0, 10.0]), "b": iter([99.0, 5.0, 10.0, 1.0])}

    def side(name: str) -> Callable[[], float]:
        def trial() -> float:
            calls.append(name)
            return next(figures[name])

        return trial

    pairs = measure.paired(side("a"), side("b"), 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, A B, B A, A B
    assert pairs.candidate == [10.0, 30.0, 10.0] and pairs.ratios == [2.0, 3.0, 10.0]
    assert pairs.ratio == 3.0  # the median: the 10x pair does not drag it
    row = Result("x", 1.0, "y", 1.0, paired_ratio=pairs.ratio)
    assert row.ratio == 3.0 and row.to_json()["ratio"] == 3.0


def test_only_runs_the_steps_it_names() -> None:
    assert [c.run for c in selected("shareddomain")] == [
        cases_shared.bench_shared_read,
        cases_shared.bench_shared_grace,
        cases_shared.bench_shared_readers,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "aiorcu._tools.cli", "bench", "--only", "no such step"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "--only 'no such step' matches no step" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "aiorcu._tools.cli", "bench", "--quick", "--json", "--only", "cell"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    names = {row["name"] for row in json.loads(proc.stdout)["results"]}
    assert names == {
        "with domain.read(): cell.get()",
        "domain.call_after_grace_period(fn)",
        "100,000 callbacks queued and run, end to end",
    }
    assert "[bench 1/1]" in proc.stderr


def test_count_units_print_as_counts() -> None:
    assert measure.fmt_ns(0.0, "hops") == "0 hops"
    assert measure.fmt_ns(12_345.0, "ns (p99)") == "12.3 µs"


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError


def test_rows_say_which_extra_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without(monkeypatch, "readerwriterlock", "readerwriterlock.rwlock", "aiorwlock", "starlette")
    rows = cases_read.bench_thread_read(TINY) + cases_read.bench_async_read(TINY)
    rows += cases_writers.bench_writer_scenario(TINY) + cases_app.bench_asgi(TINY)
    missing = {row.baseline_label or row.name: row for row in rows if row.needs_extra}
    assert missing["readerwriterlock"].needs_extra == "bench"
    assert missing["aiorwlock"].needs_extra == "bench"
    assert "readerwriterlock" in str(missing["readerwriterlock"].note)
    assert "'bench' extra" in str(missing["aiorwlock"].note)
    asgi = [row for row in rows if row.name.startswith("ASGI")]
    assert [row.needs_extra for row in asgi] == ["examples"]
    assert "starlette" in str(asgi[0].note)
    # The p99 rows of the lock libraries keep their places too.
    assert {row.short_name for row in rows if row.needs_extra} >= {
        "threads: rwlock p99, writer active",
        "tasks: aiorwlock p99, writer active",
    }
    # Measured rows are unaffected; the JSON says null, not NaN.
    assert all(math.isfinite(row.ns_per_op) for row in rows if not row.needs_extra)
    assert all(row.to_json()["ns_per_op"] is None for row in rows if row.needs_extra)

    report.print_plain(rows, ["header"])
    out = capsys.readouterr().out
    assert "needs [bench]" in out and "needs [examples]" in out
    words = " ".join(out.split())  # notes are wrapped
    assert "pip install '.[bench]'" in words and "pip install '.[examples]'" in words
    assert max(len(line) for line in out.splitlines()) <= report.WIDTH


def test_plot_without_matplotlib_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _without(monkeypatch, "matplotlib")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    rc = bench.run(parser.parse_args(["--quick", "--plot", str(tmp_path)]))
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "'plot' extra" in err and ".[plot]" in err
    assert not list(tmp_path.iterdir())


def test_plot_writes_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")

    class Quiet:
        def step(self, label: str) -> None:
            pass

    settings = Settings(number=1000, repeat=1, scenario_seconds=0.05, quick=True)
    paths = bench.write_plots(str(tmp_path), settings, Quiet())
    assert len(paths) == 4
    for path in paths:
        assert Path(path).read_bytes().startswith(b"\x89PNG")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_shows_n_of_total_and_time_left() -> None:
    out, clock = io.StringIO(), _Clock()
    progress = console.Progress(
        "bench", 3, estimates=[10, 10, 20], stream=out, fancy=False, clock=clock
    )
    progress.step("first")
    clock.now = 5.0  # the first step took half its estimate
    progress.step("second")
    clock.now = 10.0
    progress.step("third")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[bench 1/3] first (about 40 s left)"
    # The steps so far ran faster than estimated: the rest is scaled down
    # (damped by a prior of a fifth of the run, 8 s: 30 * 13/18, 20 * 18/28).
    assert lines[1] == "[bench 2/3] second (about 22 s left)"
    assert lines[2] == "[bench 3/3] third (about 13 s left)"


def test_progress_without_estimates_uses_the_mean_step() -> None:
    out, clock = io.StringIO(), _Clock()
    progress = console.Progress("bench", 4, stream=out, fancy=False, clock=clock)
    progress.step("a")
    clock.now = 60.0
    progress.step("b")
    assert out.getvalue().splitlines() == [
        "[bench 1/4] a",
        "[bench 2/4] b (about 3 min 00 s left)",
    ]


def test_progress_of_a_timed_run() -> None:
    out = io.StringIO()
    progress = console.Progress("torture", 10, unit="s", every=2, stream=out, fancy=False)
    for tenth in range(0, 101, 2):
        progress.update(tenth / 10, "reads 1")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[torture 2.0/10 s] reads 1  (about 8 s left)"
    assert lines[-1] == "[torture 10.0/10 s] reads 1  (about 0 s left)"
    assert len(lines) == 5
