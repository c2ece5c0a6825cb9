"""Loads and runs the programs under ``examples/``, for the example tests.

``load_example("routing_table", "router")`` imports
``examples/routing_table/router.py`` by path, as the script would see its
own directory (so it may import the files next to it);
``run_example("routing_table", "router", "--seconds", "1")`` runs it in a
fresh interpreter and returns the finished process.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 120.0  # seconds; a hang guard for a run of a few seconds


def example_path(example: str, file: str) -> Path:
    """``examples/<example>/<file>.py``."""
    return EXAMPLES / example / f"{file}.py"


def load_example(example: str, file: str) -> ModuleType:
    """Imports ``examples/<example>/<file>.py`` afresh, as module ``<example>_<file>``.

    While it runs, the example's directory is first on ``sys.path``, as for
    ``python examples/<example>/<file>.py``; the files next to it that it
    imports are loaded afresh too, and are not left in ``sys.modules`` under
    their short names (other examples may use the same ones).
    """
    path = example_path(example, file)
    spec = importlib.util.spec_from_file_location(f"{example}_{file}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    before = set(sys.modules)
    sys.modules[spec.name] = module  # dataclasses look their module up
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None)
            if origin is not None and Path(origin).parent == path.parent and name != spec.name:
                del sys.modules[name]
    return module


def run_example(
    example: str, file: str, *args: str, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Runs ``python examples/<example>/<file>.py ARGS``; returns it with its output."""
    return subprocess.run(
        [sys.executable, str(example_path(example, file)), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
