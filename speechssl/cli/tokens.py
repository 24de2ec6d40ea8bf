"""`speechssl tokens extract`: discrete tokens (k-means units of an upstream layer) per utterance,
optionally de-duplicated and BPE-compressed, with their bitrate."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_overwrite_argument, check_device
from speechssl.units.tokens import TokenConfig, extract_tokens


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokens",
        help="discrete speech tokens: k-means units of an upstream layer, de-duplicated, BPE",
        description="Tokens for speech language models and ASR on discrete inputs.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    defaults = TokenConfig(layer=0)
    ext = actions.add_parser(
        "extract",
        help="OUT/tokens (utt t1 t2 ...), OUT/tokens.json (settings, bitrate) and what inverts them",
        description=(
            "Units of layer L of the upstream, exactly as `speechssl features --feature upstream` + "
            "`speechssl kmeans label` give them, for every utterance of --data; --dedup keeps one token "
            "per run (run lengths in OUT/durations), --bpe-vocab N trains a sentencepiece BPE model over "
            "the units (OUT/spm.model) and writes piece ids. OUT/tokens.json holds the settings and the "
            "bitrate (sum over streams of tokens/s x log2 vocabulary). `--upstream tokens:OUT` in "
            "`speechssl downstream train` trains on these tokens."
        ),
    )
    ext.add_argument("--upstream", required=True, help="any load_upstream source (checkpoint dir, .pt, ...)")
    ext.add_argument("--layer", type=int, required=True, help="hidden-state index L (0: transformer input)")
    ext.add_argument("--kmeans", required=True, help="k-means model dir (`speechssl kmeans fit` / `import`)")
    ext.add_argument("--data", required=True, help="Kaldi data dir")
    ext.add_argument("--out", required=True, help="tokens dir")
    add_overwrite_argument(ext)
    ext.add_argument("--dedup", action="store_true", help="one token per run of a unit (run lengths kept)")
    ext.add_argument("--bpe-vocab", type=int, metavar="N", help="sentencepiece BPE over the units, N pieces")
    ext.add_argument(
        "--batch-seconds",
        type=float,
        default=defaults.batch_seconds,
        help=f"padded audio seconds per model call (default {defaults.batch_seconds:g})",
    )
    ext.add_argument("--device", help="torch device (default: cuda if available)")
    ext.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    check_device(args.device)  # one line, before the model loads
    config = TokenConfig(
        layer=args.layer, dedup=args.dedup, bpe_vocab=args.bpe_vocab, batch_seconds=args.batch_seconds
    )
    summary = extract_tokens(
        args.data, args.upstream, args.kmeans, args.out, config, device=args.device, overwrite=args.overwrite
    )
    print(
        f"tokens: {summary['num_utterances']} utterances, {summary['num_tokens']} tokens "
        f"(vocabulary {summary['vocab_size']}, {summary['tokens_per_second']:.1f}/s): "
        f"{summary['bitrate_bps']:.1f} bit/s; wrote {args.out}"
    )
    return 0
