"""`speechssl downstream train|evaluate|report|qbe`: SUPERB-style evaluation of an upstream."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from speechssl.cli.common import add_overwrite_argument, add_set_argument, check_device, set_num_threads
from speechssl.config import load_config
from speechssl.downstream.config import DownstreamConfig, check_tuning_overrides
from speechssl.downstream.report import write_report
from speechssl.downstream.runner import evaluate_downstream, train_downstream
from speechssl.downstream.tasks import TASKS
from speechssl.interop.upstream import upstream_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "downstream",
        help="train/evaluate a task head on a frozen (or tuned) upstream; compare upstreams",
        description="SUPERB protocol: featurizer over the upstream's layers + a light head per task.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)

    tr = actions.add_parser("train", help="train a head; dev picks the checkpoint (and the lr of a sweep)")
    add_train_arguments(
        tr,
        tasks=list(TASKS),
        upstream_help="'fbank', a speechssl checkpoint dir, a transformers dir, or a fairseq/s3prl .pt",
        name_help="the upstream's name in results and `downstream report` columns (default: derived from "
        "--upstream: 'fbank', a file's stem, or the run dir of .../<run>/checkpoints/last)",
        config_help="YAML mapped onto DownstreamConfig (unknown keys are errors)",
        set_example="lr=1e-4, featurizer.name=hconv or tuning.method=lora",
        max_steps_help="override max_steps",
    )
    tr.add_argument(
        "--feature-cache",
        metavar="DIR",
        type=cache_dir,
        help="dump a frozen upstream's hidden layers once per split into DIR (shared by runs: other "
        "heads, tasks on the same data and learning rates reuse them) and train from them; sets "
        "feature_cache (new, empty or an earlier cache dir)",
    )
    tr.set_defaults(func=run_train)

    ev = actions.add_parser("evaluate", help="score the chosen checkpoint; writes EXP/results_<split>.json")
    add_evaluate_arguments(ev, "downstream train")
    ev.add_argument(
        "--feature-cache",
        metavar="DIR|none",
        type=cache_dir,
        help="score from the cached features in DIR (new, empty or an earlier cache dir), or 'none': from "
        "the audio; default: the cache dir the experiment recorded (if any)",
    )
    ev.set_defaults(func=run_evaluate)

    tok = actions.add_parser(
        "tokenizer", help="train the sentencepiece model of the ASR task (OUT/spm.model)"
    )
    tok.add_argument("--text", required=True, help="Kaldi text file of the training set")
    tok.add_argument("--vocab-size", type=int, default=300, help="soft limit on the number of pieces")
    tok.add_argument("--out", required=True, help="output dir (new, empty or an earlier tokenizer's)")
    add_overwrite_argument(tok)
    tok.set_defaults(func=run_tokenizer)

    rep = actions.add_parser("report", help="table of results.json files + layer-weight PNG")
    rep.add_argument(
        "--exps",
        nargs="+",
        required=True,
        help="experiment dirs (evaluated); columns are their upstreams' names (train --name)",
    )
    rep.add_argument(
        "--out",
        required=True,
        help="dir for results.md, results.json, layer_weights.png (new, empty or an earlier report's)",
    )
    rep.add_argument("--split", default="test", help="which evaluation to tabulate (default test)")
    add_overwrite_argument(rep)
    rep.set_defaults(func=run_report)

    qbe = actions.add_parser(
        "qbe",
        help="query-by-example by DTW over every layer (no training); writes OUT/results.json (best layer)",
    )
    qbe.add_argument("--upstream", required=True, help="'fbank' or any load_upstream source")
    qbe.add_argument("--name", help="the upstream's name in results and reports (default: from --upstream)")
    qbe.add_argument("--data", required=True, help="a QbE dir: queries/ and docs/ data dirs and ground_truth")
    qbe.add_argument("--out", required=True, help="output dir (new, empty or an earlier qbe run's)")
    qbe.add_argument("--layers", type=int, nargs="+", metavar="L", help="layers to scan (default: all)")
    qbe.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    qbe.add_argument("--num-threads", type=int, help="torch CPU threads")
    add_overwrite_argument(qbe)
    qbe.set_defaults(func=run_qbe)

    name = actions.add_parser("name", help="print the default --name of each upstream (one per line)")
    name.add_argument("upstreams", nargs="+", metavar="UPSTREAM", help="fbank or any load_upstream source")
    name.set_defaults(func=run_name)


def add_train_arguments(
    parser: argparse.ArgumentParser,
    *,
    tasks: list[str],
    upstream_help: str,
    name_help: str,
    config_help: str,
    set_example: str,
    max_steps_help: str,
) -> None:
    """The arguments of a downstream run (`downstream train`, `finetune train`)."""
    parser.add_argument("--task", required=True, choices=tasks, help=", ".join(tasks))
    parser.add_argument("--upstream", required=True, help=upstream_help)
    parser.add_argument("--name", help=name_help)
    parser.add_argument(
        "--data", required=True, help="dir holding the task's train/, dev/ and test/ data dirs"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="experiment dir: new or empty (an earlier run of this command only with --resume); "
        "locked while the run writes it",
    )
    parser.add_argument("--config", help=config_help)
    add_set_argument(parser, set_example)
    parser.add_argument("--max-steps", type=int, help=max_steps_help)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoints of EXP")
    add_overwrite_argument(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser, train_command: str) -> None:
    parser.add_argument("--out", required=True, help=f"experiment dir of `speechssl {train_command}`")
    parser.add_argument(
        "--split",
        default="test",
        help="data split to score, a plain name (default test; only test also writes EXP/results.json)",
    )


def print_results(results: dict) -> None:
    """The evaluation's one-line summary (the whole of it is in EXP/results_<split>.json)."""
    keys = ("task", "metric", "value", "split", "upstream", "trainable_params", "total_params", "metrics")
    print(json.dumps({k: results[k] for k in keys}))


