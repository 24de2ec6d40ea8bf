"""fairseq checkpoint import/export against s3prl's fairseq-free copies of fairseq's models.

s3prl.upstream.{hubert,wav2vec2} hold fairseq's HubertModel / Wav2Vec2Model
code without the fairseq package, with fairseq's parameter names, so they are
the reference: we build them tiny, perturb every parameter, save fairseq-style
checkpoints and check that our importer reproduces their hidden states.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("s3prl")
from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig  # noqa: E402
from s3prl.upstream.wav2vec2.wav2vec2_model import Wav2Vec2Config, Wav2Vec2Model  # noqa: E402

import speechssl  # noqa: E402
from speechssl.interop.fairseq_io import (  # noqa: E402
    CheckpointKeyError,
    fairseq_to_ours,
    format_conv_layers,
    load_fairseq,
    ours_to_fairseq,
    parse_conv_layers,
    to_fairseq,
)
from speechssl.interop.safe_pickle import UnsafeCheckpointError, load_checkpoint  # noqa: E402
from speechssl.models.model import build_model  # noqa: E402

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*:FutureWarning")

# Tiny variants: (family, fairseq model cfg overrides). They cover both conv
# modes, post-/pre-LN, conv bias on/off, head counts, odd/even pos-conv kernels,
# with and without post_extract_proj (conv width == embed dim).
VARIANTS = {
    "hubert_group_postln": (
        "hubert",
        dict(
            extractor_mode="default",
            conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 2",
            conv_bias=False,
            encoder_layers=2,
            encoder_embed_dim=48,
            encoder_ffn_embed_dim=64,
            encoder_attention_heads=4,
            layer_norm_first=False,
            conv_pos=16,
            conv_pos_groups=4,
        ),
    ),
    "wav2vec2_layer_preln": (
        "wav2vec2",
        dict(
            extractor_mode="layer_norm",
            conv_feature_layers="[(48,10,5)] + [(48,3,2)] + [(48,2,2)]",
            conv_bias=True,
            encoder_layers=3,
            encoder_embed_dim=48,
            encoder_ffn_embed_dim=80,
            encoder_attention_heads=2,
            layer_norm_first=True,
            conv_pos=7,
            conv_pos_groups=3,
            quantize_targets=True,
            latent_vars=5,
            latent_groups=2,
            final_dim=16,
        ),
    ),
    "hubert_layer_preln_bias": (
        "hubert",
        dict(
            extractor_mode="layer_norm",
            conv_feature_layers="[(24,10,5)] + [(24,3,2)] * 2",
            conv_bias=True,
            encoder_layers=2,
            encoder_embed_dim=32,
            encoder_ffn_embed_dim=40,
            encoder_attention_heads=8,
            layer_norm_first=True,
            conv_pos=8,
            conv_pos_groups=2,
        ),
    ),
}
_NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter away from its init so a missed mapping shows up."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=gen) * (p.abs().mean() + 0.1))


def build_reference(name: str, seed: int = 0):
    """A perturbed s3prl (= fairseq) model in eval mode and its full fairseq model cfg dict."""
    family, overrides = VARIANTS[name]
    torch.manual_seed(seed)
    if family == "hubert":
        cfg = HubertConfig(label_rate=50.0, **overrides, **_NO_DROPOUT)
        model = HubertModel(cfg, HubertPretrainingConfig(), [list("abcd"), list("xyz")])
    else:
        cfg = Wav2Vec2Config(**overrides, **_NO_DROPOUT)
        model = Wav2Vec2Model(cfg)
    perturb(model, seed)
    model_cfg = {"_name": family, **{k: v for k, v in dataclasses.asdict(cfg).items()}}
    model_cfg["latent_temp"] = list(model_cfg["latent_temp"])
    return model.eval(), model_cfg


class Dictionary:
    """What fairseq.data.dictionary.Dictionary pickles as (attributes only)."""

    def __init__(self, symbols):
        self.symbols = list(symbols)
        self.count = [1] * len(symbols)
        self.indices = {s: i for i, s in enumerate(symbols)}


def pickle_as_fairseq_dictionary(symbols):
    """A Dictionary whose pickle names fairseq.data.dictionary.Dictionary (fairseq is not installed)."""
    module = types.ModuleType("fairseq.data.dictionary")
    cls = type("Dictionary", (Dictionary,), {"__module__": "fairseq.data.dictionary"})
    module.Dictionary = cls
    return module, cls(symbols)


def save_fairseq(path: Path, model, model_cfg: dict, *, style: str = "dict", normalize: bool = False) -> Path:
    """Write `model` as fairseq does: cfg as plain dict, omegaconf DictConfig, or old argparse args."""
    task = {"_name": f"{model_cfg['_name']}_pretraining", "normalize": normalize, "sample_rate": 16000}
    ckpt = {
        "model": model.state_dict(),
        "optimizer_history": [],
        "extra_state": {"val_loss": np.float64(1.5)},
    }
    if style == "args":
        ckpt["args"] = argparse.Namespace(
            arch=model_cfg["_name"],
            task="audio_pretraining",
            **task,
            **{k: v for k, v in model_cfg.items() if k != "_name"},
        )
        ckpt["cfg"] = None
    else:
        cfg = {"model": model_cfg, "task": task, "common": {"seed": 1}}
        ckpt["cfg"] = OmegaConf.create(cfg) if style == "omegaconf" else cfg
    if model_cfg["_name"] == "hubert":
        module, d1 = pickle_as_fairseq_dictionary(list("abcd"))
        _, d2 = pickle_as_fairseq_dictionary(list("xyz"))
        d2.__class__ = d1.__class__
        fake = {
            "fairseq": types.ModuleType("fairseq"),
            "fairseq.data": types.ModuleType("fairseq.data"),
            "fairseq.data.dictionary": module,
        }
        saved = {k: sys.modules.get(k) for k in fake}
        sys.modules.update(fake)
        try:
            ckpt["task_state"] = {"dictionaries": [d1, d2]}
            torch.save(ckpt, path)
        finally:
            for k, v in saved.items():
                if v is None:
                    del sys.modules[k]
                else:
                    sys.modules[k] = v
    else:
        torch.save(ckpt, path)
    return path


def reference_hidden_states(model, wav: torch.Tensor) -> list[torch.Tensor]:
    """Input of every encoder layer, then the last layer's output (fairseq layer_results)."""
    inputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a: inputs.append(a[0].transpose(0, 1)))
        for layer in model.encoder.layers
    ]
    try:
        with torch.no_grad():
            res = model.extract_features(wav[None], padding_mask=None, mask=False)
    finally:
        for h in hooks:
            h.remove()
    x = res[0] if isinstance(res, tuple) else res["x"]
    layer_results = None if isinstance(res, tuple) else res["layer_results"]
    T = x.shape[1]
    last = layer_results[-1][0].transpose(0, 1) if layer_results else None
    return [h[:, :T] for h in inputs], x, last


