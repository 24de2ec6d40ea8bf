"""`speechssl export`: write any upstream source in another toolkit's format."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_overwrite_argument
from speechssl.interop.export import FORMATS, export_upstream


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model to transformers / s3prl / fairseq / ONNX / TorchScript"
    )
    parser.add_argument(
        "--upstream", required=True, help="speechssl checkpoint dir, transformers dir, or fairseq/s3prl .pt"
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="hf: a transformers dir; s3prl / fairseq: a .pt file; onnx: a .onnx file; "
        "torchscript: a torch.jit.load-able .pt file",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output dir (hf) or file (the other formats); never the source or an experiment dir",
    )
    add_overwrite_argument(parser)
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="onnx / torchscript: skip the check of the written file against the PyTorch model "
        "(the source checkpoint is verified always)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    export_upstream(args.upstream, args.format, args.out, verify=args.verify, overwrite=args.overwrite)
    return 0
