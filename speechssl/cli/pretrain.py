"""`speechssl pretrain`: HuBERT / WavLM / wav2vec 2.0 / data2vec pretraining (also under torchrun
for DDP), from scratch or continued from a released model (--init-from)."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_training_arguments, set_num_threads
from speechssl.training.pretrain import pretrain


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain HuBERT / WavLM (with --units), wav2vec 2.0 or data2vec on Kaldi data dirs",
        description="Pretrain a model from a YAML config "
        "(sections model, mask, hubert|wav2vec2|wavlm|data2vec, data, trainer). "
        "Multi-GPU: torchrun --nproc_per_node=N -m speechssl pretrain ...",
    )
    add_training_arguments(parser, "pretraining YAML, e.g. conf/pretrain_hubert_tiny.yaml")
    parser.add_argument(
        "--units",
        nargs="+",
        default=[],
        metavar="NAME",
        help="HuBERT / WavLM targets: DATA/NAME/labels (+ dict.txt) for each label set",
    )
    parser.add_argument(
        "--init-from",
        metavar="SRC",
        help="start from the weights of a speechssl checkpoint (pretraining ones with their heads), a "
        "transformers dir or a fairseq/s3prl/unilm .pt; heads it lacks start fresh (logged); the "
        "optimizer and schedule start fresh; not applied when resuming",
    )
    parser.add_argument(
        "--noise",
        metavar="DIR",
        help="WavLM: Kaldi data dir of noise recordings mixed in (wavlm.mixing.noise_prob)",
    )
    parser.add_argument("--save-every", type=int, help="override trainer.save_every")
    parser.add_argument("--seed", type=int, help="override trainer.seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    set_num_threads(args.num_threads)
    result = pretrain(
        args.config, args.train, args.valid, args.out, units=args.units, overrides=args.overrides,
        max_steps=args.max_steps, save_every=args.save_every, seed=args.seed, resume=args.resume,
        overwrite=args.overwrite, noise_dir=args.noise, init_from=args.init_from,
    )  # fmt: skip
    return 0 if result.step > 0 else 1
