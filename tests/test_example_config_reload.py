"""examples/config_reload: runs with one command; no request ever sees a closed pool."""

from __future__ import annotations

import asyncio

import aiorcu
from aiorcu import testing

from .examples import load_example, run_example


def test_runs_with_one_command() -> None:
    out = run_example("config_reload", "service", "--seconds", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "requests that saw a closed pool 0" in out.stdout
    assert "invalid configs refused 0" not in out.stdout  # validation did refuse some


def test_negative_control_busted_domain_closes_pools_in_use() -> None:
    """Without real grace periods, requests do meet closed pools: the check works."""
    service = load_example("config_reload", "service")
    domain = aiorcu.Domain(name="config-busted")
    testing.set_busted(domain)
    counters = asyncio.run(service.main(1.0, domain))
    assert counters.reloads > 0
    assert counters.errors > 0
