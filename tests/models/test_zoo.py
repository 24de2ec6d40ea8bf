"""WavLM / UniSpeech-SAT / data2vec-audio networks: configs, presets, relative position bias,
padding, tracing, pruned-head contract, and parity with torchaudio's WavLM."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from speechssl.models import build_model
from speechssl.models.config import EncoderConfig, ModelConfig
from speechssl.models.encoder import RelativeSelfAttention
from speechssl.models.presets import PRESETS, get_preset
from speechssl.models.relative_position import relative_position_buckets
from speechssl.testing.models import perturb_, random_waves

ZOO_PRESETS = {
    "wavlm_base": "wavlm", "wavlm_base_plus": "wavlm", "wavlm_large": "wavlm",
    "unispeech_sat_base": "unispeech_sat", "unispeech_sat_large": "unispeech_sat",
    "data2vec_audio_base": "data2vec_audio", "data2vec_audio_large": "data2vec_audio",
    "wavlm_tiny": "wavlm", "data2vec_tiny": "data2vec_audio",
}  # fmt: skip


def _no_dropout(config: ModelConfig, **encoder) -> ModelConfig:
    enc = dataclasses.replace(
        config.encoder, dropout=0.0, attention_dropout=0.0, feature_proj_dropout=0.0, layerdrop=0.0, **encoder
    )
    return dataclasses.replace(config, encoder=enc)


def test_presets_are_registered_with_their_family():
    for name, family in ZOO_PRESETS.items():
        assert name in PRESETS
        assert get_preset(name).family == family
    with torch.device("meta"):
        sizes = {n: sum(p.numel() for p in build_model(get_preset(n)).parameters()) for n in ZOO_PRESETS}
    assert 94e6 < sizes["wavlm_base"] < 95e6 and 315e6 < sizes["wavlm_large"] < 316e6
    assert 93e6 < sizes["data2vec_audio_base"] < 94e6 and 313e6 < sizes["data2vec_audio_large"] < 314e6
    assert sizes["wavlm_tiny"] < 150_000 and sizes["data2vec_tiny"] < 150_000
    assert get_preset("wavlm_large").encoder.layer_norm_first
    assert not get_preset("data2vec_audio_large").encoder.layer_norm_first


@pytest.mark.parametrize(
    ("family", "encoder", "message"),
    [
        ("wavlm", {}, "relative_position_buckets must be > 0 for family 'wavlm'"),
        (
            "hubert",
            dict(relative_position_buckets=8),
            "relative_position_buckets must be > 0 for family 'wavlm'",
        ),
        ("data2vec_audio", {}, "pos_conv_type must be 'layer_norm' for family 'data2vec_audio'"),
        ("wav2vec2", dict(pos_conv_type="layer_norm"), "pos_conv_type must be 'layer_norm'"),
    ],
)
def test_family_pins_the_architecture(family, encoder, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(family=family, encoder=EncoderConfig(**encoder))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(pos_conv_depth=3), "pos_conv_depth 3 needs pos_conv_type 'layer_norm'"),
        (dict(pos_conv_type="conv"), "pos_conv_type must be 'weight_norm' or 'layer_norm'"),
        (dict(pos_conv_type="layer_norm", pos_conv_depth=0), "pos_conv_depth must be a positive integer"),
        (dict(relative_position_buckets=3), "relative_position_buckets must be 0 .none. or an integer >= 4"),
        (dict(relative_position_buckets=-1), "relative_position_buckets must be 0"),
        (dict(relative_position_buckets=32, relative_position_max_distance=8), "must exceed"),
    ],
)
def test_encoder_config_errors_are_one_line(fields, message):
    with pytest.raises(ValueError, match=message) as err:
        EncoderConfig(**fields)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(320, 800), (16, 32), (13, 9), (10, 20), (4, 2)])
def test_buckets_equal_transformers(num_buckets, max_distance):
    transformers = pytest.importorskip("transformers")
    attention = transformers.models.wavlm.modeling_wavlm.WavLMAttention(
        8, 2, num_buckets=num_buckets, max_distance=max_distance
    )
    T = 1000
    positions = torch.arange(T)
    expected = attention._relative_positions_bucket(positions[None, :] - positions[:, None])
    buckets = relative_position_buckets(T, num_buckets, max_distance)
    assert torch.equal(buckets, expected)
    assert buckets.min() >= 0 and buckets.max() < num_buckets


@pytest.mark.parametrize(
    ("preset", "encoder"), [("wavlm_tiny", {}), ("data2vec_tiny", dict(pos_conv_depth=1))]
)
def test_padded_batch_equals_each_utterance_alone(preset, encoder):
    """Layer-norm conv frontend: the group-norm one normalises over padded samples too (as in
    fairseq and transformers), so only with this one a padded utterance equals itself alone.
    data2vec-audio with a positional stack deeper than 1 does NOT: fairseq and transformers zero
    the padding once, before the stack, so from its second conv on the padded frames (conv bias,
    LayerNorm) reach the last valid frames; we match that (see the transformers parity test)."""
    config = _no_dropout(get_preset(preset), **encoder)
    config = dataclasses.replace(config, frontend=dataclasses.replace(config.frontend, mode="layer_norm"))
    model = perturb_(build_model(config), seed=7).eval()
    lengths = [20000, 11321, 6400]
    wavs, lens = random_waves(lengths, seed=1)
    with torch.no_grad():
        batch = model(wavs, lens)
        for i, n in enumerate(lengths):
            alone = model(wavs[i : i + 1, :n])
            T = batch.lengths[i].item()
            for a, b in zip(batch.hidden_states, alone.hidden_states):
                assert (a[i, :T] - b[0]).abs().max() < 1e-5


@pytest.mark.parametrize("preset", ["wavlm_tiny", "data2vec_tiny"])
def test_encoder_traces_and_runs_at_other_lengths(preset):
    model = perturb_(build_model(_no_dropout(get_preset(preset))), seed=8).eval()
    encoder = model.encoder
    D = model.hidden_dim
    x = torch.randn(2, 37, D)
    mask = torch.zeros(2, 37, dtype=torch.bool)
    mask[1, 30:] = True
    with torch.no_grad():
        traced = torch.jit.trace(encoder, (x, mask), check_trace=False)
        y = torch.randn(3, 53, D)
        other = torch.zeros(3, 53, dtype=torch.bool)
        other[0, 20:] = True
        other[2, 41:] = True
        expected, _ = encoder(y, other)
        got, _ = traced(y, other)
    assert (got - expected).abs().max() < 1e-5


def test_pruned_heads_equal_the_gated_model():
    """The `head_index` contract for DPHuBERT: keeping heads (q/k/v rows, out_proj columns,
    gru_rel_pos_const sliced; the shared table and the gate's input chunks unchanged) equals the
    full layer with the dropped heads' outputs zeroed."""
    torch.manual_seed(0)
    D, H, d, T = 60, 5, 12, 41
    full = perturb_(RelativeSelfAttention(D, H, d, num_buckets=16, table_heads=H), seed=3).eval()
    keep = [0, 2, 3]
    pruned = RelativeSelfAttention(D, len(keep), d).eval()
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(pruned, name).weight.copy_(getattr(full, name).weight[rows])
            getattr(pruned, name).bias.copy_(getattr(full, name).bias[rows])
        pruned.out_proj.weight.copy_(full.out_proj.weight[:, rows])
        pruned.out_proj.bias.copy_(full.out_proj.bias)
        pruned.gru_rel_pos_const.copy_(full.gru_rel_pos_const[:, keep])
        pruned.gru_rel_pos_linear.load_state_dict(full.gru_rel_pos_linear.state_dict())
        pruned.head_index = keep
        zeroed = torch.ones(D)
        for h in set(range(H)) - set(keep):
            zeroed[h * d : (h + 1) * d] = 0
        full.out_proj.weight.mul_(zeroed)
        x = torch.randn(2, T, D)
        padding = torch.zeros(2, T, dtype=torch.bool)
        padding[1, 29:] = True
        from speechssl.models.relative_position import RelativePositionBias

        bias = RelativePositionBias(16, 32)(full.rel_attn_embed, T, x.dtype)  # (1, H, T, T)
        expected = full(x, padding, bias)
        got = pruned(x, padding, bias)
    assert (got - expected).abs().max() < 1e-5


def test_wavlm_matches_torchaudio():
    """torchaudio's WavLM on our weights, one utterance at a time (its batched path with lengths
    asserts: torchaudio issue #3700). Its hidden-state bug (#3347) is fixed in the installed version."""
    pytest.importorskip("torchaudio")
    from speechssl.testing.references import to_torchaudio_wavlm_state, torchaudio_wavlm_model

    worst = 0.0
    for norm_first in (False, True):
        config = _no_dropout(get_preset("wavlm_tiny"), layer_norm_first=norm_first)
        model = perturb_(build_model(config), seed=3).eval()
        reference = torchaudio_wavlm_model(config).eval()
        reference.load_state_dict(to_torchaudio_wavlm_state(model.state_dict()))
        wavs, _ = random_waves([20000, 6001], seed=2)
        for n in (20000, 6001):
            with torch.no_grad():
                ours = model(wavs[:1, :n]).hidden_states[1:]
                theirs, _ = reference.extract_features(wavs[:1, :n])
            worst = max(worst, *((a - b).abs().max().item() for a, b in zip(ours, theirs)))
    print(f"max abs error vs torchaudio [wavlm]: {worst:.2e}")
    assert worst < 1e-5


def test_pretraining_refuses_a_family_without_objective_in_one_line():
    from speechssl.objectives.pretraining import PretrainModelConfig

    with pytest.raises(ValueError, match="pretraining supports model families 'hubert', ") as err:
        PretrainModelConfig(model=get_preset("unispeech_sat_base"))
    assert "'unispeech_sat'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("preset", ["wavlm_tiny", "data2vec_tiny"])
def test_checkpoint_round_trip_keeps_the_new_fields(tmp_path, preset):
    import speechssl
    from speechssl.models import save_checkpoint

    config = get_preset(preset)
    model = perturb_(build_model(config), seed=9).eval()
    save_checkpoint(model, config, tmp_path / "ckpt")
    upstream = speechssl.load_upstream(tmp_path / "ckpt")
    assert upstream.config == config
    wavs, lens = random_waves([9000, 5000])
    with torch.no_grad():
        assert torch.equal(upstream(wavs, lens).hidden_states[-1], model(wavs, lens).hidden_states[-1])
