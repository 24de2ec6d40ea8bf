"""`speechssl pretrain`: HuBERT / wav2vec 2.0 pretraining (also under torchrun for DDP)."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_training_arguments
from speechssl.training.pretrain import pretrain


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain HuBERT (with --units) or wav2vec 2.0 on Kaldi data dirs",
        description="Pretrain a model from a YAML config "
        "(sections model, mask, hubert|wav2vec2, data, trainer). "
        "Multi-GPU: torchrun --nproc_per_node=N -m speechssl pretrain ...",
    )
    add_training_arguments(parser, "pretraining YAML, e.g. conf/pretrain_hubert_tiny.yaml")
    parser.add_argument(
        "--units",
        nargs="+",
        default=[],
        metavar="NAME",
        help="HuBERT targets: DATA/NAME/labels (+ dict.txt) for each label set",
    )
    parser.add_argument("--save-every", type=int, help="override trainer.save_every")
    parser.add_argument("--seed", type=int, help="override trainer.seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = pretrain(
        args.config, args.train, args.valid, args.out, units=args.units, overrides=args.overrides,
        max_steps=args.max_steps, save_every=args.save_every, seed=args.seed, resume=args.resume,
        overwrite=args.overwrite,
    )  # fmt: skip
    return 0 if result.step > 0 else 1
