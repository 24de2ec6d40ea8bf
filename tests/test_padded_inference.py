"""Padded-batch inference on the CPU: the inference path (no autograd: GELU in place in the conv
frontend) must give exactly the values of the autograd path, and padding must not reach the
valid frames of layer_norm models."""

from __future__ import annotations

import pytest
import torch

from speechssl.models import build_model
from speechssl.testing.models import perturb_, random_waves, tiny_config

LENGTHS = [5123, 4411, 3907]  # odd, all padded but the first


def _model(mode: str, **kwargs):
    torch.manual_seed(0)
    return perturb_(build_model(tiny_config(mode=mode, **kwargs))).eval()


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_inference_frontend_equals_the_autograd_one_bit_for_bit(mode):
    model = _model(mode, conv_bias=mode == "layer_norm")
    wavs, lengths = random_waves(LENGTHS)
    with torch.inference_mode():
        fast, fast_lengths = model.feature_extractor(wavs, lengths)
    slow, slow_lengths = model.feature_extractor(wavs, lengths)
    assert slow.requires_grad
    assert torch.equal(fast, slow.detach())
    assert torch.equal(fast_lengths, slow_lengths)


def test_frozen_frontend_in_training_is_exact():
    """feature_grad_mult 0 (frozen frontend) runs without autograd, so in place, even in training."""
    model = _model("group_norm").train()
    model.feature_extractor.feature_grad_mult = 0.0
    wavs, lengths = random_waves(LENGTHS)
    frozen, _ = model.feature_extractor(wavs, lengths)
    assert not frozen.requires_grad
    model.feature_extractor.feature_grad_mult = 1.0
    trained, _ = model.feature_extractor(wavs, lengths)
    assert torch.equal(frozen, trained.detach())


@pytest.mark.parametrize("family", ["hubert", "wav2vec2"])
def test_inference_forward_equals_the_autograd_forward(family):
    """The whole padded forward under inference_mode gives the values of the autograd forward."""
    model = _model("group_norm", family=family)
    wavs, lengths = random_waves(LENGTHS)
    with torch.inference_mode():
        fast = model(wavs, lengths)
    slow = model(wavs, lengths)
    assert torch.equal(fast.padding_mask, slow.padding_mask)
    for a, b in zip(fast.hidden_states, slow.hidden_states, strict=True):
        assert torch.equal(a, b.detach())


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_layer_norm_models_give_each_utterance_its_unpadded_output(layer_norm_first):
    """layer_norm mode has no statistics over time: padding must not reach any valid frame."""
    model = _model("layer_norm", conv_bias=True, layer_norm_first=layer_norm_first)
    wavs, lengths = random_waves(LENGTHS)
    with torch.inference_mode():
        batch = model(wavs, lengths)
        assert batch.padding_mask.any()
        for i, n in enumerate(LENGTHS):
            alone = model(wavs[i : i + 1, :n])
            frames = int(batch.lengths[i])
            assert alone.last_hidden_state.shape[1] == frames
            torch.testing.assert_close(
                batch.last_hidden_state[i, :frames], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5
            )
