"""The ``aiorcu`` command line: each subcommand runs, explains itself, and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import aiorcu
from aiorcu._tools import cli


def _aiorcu(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiorcu._tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_each_subcommand_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(capsys, command)
    assert f"usage: aiorcu {command}" in out
    # The module docstring is the description: more than the usage line.
    assert len(out.splitlines()) > 3
    # User help, not source markup.
    assert "``" not in out
    assert "Exit status" in out


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(capsys)
    assert "``" not in out
    assert "watch" in out and "torture" in out and "bench" in out
    assert "demo" not in out  # the old name is a hidden alias


@pytest.mark.parametrize("command", ["torture", "watch"])
def test_developer_options_are_advanced(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(capsys, command)
    common, _, advanced = out.partition("\nadvanced:")
    options = common.partition("\noptions:")[2]  # not the usage line, which names them all
    assert options and advanced, out
    assert "--busted" in advanced and "--busted" not in options
    if command == "torture":
        for option in ("--jitter", "--expect-failure", "--seed"):
            assert option in advanced and option not in options
        for option in ("--seconds", "--threads", "--tasks", "--json", "--report-rss"):
            assert option in options and option not in advanced


def test_version() -> None:
    proc = _aiorcu("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"aiorcu {aiorcu.__version__}"


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


def test_watch_runs_and_keeps_its_invariant() -> None:
    proc = _aiorcu("watch", "--seconds", "1")
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


def test_watch_catches_a_busted_grace_period() -> None:
    """Negative control: the watch run's check must fail when grace periods do not wait."""
    proc = _aiorcu("watch", "--seconds", "1", "--busted")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED:" in proc.stdout
    assert "after it was retired" in proc.stdout
    assert _count(_summary(proc.stdout)["retired versions seen"]) > 0


def test_demo_is_an_alias_of_watch() -> None:
    proc = _aiorcu("demo", "--seconds", "0.5", "--threads", "1", "--tasks", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'aiorcu watch'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout.startswith("aiorcu watch:")


def test_watch_rejects_negative_threads() -> None:
    proc = _aiorcu("watch", "--threads", "-1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "argument --threads: must be 0 or more, got -1" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["watch", "--seconds", "0"], "argument --seconds: must be more than 0"),
        (["watch", "--seconds", "-2"], "argument --seconds: must be more than 0"),
        (["watch", "--seconds", "inf"], "argument --seconds: must be more than 0"),
        (["watch", "--tasks", "-3"], "argument --tasks: must be 0 or more"),
        (["watch", "--threads", "two"], "argument --threads: expected a whole number"),
        (["watch", "--threads", "0", "--tasks", "0"], "need at least one reader"),
        (["torture", "--seconds", "0"], "argument --seconds: must be more than 0"),
        (["torture", "--tasks", "0", "--threads", "0"], "need at least one reader"),
        (["torture", "--readers", "-1"], "argument --threads/--readers: must be 0 or more"),
        (["torture", "--tasks", "-1"], "argument --tasks: must be 0 or more"),
        (["bench", "--repeat", "0"], "argument --repeat: must be 1 or more"),
    ],
)
def test_numbers_are_validated(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"aiorcu {args[0]}: error: {message}" in err
