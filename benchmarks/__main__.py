"""`python -m benchmarks [--quick] [--json PATH] [--md PATH] [--only NAME...]`: run the row groups,
print the markdown table, write JSON (`meta`, `rows`) and markdown atomically. From another
directory than the repo root: `python path/to/speechssl/benchmarks ...` (the same program)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as `python path/to/benchmarks`: import the package from its repo, wherever we are
    # sys.path[0] is this directory; its modules (common, upstream, ...) must not pass for top-level ones
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402

from benchmarks import (  # noqa: E402
    compression,
    head,
    host,
    kmeans_fit,
    loader,
    mfu,
    pretrain,
    superb,
    units_data,
    upstream,
)
from benchmarks.harness import Row, Settings, machine_info, to_markdown  # noqa: E402
from speechssl.io import atomic_write_text  # noqa: E402

GROUPS: dict[str, Callable[[Settings], list[Row]]] = {
    "upstream": upstream.run,
    "pretrain": pretrain.run,
    "frontends": pretrain.run_frontends,
    "host": host.run,
    "head": head.run,
    "units": units_data.run,
    "compression": compression.run,
    "mfu": mfu.run,
    "kmeans": kmeans_fit.run,
    "loader": loader.run,
    "superb": superb.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: under 5 minutes on 2 CPU cores")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds; numbers meaningless)")
    parser.add_argument("--json", help="write {meta, rows} here")
    parser.add_argument("--md", help="write the markdown table here")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"row groups to run: {', '.join(GROUPS)}")
    parser.add_argument(
        "--num-threads", type=int, default=None, help="torch threads for every contender (default: all cores)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per contender (default 3, tiny 1)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or []) - set(GROUPS))
    if unknown:
        parser.error(f"unknown row group(s) {unknown}; valid: {', '.join(GROUPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.num_threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    repeats = args.repeats or (1 if args.tiny else 3)
    settings = Settings(quick=args.quick, tiny=args.tiny, repeats=repeats, warmup=1 if args.tiny else 2,
                        min_seconds=0.0 if args.tiny else 1.5, threads=threads,
                        memory=not args.no_memory)  # fmt: skip
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    start = time.perf_counter()
    rows: list[Row] = []
    meta = machine_info(threads)
    meta.update(mode=mode, command="python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv))
    names = args.only or list(GROUPS)
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        rows += GROUPS[name](settings)
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        # written after every group, so a run that dies later (OOM, ^C) keeps what it measured
        meta.update(wall_s=time.perf_counter() - start, groups_done=names[: i + 1])
        if args.json:
            atomic_write_text(
                args.json, json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=1) + "\n"
            )
        if args.md:
            atomic_write_text(args.md, to_markdown(rows, meta))
    print(to_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
