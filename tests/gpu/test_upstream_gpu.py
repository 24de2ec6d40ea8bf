"""load_upstream on the GPU: the same hidden states as on the CPU and as transformers on the GPU."""

from __future__ import annotations

import pytest
import torch

import speechssl
from speechssl.testing.models import build_hf_model, perturb_, random_waves, tiny_config
from tests.gpu._gpu import GPU

pytestmark = GPU
transformers = pytest.importorskip("transformers")

LENGTHS = [9600, 6717, 4000]
VARIANTS = {
    "hubert_group_postln": dict(family="hubert"),
    "wav2vec2_layer_preln": dict(family="wav2vec2", mode="layer_norm", layer_norm_first=True, conv_bias=True),
}


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 means fp32: TF32 matmuls/convolutions (10-bit mantissa) would exceed 1e-4."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("variant", VARIANTS)
def test_upstream_on_cuda_matches_cpu_and_transformers(tmp_path, variant):
    config = tiny_config(**VARIANTS[variant])
    torch.manual_seed(0)
    hf = perturb_(build_hf_model(config), seed=1).eval()
    hf.save_pretrained(tmp_path)
    cpu = speechssl.load_upstream(tmp_path)
    gpu = speechssl.load_upstream(tmp_path).to("cuda")
    wavs, lens = random_waves(LENGTHS)
    mask = (torch.arange(wavs.shape[1])[None, :] < lens[:, None]).long()
    with torch.no_grad():
        on_cpu = cpu(wavs, lens)
        on_gpu = gpu(wavs.cuda(), lens.cuda())
        ref = hf.cuda()(wavs.cuda(), attention_mask=mask.cuda(), output_hidden_states=True)
    assert on_gpu.hidden_states[0].is_cuda
    vs_cpu = vs_hf = 0.0
    for i, T in enumerate(on_cpu.lengths.tolist()):
        for a, b, c in zip(on_gpu.hidden_states, on_cpu.hidden_states, ref.hidden_states):
            vs_cpu = max(vs_cpu, (a[i, :T].cpu() - b[i, :T]).abs().max().item())
            vs_hf = max(vs_hf, (a[i, :T] - c[i, :T]).abs().max().item())
    print(f"{variant}: max abs error cuda vs cpu {vs_cpu:.2e}, vs transformers on cuda {vs_hf:.2e}")
    assert vs_cpu < 1e-4 and vs_hf < 1e-4
