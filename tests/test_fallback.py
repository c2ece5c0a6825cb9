"""The fence fallback, chosen once at import, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, threading, aiorcu
info = aiorcu.backend_info()
d = aiorcu.Domain(name="fence")
box = {"v": 0}
bad = []
stop = threading.Event()
def reader():
    while not stop.is_set():
        with d.read():
            v = box["v"]
            if v < 0:
                bad.append(v)
threads = [threading.Thread(target=reader) for _ in range(2)]
for t in threads: t.start()
for i in range(200):
    d.synchronize_blocking(timeout=10)
stop.set()
for t in threads: t.join()
print(json.dumps({"mechanism": info.mechanism, "membarrier": info.membarrier,
                  "reason": info.reason, "gps": d.stats().grace_periods,
                  "membarrier_calls": d.stats().membarrier_calls, "bad": len(bad)}))
"""


def _run(env_value: str | None) -> dict[str, object]:
    env = dict(os.environ)
    env.pop("AIORCU_MEMBARRIER", None)
    if env_value is not None:
        env["AIORCU_MEMBARRIER"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_membarrier_off_selects_fences() -> None:
    result = _run("off")
    assert result["mechanism"] == "fence"
    assert result["membarrier"] is False
    assert "AIORCU_MEMBARRIER=off" in str(result["reason"])
    assert result["gps"] == 200 and result["membarrier_calls"] == 0 and result["bad"] == 0


def test_default_uses_membarrier_when_the_kernel_has_it() -> None:
    result = _run(None)
    if result["mechanism"] == "fence":
        pytest.skip(f"kernel without membarrier: {result['reason']}")
    assert result["mechanism"] == "membarrier-private-expedited"
    assert result["reason"] is None
    assert result["gps"] == 200 and result["bad"] == 0
    assert isinstance(result["membarrier_calls"], int) and result["membarrier_calls"] >= 400
