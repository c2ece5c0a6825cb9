"""The results: a table (plain, or rich on a terminal), or one JSON object.

By default the table fits in 100 columns: short row names and baselines, no
notes except the ones that say what is missing.  ``--wide`` shows the full
names, baselines and every note; ``--goals`` adds the project's goal for each
row and whether this run met it.  The JSON always carries every field.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import textwrap
from collections.abc import Callable

import aiorcu

from .. import console
from .measure import Result, Settings, fmt_ns, optional

WIDTH = 100
"""The default table, header and notes fit in this many columns."""
MIN_TEXT = 12
"""A text column is never truncated below this width."""
PAIRED_MARK = "*"
"""After a ratio taken from pairs of trials (`Result.paired_ratio`), explained below the table."""


@dataclasses.dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Result], str]
    right: bool = False
    shrinks: bool = False  # may be truncated to fit WIDTH


def fmt_ratio(res: Result) -> str:
    if res.needs_extra is not None and res.ratio is None:
        return f"needs [{res.needs_extra}]"
    ratio = res.ratio
    if ratio is None:
        return "-"
    if ratio < 1 and res.goal is not None and "faster" in res.goal:
        faster = 1 / ratio
        return f"{ratio:.2f}x ({faster:.{0 if faster >= 10 else 1}f}x faster)"
    return f"{ratio:.2f}x{PAIRED_MARK if res.paired_ratio is not None else ''}"


def fmt_met(res: Result) -> str:
    met = res.met
    return "" if met is None else ("yes" if met else "NO")


def columns(*, wide: bool, goals: bool) -> list[Column]:
    cols = [
        Column("benchmark", (lambda r: r.name) if wide else (lambda r: r.short_name), shrinks=True),
        Column("aiorcu", lambda r: fmt_ns(r.ns_per_op, r.unit), right=True),
        Column(
            "baseline",
            (lambda r: r.baseline or "") if wide else (lambda r: r.short_baseline),
            shrinks=True,
        ),
        Column(
            "baseline cost" if wide else "base cost",
            lambda r: fmt_ns(r.baseline_ns_per_op, r.unit),
            right=True,
        ),
        Column("ratio", fmt_ratio, right=True),
    ]
    if goals:
        cols += [Column("goal", lambda r: r.goal or ""), Column("met", fmt_met)]
    return cols


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(
    results: list[Result], *, wide: bool = False, goals: bool = False
) -> tuple[list[Column], list[list[str]], list[int]]:
    """Columns, cells and widths.

    The default table (neither ``wide`` nor ``goals``) is narrowed to fit
    WIDTH columns (2-space gaps), truncating long names if it must.
    """
    cols = columns(wide=wide, goals=goals)
    rows = [[col.cell(res) for col in cols] for res in results]
    widths = [max([len(col.header)] + [len(row[i]) for row in rows]) for i, col in enumerate(cols)]
    if not (wide or goals):
        while sum(widths) + 2 * (len(widths) - 1) > WIDTH:
            shrinkable = [i for i, col in enumerate(cols) if col.shrinks and widths[i] > MIN_TEXT]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
        rows = [[_truncate(cell, w) for cell, w in zip(row, widths, strict=True)] for row in rows]
    return cols, rows, widths


def header(settings: Settings) -> list[str]:
    info = aiorcu.backend_info()
    return [
        f"aiorcu bench: {info.mechanism}, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}{', quick run' if settings.quick else ''}",
        f"best of {settings.repeat} interleaved trials; ratio = aiorcu / baseline, "
        "both measured in this run",
    ]


def notes(results: list[Result], *, wide: bool) -> list[str]:
    """Notes below the table: all of them with ``wide``, else only what is missing."""
    lines: list[str] = []
    for res in results:
        if not res.note or not (wide or res.needs_extra):
            continue
        if wide:
            lines.append(f"  * {res.name}: {res.note}")
        else:
            lines += textwrap.wrap(
                f"* {res.short_name}: {res.note}",
                WIDTH,
                initial_indent="  ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
    return lines


def footer(results: list[Result], *, wide: bool, goals: bool) -> list[str]:
    lines = []
    if any(res.paired_ratio is not None for res in results):
        lines.append(
            f"{PAIRED_MARK} the median of paired trials' ratios (A B, B A, ...), not the quotient "
            "of the two costs shown"
        )
    if goals:
        met = [res.met for res in results if res.met is not None]
        lines.append(f"goals met: {sum(met)} of {len(met)}")
    hints = []
    if not wide:
        hints.append("--wide for full names, baselines and notes")
    if not goals:
        hints.append("--goals for the project's goals")
    if hints:
        lines.append(f"({'; '.join(hints)})")
    return lines


def print_plain(
    results: list[Result], head: list[str], *, wide: bool = False, goals: bool = False
) -> None:
    cols, rows, widths = table(results, wide=wide, goals=goals)

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(w) if col.right else cell.ljust(w)
            for col, cell, w in zip(cols, cells, widths, strict=True)
        ).rstrip()

    for text in head:
        print(text)
    print(line([col.header for col in cols]))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    for text in [*notes(results, wide=wide), *footer(results, wide=wide, goals=goals)]:
        print(text)


def print_rich(
    results: list[Result], head: list[str], *, wide: bool = False, goals: bool = False
) -> None:
    box = optional("rich.box")
    console_mod = optional("rich.console")
    table_mod = optional("rich.table")
    width = shutil.get_terminal_size().columns
    narrow = not (wide or goals)
    out = console_mod.Console(width=min(width, WIDTH) if narrow else None, highlight=False)
    cols, rows, widths = table(results, wide=wide, goals=goals)
    # The plain table's layout: 2-column gaps (1 of padding, 1 of divider), no edges.
    grid = table_mod.Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )
    for col, w in zip(cols, widths, strict=True):
        grid.add_column(
            col.header, justify="right" if col.right else "left", min_width=w, no_wrap=not wide
        )
    for res, row in zip(results, rows, strict=True):
        styled = [console.escape(cell) for cell in row]
        if goals:
            style = {True: "green", False: "bold red", None: ""}[res.met]
            styled[-1] = f"[{style}]{styled[-1]}[/]" if style else styled[-1]
        if res.needs_extra is not None:
            styled[4] = f"[yellow]{styled[4]}[/]"
        grid.add_row(*styled)
    for text in head:
        out.print(text, markup=False)
    out.print(grid)
    for text in notes(results, wide=wide):
        out.print(f"[dim]{console.escape(text)}[/]")
    for text in footer(results, wide=wide, goals=goals):
        out.print(text, markup=False)


def print_table(
    results: list[Result], head: list[str], *, wide: bool = False, goals: bool = False
) -> None:
    """Rich when it is installed and stdout is a terminal, plain text otherwise."""
    if console.use_rich(sys.stdout):
        print_rich(results, head, wide=wide, goals=goals)
    else:
        print_plain(results, head, wide=wide, goals=goals)


def to_json(results: list[Result], settings: Settings, plots: list[str]) -> dict[str, object]:
    """Every field of every row, and where the run happened."""
    info = aiorcu.backend_info()
    return {
        "backend": info.mechanism,
        "membarrier": info.membarrier,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "quick": settings.quick,
        "repeat": settings.repeat,
        "results": [res.to_json() for res in results],
        "plots": plots,
    }
