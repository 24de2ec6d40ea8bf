"""Arguments shared by several commands: the training ones (pretrain, distill, prune), --overwrite and
the --device check."""

from __future__ import annotations

import argparse


def add_training_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """--config --train --valid --out --max-steps --resume --set --overwrite --num-threads, worded the same
    everywhere.
    The --out is an experiment dir: locked while a run writes it (speechssl.training.experiment)."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--train", required=True, help="training data dir")
    parser.add_argument("--valid", help="validation data dir (best checkpoint by its loss)")
    parser.add_argument(
        "--out", required=True, help="experiment dir: checkpoints/, tensorboard/, config.yaml"
    )
    parser.add_argument(
        "--max-steps", type=int, help="override trainer.max_steps (the warmup keeps its share)"
    )
    parser.add_argument("--resume", action="store_true", help="continue exactly from EXP/checkpoints/last")
    add_set_argument(parser, "trainer.lr=2e-4")
    add_overwrite_argument(parser)
    parser.add_argument(
        "--num-threads",
        type=int,
        help="torch CPU threads of each process (default: torch's, every core; give 1 per job when "
        "several jobs share a small machine, or OpenMP threads spin against each other)",
    )


def set_num_threads(num_threads: int | None) -> None:
    """--num-threads of a training command (None: torch's default)."""
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"--num-threads must be >= 1, found {num_threads}")
        import torch

        torch.set_num_threads(num_threads)


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """--set KEY=VALUE (repeatable) into `args.overrides`, for every command that reads a config."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """--overwrite, worded the same for every command with an --out (see speechssl.outputs)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out that holds files this command did not write "
        "(never an input or an experiment dir)",
    )


def check_device(device: str | None) -> str | None:
    """`--device` as given, once torch knows it and this machine has it: one line (exit 1) instead of
    torch's traceback from deep inside the first `.to(device)`. None (the command's default) passes."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; e.g. cpu, cuda, cuda:1") from None
    if parsed.type == "cpu":
        return device
    backend = getattr(torch, parsed.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        built = (
            f", and this torch {torch.__version__} is built without CUDA"
            if parsed.type == "cuda" and not torch.version.cuda
            else ""
        )
        raise ValueError(
            f"--device {device}: no {parsed.type} device on this machine{built}; use --device cpu"
        )
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise ValueError(
            f"--device {device}: this machine has {count()} {parsed.type} device(s), numbered from 0"
        )
    return device
