"""Shared fixtures: async tests run under asyncio and trio through anyio."""

from __future__ import annotations

import os
import threading

import pytest

import aiorcu

STRESS_SECONDS = float(os.environ.get("AIORCU_STRESS_SECONDS", "2"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def hold_section(
    domain: aiorcu.Domain, name: str = "holder"
) -> tuple[threading.Thread, threading.Event]:
    """Starts a thread that stays inside a read section until the event is set."""
    entered, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with domain.read():
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=reader, name=name)
    thread.start()
    assert entered.wait(5)
    return thread, leave
