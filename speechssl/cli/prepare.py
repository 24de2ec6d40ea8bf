"""`speechssl prepare <corpus>`: a local copy of a public corpus -> Kaldi data dirs."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_overwrite_argument
from speechssl.data.corpora.librispeech import SUBSETS, prepare_librispeech
from speechssl.data.corpora.speech_commands import prepare_speech_commands
from speechssl.data.corpora.voxceleb1 import prepare_voxceleb1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="prepare a local copy of a public corpus into data dirs")
    corpora = parser.add_subparsers(dest="corpus", metavar="<corpus>", required=True)

    libri = corpora.add_parser("librispeech", help="LibriSpeech (nothing is downloaded)")
    libri.add_argument("--root", required=True, help="folder holding the subsets, e.g. /data/LibriSpeech")
    libri.add_argument("--out", required=True, help="output folder; one data dir per subset")
    libri.add_argument(
        "--subsets",
        nargs="+",
        default=["train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"],
        choices=SUBSETS,
        metavar="SUBSET",
        help=f"subsets to prepare ({', '.join(SUBSETS)})",
    )
    libri.add_argument("--nj", type=int, default=4, help="parallel header reads for utt2dur")
    add_overwrite_argument(libri)
    libri.set_defaults(func=run_librispeech)

    sc = corpora.add_parser(
        "speech_commands", help="Speech Commands v0.02 -> SUPERB KS (12 classes; nothing is downloaded)"
    )
    sc.add_argument(
        "--root",
        required=True,
        help="the unpacked speech_commands_v0.02 (word folders, _background_noise_, *_list.txt)",
    )
    sc.add_argument("--out", required=True, help="output folder: train/, dev/, test/ (and _silence_/ wavs)")
    sc.add_argument("--nj", type=int, default=4, help="parallel header reads for utt2dur")
    add_overwrite_argument(sc)
    sc.set_defaults(func=run_speech_commands)

    vox = corpora.add_parser("voxceleb1", help="VoxCeleb1 -> SUPERB SID and ASV (nothing is downloaded)")
    vox.add_argument(
        "--root", required=True, help="folder holding wav/ (or vox1_{dev,test}_wav/wav) and the lists"
    )
    vox.add_argument("--out", required=True, help="output folder: sid/{train,dev,test}, asv/{train,dev,test}")
    vox.add_argument(
        "--tasks", nargs="+", default=["sid", "asv"], choices=["sid", "asv"], help="what to prepare"
    )
    vox.add_argument("--iden-split", help="iden_split.txt (default: ROOT/iden_split.txt)")
    vox.add_argument("--trials", help="ASV trial list (default: ROOT/veri_test2.txt)")
    vox.add_argument("--seed", type=int, default=0, help="seed of the dev trials")
    vox.add_argument("--nj", type=int, default=4, help="parallel header reads for utt2dur")
    add_overwrite_argument(vox)
    vox.set_defaults(func=run_voxceleb1)


def run_librispeech(args: argparse.Namespace) -> int:
    prepare_librispeech(args.root, args.out, args.subsets, nj=args.nj, overwrite=args.overwrite)
    return 0


def run_speech_commands(args: argparse.Namespace) -> int:
    prepare_speech_commands(args.root, args.out, nj=args.nj, overwrite=args.overwrite)
    return 0


def run_voxceleb1(args: argparse.Namespace) -> int:
    prepare_voxceleb1(
        args.root,
        args.out,
        tasks=tuple(args.tasks),
        iden_split=args.iden_split,
        veri_trials=args.trials,
        seed=args.seed,
        nj=args.nj,
        overwrite=args.overwrite,
    )
    return 0
