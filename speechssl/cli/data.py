"""`speechssl data validate|fix|durations|trials DIR`, `data combine --out DIR SRC...`,
`data subset|copy --data SRC --out DST`: check, repair, measure, combine, subset and copy (with id
prefixes, speed or volume perturbation) Kaldi data dirs, and draw speaker-verification trials."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechssl.cli.common import add_overwrite_argument
from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.datadir import combine_data_dirs, compute_durations, summarize_data_dir
from speechssl.data.derive import DerivedDir
from speechssl.data.fix import fix_data_dir
from speechssl.data.layout import UTTERANCE, describe_ignored
from speechssl.data.perturb import CopyConfig, copy_data_dir
from speechssl.data.subset import SubsetSelection, subset_data_dir
from speechssl.data.trials import write_trials
from speechssl.data.validate import check_data_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="validate, fix, measure, combine, subset or copy Kaldi data dirs; draw ASV trials",
        description="Kaldi data-dir tools (validate_data_dir.sh, fix_data_dir.sh, get_utt2dur.sh,"
        " combine_data.sh, subset_data_dir.sh, copy_data_dir.sh, perturb_data_dir_speed.sh).",
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
    validate.add_argument(
        "--sample-rate",
        type=int,
        default=SAMPLE_RATE,
        help="rate training reads audio at; other rates are noted, since they are resampled "
        f"(default: {SAMPLE_RATE})",
    )
    validate.set_defaults(func=run_validate)

    fix = actions.add_parser(
        "fix",
        help="sort tables, keep ids present everywhere, rebuild spk2utt"
        " (originals in DIR/.backup, later fixes in DIR/.backup.1, ...)",
    )
    fix.add_argument("dir")
    fix.add_argument(
        "--allow-empty", action="store_true", help="write the dir even when no utterance would be kept"
    )
    fix.set_defaults(func=run_fix)

    durations = actions.add_parser(
        "durations", help="write utt2dur (and reco2dur with segments) from audio headers"
    )
    durations.add_argument("dir")
    durations.add_argument("--nj", type=int, default=1, help="parallel header readers (default: 1)")
    durations.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a utt2dur / reco2dur that `data durations` did not write and that differs"
        " (measured by hand, by another tool, or edited); the original is kept in DIR/.backup",
    )
    durations.set_defaults(func=run_durations)

    combine = actions.add_parser("combine", help="union of data dirs (utils/combine_data.sh)")
    combine.add_argument("--out", required=True, help="data dir to write")
    combine.add_argument("sources", nargs="+", help="data dirs to combine")
    add_overwrite_argument(combine)
    combine.set_defaults(func=run_combine)

    trials = actions.add_parser(
        "trials",
        help="write speaker-verification trials (enroll test target|nontarget) over a data dir's utterances",
        description="Trials over the utterances of DIR (speakers from its utt2spk), in C-locale order of id: "
        "every pair (enroll < test) by default, or --per-utterance N target and N nontarget partners per "
        "utterance, drawn with --seed. The list needs both target and nontarget trials.",
    )
    trials.add_argument("dir", help="data dir with utt2spk")
    trials.add_argument("--out", help="trials file to write (default: DIR/trials)")
    trials.add_argument(
        "--per-utterance",
        type=int,
        metavar="N",
        help="N target and N nontarget partners per utterance (default: every pair)",
    )
    trials.add_argument(
        "--max-trials",
        type=int,
        metavar="N",
        help="with every pair: keep a seeded sample of N pairs when there are more",
    )
    trials.add_argument("--seed", type=int, default=0, help="seed of the random draws (default: 0)")
    add_overwrite_argument(trials)
    trials.set_defaults(func=run_trials)

    subset = actions.add_parser(
        "subset",
        help="keep some utterances of a data dir, every file filtered with them (utils/subset_data_dir.sh)",
        description="Write the chosen utterances of --data to --out: every table, phone_ctm and trials"
        " filtered with them, frame_shift and cmvn_opts copied; other files and subdirectories are not"
        " copied (they are listed). The source must be valid; the result is validated.",
    )
    subset.add_argument("--data", required=True, help="source data dir")
    subset.add_argument("--out", required=True, help="data dir to write")
    way = subset.add_mutually_exclusive_group(required=True)
    way.add_argument("--first", type=int, metavar="N", help="the first N utterances (C-locale order of id)")
    way.add_argument("--last", type=int, metavar="N", help="the last N utterances")
    way.add_argument("--random", type=int, metavar="N", help="N utterances drawn at random (--seed)")
    way.add_argument("--shortest", type=int, metavar="N", help="the N shortest utterances (utt2dur)")
    way.add_argument(
        "--speakers",
        type=int,
        metavar="N",
        help="N whole speakers drawn at random (--seed); Kaldi's --speakers counts utterances instead",
    )
    way.add_argument(
        "--per-spk", type=int, metavar="N", help="up to N utterances of every speaker, spread over its list"
    )
    way.add_argument("--spk-list", metavar="FILE", help="the speakers named by the first field of each line")
    way.add_argument(
        "--utt-list", metavar="FILE", help="the utterances named by the first field of each line"
    )
    subset.add_argument("--seed", type=int, default=0, help="seed of --random and --speakers (default: 0)")
    add_overwrite_argument(subset)
    subset.set_defaults(func=run_subset)

    copy = actions.add_parser(
        "copy",
        help="copy a data dir with id prefixes, speed or volume perturbation (utils/copy_data_dir.sh,"
        " perturb_data_dir_speed.sh)",
        description="Copy --data to --out with new ids. --speed F resamples the audio as sox `speed F`"
        " (lengths / F; ids prefixed sp<F>-, utt2uniq written); --volume V scales it. Perturbed audio is"
        " written to OUT/wav/ and wav.scp lists it; a plain copy lists the source's audio.",
    )
    copy.add_argument("--data", required=True, help="source data dir")
    copy.add_argument("--out", required=True, help="data dir to write")
    copy.add_argument(
        "--utt-prefix",
        metavar="P",
        help="prefix of every utterance id (default: sp<F>- with --speed, else none)",
    )
    copy.add_argument(
        "--spk-prefix",
        metavar="P",
        help="prefix of every speaker id (default: sp<F>- with --speed, else none)",
    )
    copy.add_argument(
        "--speed", type=float, default=1.0, metavar="F", help="speed factor in [0.5, 2], e.g. 0.9 or 1.1"
    )
    copy.add_argument("--volume", type=float, default=1.0, metavar="V", help="volume factor, e.g. 1.2")
    copy.add_argument("--nj", type=int, default=1, help="parallel audio writers with --speed/--volume")
    add_overwrite_argument(copy)
    copy.set_defaults(func=run_copy)


def run_validate(args: argparse.Namespace) -> int:
    check = check_data_dir(
        args.dir,
        check_audio=not args.no_audio,
        check_spk_sort=not args.no_spk_sort,
        sample_rate=args.sample_rate,
    )
    for problem in check.problems:
        print(problem)
    for note in check.notes:
        print(f"note: {note}")
    if check.problems:
        print(
            f"{args.dir}: {len(check.problems)} problem(s); "
            f"`speechssl data fix {args.dir}` repairs the tables"
            " (ids, sorting, invisible characters, utterances missing from a table), not the audio files",
            file=sys.stderr,
        )
        return 1
    print(f"{args.dir}: OK: {summarize_data_dir(args.dir, read_audio=not args.no_audio)}")
    return 0


def run_fix(args: argparse.Namespace) -> int:
    report = fix_data_dir(args.dir, allow_empty=args.allow_empty)
    for problem in report.removed_lines:
        print(f"removed line: {problem}")
    for problem in report.cleaned:
        print(f"cleaned: {problem}")
    for dropped in report.dropped:
        print(dropped)
    for alignment in report.alignments:
        print(alignment)
    if report.ignored:
        print(f"ignored (not data-dir tables, left as they are): {describe_ignored(report.ignored)}")
    dropped = sum(d.kind == UTTERANCE for d in report.dropped)
    if report.backup_dir is None:
        print(f"{args.dir}: nothing to change ({report.num_utterances} utterances)")
    else:
        print(
            f"{args.dir}: kept {report.num_utterances} utterances, dropped {dropped}; changed"
            f" {', '.join(report.changed)}; originals in {report.backup_dir}"
        )
    return 0


def run_durations(args: argparse.Namespace) -> int:
    if args.nj < 1:
        raise ValueError(f"--nj must be at least 1, found {args.nj}")
    report = compute_durations(args.dir, nj=args.nj, progress=True, overwrite=args.overwrite)
    data = report.data
    total = sum(data.utt2dur.values()) if data.utt2dur else 0.0
    what = f"{len(data.utt2dur or {})} utterances ({total / 3600:.3f} hours)"
    if not report.written:
        print(f"{args.dir}: already holds these durations for {what}; nothing written")
        return 0
    backup = f"; originals in {report.backup_dir}" if report.backup_dir is not None else ""
    print(f"{args.dir}: wrote {' and '.join(report.written)} for {what}{backup}")
    return 0


def run_combine(args: argparse.Namespace) -> int:
    data = combine_data_dirs(args.out, args.sources, overwrite=args.overwrite)
    print(f"{args.out}: {len(data.utt_ids())} utterances from {len(args.sources)} data dirs")
    return 0


def run_trials(args: argparse.Namespace) -> int:
    out = args.out or f"{args.dir.rstrip('/')}/trials"
    trials = write_trials(
        args.dir,
        out,
        per_utterance=args.per_utterance,
        max_trials=args.max_trials,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    targets = sum(kind == "target" for *_, kind in trials)
    print(f"{out}: {len(trials)} trials ({targets} target, {len(trials) - targets} nontarget)")
    return 0


def _print_derived(result: DerivedDir) -> None:
    hours = f", {result.seconds / 3600:.3f} hours" if result.seconds is not None else ""
    print(
        f"{result.path}: {result.num_utterances} of {result.source_utterances} utterances,"
        f" {result.num_speakers} of {result.source_speakers} speakers{hours}; validated"
    )
    if result.not_copied:
        print(f"not copied: {', '.join(result.not_copied)}")
    for note in result.notes:
        print(f"note: {note}")


def run_subset(args: argparse.Namespace) -> int:
    selection = SubsetSelection(
        first=args.first,
        last=args.last,
        random=args.random,
        shortest=args.shortest,
        speakers=args.speakers,
        per_spk=args.per_spk,
        spk_list=Path(args.spk_list) if args.spk_list else None,
        utt_list=Path(args.utt_list) if args.utt_list else None,
        seed=args.seed,
    )
    _print_derived(subset_data_dir(args.data, args.out, selection, overwrite=args.overwrite))
    return 0


def run_copy(args: argparse.Namespace) -> int:
    config = CopyConfig(
        utt_prefix=args.utt_prefix, spk_prefix=args.spk_prefix, speed=args.speed, volume=args.volume
    )
    _print_derived(copy_data_dir(args.data, args.out, config, nj=args.nj, overwrite=args.overwrite))
    return 0
