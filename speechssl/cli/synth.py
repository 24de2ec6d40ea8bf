"""`speechssl synth`: build the embedded espeak-ng corpus (argument parsing only)."""

from __future__ import annotations

import argparse
import json

from speechssl.cli.common import add_overwrite_argument
from speechssl.data.synth import SUBSETS, SynthConfig, build_corpus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="synthesize the embedded multi-speaker corpus with espeak-ng (offline)",
        description="Synthesize the embedded default corpus (read speech with phone alignments, keywords, "
        "commands, speaker verification; diarization, query-by-example, slot filling, multilingual) with "
        "espeak-ng; the same --seed gives byte-identical files.",
    )
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument(
        "--hours",
        type=float,
        default=3.0,
        help="hours of the base corpus; the task subsets are sized from it (default: 3.0)",
    )
    parser.add_argument(
        "--subsets",
        nargs="+",
        choices=SUBSETS,
        default=list(SUBSETS),
        help="what to build: base (read, keywords, commands, asv, noise) and the task subsets "
        "(default: all; each subset has the same files whatever else is built)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of all randomness (default: 0)")
    parser.add_argument("--nj", type=int, default=1, help="parallel processes (default: 1)")
    parser.add_argument("--clean", action="store_true", help="no noise, gain or speed perturbation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = SynthConfig(
        out_dir=args.out,
        hours=args.hours,
        seed=args.seed,
        num_jobs=args.nj,
        clean=args.clean,
        subsets=tuple(dict.fromkeys(args.subsets)),
        progress=not args.no_progress,
    )
    summary = build_corpus(config, overwrite=args.overwrite)
    brief = {k: summary[k] for k in ("hours", "utterances", "speakers", "num_phones", "vocabulary_size")}
    print(json.dumps(brief))
    return 0
