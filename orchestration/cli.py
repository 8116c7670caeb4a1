"""`longvila` command line. Each area registers its own sub-commands; imports stay lazy so that
`longvila shots` works without loading Dagster."""

from __future__ import annotations

import argparse
import importlib
import sys

# module that defines `register(subparsers)`; each sub-command sets `func(args) -> int`
SUBCOMMAND_MODULES = [
    "curation.cli",          # longvila shots / probe
    "orchestration.demo",    # longvila demo
    "orchestration.lineage", # longvila lineage
    "evaluation.cli",        # longvila eval niah|videomme|caption
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longvila", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
