"""Our attention reaches SDPA's fused kernels on a GPU, padded or not, and each matches the math one.

What we expect on CUDA (torch 2.11; written before a GPU run, the printed lines say what each
kernel did): flash attention takes no `attn_mask`, so it serves only unpadded batches
(SelfAttention passes attn_mask=None when nothing is padded). A padded batch carries a boolean
key mask (B, 1, 1, T), and WavLM an additive float bias (B or 1, H, T, T): both must run on the
memory-efficient kernel, which takes a mask, never falling back to the math kernel. (On the CPU
flash does take a mask.) Head size 64 (the Base models') is used: both fused kernels take it.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import model_config, waves
from speechssl.models import build_model
from speechssl.models.encoder import SelfAttention
from tests.gpu._gpu import GPU

pytestmark = GPU

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
TOL = dict(atol=2e-2, rtol=2e-2)  # bf16 outputs of two kernels that sum in different orders


def _attention_and_input(padded: bool):
    torch.manual_seed(0)
    attn = SelfAttention(768, 12, 64).cuda().to(torch.bfloat16).eval()
    x = torch.randn(3, 149, 768, device="cuda", dtype=torch.bfloat16)
    lengths = torch.tensor([149, 120, 77] if padded else [149] * 3, device="cuda")
    pad = torch.arange(149, device="cuda")[None, :] >= lengths[:, None] if padded else None
    return attn, x, pad


@pytest.mark.parametrize("padded", [False, True])
def test_each_fused_kernel_matches_math(padded):
    attn, x, pad = _attention_and_input(padded)
    with torch.no_grad():
        with sdpa_kernel([SDPBackend.MATH]):
            reference = attn(x, pad).float()
        for backend in FUSED:
            try:
                with sdpa_kernel([backend]):
                    out = attn(x, pad).float()
            except RuntimeError as err:  # expected only for flash with a mask ("No available kernel")
                print(f"{backend.name} padded={padded}: refused ({str(err).splitlines()[0]})")
                assert backend == SDPBackend.FLASH_ATTENTION and padded, err
                continue
            print(f"{backend.name} padded={padded}: max abs diff to math {(out - reference).abs().max():.2e}")
            torch.testing.assert_close(out, reference, **TOL)


@pytest.mark.parametrize("preset", ["hubert_base", "wavlm_base"])
@pytest.mark.parametrize("padded", [False, True])
def test_models_run_without_the_math_kernel(preset, padded):
    """Two layers of the Base model in bf16 with the math kernel forbidden: a fused one is chosen
    (an error here means a mask or shape pushed SDPA to the math fallback)."""
    torch.manual_seed(0)
    model = build_model(model_config(preset, 2)).cuda().eval()
    wavs, lengths = waves([2.0, 1.7, 1.21] if padded else [2.0] * 3)
    wavs, lengths = wavs.cuda(), lengths.cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.MATH]):
            reference = model(wavs, lengths).hidden_states[-1].float()
        with sdpa_kernel(FUSED):
            out = model(wavs, lengths).hidden_states[-1].float()
    assert torch.isfinite(out).all()
    valid = (
        torch.arange(out.shape[1], device="cuda")[None, :]
        < model.feature_extractor.output_lengths(lengths)[:, None]
    )
    diff = (out - reference)[valid].abs().max().item()
    print(f"{preset} padded={padded}: fused vs math max abs diff {diff:.2e}")
    assert diff < 0.1 * reference[valid].abs().max().item()
