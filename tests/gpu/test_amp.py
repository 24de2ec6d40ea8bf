"""bf16 autocast and fp16 autocast + GradScaler pretraining steps stay finite and track fp32."""

from __future__ import annotations

import math

import pytest
import torch

from tests.gpu._gpu import GPU, tiny_batch, tiny_pretrain_model

pytestmark = GPU

STEPS = 6
# Relative loss gap to the fp32 run. First step (same weights: the forward's rounding alone):
# bf16 keeps 8 mantissa bits, fp16 11. Later steps also differ by updates, and fp16's GradScaler
# skips the first step(s) whose scaled gradients overflow, so that run lags by an update
# (measured on CPU autocast: bf16 6e-4 throughout; fp16 1e-5 at step 1, 2e-2 by step 6).
FIRST_STEP = {"bf16": 1e-2, "fp16": 5e-3}
ANY_STEP = 0.05


def _run(preset: str, precision: str) -> tuple[list[float], torch.nn.Module]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = tiny_pretrain_model(preset).cuda().train()
    wavs, lengths, targets = tiny_batch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    generator = torch.Generator(device="cuda").manual_seed(1)  # the same masks (and mixing) in every run
    losses = []
    for _ in range(STEPS):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(wavs, lengths, targets, generator=generator)[0]
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("preset", ["hubert_tiny", "wavlm_tiny"])
def test_mixed_precision_steps_track_fp32(preset, precision):
    reference, ref_model = _run(preset, "fp32")
    losses, model = _run(preset, precision)
    assert all(math.isfinite(x) for x in losses), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    gaps = [abs(a - b) / abs(b) for a, b in zip(losses, reference)]
    print(f"{preset} {precision}: losses {losses}; fp32 {reference}; worst relative gap {max(gaps):.2e}")
    assert gaps[0] < FIRST_STEP[precision] and max(gaps) < ANY_STEP, gaps
    # training moved the weights in both runs (the comparison is not of two untouched models)
    start = tiny_pretrain_model(preset).state_dict()
    moved = [
        k
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v.cpu(), start[k])
    ]
    assert len(moved) > len(start) // 2
