"""Toy model, dataset and batch sampler for trainer tests, and a runner script.

`python -m speechssl.testing.training --out DIR --json '{...}'` trains the toy
model (also under `torchrun`) and writes the final parameters to
`DIR/final.safetensors`, so tests can compare separate processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from speechssl.config import from_dict


class ToyDataset(torch.utils.data.Dataset):
    """Variable-length "utterances" of `dim`-dim frames with a scalar target.

    nan_items: indices whose features are NaN (to provoke bad steps).
    delay_s: sleep per item, to make a run slow enough to be killed mid-epoch."""

    def __init__(
        self,
        num_items: int = 32,
        dim: int = 4,
        *,
        min_len: int = 3,
        max_len: int = 9,
        seed: int = 0,
        nan_items: tuple[int, ...] = (),
        delay_s: float = 0.0,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(min_len, max_len + 1, (num_items,), generator=g).tolist()
        self.items = [torch.randn(n, dim, generator=g) for n in self.lengths]
        self.targets = [x.sum() * 0.1 + 0.5 for x in self.items]
        for i in nan_items:
            self.items[i] = torch.full_like(self.items[i], float("nan"))
        self.delay_s = delay_s

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"x": self.items[i], "y": self.targets[i]}


@dataclass
class ToyBatch:
    """x (B, T, dim) zero-padded, wav_lens (B,) valid frames (the trainer's audio-seconds and
    padding statistics read `wav_lens`, as on speechssl.data.dataset.Batch), y (B,)."""

    x: torch.Tensor
    wav_lens: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ToyBatch:
        return ToyBatch(*(t.to(device, non_blocking=non_blocking) for t in (self.x, self.wav_lens, self.y)))


def toy_collate(items: list[dict]) -> ToyBatch:
    """Pad to the longest item."""
    lengths = torch.tensor([it["x"].shape[0] for it in items])
    x = torch.zeros(len(items), int(lengths.max()), items[0]["x"].shape[1])
    for b, it in enumerate(items):
        x[b, : it["x"].shape[0]] = it["x"]
    return ToyBatch(x, lengths, torch.stack([it["y"] for it in items]))


class ToyModel(nn.Module):
    """Masked mean-pool -> Linear -> LayerNorm -> Dropout -> Linear; forward(batch) -> (loss, metrics)
    like the pretraining objectives. Has a 1-d `mask_emb` (as wav2vec 2.0/HuBERT) to test weight decay."""

    def __init__(self, dim: int = 4, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.mask_emb = nn.Parameter(torch.zeros(dim).uniform_())
        self.proj = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def forward(self, batch: ToyBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, lengths = batch.x, batch.wav_lens  # (B, T, D), (B,)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        x = x + self.mask_emb * 0.1
        pooled = (x * valid[..., None]).sum(1) / lengths[:, None]  # (B, D)
        pred = self.out(self.dropout(self.norm(self.proj(pooled)))).squeeze(-1)  # (B,)
        err = pred.float() - batch.y
        loss = (err**2).mean()
        return loss, {"mae": err.abs().mean().detach(), "pred_mean": pred.mean().detach()}


class ToyBatchSampler:
    """Fixed-size batches of a seeded per-epoch permutation; batch i goes to rank i % num_replicas.

    With the same seed, rank r of R sees global batches r, r+R, ... - exactly the
    micro-batches one process with accum_steps=R trains on together."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        group: int = 1,
    ) -> None:
        self.num_items, self.batch_size = num_items, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.group = max(group, num_replicas)  # global batches per epoch are a multiple of this
        self.epoch = 0

    def _global_batches(self) -> list[list[int]]:
        if self.shuffle:
            order = torch.randperm(
                self.num_items, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
            )
        else:
            order = torch.arange(self.num_items)
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, self.num_items, self.batch_size)]
        batches = [b for b in batches if len(b) == self.batch_size]
        return batches[: len(batches) - len(batches) % self.group]

    def __iter__(self):
        yield from self._global_batches()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return len(self._global_batches()) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])


def subprocess_env() -> dict[str, str]:
    """os.environ for a child training run: one CPU thread, no GPU, no inherited torchrun vars."""
    import os

    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


# `speechssl pretrain --set ...` arguments that shrink the mini_synth tiny configs to test size
TINY_PRETRAIN_ARGS = [
    "--set", "model.encoder.embed_dim=32", "--set", "model.encoder.num_layers=2",
    "--set", "model.encoder.ffn_dim=64", "--set", "model.encoder.pos_conv_kernel=8",
    "--set", "trainer.log_every=1", "--set", "trainer.num_workers=0",
]  # fmt: skip


def kill_when(proc: subprocess.Popen, path: Path, *, timeout: float = 120.0, poll: float = 0.005) -> None:
    """SIGKILL `proc` as soon as `path` exists (e.g. a checkpoint dir), as a crash would; fails
    when the process ends first or nothing appears within `timeout` seconds."""
    try:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert proc.poll() is None, f"the process ended before {path} appeared"
            assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()


def run_toy(out: Path, spec: dict) -> None:
    """Train the toy setup described by `spec` (see `main`); save final parameters."""
    from safetensors.torch import save_file

    from speechssl.training import TrainerConfig, train
    from speechssl.training.distributed import env_rank, env_world_size

    torch.set_num_threads(1)
    rank, world = env_rank(), env_world_size()
    data = spec.get("data", {})
    dataset = ToyDataset(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    torch.manual_seed(spec.get("init_seed", 0))  # identical initial weights in every process
    model = ToyModel(**spec.get("model", {}))
    sampler = ToyBatchSampler(
        len(dataset),
        spec.get("batch_size", 4),
        num_replicas=world,
        rank=rank,
        seed=spec.get("sampler_seed", 0),
        group=spec.get("group", 2),
    )
    config = from_dict(TrainerConfig, spec["trainer"])
    valid = ToyDataset(num_items=8, seed=99) if spec.get("valid") else None
    valid_sampler = ToyBatchSampler(8, 4, num_replicas=world, rank=rank, shuffle=False) if valid else None
    train(
        model,
        dataset,
        toy_collate,
        sampler,
        config,
        out,
        resume=spec.get("resume", False),
        valid_dataset=valid,
        valid_sampler=valid_sampler,
    )
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", required=True, help="spec: data, model, trainer, batch_size, resume, ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_toy(args.out, json.loads(args.json))


if __name__ == "__main__":
    main()
