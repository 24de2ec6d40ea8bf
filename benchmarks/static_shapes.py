"""What `data.static_shapes` costs on a corpus: `python -m benchmarks.static_shapes DATA_DIR
[--max-batch-seconds S] [--max-seconds S] [--epochs N] [--shapes 0 4 8 16 32]`.

The training sampler alone (no audio is read past the durations): for each number of static
shapes (0: the plain duration-bucketed batches), padding efficiency (real / padded audio-seconds),
batches per epoch, utterance slots filled by repeats, and the distinct (batch, length) shapes
over all epochs, which is how many CUDA graphs a compiled step would record.
"""

from __future__ import annotations

import argparse
import sys

from speechssl.data.dataset import AudioDataset
from speechssl.data.sampler import DurationBucketSampler


def table(durations: list[float], cap: float, shapes: list[int], epochs: int) -> str:
    header = ("static_shapes", "padding efficiency", "batches per epoch", "repeated slots per epoch",
              "distinct shapes")  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---:|---:|---:|---:|---:|"]
    for n in shapes:
        sampler = DurationBucketSampler(durations, cap, seed=1, static_shapes=n, long_utterances="crop")
        efficiency, batches, repeats, seen = 0.0, 0, 0, set()
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            epoch_batches = sampler.rank_batches()
            efficiency += sampler.padding_efficiency() / epochs
            batches += len(epoch_batches)
            repeats += sum(map(len, epoch_batches)) - len(durations)
            seen |= {(len(b), sampler.padded_seconds(b)) for b in epoch_batches}
        cells = (
            n or "off",
            f"{efficiency:.3f}",
            f"{batches / epochs:.0f}",
            f"{repeats / epochs:.1f}",
            len(seen),
        )
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.static_shapes", description=__doc__)
    parser.add_argument("data_dir", help="a Kaldi data dir (utt2dur read if present, else audio headers)")
    parser.add_argument("--max-batch-seconds", type=float, default=87.5, help="data.max_batch_seconds")
    parser.add_argument("--max-seconds", type=float, default=15.625, help="data.max_seconds (the crop)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--shapes", type=int, nargs="+", default=[0, 4, 8, 16, 32])
    args = parser.parse_args(argv)
    durations = AudioDataset(args.data_dir, max_seconds=args.max_seconds).durations
    span = f"{min(durations):.2f}-{max(durations):.2f} s"
    print(f"{args.data_dir}: {len(durations)} utterances of {span} after the {args.max_seconds:g} s crop; "
          f"cap {args.max_batch_seconds:g} s; {args.epochs} epochs")  # fmt: skip
    print(table(durations, args.max_batch_seconds, args.shapes, args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