def ours_from(config, state_dict):
    model = build_model(config).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


WAV_LENGTHS = [4000, 2900, 3350]


def waves(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen) for n in WAV_LENGTHS]


def check_parity(ref, ours_model, wavs: list[torch.Tensor]) -> float:
    """Max abs error over all hidden states of valid frames, ours vs the reference one at a time.

    Layer-norm frontends are padding-invariant, so ours runs them as one padded
    batch. fairseq's group-norm frontend normalises over the padded length (it
    is not padding-invariant in fairseq either), so those run one at a time.
    """
    L = len(ref.encoder.layers)
    if ours_model.config.frontend.mode == "layer_norm":
        batches = [wavs]
    else:
        batches = [[w] for w in wavs]
    worst = 0.0
    for group in batches:
        batch = torch.nn.utils.rnn.pad_sequence(group, batch_first=True)
        lengths = torch.tensor([len(w) for w in group])
        with torch.no_grad():
            out = ours_model(batch, lengths)
        for b, wav in enumerate(group):
            inputs, final, _ = reference_hidden_states(ref, wav)
            T = int(out.lengths[b])
            assert T == final.shape[1], "frame count differs from fairseq's"
            ref_states = inputs + [final]  # final = encoder output (after the final LN for pre-LN)
            ours_states = out.hidden_states[:L] + [out.last_hidden_state]
            for r, o in zip(ref_states, ours_states):
                worst = max(worst, (r[0] - o[b, :T]).abs().max().item())
    return worst


