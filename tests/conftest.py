"""Shared fixtures: async tests run under asyncio and trio through anyio."""

from __future__ import annotations

import os

import pytest

STRESS_SECONDS = float(os.environ.get("AIORCU_STRESS_SECONDS", "2"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
