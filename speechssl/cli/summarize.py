"""`speechssl summarize`: the closing table of a pretraining recipe."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_overwrite_argument
from speechssl.training.summary import write_summary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("summarize", help="summarize pretraining runs and unit quality (markdown)")
    parser.add_argument("--runs", nargs="+", required=True, help="experiment dirs of `speechssl pretrain`")
    parser.add_argument("--unit-scores", nargs="*", default=[], help="JSON files of `speechssl units score`")
    parser.add_argument("--out", required=True, help="markdown file to write (also printed)")
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(write_summary(args.out, args.runs, args.unit_scores, overwrite=args.overwrite), end="")
    return 0