@pytest.mark.parametrize("style", ["dict", "omegaconf", "args"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_import_matches_fairseq_hidden_states(tmp_path, name, style):
    ref, model_cfg = build_reference(name)
    path = save_fairseq(tmp_path / "ckpt.pt", ref, model_cfg, style=style)
    config, state_dict, extras = load_fairseq(path)
    assert config.family == VARIANTS[name][0]
    up = speechssl.load_upstream(path)  # the same reader, behind the public entry point
    assert up.config == config and up.extras["fairseq_model_cfg"]["_name"] == VARIANTS[name][0]
    err = check_parity(ref, up.model, waves())
    print(f"{name}/{style}: max abs error {err:.2e}")
    assert err < TOL
    if config.family == "hubert":
        assert extras["dictionaries_symbols"] == [list("abcd"), list("xyz")]
        assert set(extras["pretraining"]) == {"label_embs_concat", "final_proj.weight", "final_proj.bias"}
    else:
        assert "quantizer.vars" in extras["pretraining"] and "project_q.weight" in extras["pretraining"]


def test_config_fields_are_read(tmp_path):
    ref, model_cfg = build_reference("wav2vec2_layer_preln")
    config, _, _ = load_fairseq(save_fairseq(tmp_path / "c.pt", ref, model_cfg, normalize=True))
    assert config.frontend.mode == "layer_norm" and config.frontend.conv_bias
    assert config.frontend.conv_dim == [48, 48, 48] and config.frontend.conv_kernel == [10, 3, 2]
    assert config.frontend.conv_stride == [5, 2, 2]
    enc = config.encoder
    assert (enc.embed_dim, enc.num_layers, enc.num_heads, enc.ffn_dim) == (48, 3, 2, 80)
    assert enc.layer_norm_first and (enc.pos_conv_kernel, enc.pos_conv_groups) == (7, 3)
    assert config.normalize_waveform


def test_conv_layer_spec_is_parsed_without_eval():
    spec = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
    layers = parse_conv_layers(spec)
    assert layers == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    dims, kernels, strides = zip(*layers)
    assert parse_conv_layers(format_conv_layers(list(dims), list(kernels), list(strides))) == layers
    with pytest.raises(ValueError, match="cannot parse conv_feature_layers.*unsupported expression Call"):
        parse_conv_layers("__import__('os').system('true')")
    with pytest.raises(ValueError, match=r"expected \(dim, kernel, stride\)"):
        parse_conv_layers("[(512, 10)]")


def test_finetuned_checkpoint_reports_head(tmp_path):
    ref, model_cfg = build_reference("hubert_group_postln")
    sd = {
        f"w2v_encoder.w2v_model.{k}": v
        for k, v in ref.state_dict().items()
        if not k.startswith(("final_proj", "label_embs"))
    }
    sd["w2v_encoder.proj.weight"] = torch.randn(5, 48)
    sd["w2v_encoder.proj.bias"] = torch.randn(5)
    ckpt = {
        "cfg": {
            "model": {"_name": "hubert_ctc", "w2v_args": {"model": model_cfg, "task": {"normalize": False}}},
            "task": {"_name": "audio_finetuning", "normalize": False},
        },
        "model": sd,
    }
    torch.save(ckpt, tmp_path / "ft.pt")
    config, state_dict, extras = load_fairseq(tmp_path / "ft.pt")
    assert set(extras["finetuning"]) == {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias"}
    assert check_parity(ref, ours_from(config, state_dict), waves()[:1]) < TOL


def test_unexpected_and_missing_keys_are_listed(tmp_path):
    ref, model_cfg = build_reference("hubert_group_postln")
    sd = ref.state_dict()
    sd["encoder.layers.0.self_attn.rel_bias"] = torch.zeros(3)
    torch.save({"cfg": {"model": model_cfg, "task": {}}, "model": sd}, tmp_path / "extra.pt")
    with pytest.raises(
        CheckpointKeyError, match=r"extra\.pt: unexpected keys .*encoder\.layers\.0\.self_attn\.rel_bias"
    ):
        load_fairseq(tmp_path / "extra.pt")
    sd = ref.state_dict()
    del sd["encoder.layers.1.fc2.bias"], sd["mask_emb"]
    torch.save({"cfg": {"model": model_cfg, "task": {}}, "model": sd}, tmp_path / "missing.pt")
    with pytest.raises(
        CheckpointKeyError, match=r"missing\.pt: missing keys: encoder\.layers\.1\.fc2\.bias, mask_emb"
    ):
        load_fairseq(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


class _Custom:
    pass


@pytest.mark.parametrize("payload, name", [(_Evil(), "system"), (_Custom(), "_Custom")])
def test_disallowed_pickle_types_are_refused(tmp_path, payload, name):
    path = tmp_path / "bad.pt"
    torch.save({"model": {}, "cfg": {}, "extra": payload}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"bad\.pt: refusing to unpickle \S*{name}"):
        load_fairseq(path)


def test_legacy_zip_less_file_is_refused_too(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"x": _Evil()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"old\.pt: refusing to unpickle \S*system"):
        load_checkpoint(path)


def test_round_trip_ours_fairseq_ours_is_exact(tmp_path):
    for name in VARIANTS:
        ref, model_cfg = build_reference(name)
        config, state_dict, extras = load_fairseq(save_fairseq(tmp_path / f"{name}.pt", ref, model_cfg))
        ckpt = to_fairseq(config, state_dict, extras=extras)
        # the exported weights are exactly the reference model's (incl. pretraining heads)
        ref_sd = ref.state_dict()
        assert set(ckpt["model"]) == set(ref_sd)
        assert all(torch.equal(ckpt["model"][k], ref_sd[k]) for k in ref_sd)
        torch.save(ckpt, tmp_path / "export.pt")
        config2, state_dict2, extras2 = load_fairseq(tmp_path / "export.pt")
        assert config2 == config
        assert set(state_dict2) == set(state_dict)
        assert all(torch.equal(state_dict2[k], state_dict[k]) for k in state_dict)
        assert all(torch.equal(extras2["pretraining"][k], v) for k, v in extras["pretraining"].items())


def test_round_trip_from_our_model_without_projection():
    """Conv width == embed dim: fairseq has no post_extract_proj; an identity projection round-trips."""
    _, model_cfg = build_reference("wav2vec2_layer_preln")
    ref, _ = build_reference("wav2vec2_layer_preln")
    config, sd, _ = load_fairseq_from_state(ref.state_dict(), model_cfg)
    assert torch.equal(sd["feature_projection.projection.weight"], torch.eye(48))
    theirs = ours_to_fairseq(sd, config)
    assert "post_extract_proj.weight" not in theirs
    back, _ = fairseq_to_ours(theirs, config)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    ours = build_model(config)
    perturb(ours)
    with pytest.raises(ValueError, match="projection is not the identity"):
        ours_to_fairseq(ours.state_dict(), config)


def load_fairseq_from_state(sd, model_cfg):
    from speechssl.interop.fairseq_io import config_from_checkpoint

    config, _, _ = config_from_checkpoint({"cfg": {"model": model_cfg, "task": {}}}, "<test>")
    ours, extras = fairseq_to_ours(sd, config)
    return config, ours, extras


def test_parametrized_weight_norm_keys_are_accepted(tmp_path):
    """Newer torch saves weight norm as parametrizations.weight.original0/1 instead of weight_g/_v."""
    ref, model_cfg = build_reference("hubert_layer_preln_bias")
    renames = {
        "weight_g": "parametrizations.weight.original0",
        "weight_v": "parametrizations.weight.original1",
    }
    sd = {}
    for k, v in ref.state_dict().items():
        head, _, leaf = k.rpartition(".")
        sd[f"{head}.{renames[leaf]}" if k.startswith("encoder.pos_conv.0.") and leaf in renames else k] = v
    torch.save({"cfg": {"model": model_cfg, "task": {}}, "model": sd}, tmp_path / "p.pt")
    config, ours, extras = load_fairseq(tmp_path / "p.pt")
    assert check_parity(ref, ours_from(config, ours), waves()[:1]) < TOL
    exported = to_fairseq(config, ours, extras=extras, fairseq_pos_conv="parametrizations")["model"]
    assert set(exported) == set(sd)


def test_checkpoint_without_config_is_named(tmp_path):
    torch.save({"model": {}, "cfg": None, "args": None}, tmp_path / "nocfg.pt")
    with pytest.raises(ValueError, match=r"nocfg\.pt: no fairseq config found"):
        load_fairseq(tmp_path / "nocfg.pt")
    torch.save({"cfg": {"model": {"_name": "data2vec_multi"}, "task": {}}, "model": {}}, tmp_path / "d2v.pt")
    with pytest.raises(ValueError, match=r"d2v\.pt: unsupported fairseq model .data2vec_multi. \(data2vec 2"):
        load_fairseq(tmp_path / "d2v.pt")
