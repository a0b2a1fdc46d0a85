"""`fbsd-hil` command line: one argparse tree, each subcommand lives in its own module.

A subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit status). Modules listed here
that do not exist yet are reported as "not built yet" rather than faked.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: (subcommand name, module providing ``register``)
SUBCOMMAND_MODULES: list[tuple[str, str]] = [
    ("doctor", "harness.cli.doctor"),
    ("images", "harness.cli.images"),
    ("repro", "harness.cli.repro"),
    ("console", "harness.cli.console"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fbsd-hil", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            p = sub.add_parser(name, help=f"(not built yet: {module_name} is missing)")
            p.set_defaults(func=_not_built(name, module_name))
            continue
        module.register(sub)
    return parser


def _not_built(name: str, module_name: str):
    def run(_args: argparse.Namespace) -> int:
        print(f"fbsd-hil {name}: not built yet ({module_name} does not exist)", file=sys.stderr)
        return 2

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
