"""Entry point of the `speechssl` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import speechssl
import speechssl.cli as cli_package
from speechssl.errors import SpeechSSLError
from speechssl.io import MACHINE_ERRNOS

# Modules of this package that are not a command.
NOT_COMMANDS = ("common", "main")


def command_names() -> list[str]:
    """Every command: one per module of this package, named after it."""
    return sorted(m.name for m in pkgutil.iter_modules(cli_package.__path__) if m.name not in NOT_COMMANDS)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `command` alone (its subcommands and options are the
    same): importing one command's module instead of all of them takes seconds off each call,
    since between them they import torch, torch.compile's machinery and most of the library."""
    parser = argparse.ArgumentParser(
        prog="speechssl",
        description="Self-supervised speech representation learning toolkit.",
    )
    parser.add_argument("--version", action="version", version=f"speechssl {speechssl.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    names = command_names()
    for name in [command] if command in names else names:
        importlib.import_module(f"{cli_package.__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: every output is written to a temp sibling, so none is torn
        print(f"speechssl {args.command}: interrupted", file=sys.stderr)
        return 130
    except (SpeechSSLError, ValueError, OSError) as err:
        if not _is_user_error(err):
            raise
        # User-input errors and runs stopped with advice: one clear line, no traceback.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, OSError) and err.errno in MACHINE_ERRNOS and err.filename is not None:
            message = f"{err.filename}: {err.strerror}"
        print(f"speechssl {args.command}: error: {message}", file=sys.stderr)
        return 1


def _command_word(argv: list[str]) -> str | None:
    """The command `argv` runs: its first word that is not an option (no top-level option takes a
    value); None where the top-level help comes first, which lists every command."""
    for word in argv:
        if word in ("-h", "--help"):
            return None
        if not word.startswith("-"):
            return word
    return None


def _is_user_error(err: BaseException) -> bool:
    """Errors that explain themselves; anything else (a bug) keeps its traceback."""
    if isinstance(err, (SpeechSSLError, ValueError, FileNotFoundError)):
        return True
    if isinstance(err, OSError):  # a full disk, a read-only file system, no permission: "PATH: reason"
        return err.errno in MACHINE_ERRNOS and err.filename is not None
    return False


if __name__ == "__main__":
    sys.exit(main())
