"""`speechssl compare`: parameters, MACs and CPU time of several upstreams (teacher first)."""

from __future__ import annotations

import argparse

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
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the test utterance")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (median)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", required=True, help="markdown file (a .json is written beside it)")
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


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
