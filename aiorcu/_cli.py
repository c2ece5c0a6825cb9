"""The ``aiorcu`` command: info, demo, bench, torture.

Each subcommand lives in its own module exposing ``add_arguments(parser)``
and ``run(args) -> int``; this module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

SUBCOMMANDS = {
    "info": ("aiorcu._info", "show the barrier backend, membarrier status and CPU count"),
    "demo": ("aiorcu._demo", "threads and tasks read while a writer synchronizes; prints stats"),
    "bench": ("aiorcu._bench", "measure read and grace-period costs against locks (ratios)"),
    "torture": ("aiorcu._torture", "rcutorture-style stress run; exits non-zero on any error"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiorcu",
        description="aiorcu: read-copy-update for asyncio, trio and threads.",
    )
    parser.add_argument("--version", action="version", version=f"aiorcu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
