"""examples/config_reload: runs with one command; no request ever sees a closed pool."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import aiorcu
from aiorcu import testing

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "config_reload" / "service.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reload_service", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_runs_with_one_command() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "requests that saw a closed pool 0" in out.stdout
    assert "invalid configs refused 0" not in out.stdout  # validation did refuse some


def test_negative_control_busted_domain_closes_pools_in_use() -> None:
    """Without real grace periods, requests do meet closed pools: the check works."""
    service = _load()
    domain = aiorcu.Domain(name="config-busted")
    testing.set_busted(domain)
    counters = asyncio.run(service.main(1.0, domain))
    assert counters.reloads > 0
    assert counters.errors > 0
