"""Padding-free steps on CUDA (jagged-tensor SDPA, its fused variable-length kernels) track the
padded step in fp32 and bf16."""

from __future__ import annotations

import pytest
import torch

from tests.gpu._gpu import GPU, tiny_batch, tiny_pretrain_model

pytestmark = GPU

TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}  # relative, loss and gradients (bf16: 8 mantissa bits)


def _step(model, padding_free: bool, precision: str):
    model.hubert.padding_free = padding_free
    wavs, lengths, targets = tiny_batch(model)
    torch.manual_seed(7)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(wavs, lengths.cpu(), targets, generator=torch.Generator().manual_seed(5))[0]
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach().float(), {
        n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_padding_free_step_tracks_the_padded_step_on_cuda(precision):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = tiny_pretrain_model("hubert_tiny").cuda().train()
    padded_loss, padded = _step(model, False, precision)
    packed_loss, packed = _step(model, True, precision)
    tolerance = TOLERANCE[precision]
    assert abs(float(packed_loss - padded_loss)) <= tolerance * abs(float(padded_loss)), (
        packed_loss,
        padded_loss,
    )
    total = torch.cat([g.flatten() for g in padded.values()])
    other = torch.cat([packed[n].flatten() for n in padded])
    assert float((other - total).norm() / total.norm()) <= tolerance


def test_packed_flash_attention_matches_per_utterance_sdpa():
    """bf16 packed heads take the flash kernel directly (Packing.attention); each utterance's
    output and gradients equal SDPA over that utterance alone, in fp32."""
    from speechssl.models.packing import Packing, _flash_varlen_serves

    lengths = torch.tensor([37, 5, 64, 1])
    packing = Packing.from_lengths(lengths, 64, torch.device("cuda"))
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(int(lengths.sum()), 4, 32, device="cuda", generator=g) for _ in range(3))
    probe = torch.randn(q.shape, device="cuda", generator=g)
    half = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    assert _flash_varlen_serves(half[0])
    out = packing.attention(*half)
    grads = torch.autograd.grad((out.float() * probe).sum(), half)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = []
    for start, end in zip(packing.offsets[:-1].tolist(), packing.offsets[1:].tolist()):
        one = [t[start:end].transpose(0, 1)[None] for t in full]  # (1, H, T_b, d)
        ref.append(torch.nn.functional.scaled_dot_product_attention(*one)[0].transpose(0, 1))
    ref_out = torch.cat(ref)
    ref_grads = torch.autograd.grad((ref_out * probe).sum(), full)
    torch.testing.assert_close(out.float(), ref_out, rtol=2e-2, atol=2e-2)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), r, rtol=5e-2, atol=5e-2)
