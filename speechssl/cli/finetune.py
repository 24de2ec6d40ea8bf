"""`speechssl finetune train|evaluate`: wav2vec 2.0-style CTC fine-tuning of an upstream (full, or
with adapters / LoRA / BitFit / prefix tuning) on a CTC task, as a downstream run whose upstream
trains (same data layout, experiment dir and results as `speechssl downstream`).

    speechssl finetune train --task asr --upstream exp/hubert/checkpoints/last --data data/asr \\
        --out exp/ft_lora --method lora --config conf/finetune_ctc.yaml --max-steps 2000
    speechssl finetune evaluate --out exp/ft_lora [--split test]   # EXP/results_test.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechssl.cli.downstream import add_evaluate_arguments, add_train_arguments, print_results
from speechssl.downstream.finetune import FINETUNE_TASKS, keep_recorded_freeze, load_finetune_config
from speechssl.downstream.runner import EXP_FILE, evaluate_downstream, load_experiment, train_downstream

COMMAND = "finetune train"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="CTC fine-tuning of an upstream on asr or pr (full, lora, adapter, bitfit, prefix)",
        description="wav2vec 2.0-style CTC fine-tuning (fairseq base_10h defaults): a linear CTC head on "
        "the last layer, frontend frozen, head-only updates first, masking, tri-stage schedule. A "
        "downstream run whose upstream trains: `speechssl downstream report` lists both.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)

    tr = actions.add_parser("train", help="fine-tune; dev picks the checkpoint (and the lr of a sweep)")
    add_train_arguments(
        tr,
        tasks=list(FINETUNE_TASKS),
        upstream_help="speechssl checkpoint dir, transformers dir, or fairseq/s3prl .pt",
        name_help="the run's name in results and `downstream report` columns (default: the upstream's "
        "name and the method, e.g. 'hubert (finetune full)')",
        config_help="YAML mapped onto DownstreamConfig over the fine-tuning defaults "
        "(unknown keys are errors)",
        set_example="lr=1e-4, tuning.lora.rank=8 or finetune.final_dropout=0.1",
        max_steps_help="override max_steps; finetune.freeze_finetune_updates keeps its share of the run "
        "(with --resume: the recorded count of head-only updates stays)",
    )
    tr.add_argument("--method", help="full, lora, adapter, bitfit or prefix (default: the config's, 'full')")
    tr.set_defaults(func=run_train)

    ev = actions.add_parser("evaluate", help="score the chosen checkpoint; writes EXP/results_<split>.json")
    add_evaluate_arguments(ev, COMMAND)
    ev.set_defaults(func=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    config = load_finetune_config(args.config, args.overrides, method=args.method, max_steps=args.max_steps)
    if args.resume and (Path(args.out) / EXP_FILE).is_file():  # else the runner refuses the resume
        config = keep_recorded_freeze(config, load_experiment(args.out)[1], args.overrides)
    best = train_downstream(
        args.task,
        args.upstream,
        args.data,
        args.out,
        config,
        resume=args.resume,
        name=args.name,
        overwrite=args.overwrite,
        command=COMMAND,
    )
    if best:
        dev = best["dev"][best["metric"]] if best.get("dev") else None
        print(
            f"finetune train ({config.tuning.method}): {args.task} on {args.upstream}: {config.max_steps} "
            f"updates; best {best['run_dir']}/{best['checkpoint']} (dev {best['metric']} "
            f"{dev if dev is None else f'{dev:.4f}'}); tuned upstream in {args.out}/{best['tuned_upstream']}"
        )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    print_results(evaluate_downstream(args.out, split=args.split))
    return 0
