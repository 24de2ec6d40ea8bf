"""`speechssl prepare <corpus>`: a local copy of a public corpus -> Kaldi data dirs."""

from __future__ import annotations

import argparse

from speechssl.data.corpora.librispeech import SUBSETS, prepare_librispeech


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="prepare a local copy of a public corpus into data dirs")
    corpora = parser.add_subparsers(dest="corpus", metavar="<corpus>", required=True)

    libri = corpora.add_parser("librispeech", help="LibriSpeech (nothing is downloaded)")
    libri.add_argument("--root", required=True, help="folder holding the subsets, e.g. /data/LibriSpeech")
    libri.add_argument("--out", required=True, help="output folder; one data dir per subset")
    libri.add_argument("--subsets", nargs="+", default=["train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"],
                       choices=SUBSETS, metavar="SUBSET", help=f"subsets to prepare ({', '.join(SUBSETS)})")
    libri.add_argument("--nj", type=int, default=4, help="parallel header reads for utt2dur")
    libri.set_defaults(func=run_librispeech)


def run_librispeech(args: argparse.Namespace) -> int:
    prepare_librispeech(args.root, args.out, args.subsets, nj=args.nj)
    return 0