def _config(args: argparse.Namespace) -> DownstreamConfig:
    check_tuning_overrides(args.overrides)
    return load_config(DownstreamConfig, args.config, args.overrides)


def run_train(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.feature_cache is not None:
        config = replace(config, feature_cache=args.feature_cache)
    best = train_downstream(
        args.task,
        args.upstream,
        args.data,
        args.out,
        config,
        max_steps=args.max_steps,
        resume=args.resume,
        name=args.name,
        overwrite=args.overwrite,
    )
    if best:
        dev = best["dev"][best["metric"]] if best.get("dev") else None
        print(
            f"downstream train: {args.task} on {args.upstream}: best {best['run_dir']}/{best['checkpoint']} "
            f"(lr {best['lr']:g}, dev {best['metric']} {dev if dev is None else f'{dev:.4f}'})"
        )
    return 0


def cache_dir(value: str) -> str:
    """--feature-cache: an empty value would be the current directory, claimed as a cache."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty --feature-cache: name a DIR (or 'none' for evaluate)")
    return value


def run_evaluate(args: argparse.Namespace) -> int:
    cache = getattr(args, "feature_cache", None)
    override = {} if cache is None else {"feature_cache": None if cache == "none" else cache}
    print_results(evaluate_downstream(args.out, split=args.split, **override))
    return 0


def run_report(args: argparse.Namespace) -> int:
    written = write_report(args.exps, args.out, split=args.split, overwrite=args.overwrite)
    print((args.out.rstrip("/") + "/results.md:\n") + written["markdown"].read_text(), end="")
    return 0


def run_tokenizer(args: argparse.Namespace) -> int:
    from speechssl.downstream.tasks import train_tokenizer

    print(f"tokenizer: {train_tokenizer(args.text, args.out, args.vocab_size, overwrite=args.overwrite)}")
    return 0


def run_qbe(args: argparse.Namespace) -> int:
    from speechssl.downstream.qbe import evaluate_qbe

    set_num_threads(args.num_threads)
    check_device(args.device)
    results = evaluate_qbe(
        args.upstream, args.data, args.out, name=args.name, layers=args.layers, device=args.device,
        overwrite=args.overwrite,
    )  # fmt: skip
    metrics = results["metrics"]
    best = f"MTWV {results['value']:.4f} at layer {metrics['best_layer']}"
    print(f"qbe {results['upstream']}: {best} -> {args.out}")
    return 0


def run_name(args: argparse.Namespace) -> int:
    for upstream in args.upstreams:
        print(upstream_name(upstream))
    return 0
