"""Every ```python block in the docs and the README runs, and must succeed.

Each block is a complete program, run in its own interpreter so that event
loops, threads and domains never leak between examples.  An HTML comment on
the line(s) just before a block changes how it runs, visibly in the source:

``<!-- skip: REASON -->``
    not run; the reason is mandatory and shows in the pytest report.
``<!-- fragment: REASON -->``
    a piece of a program, shown for reading: not run and not type-checked
    (``test_docs_types.py``); the reason is mandatory.
``<!-- requires: aiorcu.Name -->``
    skipped, naming what is missing, while the package does not export
    ``Name`` (features still being built); runs as soon as it does.
``<!-- run: pytest -->``
    the block is a pytest module: it is saved as a test file and run with
    pytest, and must pass.

A broken block fails its test; ``test_a_broken_block_fails`` keeps that
promise honest.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aiorcu

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TIMEOUT = 120

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_MARKER = re.compile(
    r"^\s*<!--\s*(?P<kind>skip|fragment|requires|run)\s*:?\s*(?P<arg>.*?)\s*-->\s*$"
)
_PYTHON = {"python", "py", "python3"}


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str
    markers: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def doc_files() -> list[Path]:
    files = sorted(p for p in DOCS.rglob("*.md") if not p.name.startswith("reliability-figures-"))
    readme = ROOT / "README.md"
    if readme.exists():
        files.append(readme)
    return files


def extract_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The python blocks of one Markdown file, with the markers before each."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], m["indent"]
        lang = m["info"].strip().split(" ")[0].lstrip(".").lower() if m["info"].strip() else ""
        start = i
        body = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (
                close
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if lang not in _PYTHON:
            continue
        markers = []
        j = start - 1
        while j >= 0 and (_MARKER.match(lines[j]) or not lines[j].strip()):
            mm = _MARKER.match(lines[j])
            if mm:
                markers.append((mm["kind"], mm["arg"]))
            elif markers or j < start - 1:
                break  # one blank line at most between a marker and its block
            j -= 1
        blocks.append(
            Block(path, start + 1, textwrap.dedent("\n".join(body)) + "\n", tuple(markers))
        )
    return blocks


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in extract_blocks(path)]


def _exported(dotted: str) -> bool:
    module_name, _, rest = dotted.partition(".")
    try:
        obj = importlib.import_module(module_name)
    except ImportError:
        return False
    for part in rest.split(".") if rest else []:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def run_block(block: Block, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Runs one block as a program (or a pytest module) in ``workdir``."""
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    if ("run", "pytest") in block.markers:
        target = workdir / "test_doc_example.py"
        target.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target)]
    else:
        target = workdir / "doc_example.py"
        target.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, str(target)]
    return subprocess.run(
        cmd, check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


BLOCKS = all_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs(block: Block, tmp_path: Path) -> None:
    # Even a block that is skipped below must at least be valid Python.
    compile(block.code, block.id, "exec")
    for kind, arg in block.markers:
        if kind in ("skip", "fragment"):
            assert arg, f"{block.id}: a {kind} marker needs a reason: <!-- {kind}: why -->"
            pytest.skip(f"{block.id}: {arg}")
        if kind == "requires":
            assert arg.startswith("aiorcu."), f"{block.id}: requires names aiorcu.Something"
            if not _exported(arg):
                pytest.skip(f"{block.id}: {arg} is not in this build yet")
        if kind == "run":
            assert arg == "pytest", f"{block.id}: unknown run mode {arg!r}"
    result = run_block(block, tmp_path)
    assert result.returncode == 0, (
        f"{block.id} failed (exit {result.returncode}):\n"
        f"--- code ---\n{block.code}\n--- stdout ---\n{result.stdout}\n"
        f"--- stderr ---\n{result.stderr}"
    )


def test_the_docs_have_examples() -> None:
    # Guards the extractor itself: a parser that finds nothing tests nothing.
    assert len(BLOCKS) >= 20, [b.id for b in BLOCKS]
    assert any(b.path.name == "README.md" for b in BLOCKS), "the README example is not run"
    assert any(b.path.name == "tutorial.md" for b in BLOCKS)


def test_a_broken_block_fails(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        Some prose.

        ```python
        import aiorcu

        assert aiorcu.Domain(name="x").name == "not x"
        ```

        <!-- run: pytest -->
        ```python
        def test_wrong():
            assert 1 + 1 == 3
        ```
        """
    )
    blocks = extract_blocks(ROOT / "docs" / "negative-control.md", text)
    assert [b.line for b in blocks] == [3, 10]
    assert blocks[1].markers == (("run", "pytest"),)
    for block in blocks:
        result = run_block(block, tmp_path)
        assert result.returncode != 0, block.code


def test_markers_attach_only_to_the_next_block() -> None:
    text = textwrap.dedent(
        """\
        <!-- skip: shown only -->
        ```python
        raise SystemExit(1)
        ```

        Prose between.

        ```python
        print("runs")
        ```

        ```console
        $ not python
        ```
        """
    )
    first, second = extract_blocks(ROOT / "docs" / "x.md", text)
    assert first.markers == (("skip", "shown only"),)
    assert second.markers == ()


def test_every_public_name_has_a_reference_entry() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^:::\s*aiorcu\.(\w+)", text, re.MULTILINE))
    for marker in re.findall(r"<!-- generated: reference ([^>]*?) -->", text):
        documented.update(name.removeprefix("aiorcu.") for name in marker.split())
    missing = sorted(set(aiorcu.__all__) - documented)
    assert not missing, f"public names without a reference entry in docs/reference: {missing}"
