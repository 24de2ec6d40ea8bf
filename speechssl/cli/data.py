"""`speechssl data validate|fix|durations DIR`: check, repair and measure Kaldi data dirs."""

from __future__ import annotations

import argparse
import sys

from speechssl.data.datadir import (
    combine_data_dirs,
    compute_durations,
    fix_data_dir,
    summarize_data_dir,
    validate_data_dir,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="validate, fix, measure or combine Kaldi data dirs",
        description="Kaldi data-dir tools (validate_data_dir.sh, fix_data_dir.sh, get_utt2dur.sh).",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)

    validate = actions.add_parser(
        "validate", help="report every problem (file:line: 'id' message); exit 1 if any"
    )
    validate.add_argument("dir", help="data dir (wav.scp, utt2spk, spk2utt, [text, segments, utt2dur ...])")
    validate.add_argument(
        "--no-audio",
        action="store_true",
        help="skip reading audio headers (existence, readability, durations)",
    )
    validate.add_argument(
        "--no-spk-sort",
        action="store_true",
        help="do not require utterance ids to sort like their speakers (Kaldi's --no-spk-sort)",
    )
    validate.set_defaults(func=run_validate)

    fix = actions.add_parser(
        "fix", help="sort files, keep ids present everywhere, rebuild spk2utt (originals in DIR/.backup)"
    )
    fix.add_argument("dir")
    fix.set_defaults(func=run_fix)

    durations = actions.add_parser(
        "durations", help="write utt2dur (and reco2dur with segments) from audio headers"
    )
    durations.add_argument("dir")
    durations.add_argument("--nj", type=int, default=1, help="parallel header readers (default: 1)")
    durations.set_defaults(func=run_durations)

    combine = actions.add_parser("combine", help="union of data dirs (utils/combine_data.sh)")
    combine.add_argument("--out", required=True, help="data dir to write")
    combine.add_argument("sources", nargs="+", help="data dirs to combine")
    combine.set_defaults(func=run_combine)


def run_validate(args: argparse.Namespace) -> int:
    problems = validate_data_dir(args.dir, check_audio=not args.no_audio, check_spk_sort=not args.no_spk_sort)
    for problem in problems:
        print(problem)
    if problems:
        print(
            f"{args.dir}: {len(problems)} problem(s); `speechssl data fix {args.dir}` repairs ids and sorting",
            file=sys.stderr,
        )
        return 1
    print(f"{args.dir}: OK: {summarize_data_dir(args.dir)}")
    return 0


def run_fix(args: argparse.Namespace) -> int:
    report = fix_data_dir(args.dir)
    for problem in report.removed_lines:
        print(f"removed line: {problem}")
    for dropped in report.dropped:
        print(dropped)
    print(
        f"{args.dir}: kept {report.num_utterances} utterances, dropped"
        f" {sum(d.kind == 'utterance' for d in report.dropped)}; originals in {report.backup_dir}"
    )
    return 0


def run_durations(args: argparse.Namespace) -> int:
    if args.nj < 1:
        raise ValueError(f"--nj must be at least 1, found {args.nj}")
    data = compute_durations(args.dir, nj=args.nj, progress=True)
    written = "utt2dur and reco2dur" if data.reco2dur is not None and data.segments is not None else "utt2dur"
    total = sum(data.utt2dur.values()) if data.utt2dur else 0.0
    print(f"{args.dir}: wrote {written} for {len(data.utt2dur or {})} utterances ({total / 3600:.3f} hours)")
    return 0


def run_combine(args: argparse.Namespace) -> int:
    data = combine_data_dirs(args.out, args.sources)
    print(f"{args.out}: {len(data.utt_ids())} utterances from {len(args.sources)} data dirs")
    return 0
