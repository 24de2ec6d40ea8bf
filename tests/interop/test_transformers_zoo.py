"""WavLM, UniSpeech-SAT and data2vec-audio: parity with transformers on the same (perturbed) weights,
For* directories, and `save_transformers` reloading as the right transformers class."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import speechssl
from speechssl.interop.transformers_io import (
    config_from_transformers,
    config_to_transformers,
    save_transformers,
)
from speechssl.models import build_model
from speechssl.models.config import ModelConfig
from speechssl.testing.models import perturb_, random_waves, tiny_config
from speechssl.testing.references import transformers_model

transformers = pytest.importorskip("transformers")


def zoo_config(family: str, *, mode: str = "group_norm", conv_bias: bool = False, **encoder) -> ModelConfig:
    """tiny_config's frontend with an encoder of hidden size 60 (not a power of two), dropout off."""
    base = tiny_config(family="hubert", mode=mode, conv_bias=conv_bias)
    fields = dict(embed_dim=60, ffn_dim=84, num_heads=5, pos_conv_groups=4, pos_conv_kernel=15)
    fields.update(encoder)
    return ModelConfig(
        family=family, frontend=base.frontend, encoder=dataclasses.replace(base.encoder, **fields)
    )  # type: ignore[arg-type]


VARIANTS = {
    "wavlm_postln_5heads_k15_b16": zoo_config(
        "wavlm", relative_position_buckets=16, relative_position_max_distance=32
    ),
    "wavlm_preln_3heads_k8_b10": zoo_config(
        "wavlm", mode="layer_norm", conv_bias=True, layer_norm_first=True, num_heads=3, pos_conv_kernel=8,
        relative_position_buckets=10, relative_position_max_distance=20,
    ),
    "wavlm_postln_3layers_b13_d9": zoo_config(
        "wavlm", num_layers=3, num_heads=3, pos_conv_kernel=9, relative_position_buckets=13,
        relative_position_max_distance=9,
    ),
    "unispeech_sat_postln_3heads_k9": zoo_config("unispeech_sat", num_heads=3, pos_conv_kernel=9),
    "unispeech_sat_preln_5heads_k16": zoo_config(
        "unispeech_sat", mode="layer_norm", conv_bias=True, layer_norm_first=True, pos_conv_kernel=16
    ),
    "data2vec_audio_5heads_k7_d3": zoo_config(
        "data2vec_audio", mode="layer_norm", pos_conv_type="layer_norm", pos_conv_kernel=7, pos_conv_depth=3
    ),
    "data2vec_audio_bias_3heads_k6_d2": zoo_config(
        "data2vec_audio", mode="layer_norm", conv_bias=True, num_heads=3, pos_conv_type="layer_norm",
        pos_conv_kernel=6, pos_conv_depth=2, pos_conv_groups=5,
    ),
}  # fmt: skip
LENGTHS = [20000, 13117, 6001]  # 62, 40 and 18 frames: beyond max_distance, padded
MAX_ERRORS: dict[str, float] = {}
SAVE_ERRORS: dict[str, float] = {}


def _hf_forward(hf, wavs, lens=None):
    mask = None if lens is None else (torch.arange(wavs.shape[1])[None, :] < lens[:, None]).long()
    with torch.no_grad():
        return hf(wavs, attention_mask=mask, output_hidden_states=True)


def _max_error(model, hf, *, check_final: bool) -> float:
    """Worst |ours - transformers| over every hidden state: a padded batch (valid frames only),
    then each utterance alone without a mask (and the final LayerNorm'd state of pre-LN models)."""
    wavs, lens = random_waves(LENGTHS, seed=3)
    ref = _hf_forward(hf, wavs, lens)
    with torch.no_grad():
        out = model(wavs, lens)
    assert len(out.hidden_states) == len(ref.hidden_states) == model.num_layers + 1
    worst = 0.0
    for i, T in enumerate(out.lengths.tolist()):
        for a, b in zip(out.hidden_states, ref.hidden_states):
            worst = max(worst, (a[i, :T] - b[i, :T]).abs().max().item())
    for i, n in enumerate(LENGTHS):
        ref_one = _hf_forward(hf, wavs[i : i + 1, :n])
        with torch.no_grad():
            out_one = model(wavs[i : i + 1, :n])
        for a, b in zip(out_one.hidden_states, ref_one.hidden_states):
            worst = max(worst, (a - b).abs().max().item())
        if check_final:
            worst = max(worst, (out_one.last_hidden_state - ref_one.last_hidden_state).abs().max().item())
    return worst


@pytest.mark.parametrize("variant", VARIANTS)
def test_hidden_states_match_transformers(tmp_path, variant):
    config = VARIANTS[variant]
    torch.manual_seed(0)
    hf = perturb_(transformers_model(config), seed=1)
    hf.save_pretrained(tmp_path)
    up = speechssl.load_upstream(tmp_path)
    assert up.config == dataclasses.replace(
        config, frontend=dataclasses.replace(config.frontend, feature_grad_mult=1.0)
    )
    worst = _max_error(up.model, hf, check_final=config.encoder.layer_norm_first)
    MAX_ERRORS[variant] = worst
    print(f"max abs error vs transformers [{variant}]: {worst:.2e}")
    assert worst < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_transformers_reloads_as_the_family_class(tmp_path, variant):
    config = VARIANTS[variant]
    model = perturb_(build_model(config), seed=2).eval()
    save_transformers(model, config, tmp_path / "hf")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    expected = {
        "wavlm": "WavLMModel",
        "unispeech_sat": "UniSpeechSatModel",
        "data2vec_audio": "Data2VecAudioModel",
    }
    assert type(hf).__name__ == expected[config.family]
    worst = _max_error(model, hf, check_final=config.encoder.layer_norm_first)
    SAVE_ERRORS[variant] = worst
    print(f"max abs error of the reloaded hf export [{variant}]: {worst:.2e}")
    assert worst < 1e-5


