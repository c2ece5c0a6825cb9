"""Every Python block of the README and the docs passes ``mypy --strict`` and pyright.

A user copies these blocks into typed code; a block that only runs is not
enough.  Blocks marked ``<!-- skip: ... -->`` or ``<!-- fragment: ... -->``
(see ``test_docs.py``) are left out, by name.  Both checkers run once over
all blocks (each block its own module); each block then reports its own
errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_docs import BLOCKS, ROOT, Block

CHECKED = [b for b in BLOCKS if not any(kind in ("skip", "fragment") for kind, _ in b.markers)]
_NAMES = {b.id: f"block_{i:03d}" for i, b in enumerate(CHECKED)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doc-types")
    for block in CHECKED:
        (root / f"{_NAMES[block.id]}.py").write_text(block.code, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def mypy_errors(workdir: Path) -> dict[str, list[str]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(workdir / ".mypy_cache"),
            "--python-executable",
            sys.executable,
            *sorted(p.name for p in workdir.glob("block_*.py")),
        ],
        cwd=workdir,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # the editable install's hook is invisible
        capture_output=True,
        text=True,
        check=False,
    )
    errors: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        m = re.match(r"(block_\d+)\.py:\d+:(?:\d+:)? error: ", line)
        if m:
            errors.setdefault(m[1], []).append(line)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return errors


@pytest.fixture(scope="module")
def pyright_errors(workdir: Path) -> dict[str, list[str]]:
    pyright = shutil.which("pyright", path=str(Path(sys.executable).parent))
    if pyright is None:
        pytest.fail("pyright is not installed (it is in the test extra)")
    (workdir / "pyrightconfig.json").write_text(
        json.dumps(
            {
                "extraPaths": [str(ROOT)],
                "typeCheckingMode": "strict",
                "pythonVersion": f"{sys.version_info.major}.{sys.version_info.minor}",
            }
        )
    )
    result = subprocess.run(
        [pyright, "--outputjson", "--pythonpath", sys.executable, "."],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    errors: dict[str, list[str]] = {}
    for diag in report["generalDiagnostics"]:
        if diag["severity"] != "error":
            continue
        name = Path(diag["file"]).stem
        line = diag["range"]["start"]["line"] + 1
        errors.setdefault(name, []).append(f"{name}.py:{line}: {diag['message']}")
    return errors


@pytest.mark.parametrize("block", CHECKED, ids=[b.id for b in CHECKED])
def test_doc_block_type_checks(
    block: Block, mypy_errors: dict[str, list[str]], pyright_errors: dict[str, list[str]]
) -> None:
    name = _NAMES[block.id]
    problems = mypy_errors.get(name, []) + pyright_errors.get(name, [])
    assert not problems, f"{block.id} does not type-check:\n" + "\n".join(problems)


def test_the_type_check_sees_the_blocks() -> None:
    assert len(CHECKED) >= 20


def test_a_badly_typed_block_is_caught(tmp_path: Path) -> None:
    """The checkers see aiorcu's types: a wrong call is an error, not silence."""
    (tmp_path / "bad.py").write_text(
        "import aiorcu\n\n"
        "def retire(table: dict[str, int], reason: str) -> None: ...\n\n"
        "d = aiorcu.Domain()\n"
        'd.call_after_grace_period(retire, "not a dict", "reason")\n'
        "tx = aiorcu.BitmapTransaction(ops=[], labl='typo')\n"
        "count: int = tx.report\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "bad.py"],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert 'Argument 1 to "call_after_grace_period"' in result.stdout, result.stdout
    assert '"labl"' in result.stdout, result.stdout
