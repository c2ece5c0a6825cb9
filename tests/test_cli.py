"""The ``aiorcu`` command line: each subcommand runs, explains itself, and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import aiorcu
from aiorcu import _cli


def _aiorcu(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiorcu._cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("command", sorted(_cli.SUBCOMMANDS))
def test_each_subcommand_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: aiorcu {command}" in out
    # The module docstring is the description: more than the usage line.
    assert len(out.splitlines()) > 3


def test_info_json_matches_backend_info() -> None:
    proc = _aiorcu("info", "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    info = aiorcu.backend_info()
    assert facts["backend"] == info.mechanism
    assert facts["membarrier"] is info.membarrier
    assert isinstance(facts["cpus"], int) and facts["cpus"] >= 1


def test_info_plain() -> None:
    proc = _aiorcu("info")
    assert proc.returncode == 0, proc.stderr
    assert "backend" in proc.stdout
    assert aiorcu.backend_info().mechanism in proc.stdout


def _summary(stdout: str) -> dict[str, str]:
    pairs = {}
    for line in stdout.splitlines():
        if line.startswith("  "):
            key, _, value = line.strip().partition("  ")
            pairs[key] = value.strip()
    return pairs


def _count(value: str) -> int:
    return int(value.split(maxsplit=1)[0].replace(",", ""))


def test_demo_runs_and_keeps_its_invariant() -> None:
    proc = _aiorcu("demo", "--seconds", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: no reader ever used a retired version" in proc.stdout
    summary = _summary(proc.stdout)
    for key in (
        "reads",
        "grace periods",
        "membarrier calls",
        "stall warnings",
        "max grace period",
        "retired versions seen",
    ):
        assert key in summary, proc.stdout
    assert _count(summary["reads"]) > 0
    assert _count(summary["grace periods"]) > 0
    assert _count(summary["retired versions seen"]) == 0


def test_demo_catches_a_busted_grace_period() -> None:
    """Negative control: the demo's check must fail when grace periods do not wait."""
    proc = _aiorcu("demo", "--seconds", "1", "--busted")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED:" in proc.stdout
    assert "after it was retired" in proc.stdout
    assert _count(_summary(proc.stdout)["retired versions seen"]) > 0
