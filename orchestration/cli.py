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


def _dev_argv(args) -> list[str]:
    return ["dagster", "dev", "-w", args.workspace, *(["--port", str(args.port)] if args.port else [])]


def run_dev(args) -> int:
    """`dagster dev` on the project-local instance: DAGSTER_HOME must be set before dagster's CLI
    creates its instance (setting it inside the code location is too late), so it is set here."""
    import os
    import shutil

    from orchestration.instance import ensure_dagster_home

    home = ensure_dagster_home()
    exe = shutil.which("dagster") or os.path.join(os.path.dirname(sys.executable), "dagster")
    print(f"DAGSTER_HOME={home}", flush=True)
    argv = _dev_argv(args)
    os.execv(exe, [exe, *argv[1:]])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longvila", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    dev = sub.add_parser("dev", help="dagster dev (UI, sensors, automation) on the project-local DAGSTER_HOME")
    dev.add_argument("--workspace", "-w", default="workspace.yaml")
    dev.add_argument("--port", "-p", type=int, default=None)
    dev.set_defaults(func=run_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
