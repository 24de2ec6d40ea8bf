"""`speechssl units score`: PNMI, phone purity and cluster purity of label files."""

from __future__ import annotations

import argparse
from pathlib import Path

from speechssl.cli.common import add_overwrite_argument
from speechssl.outputs import check_output
from speechssl.units.report import COMMAND, format_table, plot_quality, score_label_files, write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "units",
        help="score discrete units against phone alignments (PNMI, purity)",
        description="Unit quality as defined in the HuBERT paper (section IV.C).",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    score = actions.add_parser(
        "score",
        help="score one or more labels files",
        description=(
            "Phones of the CTM are sampled at the centre of each frame of --frame-shift seconds and "
            "compared frame by frame with each labels file (one frame of length difference is trimmed, "
            "more is an error). Prints a table; --out writes JSON; --plot (or, with several label "
            "files, OUT with .png) writes a bar chart."
        ),
    )
    score.add_argument("--labels", nargs="+", required=True, help="labels files (uttid u1 u2 ...)")
    score.add_argument("--alignments", required=True, help="phone_ctm: uttid channel start duration phone")
    score.add_argument(
        "--frame-shift", type=float, default=0.02, help="seconds per label frame (default 0.02)"
    )
    score.add_argument("--names", nargs="+", help="one name per labels file (default: their directory names)")
    score.add_argument("--out", help="JSON file for the scores")
    score.add_argument("--plot", help="PNG bar chart of the scores")
    add_overwrite_argument(score)
    score.set_defaults(func=run_score)


def run_score(args: argparse.Namespace) -> int:
    plot = args.plot or (
        str(Path(args.out).with_suffix(".png")) if args.out and len(args.labels) > 1 else None
    )
    inputs = (*args.labels, args.alignments)
    if args.out and plot and Path(args.out).resolve() == Path(plot).resolve():
        raise ValueError(f"--out and --plot are the same file ({args.out}): name two files")
    for path, option in ((args.out, "--out"), (plot, "--plot")):  # before any scoring; ours are replaced
        if path:
            check_output(path, COMMAND, overwrite=args.overwrite, inputs=inputs, is_file=True, option=option)
    results = score_label_files(args.labels, args.alignments, frame_shift=args.frame_shift, names=args.names)
    print(format_table(results), end="")
    if args.out:
        write_json(
            results,
            args.out,
            extra={
                "alignments": args.alignments,
                "frame_shift": args.frame_shift,
                "labels": dict(zip(results, args.labels)),
            },
        )
        print(f"units: scores in {args.out}")
    if plot:
        plot_quality(results, plot)
        print(f"units: chart in {plot}")
    return 0
