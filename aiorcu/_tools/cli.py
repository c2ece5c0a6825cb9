"""The ``aiorcu`` command: info, watch, bench, torture.

Each subcommand lives in its own module (or package) exposing
``add_arguments(parser)`` and ``run(args) -> int``, and optionally
``validate(args) -> str | None`` for checks that span several options; its
docstring is the subcommand's ``--help`` text.  This module wires them
together and holds the argument types they share.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import aiorcu

SUBCOMMANDS = {
    "info": ("aiorcu._tools.info", "show the barrier backend, membarrier status and CPU count"),
    "watch": (
        "aiorcu._tools.watch",
        "watch RCU work: threads and tasks read while a writer replaces a config",
    ),
    "bench": ("aiorcu._tools.bench", "measure read and grace-period costs against locks (ratios)"),
    "torture": (
        "aiorcu._tools.torture",
        "stress run in the style of rcutorture; exits 1 on errors",
    ),
}
ALIASES = {"demo": "watch"}
"""Old names, hidden from the help: each prints a note and runs the new command."""


# -- argument types --------------------------------------------------------------
def positive_float(text: str) -> float:
    """A finite number above zero (seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number of 1 or more."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def count(text: str) -> int:
    """A whole number of 0 or more (threads, tasks)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


# -- the command -----------------------------------------------------------------
def _renamed(old: str, new: str, run: Callable[[argparse.Namespace], int]) -> Any:
    def run_renamed(args: argparse.Namespace) -> int:
        print(f"note: 'aiorcu {old}' is now 'aiorcu {new}'; running that.", file=sys.stderr)
        return run(args)

    return run_renamed


def _add(
    sub: Any, name: str, module_name: str, help_text: str | None, run_name: str | None = None
) -> None:
    module = importlib.import_module(module_name)
    kwargs: dict[str, Any] = {} if help_text is None else {"help": help_text}
    command = sub.add_parser(
        name,
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    module.add_arguments(command)
    run = module.run if run_name is None else _renamed(name, run_name, module.run)
    command.set_defaults(
        aiorcu_run=run,
        aiorcu_validate=getattr(module, "validate", None),
        aiorcu_parser=command,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiorcu",
        description="aiorcu: read-copy-update for asyncio, trio and threads.",
    )
    parser.add_argument("--version", action="version", version=f"aiorcu {aiorcu.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        _add(sub, name, module_name, help_text)
    for old, new in ALIASES.items():
        _add(sub, old, SUBCOMMANDS[new][0], None, run_name=new)  # no help: hidden
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validate = args.aiorcu_validate
    problem = validate(args) if validate is not None else None
    if problem:
        args.aiorcu_parser.error(problem)  # exits 2 with the usage line
    result: int = args.aiorcu_run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
