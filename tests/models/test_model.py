"""SSLModel: presets, padding invariance, masks, pruned layers, config validation."""

from __future__ import annotations

import pytest
import torch

from speechssl.config import ConfigError, from_dict
from speechssl.models import PRESETS, ModelConfig, build_model, get_preset
from speechssl.models.config import EncoderConfig
from speechssl.testing.models import random_waves, tiny_config

TINY_PRESETS = [n for n in PRESETS if "tiny" in n]


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tiny_preset_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(get_preset(name)).train()
    wavs, lens = random_waves([6400, 4000])
    out = model(wavs, lens)
    B, T, D = out.last_hidden_state.shape  # batch, frames, embed
    assert len(out.hidden_states) == model.num_layers + 1
    assert out.lengths.tolist() == [19, 12]  # (S - 400) // 320 + 1 for both frontends at 50 Hz
    assert model.num_frames(lens).tolist() == [19, 12] and model.num_frames(6400) == 19  # the one frame count
    assert out.padding_mask.shape == (B, T) and out.padding_mask[1, out.lengths[1] :].all()
    loss = (
        sum(h[~out.padding_mask].pow(2).mean() for h in out.hidden_states)
        + out.features_unnormed.pow(2).mean()
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and n != "masked_spec_embed"]
    assert not missing


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_frame_count_of_an_int_equals_the_tensor_one_and_compiles_without_a_graph_break(name):
    """The padded frame count comes from an int (wavs.shape[1]) by Python arithmetic: the same
    counts as the tensor path at every boundary (below one window, at it, between strides), and
    under torch.compile no tensor is made of it and read back (that broke the step's graph)."""
    model = build_model(get_preset(name))
    field = model.feature_extractor.receptive_field
    samples = [0, 1, field - 1, field, field + 1, *range(6000, 6700, 37)]
    tensor_counts = model.num_frames(torch.tensor(samples)).tolist()
    int_counts = [model.num_frames(n) for n in samples]
    assert int_counts == tensor_counts and all(type(n) is int for n in int_counts)
    assert tensor_counts[:4] == [0, 0, 0, 1]

    def padded_frames(wavs):
        return wavs.sum() * model.num_frames(wavs.shape[1])

    explained = torch._dynamo.explain(padded_frames)(torch.zeros(2, 6400))
    assert explained.graph_break_count == 0, [b.reason.splitlines()[0] for b in explained.break_reasons]


@pytest.mark.parametrize(
    ("name", "millions"),
    [
        ("hubert_base", 94.37),
        ("wav2vec2_base", 94.37),
        ("hubert_large", 315.44),
        ("wav2vec2_large_lv60", 315.44),
    ],
)
def test_big_presets_parameter_count(name, millions):
    # backbone only (= transformers' HubertModel / Wav2Vec2Model); the objectives add
    # wav2vec 2.0's quantizer + projections (base total ~95.0M) or HuBERT's final_proj.
    model = build_model(get_preset(name))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model preset 'hubert_bse'; valid presets: hubert_base"):
        get_preset("hubert_bse")


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_layer_norm_frontend_batched_equals_one_at_a_time(layer_norm_first):
    torch.manual_seed(0)
    model = build_model(
        tiny_config(mode="layer_norm", conv_bias=True, layer_norm_first=layer_norm_first)
    ).eval()
    wavs, lens = random_waves([9600, 6400, 4321])
    with torch.no_grad():
        batched = model(wavs, lens)
        for i, n in enumerate(lens.tolist()):
            one = model(wavs[i : i + 1, :n], lens[i : i + 1])
            T = one.lengths.item()
            assert batched.lengths[i] == T
            for a, b in zip(batched.hidden_states, one.hidden_states):
                assert (a[i, :T] - b[0]).abs().max() < 1e-5
            assert (batched.last_hidden_state[i, :T] - one.last_hidden_state[0]).abs().max() < 1e-5


