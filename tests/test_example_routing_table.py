"""examples/routing_table: runs with one command; no lookup ever uses a retired table."""

from __future__ import annotations

import aiorcu
from aiorcu import testing

from .examples import load_example, run_example


def test_runs_with_one_command() -> None:
    out = run_example("routing_table", "router", "--seconds", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "lookups on a retired table 0" in out.stdout


def test_negative_control_busted_domain_retires_tables_in_use() -> None:
    """Without real grace periods, readers do meet retired tables: the check works."""
    router = load_example("routing_table", "router")
    domain = aiorcu.Domain(name="routes-busted")
    testing.set_busted(domain)
    result = router.run(1.0, domain=domain)
    assert result["swaps"] > 0
    assert result["stale"] > 0
