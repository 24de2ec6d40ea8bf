"""`speechssl distill`: DistilHuBERT-style distillation of any upstream into a smaller student."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_training_arguments, set_num_threads
from speechssl.compression.distill import distill


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a teacher (any load_upstream source) into a student with fewer layers",
        description="DistilHuBERT: student = teacher frontend + lower layers, linear heads predict chosen "
        "teacher layers (L1 + cosine). YAML sections: student, target_layers, loss, mask, data, trainer. "
        "Writes EXP/config.yaml (the resolved config), EXP/checkpoints/, EXP/tensorboard/ and EXP/final "
        "(a speechssl checkpoint).",
    )
    parser.add_argument("--teacher", required=True, help="speechssl checkpoint dir, transformers dir or .pt")
    add_training_arguments(
        parser, "distillation YAML (sections student, target_layers, loss, mask, data, trainer)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    set_num_threads(args.num_threads)
    final = distill(
        args.teacher,
        args.config,
        args.train,
        args.out,
        valid_dir=args.valid,
        max_steps=args.max_steps,
        resume=args.resume,
        overrides=args.overrides,
        overwrite=args.overwrite,
    )
    print(final)
    return 0
