"""Padding-free steps (speechssl.models.packing): the packed transformer computes what the padded
one computes at every valid frame, so a pretraining step gives the same loss and gradients."""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import pytest
import torch

from speechssl.models.packing import Packing
from speechssl.objectives import build_pretrain_model, get_pretrain_preset
from speechssl.testing.models import perturb_, random_waves

LENGTHS = [9617, 4003, 7203, 5111]  # odd lengths, the longest not first


def _model(preset: str, norm_first: bool = False) -> torch.nn.Module:
    config = get_pretrain_preset(preset)
    encoder = replace(config.model.encoder, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                      feature_proj_dropout=0.0, layerdrop=0.0, layer_norm_first=norm_first)  # fmt: skip
    config = replace(config, model=replace(config.model, encoder=encoder))
    torch.manual_seed(0)
    return perturb_(build_pretrain_model(config).train(), seed=1)


def _step(model, padding_free: bool, targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    backbone = next(m for m in model.modules() if hasattr(m, "padding_free"))
    backbone.padding_free = padding_free
    wavs, lengths = random_waves(LENGTHS, seed=3)
    args = (targets,) if targets is not None else ()
    torch.manual_seed(7)  # wav2vec 2.0's quantizer draws its Gumbel noise from the global RNG
    loss = model(wavs, lengths, *args, generator=torch.Generator().manual_seed(5))[0]
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "preset,norm_first", [("hubert_tiny", False), ("hubert_tiny", True), ("wav2vec2_tiny", False)]
)
def test_packed_and_padded_steps_give_the_same_loss_and_gradients(preset, norm_first):
    model = _model(preset, norm_first)
    targets = None
    if preset.startswith("hubert"):
        frames = model.hubert.num_frames(torch.tensor(LENGTHS))
        targets = torch.randint(
            0, 50, (len(LENGTHS), int(frames.max())), generator=torch.Generator().manual_seed(4)
        )
    padded_loss, padded = _step(model, False, targets)
    with (
        mock.patch.object(Packing, "pack", autospec=True, side_effect=Packing.pack) as pack,
        mock.patch.object(Packing, "unpack", autospec=True, side_effect=Packing.unpack) as unpack,
    ):
        packed_loss, packed = _step(model, True, targets)
    assert pack.call_count == 1  # the layers really ran packed
    assert unpack.call_count == 1  # only the last hidden state: the step reads no other
    assert torch.allclose(packed_loss, padded_loss, rtol=1e-5, atol=1e-6), (packed_loss, padded_loss)
    assert packed.keys() == padded.keys()
    largest = max(float(g.abs().max()) for g in padded.values())
    for name, grad in padded.items():
        if name.endswith("k_proj.bias"):  # true gradient 0 (a softmax ignores a constant per query):
            assert max(float(grad.abs().max()), float(packed[name].abs().max())) < 1e-5 * largest  # noise
            continue
        error = float((packed[name] - grad).abs().max()) / max(float(grad.abs().max()), 1e-3 * largest)
        assert error < 1e-5, f"{name}: relative gradient error {error:.2e}"


def test_packed_hidden_states_equal_the_padded_ones_at_valid_frames():
    model = _model("hubert_tiny").hubert.eval()
    wavs, lengths = random_waves(LENGTHS, seed=3)
    with torch.no_grad():
        padded = model(wavs, lengths)
        model.padding_free = True
        packed = model(wavs, lengths)
    valid = ~padded.padding_mask
    assert len(packed.hidden_states) == len(padded.hidden_states)
    for a, b in zip(
        [packed.last_hidden_state, *packed.hidden_states], [padded.last_hidden_state, *padded.hidden_states]
    ):
        assert torch.allclose(a[valid], b[valid], atol=1e-5, rtol=1e-5), float((a - b)[valid].abs().max())
        assert not a[~valid].any()  # padded frames are zeros


def test_an_unpadded_batch_is_not_packed_and_wavlm_is_refused():
    model = _model("hubert_tiny").hubert.eval()
    model.padding_free = True
    wavs, lengths = random_waves([4000, 4000], seed=3)
    with torch.no_grad():
        model(wavs, lengths)  # nothing padded: the plain path
    wavlm = _model("wavlm_tiny").wavlm.eval()
    wavlm.padding_free = True
    wavs, lengths = random_waves(LENGTHS, seed=3)
    with pytest.raises(ValueError, match="position bias"):
        wavlm(wavs, lengths)


def test_packing_round_trip_and_bad_lengths():
    x = torch.randn(3, 5, 2)
    packing = Packing.from_lengths(torch.tensor([5, 2, 3]), 5, torch.device("cpu"))
    packed = packing.pack(x)
    assert packed.shape == (10, 2)
    assert torch.equal(packed[5:7], x[1, :2]) and torch.equal(packed[7:], x[2, :3])
    back = packing.unpack(packed)
    assert torch.equal(back[0], x[0]) and not back[1, 2:].any()
    with pytest.raises(ValueError, match="frame lengths"):
        Packing.from_lengths(torch.tensor([0, 2]), 5, torch.device("cpu"))
    with pytest.raises(ValueError, match="packing is for"):
        packing.pack(torch.randn(2, 5, 2))


def test_padding_free_refuses_a_wrapped_attention_in_one_line():
    from speechssl.tuning.prefix import PrefixConfig, add_prefixes

    model = _model("hubert_tiny").hubert.eval()
    add_prefixes(model.encoder.layers, PrefixConfig())
    model.padding_free = True
    wavs, lengths = random_waves(LENGTHS, seed=3)
    with pytest.raises(
        ValueError, match="padding-free steps need plain attention; layer 0 has PrefixSelfAttention"
    ):
        model(wavs, lengths)
