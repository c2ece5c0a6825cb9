"""examples/routing_table: runs with one command; no lookup ever uses a retired table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import aiorcu
from aiorcu import testing

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "routing_table" / "router.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_table_router", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
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
    assert "lookups on a retired table 0" in out.stdout


def test_negative_control_busted_domain_retires_tables_in_use() -> None:
    """Without real grace periods, readers do meet retired tables: the check works."""
    router = _load()
    domain = aiorcu.Domain(name="routes-busted")
    testing.set_busted(domain)
    result = router.run(1.0, domain=domain)
    assert result["swaps"] > 0
    assert result["stale"] > 0
