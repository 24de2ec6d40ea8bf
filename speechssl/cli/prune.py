"""`speechssl prune`: DPHuBERT joint distillation and structured pruning."""

from __future__ import annotations

import argparse

from speechssl.compression.prune import prune


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="prune a teacher (any load_upstream source) to a target sparsity (DPHuBERT)",
        description="HardConcrete gates on conv channels, heads, FFN units and whole blocks, trained with "
        "layer-wise distillation and a Lagrangian sparsity term; then the gated units are removed. "
        "Writes EXP/pruned, EXP/final and EXP/prune_summary.json.",
    )
    parser.add_argument("--teacher", required=True, help="speechssl checkpoint dir, transformers dir or .pt")
    parser.add_argument("--config", required=True, help="pruning YAML")
    parser.add_argument("--train", required=True, help="training data dir")
    parser.add_argument("--valid", help="validation data dir")
    parser.add_argument("--out", required=True, help="experiment dir")
    parser.add_argument("--target-sparsity", type=float, help="fraction of parameters to remove (override)")
    parser.add_argument("--max-steps", type=int, help="override trainer.max_steps")
    parser.add_argument("--final-distill-steps", type=int, help="override final_distill_steps")
    parser.add_argument("--resume", action="store_true", help="continue from EXP/checkpoints/last")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    final = prune(args.teacher, args.config, args.train, args.out, valid_dir=args.valid,
                  target_sparsity=args.target_sparsity, max_steps=args.max_steps,
                  final_distill_steps=args.final_distill_steps, resume=args.resume, overrides=args.overrides)
    print(final)
    return 0
