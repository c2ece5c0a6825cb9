"""``aiorcu bench``: a quick run yields sane, self-consistent ratios (no timing asserts)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from aiorcu import _bench


@pytest.fixture(scope="module")
def quick_json() -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "aiorcu._cli", "bench", "--quick", "--json", "--repeat", "2"],
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
    for row in rows:
        assert set(row) >= {"name", "ns_per_op", "baseline", "ratio", "goal", "met"}
        ns = row["ns_per_op"]
        assert isinstance(ns, (int, float)) and ns > 0 and math.isfinite(ns)
        base = row["baseline_ns_per_op"]
        if row["baseline"] is not None:
            assert isinstance(base, (int, float)) and base > 0
            ratio = row["ratio"]
            assert isinstance(ratio, (int, float))
            # The ratio is computed from the two figures of the same run.
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
    assert quick_json["backend"] in ("membarrier-private-expedited", "fence")


def test_met_follows_the_goal() -> None:
    row = _bench.Result("x", 250.0, "y", 100.0, goal="<= 2.5x", goal_ratio=2.5)
    assert row.ratio == 2.5 and row.met is True
    row = _bench.Result("x", 251.0, "y", 100.0, goal="<= 2.5x", goal_ratio=2.5)
    assert row.met is False
    row = _bench.Result("x", 30_000.0, goal="<= 20 us", goal_ns=20_000)
    assert row.ratio is None and row.met is False
    assert _bench.Result("x", 1.0).met is None
    assert _bench.Result("x", 1.0, "y", 10.0).to_json()["ratio"] == 0.1


def test_plain_table_lists_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        _bench.Result("fast thing", 100.0, "lock", 50.0, goal="<= 2.5x", goal_ratio=2.5),
        _bench.Result("slow thing", 30_000.0, goal="<= 20 us", goal_ns=20_000, note="why"),
    ]
    _bench._print_plain(rows, "header")
    out = capsys.readouterr().out
    assert "fast thing" in out and "2.00x" in out and "yes" in out
    assert "slow thing" in out and "30.0 µs" in out and "NO" in out
    assert "* slow thing: why" in out


def test_plot_without_matplotlib_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    parser = argparse.ArgumentParser()
    _bench.add_arguments(parser)
    rc = _bench.run(parser.parse_args(["--quick", "--plot", str(tmp_path)]))
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "aiorcu[plot]" in err
    assert not list(tmp_path.iterdir())


def test_plot_writes_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")

    class Quiet:
        def step(self, label: str) -> None:
            pass

    settings = _bench.Settings(number=1000, repeat=1, scenario_seconds=0.05, quick=True)
    paths = _bench.write_plots(str(tmp_path), settings, Quiet())
    assert len(paths) == 4
    for path in paths:
        assert Path(path).read_bytes().startswith(b"\x89PNG")
