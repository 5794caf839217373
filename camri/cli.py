"""The ``camri`` command. Each module that offers a subcommand registers it with ``add_cli(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

import camri

# Modules with a subcommand, in the order of `camri --help`.
COMMAND_MODULES = ("camri.train", "camri.data", "camri.grid", "camri.status", "camri.reproduce", "camri.lab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camri", description=camri.__doc__)
    parser.add_argument("--version", action="version", version=f"camri {camri.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from camri.data import DataError
    from camri.train import NonFiniteLossError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, DataError, NonFiniteLossError) as error:
        # Bad input is reported as one clear line, not a traceback.
        print(f"camri {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"camri {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
