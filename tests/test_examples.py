"""Each example runs with one command and keeps its invariant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "needle"),
    [
        ("examples/config_reload/service.py", "requests that saw a closed pool 0"),
        ("examples/routing_table/router.py", "lookups on a retired table 0"),
    ],
)
def test_example_runs_clean(script: str, needle: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / script), "--seconds", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert needle in out.stdout
