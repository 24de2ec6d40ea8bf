"""`speechssl analyze rankme|cka|layers`: label-free looks inside an upstream's layers."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_overwrite_argument, check_device, set_num_threads

_HELP = {
    "rankme": "RankMe (effective rank) per layer, on frames and on utterance-mean embeddings",
    "cka": "linear CKA between all layer pairs of one model, or of two models (teacher vs student)",
    "layers": "k-means units of every layer scored against phone alignments (PNMI, purity)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="look inside an upstream: RankMe, CKA, unit quality per layer (JSON + PNG)",
        description="One pass of the upstream(s) over --data; writes KIND.json and KIND.png in --out.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<analysis>", required=True)
    for kind, help_text in _HELP.items():
        sub = actions.add_parser(kind, help=help_text, description=help_text + ".")
        sub.add_argument(
            "--upstream",
            action="append",
            required=True,
            metavar="SRC",
            help="a load_upstream source (checkpoint dir, transformers dir, .pt); give it twice to "
            "compare two models of the same frame rate (cka: model 1 rows, model 2 columns)",
        )
        sub.add_argument("--data", required=True, help="data dir whose audio is analysed")
        sub.add_argument("--out", required=True, help="output dir (JSON, PNG)")
        sub.add_argument(
            "--max-frames",
            type=int,
            default=10000,
            help="frames kept per layer: a seeded random sample of all analysed frames (rankme, cka); "
            "whole utterances in a seeded random order up to this many frames (layers). Default 10000",
        )
        sub.add_argument("--max-utts", type=int, help="utterances run through the model (default: all)")
        sub.add_argument("--layers", type=int, nargs="+", help="layers to analyse (default: all, 0..L)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the utterance order and frame sample")
        sub.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio per forward")
        sub.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
        sub.add_argument("--num-threads", type=int, help="torch CPU threads (default: torch's)")
        if kind == "layers":
            sub.add_argument("--num-clusters", type=int, default=100, help="K of each layer's k-means (100)")
            sub.add_argument("--alignments", help="phone_ctm (default: DATA/phone_ctm)")
        add_overwrite_argument(sub)
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speechssl.analysis.collect import CollectConfig
    from speechssl.analysis.report import analyze

    set_num_threads(args.num_threads)
    check_device(args.device)  # one line, before the model loads
    config = CollectConfig(
        layers=tuple(args.layers) if args.layers else None,
        max_frames=args.max_frames,
        max_utts=args.max_utts,
        seed=args.seed,
        batch_seconds=args.batch_seconds,
        device=args.device,
    )
    analyze(
        args.action,
        args.upstream,
        args.data,
        args.out,
        config=config,
        alignments=getattr(args, "alignments", None),
        num_clusters=getattr(args, "num_clusters", 100),
        overwrite=args.overwrite,
    )
    print(f"analyze {args.action}: {args.out}/{args.action}.json, {args.out}/{args.action}.png")
    return 0
