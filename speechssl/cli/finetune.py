"""`speechssl finetune`: wav2vec 2.0-style character CTC fine-tuning of an upstream
(full, or with adapters / LoRA / BitFit / prefix tuning), and `speechssl finetune evaluate`.

    speechssl finetune --upstream exp/hubert/checkpoints/last --train data/train --valid data/dev \\
        --out exp/ft_lora --method lora --config conf/finetune_ctc.yaml --max-steps 2000
    speechssl finetune evaluate --out exp/ft_lora --data data/test     # prints CER and loss

EXP/finetune.yaml records the upstream source, the data dirs and the resolved config, so
`evaluate` rebuilds the model from EXP/final/ alone (plus the upstream source for
methods other than "full", whose final/ holds only the tuned weights)."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from speechssl.config import apply_override, from_dict, load_yaml, to_dict
from speechssl.data.kaldi import atomic_write_text

log = logging.getLogger(__name__)

EXP_FILE = "finetune.yaml"
METHODS = ("full", "lora", "adapter", "bitfit", "prefix")


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
    parser.add_argument("--method", choices=METHODS, help="tuning method (default: the config's, 'full')")
    parser.add_argument("--config", help="YAML mapped onto CTCFinetuneConfig (unknown keys are errors)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. trainer.lr=1e-4 or tuning.lora.rank=8 (repeatable)")
    parser.add_argument("--max-steps", type=int,
                        help="override trainer.max_steps; freeze_finetune_updates keeps its share of the run")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of EXP")
    parser.set_defaults(func=run_finetune)

    actions = parser.add_subparsers(dest="action", metavar="[evaluate]")
    ev = actions.add_parser("evaluate", help="greedy CER and mean CTC loss of a finished run on a data dir")
    ev.add_argument("--out", dest="eval_out", required=True, help="experiment dir of `speechssl finetune`")
    ev.add_argument("--data", dest="eval_data", required=True, help="data dir with text")
    ev.add_argument("--batch-seconds", type=float, default=100.0, help="padded audio per batch")
    ev.set_defaults(func=run_evaluate)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Nested update of a mapping (sections merge key by key)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def finetune_config(config_path: str | None, overrides: list[str], *, method: str | None = None,
                    max_steps: int | None = None) -> Any:
    """The YAML (or defaults) with --set overrides, then --method and --max-steps.

    A partial section (e.g. only `trainer.lr`) keeps the other fine-tuning defaults of that
    section (fairseq base_10h: 20k updates, tri-stage), not the plain TrainerConfig's."""
    from speechssl.tuning.ctc_finetune import CTCFinetuneConfig

    data = to_dict(CTCFinetuneConfig())
    if config_path is not None:
        user = load_yaml(config_path)
        if not isinstance(user, dict):
            raise ValueError(f"{config_path}: expected a mapping of CTCFinetuneConfig keys")
        data = _merge(data, user)
    for item in overrides:
        apply_override(data, item)
    if method is not None:
        data["tuning"]["method"] = method
    if max_steps is not None:
        if max_steps <= 0:
            raise ValueError(f"--max-steps must be > 0, found {max_steps}")
        trainer, old = data["trainer"], data["trainer"]["max_steps"]
        data["freeze_finetune_updates"] = round(data["freeze_finetune_updates"] * max_steps / old)
        trainer.update(max_steps=max_steps, save_every=min(trainer["save_every"], max_steps),
                       log_every=min(trainer["log_every"], max_steps))
    return from_dict(CTCFinetuneConfig, data, source=config_path or "--set")


def run_finetune(args: argparse.Namespace) -> int:
    from speechssl.interop.upstream import load_upstream
    from speechssl.tuning.ctc_finetune import finetune_ctc

    missing = [f"--{name}" for name in ("upstream", "train", "out") if not getattr(args, name)]
    if missing:
        raise ValueError(f"speechssl finetune needs {', '.join(missing)} (or use `speechssl finetune evaluate`)")
    config = finetune_config(args.config, args.overrides, method=args.method, max_steps=args.max_steps)
    out = Path(args.out)
    exp_path = out / EXP_FILE
    if args.resume and exp_path.is_file():
        previous = yaml.safe_load(exp_path.read_text())
        if previous.get("upstream") != str(args.upstream):
            raise ValueError(f"{exp_path}: cannot resume a run of upstream {previous.get('upstream')} "
                             f"with --upstream {args.upstream}")
    for name in ("train", "valid"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"--{name} {path} is not a data dir")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp_path, yaml.safe_dump({
        "upstream": str(args.upstream), "train": str(args.train), "valid": args.valid and str(args.valid),
        "config": to_dict(config)}, sort_keys=False))
    result = finetune_ctc(load_upstream(args.upstream), args.train, out, config, valid_dir=args.valid,
                          resume=args.resume)
    r = result.report  # of the whole model: upstream and CTC head
    print(f"finetune ({config.tuning.method}): {r.trainable:,} of {r.total:,} parameters trainable "
          f"({100 * r.fraction:.3f}%); {result.train.step} updates; final model in {result.final_dir}")
    return 0


def load_finetuned(exp_dir: str | Path) -> Any:
    """Rebuild a finished run's CTCFinetuneModel (eval mode) from EXP/finetune.yaml and EXP/final/."""
    from safetensors.torch import load_file

    from speechssl.interop.upstream import load_upstream
    from speechssl.tuning import load_tuned
    from speechssl.tuning.ctc_finetune import CharVocab, CTCFinetuneConfig, CTCFinetuneModel

    exp_dir = Path(exp_dir)
    exp_path, final = exp_dir / EXP_FILE, exp_dir / "final"
    if not exp_path.is_file():
        raise FileNotFoundError(f"{exp_path} does not exist: run `speechssl finetune --out {exp_dir} ...` first")
    if not (final / "ctc_head.safetensors").is_file():
        raise FileNotFoundError(f"{final / 'ctc_head.safetensors'} does not exist: the run in {exp_dir} did not finish")
    exp = yaml.safe_load(exp_path.read_text())
    config = from_dict(CTCFinetuneConfig, exp["config"], source=str(exp_path), section="config")
    if config.tuning.method == "full":
        upstream = load_upstream(final / "upstream")
    else:
        upstream = load_upstream(exp["upstream"])
        load_tuned(upstream, final / "tuned.safetensors")
    model = CTCFinetuneModel(upstream, CharVocab.load(final / "vocab.txt"), replace(config, final_dropout=0.0))
    model.head.load_state_dict(load_file(str(final / "ctc_head.safetensors")))
    return model.eval()


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from speechssl.tuning.ctc_finetune import evaluate_ctc

    model = load_finetuned(args.eval_out)
    if torch.cuda.is_available():
        model = model.cuda()
    scores = evaluate_ctc(model, args.eval_data, batch_seconds=args.batch_seconds)
    result = {"data": str(args.eval_data), "cer": scores["cer"], "loss": scores["loss"]}
    atomic_write_text(Path(args.eval_out) / f"eval_{Path(args.eval_data).name}.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0
