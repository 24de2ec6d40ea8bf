"""`speechssl finetune`: wav2vec 2.0-style character CTC fine-tuning of an upstream
(full, or with adapters / LoRA / BitFit / prefix tuning), and `speechssl finetune evaluate`.

    speechssl finetune --upstream exp/hubert/checkpoints/last --train data/train --valid data/dev \\
        --out exp/ft_lora --method lora --config conf/finetune_ctc.yaml --max-steps 2000
    speechssl finetune evaluate --out exp/ft_lora --data data/test     # prints CER and loss
"""

from __future__ import annotations

import argparse
import json

from speechssl.cli.common import add_overwrite_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="CTC fine-tuning of an upstream on characters (full, lora, adapter, bitfit, prefix)",
        description="wav2vec 2.0-style CTC fine-tuning: frontend frozen, head-only updates first, masking, "
        "tri-stage schedule. `speechssl finetune evaluate` scores a finished run.",
    )
    parser.add_argument("--upstream", help="speechssl checkpoint dir, transformers dir, or fairseq/s3prl .pt")
    parser.add_argument("--train", help="training data dir (wav.scp, text, ...)")
    parser.add_argument("--valid", help="validation data dir (loss and CER at every checkpoint)")
    parser.add_argument("--out", help="experiment dir")
    parser.add_argument(
        "--method", help="full, lora, adapter, bitfit or prefix (default: the config's, 'full')"
    )
    parser.add_argument("--config", help="YAML mapped onto CTCFinetuneConfig (unknown keys are errors)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. trainer.lr=1e-4 or tuning.lora.rank=8 (repeatable)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help="override trainer.max_steps; freeze_finetune_updates keeps its share of the run",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of EXP")
    add_overwrite_argument(parser)
    parser.set_defaults(func=run_finetune)

    actions = parser.add_subparsers(dest="action", metavar="[evaluate]")
    ev = actions.add_parser("evaluate", help="greedy CER and mean CTC loss of a finished run on a data dir")
    ev.add_argument("--out", dest="eval_out", required=True, help="experiment dir of `speechssl finetune`")
    ev.add_argument("--data", dest="eval_data", required=True, help="data dir with text")
    ev.add_argument("--max-batch-seconds", type=float, default=100.0, help="padded audio seconds per batch")
    ev.set_defaults(func=run_evaluate)


def run_finetune(args: argparse.Namespace) -> int:
    from speechssl.tuning.ctc_finetune import load_finetune_config, run_finetune_experiment

    missing = [f"--{name}" for name in ("upstream", "train", "out") if not getattr(args, name)]
    if missing:
        raise ValueError(
            f"speechssl finetune needs {', '.join(missing)} (or use `speechssl finetune evaluate`)"
        )
    config = load_finetune_config(args.config, args.overrides, method=args.method, max_steps=args.max_steps)
    result = run_finetune_experiment(
        args.upstream,
        args.train,
        args.out,
        config,
        valid_dir=args.valid,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    r = result.report  # of the whole model: upstream and CTC head
    print(
        f"finetune ({config.tuning.method}): {r.trainable:,} of {r.total:,} parameters trainable "
        f"({100 * r.fraction:.3f}%); {result.train.step} updates; final model in {result.final_dir}"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from speechssl.tuning.ctc_finetune import evaluate_finetuned

    print(
        json.dumps(
            evaluate_finetuned(args.eval_out, args.eval_data, max_batch_seconds=args.max_batch_seconds)
        )
    )
    return 0
