"""Show which barrier backend this process uses and why.

Prints the aiorcu version, the barrier mechanism readers rely on
(membarrier, or full fences and the reason), the CPU count, the kernel and
the Python version.  Exit status: 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import aiorcu


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    info = aiorcu.backend_info()
    facts = {
        "version": aiorcu.__version__,
        "backend": info.mechanism,
        "membarrier": info.membarrier,
        "fallback_reason": info.reason,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "AIORCU_MEMBARRIER": os.environ.get("AIORCU_MEMBARRIER"),
    }
    if args.json:
        print(json.dumps(facts))
        return 0
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        print(f"{key:<{width}}  {value if value is not None else '-'}")
    return 0
