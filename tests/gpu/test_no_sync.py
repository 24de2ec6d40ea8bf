"""A pretraining step as the trainer runs it (a loader's Batch moved to the GPU, BatchObjective)
makes no host-device synchronisation that torch reports (set_sync_debug_mode): lengths are read,
masks drawn and predicted frames selected on the host, then copied without blocking; padding-free
steps too. Each sync found is reported with the line that made it."""

from __future__ import annotations

import traceback
import warnings

import pytest
import torch

from speechssl.data.dataset import Batch
from speechssl.testing.models import random_waves
from speechssl.training.pretrain import BatchObjective
from tests.gpu._gpu import GPU, tiny_pretrain_model

pytestmark = GPU

UNITS = {"hubert_tiny": ["km"], "wavlm_tiny": ["km"], "wav2vec2_tiny": [], "data2vec_tiny": []}


def _batch(model: torch.nn.Module, units: list[str]) -> Batch:
    wavs, lengths = random_waves([9617, 7203, 5111], seed=3)
    backbone = next(m for m in model.modules() if hasattr(m, "num_frames"))
    frames = backbone.num_frames(lengths)
    targets = {name: torch.randint(0, 50, (3, int(frames.max())), generator=torch.Generator().manual_seed(4))
               for name in units}  # fmt: skip
    target_lens = {name: frames.clone() for name in units}
    return Batch(["a", "b", "c"], wavs, lengths, targets, target_lens)


def _syncs(step) -> list[str]:
    """The speechssl/torch source lines of each synchronising CUDA call `step` makes."""
    found: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchronizing" in str(message):
            ours = [f for f in traceback.extract_stack()[:-1] if "/speechssl/" in f.filename]
            where = " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in ours[-3:][::-1])
            found.append(where or "no speechssl frame (autograd's backward or torch internals)")

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return found


@pytest.mark.parametrize(
    "preset,padding_free",
    [(preset, False) for preset in sorted(UNITS)] + [("hubert_tiny", True), ("wav2vec2_tiny", True)],
)
def test_a_trainer_step_makes_no_host_sync(preset, padding_free):
    model = tiny_pretrain_model(preset).cuda().train()
    next(m for m in model.modules() if hasattr(m, "padding_free")).padding_free = padding_free
    objective = BatchObjective(model, UNITS[preset])
    batch = _batch(model, UNITS[preset])

    def step() -> None:
        on_gpu = batch.to(torch.device("cuda"), non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = objective(on_gpu)
        loss.backward()

    step()  # warm-up: cuBLAS/cuDNN handles and autotuning may sync once
    torch.cuda.synchronize()
    found = _syncs(step)
    assert not found, f"{len(found)} host sync(s) in one step:\n" + "\n".join(found)
