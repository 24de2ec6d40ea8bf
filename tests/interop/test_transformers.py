"""Parity with transformers on the same (perturbed) weights, import/export of transformers dirs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import speechssl
from speechssl.interop.transformers_io import load_transformers, save_transformers
from speechssl.interop.upstream import normalize_waveform
from speechssl.models import build_model
from speechssl.testing.models import build_hf_model, perturb_, random_waves, tiny_config

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "group_postln": dict(family="hubert"),
    "layer_preln_bias": dict(family="wav2vec2", mode="layer_norm", layer_norm_first=True, conv_bias=True),
    "group_bias_2heads_k15": dict(family="wav2vec2", conv_bias=True, num_heads=2, pos_conv_kernel=15),
    "layer_postln_8heads_k8": dict(
        family="hubert", mode="layer_norm", num_heads=8, pos_conv_kernel=8, pos_conv_groups=2
    ),
}
LENGTHS = [9600, 6717, 4000]
MAX_ERRORS: dict[str, float] = {}


def _hf_forward(hf, wavs, lens):
    mask = (torch.arange(wavs.shape[1])[None, :] < lens[:, None]).long()
    with torch.no_grad():
        return hf(wavs, attention_mask=mask, output_hidden_states=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_hidden_states_match_transformers(tmp_path, variant):
    config = tiny_config(**VARIANTS[variant])
    torch.manual_seed(0)
    hf = perturb_(build_hf_model(config), seed=1)
    hf.save_pretrained(tmp_path)
    up = speechssl.load_upstream(tmp_path)
    assert up.num_layers == 2 and up.hidden_dim == 32 and up.downsample_rate == 320
    wavs, lens = random_waves(LENGTHS)
    worst = 0.0
    # padded batch (valid frames) ...
    ref = _hf_forward(hf, wavs, lens)
    with torch.no_grad():
        out = up(wavs, lens)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for i, T in enumerate(out.lengths.tolist()):
        assert T == (LENGTHS[i] - 400) // 320 + 1
        for a, b in zip(out.hidden_states, ref.hidden_states):
            worst = max(worst, (a[i, :T] - b[i, :T]).abs().max().item())
    # ... and one utterance at a time, without a mask (the common single-file call)
    for i, n in enumerate(LENGTHS):
        with torch.no_grad():
            ref_one = hf(wavs[i : i + 1, :n], output_hidden_states=True)
            out_one = up(wavs[i : i + 1, :n], lens[i : i + 1])
        for a, b in zip(out_one.hidden_states, ref_one.hidden_states):
            worst = max(worst, (a - b).abs().max().item())
        if config.encoder.layer_norm_first:  # last_hidden_state has the final LayerNorm
            final = up.model(wavs[i : i + 1, :n]).last_hidden_state
            worst = max(worst, (final - ref_one.last_hidden_state).abs().max().item())
    MAX_ERRORS[variant] = worst
    print(f"max abs error vs transformers [{variant}]: {worst:.2e}")
    assert worst < 1e-4


def test_extract_features_match_wav2vec2(tmp_path):
    config = tiny_config(family="wav2vec2", mode="layer_norm", conv_bias=True)
    hf = perturb_(build_hf_model(config), seed=2)
    model = build_model(config).eval()
    model.load_state_dict(hf.state_dict())
    wavs, lens = random_waves([6400, 4000])
    ref = _hf_forward(hf, wavs, lens)
    out = model(wavs, lens)
    assert (out.extract_features[0] - ref.extract_features[0]).abs().max() < 1e-5
    # the same mask_time_indices gives the same result (masked_spec_embed after the projection)
    mask = torch.zeros(2, out.padding_mask.shape[1], dtype=torch.bool)
    mask[:, 2:6] = True
    with torch.no_grad():
        attention_mask = (torch.arange(wavs.shape[1])[None] < lens[:, None]).long()
        ref_m = hf(wavs, attention_mask=attention_mask, mask_time_indices=mask.clone())
        out_m = model(wavs, lens, mask_time_indices=mask)
    T = out.lengths[1].item()
    assert (out_m.last_hidden_state[1, :T] - ref_m.last_hidden_state[1, :T]).abs().max() < 1e-4


def test_pretraining_dir_returns_quantizer_and_projections(tmp_path):
    config = tiny_config(family="wav2vec2")
    hf = perturb_(build_hf_model(config, pretraining=True))
    hf.save_pretrained(tmp_path)
    up = speechssl.load_upstream(tmp_path)
    pre = up.extras["pretraining"]
    assert {
        "quantizer.codevectors",
        "quantizer.weight_proj.weight",
        "project_q.weight",
        "project_hid.weight",
    } <= set(pre)
    assert torch.equal(pre["project_q.weight"], hf.project_q.weight)
    assert torch.equal(
        up.model.encoder.layers[0].attention.q_proj.weight,
        hf.wav2vec2.encoder.layers[0].attention.q_proj.weight,
    )


def test_old_weight_norm_keys_and_bin_files_load(tmp_path):
    config = tiny_config()
    hf = perturb_(build_hf_model(config))
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    # transformers 4.x / fairseq-era files: weight_g / weight_v, pickled .bin, "hubert." prefix
    old = {}
    for k, v in state.items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        )
        old["hubert." + k] = v
    (tmp_path / "model.safetensors").unlink()
    torch.save(old, tmp_path / "pytorch_model.bin")
    config2, backbone, _ = load_transformers(tmp_path)
    assert config2.encoder == config.encoder and config2.frontend.conv_dim == config.frontend.conv_dim
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in backbone
    up = speechssl.load_upstream(tmp_path)
    wavs, lens = random_waves([6400])
    with torch.no_grad():
        assert (
            up(wavs, lens).hidden_states[-1] - hf(wavs, output_hidden_states=True).hidden_states[-1]
        ).abs().max() < 1e-4


def test_unexpected_and_missing_keys_are_listed(tmp_path):
    hf = build_hf_model(tiny_config())
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["encoder.mystery.weight"] = torch.zeros(1)
    del state["encoder.layer_norm.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        ValueError, match="missing keys: encoder.layer_norm.bias .* unexpected keys: encoder.mystery.weight"
    ):
        speechssl.load_upstream(tmp_path)


def test_unsupported_options_are_refused(tmp_path):
    hf = build_hf_model(tiny_config())
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["conv_pos_batch_norm"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported transformers option.*conv_pos_batch_norm=True"):
        speechssl.load_upstream(tmp_path)


def test_export_loads_in_transformers_with_normalisation(tmp_path):
    config = tiny_config(family="wav2vec2", mode="layer_norm", layer_norm_first=True, conv_bias=True)
    config = config.__class__(**{**config.__dict__, "normalize_waveform": True})
    model = perturb_(build_model(config)).eval()
    save_transformers(model, config, tmp_path / "hf")
    hf = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "hf").eval()
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "hf")
    wavs, lens = random_waves([6400, 4000])
    inputs = extractor(
        [w[:n].numpy() for w, n in zip(wavs, lens)], sampling_rate=16000, padding=True, return_tensors="pt"
    )
    assert torch.allclose(inputs.input_values, normalize_waveform(wavs, lens), atol=1e-5)
    ref = hf(inputs.input_values, attention_mask=inputs.attention_mask, output_hidden_states=True)
    up = speechssl.load_upstream(tmp_path / "hf")
    assert up.config.normalize_waveform
    with torch.no_grad():
        out = up(wavs, lens)
    for i, T in enumerate(out.lengths.tolist()):
        for a, b in zip(out.hidden_states, ref.hidden_states):
            assert (a[i, :T] - b[i, :T]).abs().max() < 1e-4


def test_a_dir_without_masked_spec_embed_loads_to_the_same_weights_every_time(tmp_path):
    """transformers saves no masked_spec_embed when mask_time_prob == 0: a random fill would give
    every load other weights, so an experiment's upstream check and the feature cache's key
    would never match the next load of the same files."""
    config = tiny_config(**VARIANTS[next(iter(VARIANTS))])
    torch.manual_seed(0)
    perturb_(build_hf_model(config), seed=1).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    key = next(k for k in weights if k.endswith("masked_spec_embed"))
    save_file({k: v for k, v in weights.items() if k != key}, tmp_path / "model.safetensors")
    loads = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        loads.append(speechssl.load_upstream(tmp_path).state_dict())
    assert loads[0].keys() == loads[1].keys()
    assert all(torch.equal(loads[0][k], loads[1][k]) for k in loads[0])
