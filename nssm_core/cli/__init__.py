"""The ``nssm`` command line: ``nssm train`` and the other subcommands.

Each subcommand lives in its own module with an ``add_parser(subparsers)``
function that registers it and sets ``handler`` on its parser.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from . import _certify, _plugins, _train

__all__ = ["build_parser", "main"]

_SUBCOMMANDS = [_train, _plugins, _certify]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``nssm`` command."""
    parser = argparse.ArgumentParser(
        prog="nssm",
        description="Deep state-space models with a prescribed, certified L2 gain.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log INFO messages from nssm.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in _SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nssm`` command line; return the exit status.

    A worker of a multi-process run (``WORLD_SIZE`` above 1, as ``torchrun``
    sets it) ends its process here with :func:`os._exit` once the command is
    done and its output flushed.
    """
    status = _run(argv)
    if _environment_world_size() > 1:
        # NOTE: a gloo worker aborted during interpreter shutdown ("terminate called without an
        # active exception") after finishing its work in 2 of about 10 full test runs. Skipping
        # the shutdown of C++ objects avoids that; files are already written and closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _describe_unknown(parser: argparse.ArgumentParser, command: str, unknown: Sequence[str]) -> str:
    """Return an error message for unrecognized arguments, with the closest options of ``command``."""
    # argparse has no public accessor for a subcommand's options, so this reads its private _actions lists.
    subcommands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    options = [flag for action in subcommands.choices[command]._actions for flag in action.option_strings]

    message = "unrecognized arguments: " + " ".join(unknown)
    hints = {}
    for argument in unknown:
        flag = argument.split("=", 1)[0]
        close = difflib.get_close_matches(flag, options, n=1) if flag.startswith("-") else []
        if close:
            hints[flag] = close[0]
    if len(hints) == 1:
        message += f"; did you mean {next(iter(hints.values()))}?"
    elif hints:
        message += "; did you mean " + ", ".join(f"{option} for {flag}" for flag, option in hints.items()) + "?"
    return message + f" See nssm {command} --help."


def _environment_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"nssm {args.command}: error: {_describe_unknown(parser, args.command, unknown)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ValidationError as error:
        # pydantic's text repeats the whole input and a help link; the field and message are enough.
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"]) or "config"
            message = item["msg"].removeprefix("Value error, ")
            print(f"nssm {args.command}: error: {where}: {message}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"nssm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