@pytest.mark.parametrize(
    ("variant", "head", "kwargs", "head_keys"),
    [
        ("wavlm_postln_5heads_k15_b16", "ForCTC", dict(vocab_size=7), {"lm_head.weight", "lm_head.bias"}),
        (
            "wavlm_preln_3heads_k8_b10",
            "ForSequenceClassification",
            dict(num_labels=3, use_weighted_layer_sum=True, classifier_proj_size=11),
            {"projector.weight", "classifier.weight", "layer_weights"},
        ),
        ("data2vec_audio_5heads_k7_d3", "ForCTC", dict(vocab_size=5), {"lm_head.weight"}),
        (
            "data2vec_audio_bias_3heads_k6_d2",
            "ForAudioFrameClassification",
            dict(num_labels=2),
            {"classifier.weight", "classifier.bias"},
        ),
        ("unispeech_sat_preln_5heads_k16", "ForCTC", dict(vocab_size=9), {"lm_head.weight"}),
    ],
)
def test_for_heads_load_backbone_and_keep_heads_in_extras(tmp_path, variant, head, kwargs, head_keys):
    config = VARIANTS[variant]
    hf = perturb_(transformers_model(config, head=head, **kwargs), seed=4)
    hf.save_pretrained(tmp_path)
    up = speechssl.load_upstream(tmp_path)
    assert head_keys <= set(up.extras["finetuning"]), sorted(up.extras["finetuning"])
    backbone = hf.base_model
    worst = _max_error(up.model, backbone, check_final=config.encoder.layer_norm_first)
    assert worst < 1e-5


def test_unispeech_sat_pretraining_keeps_its_extra_weights(tmp_path):
    config = VARIANTS["unispeech_sat_postln_3heads_k9"]
    sizes = dict(codevector_dim=12, proj_codevector_dim=10, num_codevectors_per_group=8, num_clusters=7)
    hf = perturb_(transformers_model(config, head="ForPreTraining", **sizes), seed=5)
    hf.save_pretrained(tmp_path)
    up = speechssl.load_upstream(tmp_path)
    pre = up.extras["pretraining"]
    names = {"quantizer.codevectors", "project_q.weight", "project_hid.weight", "speaker_proj.weight"}
    assert names | {"label_embeddings_concat"} <= set(pre), sorted(pre)
    assert torch.equal(pre["label_embeddings_concat"], hf.label_embeddings_concat)
    assert not up.extras["finetuning"]
    assert _max_error(up.model, hf.unispeech_sat, check_final=False) < 1e-5


def test_config_round_trips_through_config_json():
    for variant, config in VARIANTS.items():
        back = config_from_transformers(config_to_transformers(config), source=variant)
        assert back.encoder == config.encoder, variant
        assert back.family == config.family


def test_data2vec_export_refuses_what_transformers_cannot_hold():
    config = VARIANTS["data2vec_audio_5heads_k7_d3"]
    pre_ln = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, layer_norm_first=True))
    with pytest.raises(ValueError, match="post-LN encoder only"):
        config_to_transformers(pre_ln)


def test_config_json_errors_name_the_key():
    hf = config_to_transformers(VARIANTS["wavlm_postln_5heads_k15_b16"])
    with pytest.raises(ValueError, match="'num_buckets' must be an integer >= 4"):
        config_from_transformers({**hf, "num_buckets": 2})
    with pytest.raises(ValueError, match=r"'max_bucket_distance' must be an integer > num_buckets // 4 = 4 "):
        config_from_transformers({**hf, "max_bucket_distance": 4})
    without = {k: v for k, v in hf.items() if k != "num_buckets"}  # transformers' default 320 applies
    with pytest.raises(ValueError, match=r"= 80 \(num_buckets 320, transformers' default: config.json omits"):
        config_from_transformers({**without, "max_bucket_distance": 2})
    d2v = config_to_transformers(VARIANTS["data2vec_audio_5heads_k7_d3"])
    with pytest.raises(ValueError, match="'conv_pos_kernel_size' must be an integer"):
        config_from_transformers({**d2v, "conv_pos_kernel_size": "19"})


@pytest.mark.parametrize("preset", ["wavlm_tiny", "data2vec_tiny"])
def test_export_hf_of_a_checkpoint_reloads_in_transformers(tmp_path, preset):
    from speechssl.interop.export import export_upstream
    from speechssl.models import save_checkpoint
    from speechssl.models.presets import get_preset

    config = get_preset(preset)
    model = perturb_(build_model(config), seed=6).eval()
    save_checkpoint(model, config, tmp_path / "ckpt")
    export_upstream(tmp_path / "ckpt", "hf", tmp_path / "hf")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert _max_error(model, hf, check_final=False) < 1e-5


def test_a_data2vec_config_that_does_not_fit_names_its_kernel_key(tmp_path):
    """data2vec-audio's positional kernel is `conv_pos_kernel_size` in config.json (its
    `num_conv_pos_embeddings` is the stack depth): a mismatch names that key."""
    import json

    config = VARIANTS["data2vec_audio_5heads_k7_d3"]
    hf = transformers_model(config).eval()
    hf.save_pretrained(tmp_path / "d2v")
    data = json.loads((tmp_path / "d2v" / "config.json").read_text())
    (tmp_path / "d2v" / "config.json").write_text(json.dumps({**data, "conv_pos_kernel_size": 9}))
    with pytest.raises(ValueError, match=r"declares conv_pos_kernel_size=9, but .* holds 7"):
        speechssl.load_upstream(tmp_path / "d2v")
