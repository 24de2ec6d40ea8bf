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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechssl",
        description="Self-supervised speech representation learning toolkit.",
    )
    parser.add_argument("--version", action="version", version=f"speechssl {speechssl.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for info in sorted(pkgutil.iter_modules(cli_package.__path__), key=lambda m: m.name):
        if info.name == "main":
            continue
        module = importlib.import_module(f"{cli_package.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except (SpeechSSLError, ValueError, OSError) as err:
        if not _is_user_error(err):
            raise
        # User-input errors and runs stopped with advice: one clear line, no traceback.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, OSError) and err.errno in MACHINE_ERRNOS and err.filename is not None:
            message = f"{err.filename}: {err.strerror}"
        print(f"speechssl {args.command}: error: {message}", file=sys.stderr)
        return 1


def _is_user_error(err: BaseException) -> bool:
    """Errors that explain themselves; anything else (a bug) keeps its traceback."""
    if isinstance(err, (SpeechSSLError, ValueError, FileNotFoundError)):
        return True
    if isinstance(err, OSError):  # a full disk, a read-only file system, no permission: "PATH: reason"
        return err.errno in MACHINE_ERRNOS and err.filename is not None
    return False


if __name__ == "__main__":
    sys.exit(main())
