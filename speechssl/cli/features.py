"""`speechssl features`: dump MFCC or upstream-layer features of a data dir, one shard per job."""

from __future__ import annotations

import argparse
import logging
import os

import torch

from speechssl.cli.common import add_overwrite_argument, check_device
from speechssl.features.dump import FEATURES, build_extractor, dump_features, is_feature_dump
from speechssl.features.upstream_features import check_dumpable
from speechssl.interop.upstream import BUILTIN_UPSTREAMS
from speechssl.outputs import claim_directories

logger = logging.getLogger(__name__)

COMMAND = "features"  # the marker's name: every shard job of one dump writes the same dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="dump MFCC or layer-L upstream features (sharded) for k-means",
        description=(
            "Write shard RANK of NSHARD of a data dir as OUT/<rank>_<nshard>.{npy,len,ids,json}. "
            "mfcc: 13 MFCC + deltas + delta-deltas (39 dims, Kaldi settings of fairseq's HuBERT recipe), "
            "every 2nd 10 ms frame: 50 Hz, frame for frame the conv frontend's count. "
            "upstream: layer L (0 = transformer input, L = output of layer L) of any load_upstream source, "
            "at its own rate (50 Hz for the conv frontend). A finished shard is skipped when its recorded "
            "inputs (audio path, size and mtime per utterance; feature settings; upstream weights) and files "
            "still check out; otherwise it is redone, with a log line saying why. Recordings longer than "
            "60 s are computed in chunks (MFCC) in bounded memory. "
            "All shard jobs may write one --out at once."
        ),
    )
    parser.add_argument("--data", required=True, help="Kaldi data dir (wav.scp [segments] utt2spk)")
    parser.add_argument("--feature", required=True, choices=FEATURES)
    parser.add_argument(
        "--upstream", help="with --feature upstream: speechssl/transformers dir or fairseq/s3prl .pt"
    )
    parser.add_argument("--layer", type=int, help="with --feature upstream: hidden-state index L")
    parser.add_argument("--out", required=True, help="feature dir (shared by all shards)")
    add_overwrite_argument(parser)
    parser.add_argument("--nshard", type=int, default=1, help="number of shards (jobs); default 1")
    parser.add_argument("--rank", type=int, default=0, help="which shard this job writes, 0..nshard-1")
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=60.0,
        help="padded audio seconds per model call (upstream; default 60)",
    )
    parser.add_argument("--device", help="torch device for --feature upstream (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage type of the .npy (default float32)",
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="torch CPU threads (default: 1 for mfcc, cores / nshard for upstream)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    elif args.feature == "mfcc":
        # MFCC works on one short utterance at a time: intra-op threads only contend with the
        # other shards a recipe runs in parallel (measured 9 ms vs 190 ms per 7 s utterance).
        torch.set_num_threads(1)
    else:  # the recipe runs the shards at once: share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.nshard))
    check_device(args.device)  # one line, before --out is claimed
    inputs = (args.data,) + ((args.upstream,) if args.upstream else ())
    builtin = BUILTIN_UPSTREAMS.get(str(args.upstream))
    if builtin is not None:  # refused before --out exists
        check_dumpable(builtin(), str(args.upstream))
    claim_directories(
        [args.out], COMMAND, overwrite=args.overwrite, inputs=inputs, earlier_output=is_feature_dump
    )
    extractor = build_extractor(args.feature, upstream=args.upstream, layer=args.layer, device=args.device)
    path = dump_features(
        args.data,
        extractor,
        args.out,
        nshard=args.nshard,
        rank=args.rank,
        dtype=args.dtype,
        batch_seconds=args.batch_seconds,
    )
    print(f"features: {path}")
    return 0
