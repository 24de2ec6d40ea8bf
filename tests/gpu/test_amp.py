"""bf16 autocast and fp16 autocast + GradScaler pretraining steps stay finite and track fp32."""

from __future__ import annotations

import math

import pytest
import torch

from tests.gpu._gpu import GPU, tiny_batch, tiny_pretrain_model

pytestmark = GPU

STEPS = 6
# Relative loss gap to the fp32 run at every step. The fp32 reference skips the same updates as
# fp16's GradScaler did (a step whose scaled gradients overflowed), so both see the same number
# of updates and differ by rounding alone: bf16 keeps 8 mantissa bits, fp16 11.
# (Measured on CPU autocast, before any GPU run: bf16 6e-4, fp16 6e-5 with 1-2 skipped steps.)
TOLERANCE = {"bf16": 1e-2, "fp16": 5e-3}


def _run(
    preset: str, precision: str, skip: frozenset[int] = frozenset()
) -> tuple[list[float], torch.nn.Module, set[int]]:
    """STEPS training steps; returns the losses, the model and the steps whose update was skipped."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = tiny_pretrain_model(preset).cuda().train()
    wavs, lengths, targets = tiny_batch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    generator = torch.Generator(device="cuda").manual_seed(1)  # the same masks (and mixing) in every run
    losses, skipped = [], set()
    for i in range(STEPS):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(wavs, lengths, targets, generator=generator)[0]
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scale = scaler.get_scale()
        if i not in skip:
            scaler.step(optimizer)  # skipped by the scaler itself when the gradients hold inf/NaN
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale:
            skipped.add(i)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, model, skipped


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("preset", ["hubert_tiny", "wavlm_tiny"])
def test_mixed_precision_steps_track_fp32(preset, precision):
    losses, model, skipped = _run(preset, precision)
    reference, _, _ = _run(preset, "fp32", skip=frozenset(skipped))
    assert len(skipped) <= STEPS // 2, f"GradScaler skipped steps {sorted(skipped)}"
    assert all(math.isfinite(x) for x in losses), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    gaps = [abs(a - b) / abs(b) for a, b in zip(losses, reference)]
    print(f"{preset} {precision}: losses {losses}; fp32 {reference}; skipped {sorted(skipped)}; "
          f"worst relative gap {max(gaps):.2e}")  # fmt: skip
    assert max(gaps) < TOLERANCE[precision], gaps
    # training moved the weights (the comparison is not of two untouched models)
    start = tiny_pretrain_model(preset).state_dict()
    moved = [
        k
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v.cpu(), start[k])
    ]
    assert len(moved) > len(start) // 2
