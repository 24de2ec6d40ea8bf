"""`speechssl prune`: DPHuBERT joint distillation and structured pruning."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_training_arguments, set_num_threads
from speechssl.compression.prune import prune


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="prune a teacher (any load_upstream source) to a target sparsity (DPHuBERT)",
        description="HardConcrete gates on conv channels, heads, FFN units and whole blocks, trained with "
        "layer-wise distillation and a Lagrangian sparsity term; then the gated units are removed. "
        "Writes EXP/config.yaml (the resolved config), EXP/checkpoints/, EXP/tensorboard/, EXP/pruned, "
        "EXP/final and EXP/prune_summary.json (with the expected sparsity the gates reached).",
    )
    parser.add_argument("--teacher", required=True, help="speechssl checkpoint dir, transformers dir or .pt")
    add_training_arguments(
        parser, "pruning YAML (sections target_sparsity, gates, distill_layers, loss, data, trainer)"
    )
    parser.add_argument("--target-sparsity", type=float, help="fraction of parameters to remove (override)")
    parser.add_argument("--final-distill-steps", type=int, help="override final_distill_steps")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    set_num_threads(args.num_threads)
    final = prune(
        args.teacher,
        args.config,
        args.train,
        args.out,
        valid_dir=args.valid,
        target_sparsity=args.target_sparsity,
        max_steps=args.max_steps,
        final_distill_steps=args.final_distill_steps,
        resume=args.resume,
        overrides=args.overrides,
        overwrite=args.overwrite,
    )
    print(final)
    return 0
