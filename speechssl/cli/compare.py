"""`speechssl compare`: parameters, MACs and CPU time of several upstreams (teacher first)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from speechssl.cli.common import add_overwrite_argument
from speechssl.compression.report import check_comparison_output, compare_upstreams, write_comparison


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare upstreams: parameters, MACs per audio-second, CPU time (teacher first)"
    )
    parser.add_argument(
        "--upstreams",
        nargs="+",
        required=True,
        metavar="NAME=SOURCE",
        help="named load_upstream sources, e.g. teacher=exp/hubert distilled=exp/distill/final",
    )
    parser.add_argument(
        "--seconds", type=positive(float), default=10.0, help="length of the test utterance (default: 10)"
    )
    parser.add_argument("--repeats", type=positive(int), default=5, help="timed runs per model (median)")
    parser.add_argument("--num-threads", type=positive(int), help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--out", required=True, type=markdown_path, help="markdown file (a .json is written beside it)"
    )
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a number of `kind` above zero (a late, nameless error otherwise: no median
    of zero runs, no frame of a zero-second utterance)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, found {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number above 0, found {text}")
        return value

    return parse


def markdown_path(text: str) -> str:
    """--out: the JSON is written beside it with the suffix .json, so OUT itself must not be that."""
    if Path(text).suffix.lower() == ".json":  # .JSON too: the same file where case is ignored (macOS)
        raise argparse.ArgumentTypeError(
            f"{text} ends in .json, where the JSON report goes beside the markdown one: name the"
            f" markdown file, e.g. {Path(text).with_suffix('.md')}"
        )
    return text


def run(args: argparse.Namespace) -> int:
    sources = {}
    for item in args.upstreams:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise ValueError(f"--upstreams takes NAME=SOURCE items, found '{item}'")
        sources[name] = source
    check_comparison_output(args.out, overwrite=args.overwrite, sources=sources.values())
    profiles = compare_upstreams(
        sources, seconds=args.seconds, repeats=args.repeats, threads=args.num_threads
    )
    print(write_comparison(profiles, args.out, overwrite=args.overwrite), end="")
    return 0
