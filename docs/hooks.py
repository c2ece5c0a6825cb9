"""mkdocs hooks: content generated from the code at build time.

``<!-- generated: reference aiorcu.A aiorcu.B -->`` becomes a mkdocstrings
``::: aiorcu.A`` block for each name the package exports, and a visible note
for names it does not export (yet): the reference pages of features still
being built stay buildable in ``--strict`` mode without inventing anything.

``<!-- generated: examples -->`` embeds every ``examples/*/README.md``.

``<!-- generated: bench-plots -->`` shows every PNG that
``aiorcu bench --plot docs/assets`` left in ``docs/assets/``.

``<!-- generated: bitmap-transaction-schema -->`` in a page becomes the JSON
schema of :class:`aiorcu.BitmapTransaction`, rendered from the pydantic model
itself, so the page cannot drift from the code.  Before the model exists the
marker becomes a visible note instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiorcu

SCHEMA_MARKER = "<!-- generated: bitmap-transaction-schema -->"
REFERENCE_MARKER = re.compile(r"<!-- generated: reference ([^>]*?) -->")


def _reference_block(match: re.Match[str]) -> str:
    present, missing = [], []
    for dotted in match.group(1).split():
        name = dotted.removeprefix("aiorcu.")
        (present if name in aiorcu.__all__ else missing).append(name)
    parts = [f"::: aiorcu.{name}\n" for name in present]
    if missing:
        names = ", ".join(f"`aiorcu.{name}`" for name in missing)
        parts.append(
            '!!! note "Not in this build"\n'
            f"    {names} not exported by this build of aiorcu;"
            " the reference appears here once they are.\n"
        )
    return "\n".join(parts)


def _schema_block() -> str:
    model = getattr(aiorcu, "BitmapTransaction", None)
    if model is None:
        return (
            '!!! note "Not available yet"\n'
            "    `aiorcu.BitmapTransaction` is not in this build of aiorcu, so its\n"
            "    schema cannot be rendered here. Rebuild the docs once it is.\n"
        )
    schema = model.model_json_schema()
    return "```json\n" + json.dumps(schema, indent=2, sort_keys=False) + "\n```\n"


PLOTS_MARKER = "<!-- generated: bench-plots -->"


def _plots_block(docs_dir: Path) -> str:
    plots = sorted((docs_dir / "assets").glob("*.png"))
    if not plots:
        return (
            '!!! note "No plots in this build"\n'
            "    Generate them with `aiorcu bench --plot docs/assets` and rebuild\n"
            "    the site; every PNG in `docs/assets/` is shown here.\n"
        )
    return "\n".join(
        f"![{p.stem.replace('-', ' ').replace('_', ' ')}](assets/{p.name})\n" for p in plots
    )


EXAMPLES_MARKER = "<!-- generated: examples -->"
_LOCAL_LINK = re.compile(r"\[([^\]]+)\]\((?!https?:|mailto:|#)([^)\s]+)\)")
_HEADING = re.compile(r"^(#+) ", re.MULTILINE)


def _examples_block(root: Path) -> str:
    readmes = sorted((root / "examples").glob("*/README.md"))
    if not readmes:
        return (
            '!!! note "No examples in this build"\n'
            "    The `examples/` directory has no example with a README yet.\n"
        )
    parts = []
    for readme in readmes:
        folder = readme.parent.relative_to(root).as_posix()
        text = readme.read_text(encoding="utf-8")
        # Links relative to the example's folder do not exist in the site:
        # show their target as a path in the source tree instead.
        text = _LOCAL_LINK.sub(rf"\1 (`{folder}/\2`)", text)
        # Demote headings so each README sits under its own section.
        text = _HEADING.sub(lambda m: "#" * min(len(m.group(1)) + 1, 6) + " ", text)
        if not text.lstrip().startswith("## "):
            text = f"## {readme.parent.name}\n\n" + text
        parts.append(f"{text.rstrip()}\n\nSource: `{folder}/`\n")
    return "\n\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = REFERENCE_MARKER.sub(_reference_block, markdown)
    if SCHEMA_MARKER in markdown:
        markdown = markdown.replace(SCHEMA_MARKER, _schema_block())
    if PLOTS_MARKER in markdown:
        markdown = markdown.replace(PLOTS_MARKER, _plots_block(Path(config["docs_dir"])))
    if EXAMPLES_MARKER in markdown:
        root = Path(config["config_file_path"]).parent
        markdown = markdown.replace(EXAMPLES_MARKER, _examples_block(root))
    return markdown