def test_masks_replace_frames_and_zero_channels():
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    wavs, lens = random_waves([6400, 6400])
    T, D = 19, model.hidden_dim  # (6400 - 400) // 320 + 1 frames
    time_mask = torch.zeros(2, T, dtype=torch.bool)
    time_mask[0, 3:8] = True
    channel_mask = torch.zeros(2, D, dtype=torch.bool)
    channel_mask[1, :4] = True
    feats, _, _ = model.frontend_forward(wavs, lens)
    x, _ = model.feature_projection(feats)
    masked = model.apply_masks(x, time_mask, channel_mask)
    assert torch.equal(masked[0, 3:8], model.masked_spec_embed.expand(5, D))
    assert torch.equal(masked[0, :3], x[0, :3])
    assert masked[1, :, :4].abs().max() == 0 and torch.equal(masked[1, :, 4:], x[1, :, 4:])
    out = model(wavs, lens, mask_time_indices=time_mask)
    plain = model(wavs, lens)
    assert not torch.allclose(out.last_hidden_state[0], plain.last_hidden_state[0])
    with pytest.raises(ValueError, match=r"mask_time_indices has shape \(2, 5\), expected \(2, 19\)"):
        model(wavs, lens, mask_time_indices=time_mask[:, :5])


def test_too_short_utterance_is_a_clear_error():
    model = build_model(tiny_config())
    with pytest.raises(
        ValueError, match=r"batch index \[1\] are too short .*\[399\] samples; need at least 400"
    ):
        model(torch.randn(2, 800), torch.tensor([800, 399]))


def test_pruned_layers_with_removed_blocks_run():
    base = tiny_config()
    enc = EncoderConfig(**{**base.encoder.__dict__, "layer_num_heads": [2, 0], "layer_ffn_dims": [0, 16]})
    model = build_model(ModelConfig(family="hubert", frontend=base.frontend, encoder=enc))
    keys = model.state_dict().keys()
    assert (
        "encoder.layers.0.attention.q_proj.weight" in keys
        and "encoder.layers.1.attention.q_proj.weight" not in keys
    )
    assert model.state_dict()["encoder.layers.0.attention.q_proj.weight"].shape == (2 * 8, 32)
    assert "encoder.layers.0.feed_forward.intermediate_dense.weight" not in keys
    wavs, lens = random_waves([6400, 3200])
    model(wavs, lens).last_hidden_state.sum().backward()


def test_layerdrop_keeps_one_hidden_state_per_layer():
    base = tiny_config()
    enc = EncoderConfig(**{**base.encoder.__dict__, "layerdrop": 0.9, "num_layers": 4})
    model = build_model(ModelConfig(frontend=base.frontend, encoder=enc)).train()
    torch.manual_seed(1)
    out = model(*random_waves([6400]))
    assert len(out.hidden_states) == 5
    assert any(torch.equal(a, b) for a, b in zip(out.hidden_states, out.hidden_states[1:]))


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"embed_dim \(30\) is not divisible by num_heads \(4\)"):
        EncoderConfig(embed_dim=30, num_heads=4, pos_conv_groups=2)
    with pytest.raises(ConfigError, match="unknown frontend type 'mel'; valid types: conv, fbank"):
        from_dict(ModelConfig, {"frontend": {"type": "mel"}}, source="m.yaml")
    with pytest.raises(
        ConfigError, match=r"unknown key 'conv_dims' \(section frontend\); did you mean 'conv_dim'"
    ):
        from_dict(ModelConfig, {"frontend": {"conv_dims": [1]}})
    with pytest.raises(ValueError, match=r"layer_ffn_dims must list one non-negative value per layer \(12\)"):
        EncoderConfig(layer_ffn_dims=[1, 2])
    config = from_dict(ModelConfig, {"frontend": {"type": "fbank", "frame_rate": 25}})
    assert config.downsample_rate == 640


def test_the_encoder_gets_an_attention_mask_only_for_padded_batches():
    """Whether a batch is padded is decided from the lengths before the network runs (one host
    read, none for CPU lengths): unpadded batches go mask-free so SDPA can use fused kernels."""
    model = build_model(tiny_config()).eval()
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    wavs, lens = random_waves([6400, 4000])
    with torch.no_grad():
        model(wavs, lens)
        model(wavs[:1], lens[:1])
        model(wavs)  # no lengths: nothing padded
    assert seen[0] is not None and seen[0][1].any() and not seen[0][0].any()
    assert seen[1] is None and seen[2] is None
