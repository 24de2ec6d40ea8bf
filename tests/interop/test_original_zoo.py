"""WavLM, UniSpeech-SAT and data2vec-audio in their original file layouts, against the original code.

The references are s3prl's fairseq-free copies of the original modules: unilm's `WavLM`
(s3prl/upstream/wavlm/WavLM.py, which s3prl also uses for UniSpeech-SAT with the relative
position bias off) and fairseq's `Data2VecAudioModel` (s3prl/upstream/data2vec). They are
built tiny with odd shapes, every parameter perturbed, saved in the original layouts
(unilm {cfg, model}; fairseq {cfg: {model, task}, model}; s3prl's converted file) and
read through `speechssl.load_upstream`; every layer's hidden states must match.
microsoft/UniSpeech's fairseq `UniSpeechSATModel` has no fairseq-free copy: its encoder
names are unilm's WavLM names without the bias, so the WavLM class with the bias off is
its reference, and its extra weights are checked by name.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

pytest.importorskip("s3prl")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from s3prl.upstream.data2vec.data2vec_model import Data2VecAudioConfig, Data2VecAudioModel  # noqa: E402
    from s3prl.upstream.data2vec.expert import UpstreamExpert as Data2VecExpert  # noqa: E402
    from s3prl.upstream.unispeech_sat.expert import UpstreamExpert as UniSpeechSatExpert  # noqa: E402
    from s3prl.upstream.wavlm.expert import UpstreamExpert as WavLMExpert  # noqa: E402
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig  # noqa: E402

import speechssl  # noqa: E402
from speechssl.interop.export import export_upstream, formats_for  # noqa: E402
from speechssl.interop.fairseq_io import CheckpointKeyError, load_fairseq, to_fairseq  # noqa: E402
from speechssl.interop.s3prl_io import load_s3prl, to_s3prl  # noqa: E402
from speechssl.interop.wavlm_io import load_wavlm, to_wavlm  # noqa: E402
from speechssl.models.frontends import normalize_waveform  # noqa: E402
from speechssl.models.model import build_model  # noqa: E402
from speechssl.testing.models import perturb_, random_waves  # noqa: E402

TOL = 1e-5
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*weight_norm.*:FutureWarning", "ignore:.*weights_only.*:FutureWarning"
)
_NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0)
_CONV = "[({d},10,5)] + [({d},3,2)] * 4 + [({d},2,2)] * 2"  # the real strides: 320 samples a frame
LENGTHS = [16000, 11111, 6789]  # a padded batch: the longest first, others end mid-frame

# unilm WavLMConfig dicts: odd widths and head counts (head_dim 12, 8), odd/even pos-conv
# kernels, bucket counts and distances small enough that ~50 frames use the log buckets.
WAVLM_VARIANTS = {
    "wavlm_postln_groupnorm": dict(
        extractor_mode="default",
        conv_feature_layers=_CONV.format(d=40),
        encoder_layers=3,
        encoder_embed_dim=36,
        encoder_ffn_embed_dim=52,
        encoder_attention_heads=3,
        layer_norm_first=False,
        conv_pos=9,
        conv_pos_groups=3,
        relative_position_embedding=True,
        num_buckets=12,
        max_distance=20,
        gru_rel_pos=True,
    ),
    "wavlm_preln_layernorm_noproj": dict(  # WavLM Large's shape: pre-LN, layer-norm convs with bias
        extractor_mode="layer_norm",
        conv_feature_layers=_CONV.format(d=40),
        conv_bias=True,
        encoder_layers=2,
        encoder_embed_dim=40,  # == conv width: the original has no post_extract_proj
        encoder_ffn_embed_dim=44,
        encoder_attention_heads=5,
        layer_norm_first=True,
        conv_pos=8,
        conv_pos_groups=4,
        relative_position_embedding=True,
        num_buckets=22,
        max_distance=37,
        gru_rel_pos=True,
        normalize=True,
    ),
}
# s3prl's UniSpeech-SAT files: the same class and layout without the bias
SAT_VARIANTS = {
    "sat_postln_groupnorm": dict(
        extractor_mode="default",
        conv_feature_layers=_CONV.format(d=24),
        encoder_layers=2,
        encoder_embed_dim=42,
        encoder_ffn_embed_dim=50,
        encoder_attention_heads=7,
        layer_norm_first=False,
        conv_pos=11,
        conv_pos_groups=7,
    ),
    "sat_preln_layernorm": dict(
        extractor_mode="layer_norm",
        conv_feature_layers=_CONV.format(d=24),
        conv_bias=True,
        encoder_layers=2,
        encoder_embed_dim=30,
        encoder_ffn_embed_dim=34,
        encoder_attention_heads=3,
        layer_norm_first=True,
        conv_pos=6,
        conv_pos_groups=2,
        normalize=True,
    ),
}
# fairseq Data2VecAudioConfig overrides: stacks of depth 3 (kernel max(3, 14 // 3) = 4, even)
# and 2 (kernel max(3, 5 // 2) = 3, the floor of max()).
DATA2VEC_VARIANTS = {
    "data2vec_depth3_even_kernel": dict(
        extractor_mode="layer_norm",
        conv_feature_layers=_CONV.format(d=28),
        conv_bias=True,
        encoder_layers=3,
        encoder_embed_dim=36,
        encoder_ffn_embed_dim=40,
        encoder_attention_heads=3,
        conv_pos=14,
        pos_conv_depth=3,
        conv_pos_groups=3,
    ),
    "data2vec_depth2_groupnorm_sameproj": dict(
        extractor_mode="default",
        conv_feature_layers=_CONV.format(d=32),
        encoder_layers=2,
        encoder_embed_dim=32,  # == conv width, and still a post_extract_proj in data2vec
        encoder_ffn_embed_dim=36,
        encoder_attention_heads=4,
        conv_pos=5,
        pos_conv_depth=2,
        conv_pos_groups=4,
    ),
}


# --------------------------------------------------------------------------- references


def wavlm_reference(cfg: dict, seed: int = 0) -> WavLM:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = WavLM(WavLMConfig({**cfg, **_NO_DROPOUT}))
    return perturb_(model, seed=seed + 1).eval()


def data2vec_reference(overrides: dict, seed: int = 0) -> tuple[Data2VecAudioModel, dict]:
    """A perturbed fairseq Data2VecAudioModel and its full fairseq model cfg."""
    torch.manual_seed(seed)
    cfg = Data2VecAudioConfig(**overrides, **_NO_DROPOUT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Data2VecAudioModel(cfg)
    perturb_(model, seed=seed + 1)
    model_cfg = {"_name": "data2vec_audio", **dataclasses.asdict(cfg)}
    model_cfg["latent_temp"] = list(model_cfg["latent_temp"])
    return model.eval(), model_cfg


def data2vec_weights(model: Data2VecAudioModel) -> dict:
    """What fairseq saves: the state dict plus `_ema`, the EMA teacher's fp32 encoder weights."""
    state = dict(model.state_dict())
    state["_ema"] = {k: v.float() + 1.0 for k, v in model.encoder.state_dict().items()}
    return state


def original_states(model: torch.nn.Module, wavs: torch.Tensor, lens: torch.Tensor | None = None) -> list:
    """The original model's first-layer input and every layer's output, (B, T, C); `lens` gives
    it a padding mask (data2vec only: its frame mask follows the conv lengths, as ours)."""
    states: list[torch.Tensor] = []
    layers = model.encoder.layers
    hooks = [layers[0].register_forward_pre_hook(lambda m, args: states.append(args[0]))]
    hooks += [layer.register_forward_hook(lambda m, args, out: states.append(out[0])) for layer in layers]
    try:
        with torch.no_grad():
            if isinstance(model, WavLM):
                x, _ = model.extract_features(wavs, padding_mask=None, mask=False)
            else:
                pad = None if lens is None else torch.arange(wavs.shape[1])[None] >= lens[:, None]
                x = model.extract_features(wavs, pad)["x"]
    finally:
        for hook in hooks:
            hook.remove()
    # (T', B, C) -> (B, T, C); fairseq pads T to a multiple of required_seq_len_multiple
    return [s.transpose(0, 1)[:, : x.shape[1]] for s in states]


def max_error(up, reference: torch.nn.Module, *, batch: str = "none") -> float:
    """Every layer of our Upstream vs the original, one utterance at a time, and for `batch`:
    "vs_single": ours as one padded batch vs the original one at a time (a padded batch of
    unilm's WavLM masks a frame that covers any valid sample, ours and transformers' follow the
    conv lengths; a group-norm frontend normalizes over the padding, so only layer-norm ones);
    "vs_batch": ours vs the original, both on the same padded batch (data2vec: the same frame
    mask; its positional conv stack reads padded frames after the first layer, in the original
    and in transformers too, so a padded batch is not the one-at-a-time result there)."""
    wavs, lens = random_waves(LENGTHS, seed=5)
    if up.config.normalize_waveform:
        # ours (transformers' eps 1e-7) for both, not the original's F.layer_norm (eps 1e-5): on
        # these quiet waves that eps alone moves states by ~1e-4; the networks are compared here
        wavs = normalize_waveform(wavs, lens)
    with torch.no_grad():
        ours_batch = up.model(wavs, lens, output_hidden_states=True)
    pairs = []  # (ours hidden states, ours lengths, row, original states)
    for b, n in enumerate(LENGTHS):
        refs = original_states(reference, wavs[b : b + 1, :n])
        with torch.no_grad():
            single = up.model(wavs[b : b + 1, :n], lens[b : b + 1], output_hidden_states=True)
        pairs.append((single, 0, refs, 0))
        if batch == "vs_single":
            pairs.append((ours_batch, b, refs, 0))
    if batch == "vs_batch":
        refs = original_states(reference, wavs, lens)
        pairs += [(ours_batch, b, refs, b) for b in range(len(LENGTHS))]
    worst = 0.0
    for out, j, refs, r_row in pairs:
        T = int(out.lengths[j])
        if r_row == 0 and refs[0].shape[0] == 1:
            assert T == refs[0].shape[1], f"{T} frames, the original has {refs[0].shape[1]}"
        assert len(out.hidden_states) == len(refs) == up.num_layers + 1
        for r, o in zip(refs, out.hidden_states):
            worst = max(worst, (r[r_row, :T] - o[j, :T]).abs().max().item())
    return worst


def report(name: str, err: float) -> None:
    print(f"{name}: max abs error {err:.2e}")
    assert err < TOL, f"{name}: {err:.2e}"


# --------------------------------------------------------------------------- WavLM / unilm


@pytest.mark.parametrize("name", WAVLM_VARIANTS)
def test_unilm_wavlm_file_matches_the_original(tmp_path, name):
    cfg = WAVLM_VARIANTS[name]
    ref = wavlm_reference(cfg)
    torch.save({"cfg": cfg, "model": ref.state_dict()}, tmp_path / "WavLM.pt")
    up = speechssl.load_upstream(tmp_path / "WavLM.pt")
    enc = up.config.encoder
    assert up.config.family == "wavlm"
    assert (enc.relative_position_buckets, enc.relative_position_max_distance) == (
        cfg["num_buckets"],
        cfg["max_distance"],
    )
    assert up.config.normalize_waveform == cfg.get("normalize", False)
    report(name, max_error(up, ref, batch="vs_single" if cfg["extractor_mode"] == "layer_norm" else "none"))


@pytest.mark.parametrize("name", SAT_VARIANTS)
def test_s3prl_unispeech_sat_file_matches_the_original(tmp_path, name):
    cfg = SAT_VARIANTS[name]
    ref = wavlm_reference(cfg, seed=2)
    torch.save({"cfg": cfg, "model": ref.state_dict()}, tmp_path / "unispeech_sat.pt")
    up = speechssl.load_upstream(tmp_path / "unispeech_sat.pt")
    assert up.config.family == "unispeech_sat" and up.config.encoder.relative_position_buckets == 0
    report(name, max_error(up, ref, batch="vs_single" if cfg["extractor_mode"] == "layer_norm" else "none"))


def test_gate_without_bias_is_kept_aside(tmp_path):
    """gru_rel_pos without relative_position_embedding: the original builds the gates and never
    uses them; they go to extras['unused'] and are not written back."""
    cfg = {**SAT_VARIANTS["sat_postln_groupnorm"], "gru_rel_pos": True}
    ref = wavlm_reference(cfg)
    torch.save({"cfg": cfg, "model": ref.state_dict()}, tmp_path / "sat.pt")
    config, state, extras = load_wavlm(tmp_path / "sat.pt")
    assert sorted(extras["unused"]) == sorted(k for k in ref.state_dict() if ".grep_" in k)
    out = to_wavlm(config, state, extras=extras)
    assert out["cfg"]["gru_rel_pos"] is False and not any(".grep_" in k for k in out["model"])
    up = speechssl.load_upstream(tmp_path / "sat.pt")
    assert max_error(up, ref, batch="none") < TOL


# --------------------------------------------------------------------------- UniSpeech-SAT / fairseq

# Names of microsoft/UniSpeech's UniSpeechSATModel beyond the encoder (UniSpeech-SAT/fairseq/
# models/unispeech-sat/unispeech_sat.py): HuBERT-style heads, the utterance-mixing speaker
# projection, its quantizer, and the extract-layer LayerNorm of pre-LN models.
SAT_EXTRA_SHAPES = {
    "final_proj.weight": (16, 30),
    "final_proj.bias": (16,),
    "label_embs_concat": (7, 16),
    "spk_proj.weight": (16, 30),
    "spk_proj.bias": (16,),
    "project_q.weight": (16, 8),
    "project_q.bias": (16,),
    "quantizer.vars": (1, 10, 4),
    "quantizer.weight_proj.weight": (10, 30),
    "quantizer.weight_proj.bias": (10,),
    "encoder.layer_norm_for_extract.weight": (30,),
    "encoder.layer_norm_for_extract.bias": (30,),
}


def sat_fairseq_file(path, seed: int = 0) -> tuple[WavLM, dict]:
    """A UniSpeech-SAT fairseq checkpoint (as microsoft/UniSpeech's fork saves it) whose encoder is
    the perturbed reference's; returns the reference and the saved dict."""
    cfg = SAT_VARIANTS["sat_preln_layernorm"]
    ref = wavlm_reference(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    heads = {k: torch.randn(shape, generator=gen) for k, shape in SAT_EXTRA_SHAPES.items()}
    model_cfg = {
        "_name": "unispeech_sat",
        **{k: v for k, v in cfg.items() if k != "normalize"},
        "label_rate": 50,
        "final_dim": 16,
        "utterance_contrastive_loss": True,
        "quantize_targets": True,
        "latent_vars": 10,
        "latent_dim": 8,
        "relative_position_embedding": False,
        "expand_attention_head_size": -1,
    }
    ckpt = {
        "args": None,
        "cfg": {
            "model": model_cfg,
            "task": {"_name": "unispeech_sat_pretraining", "normalize": True, "label_rate": 50},
        },
        "model": {**ref.state_dict(), **heads},
    }
    torch.save(ckpt, path)
    return ref, ckpt


def test_unispeech_sat_fairseq_file_matches_and_keeps_its_heads(tmp_path):
    ref, ckpt = sat_fairseq_file(tmp_path / "sat.pt")
    up = speechssl.load_upstream(tmp_path / "sat.pt")
    assert up.config.family == "unispeech_sat" and up.config.normalize_waveform
    assert set(up.extras["pretraining"]) == set(SAT_EXTRA_SHAPES)
    report("unispeech_sat_fairseq_preln", max_error(up, ref, batch="vs_single"))
    # names of the original source, one layer shown: the encoder is wav2vec 2.0's fairseq network
    names = set(ckpt["model"])
    assert {
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "encoder.layers.1.self_attn.out_proj.weight",
        "encoder.layers.1.self_attn_layer_norm.bias",
        "encoder.layers.1.fc1.weight",
        "encoder.layers.1.final_layer_norm.weight",
        "feature_extractor.conv_layers.6.2.1.weight",
        "mask_emb",
        "layer_norm.weight",
    } <= names
    # round trip: the fairseq file we write has every original key, the same tensors, its cfg
    out = to_fairseq(up.config, up.model.state_dict(), extras=up.extras)
    assert set(out["model"]) == names
    assert all(torch.equal(out["model"][k], v) for k, v in ckpt["model"].items())
    assert (
        out["cfg"]["model"]["_name"] == "unispeech_sat" and out["cfg"]["model"]["utterance_contrastive_loss"]
    )


def test_unispeech_sat_with_a_relative_bias_is_refused(tmp_path):
    _, ckpt = sat_fairseq_file(tmp_path / "sat.pt")
    ckpt["cfg"]["model"]["relative_position_embedding"] = True
    torch.save(ckpt, tmp_path / "rel.pt")
    with pytest.raises(
        ValueError, match=r"rel\.pt: relative_position_embedding=True is not supported for unispeech_sat"
    ):
        speechssl.load_upstream(tmp_path / "rel.pt")


# --------------------------------------------------------------------------- data2vec-audio


@pytest.mark.parametrize("name", DATA2VEC_VARIANTS)
def test_fairseq_data2vec_file_matches_the_original(tmp_path, name):
    ref, model_cfg = data2vec_reference(DATA2VEC_VARIANTS[name])
    ckpt = {
        "args": None,
        "cfg": {"model": model_cfg, "task": {"_name": "audio_pretraining", "normalize": True}},
        "model": data2vec_weights(ref),
    }
    torch.save(ckpt, tmp_path / "audio_base_ls.pt")
    up = speechssl.load_upstream(tmp_path / "audio_base_ls.pt")
    enc = up.config.encoder
    depth = model_cfg["pos_conv_depth"]
    assert up.config.family == "data2vec_audio"
    assert (enc.pos_conv_type, enc.pos_conv_depth) == ("layer_norm", depth)
    assert enc.pos_conv_kernel == max(3, model_cfg["conv_pos"] // depth)
    assert set(up.extras["pretraining"]) == {"final_proj.weight", "final_proj.bias"}
    assert not any("_ema" in str(part) for part in up.extras)  # the EMA teacher is dropped
    report(name, max_error(up, ref, batch="vs_batch"))
    # round trip to fairseq: every original key but _ema, same tensors, conv_pos kept
    out = to_fairseq(up.config, up.model.state_dict(), extras=up.extras)
    assert set(out["model"]) == set(ckpt["model"]) - {"_ema"}
    assert all(torch.equal(out["model"][k], ckpt["model"][k]) for k in out["model"])
    assert (out["cfg"]["model"]["conv_pos"], out["cfg"]["model"]["pos_conv_depth"]) == (
        model_cfg["conv_pos"],
        depth,
    )


def test_s3prl_converted_data2vec_file_and_its_export(tmp_path):
    """s3prl's converter's file loads; our export of it is read by s3prl's data2vec expert."""
    ref, model_cfg = data2vec_reference(DATA2VEC_VARIANTS["data2vec_depth3_even_kernel"], seed=4)
    converted = {
        "task_cfg": {"_name": "audio_pretraining", "normalize": False},
        "model_cfg": model_cfg,
        "model_weight": data2vec_weights(ref),
    }
    torch.save(converted, tmp_path / "data2vec_converted.pt")
    up = speechssl.load_upstream(tmp_path / "data2vec_converted.pt")
    report("data2vec_s3prl_converted", max_error(up, ref, batch="vs_batch"))
    export_upstream(tmp_path / "data2vec_converted.pt", "s3prl", tmp_path / "out.pt")
    expert = Data2VecExpert(str(tmp_path / "out.pt")).eval()
    report("data2vec_export_read_by_s3prl", max_error(up, expert.model, batch="vs_batch"))


def test_finetuned_data2vec_loads_its_encoder(tmp_path):
    """fairseq's wav2vec_ctc around a data2vec_audio model: the encoder under w2v_encoder.w2v_model."""
    ref, model_cfg = data2vec_reference(DATA2VEC_VARIANTS["data2vec_depth2_groupnorm_sameproj"])
    weights = {
        f"w2v_encoder.w2v_model.{k}": v for k, v in ref.state_dict().items() if not k.startswith("final_proj")
    }
    weights.update({"w2v_encoder.proj.weight": torch.randn(5, 32), "w2v_encoder.proj.bias": torch.randn(5)})
    ckpt = {
        "cfg": {
            "model": {"_name": "wav2vec_ctc", "w2v_args": {"model": model_cfg, "task": {"normalize": False}}},
            "task": {"_name": "audio_finetuning", "normalize": False},
        },
        "model": weights,
    }
    torch.save(ckpt, tmp_path / "ft.pt")
    up = speechssl.load_upstream(tmp_path / "ft.pt")
    assert up.config.family == "data2vec_audio"
    assert set(up.extras["finetuning"]) == {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias"}
    report("data2vec_finetuned_ctc", max_error(up, ref, batch="none"))


@pytest.mark.parametrize(
    "model_cfg, match",
    [
        (
            {"_name": "data2vec_multi"},
            r"unsupported fairseq model 'data2vec_multi' \(data2vec 2\.0 is a different",
        ),
        (
            {"_name": "data2vec_audio", "pos_conv_depth": 1},
            r"unsupported fairseq model 'data2vec_audio' with pos_conv_depth 1 \(data2vec_audio has a stack",
        ),
        (
            {"_name": "hubert", "pos_conv_depth": 3},
            r"unsupported fairseq model 'hubert' with pos_conv_depth 3 ",
        ),
    ],
)
def test_unsupported_data2vec_variants_are_named(tmp_path, model_cfg, match):
    torch.save({"cfg": {"model": model_cfg, "task": {}}, "model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x\.pt: " + match):
        load_fairseq(tmp_path / "x.pt")


# --------------------------------------------------------------------------- export


def our_model_file(tmp_path, family: str):
    """A perturbed model of ours of `family` saved as its original file (no extras: the
    writer must produce a complete file on its own); returns (path, config, state)."""
    if family == "wavlm":
        config, _, _ = _config_of(tmp_path, {"cfg": WAVLM_VARIANTS["wavlm_postln_groupnorm"]}, load_wavlm)
    elif family == "unispeech_sat":
        config, _, _ = _config_of(tmp_path, {"cfg": SAT_VARIANTS["sat_preln_layernorm"]}, load_wavlm)
    else:
        _, model_cfg = data2vec_reference(DATA2VEC_VARIANTS["data2vec_depth3_even_kernel"])
        config, _, _ = _config_of(tmp_path, {"cfg": {"model": model_cfg, "task": {}}}, load_fairseq)
    model = perturb_(build_model(config), seed=7).eval()
    state = model.state_dict()
    writer = to_s3prl if family != "data2vec_audio" else to_fairseq
    path = tmp_path / f"ours_{family}.pt"
    torch.save(writer(config, state), path)
    return path, config, state


def _config_of(tmp_path, envelope: dict, reader):
    """The ModelConfig a reader derives from a cfg (weights from a reference model of that cfg)."""
    if reader is load_wavlm:
        ref = wavlm_reference(envelope["cfg"])
        envelope = {**envelope, "model": ref.state_dict()}
    else:
        ref, _ = data2vec_reference(DATA2VEC_VARIANTS["data2vec_depth3_even_kernel"])
        envelope = {**envelope, "model": ref.state_dict()}
    torch.save(envelope, tmp_path / "cfg_only.pt")
    return reader(tmp_path / "cfg_only.pt")


def _same_state(up, state: dict) -> bool:
    ours = up.model.state_dict()
    return set(ours) == set(state) and all(torch.equal(ours[k], v) for k, v in state.items())


@pytest.mark.parametrize("family", ["wavlm", "unispeech_sat", "data2vec_audio"])
def test_round_trip_through_every_original_format(tmp_path, family):
    """ours -> original file -> load_upstream -> export in each format that exists -> load_upstream:
    the same weights each time."""
    path, config, state = our_model_file(tmp_path, family)
    up = speechssl.load_upstream(path)
    assert up.config == config and _same_state(up, state)
    for fmt in ("fairseq", "s3prl"):
        if fmt not in formats_for(family):
            continue
        out = export_upstream(path, fmt, tmp_path / f"{fmt}.pt")
        again = speechssl.load_upstream(out)
        assert again.config == config, fmt
        assert _same_state(again, state), fmt


@pytest.mark.parametrize(
    "family, expert_class", [("wavlm", WavLMExpert), ("unispeech_sat", UniSpeechSatExpert)]
)
def test_s3prl_export_is_read_by_s3prl(tmp_path, family, expert_class):
    """`export --format s3prl` of WavLM / UniSpeech-SAT is unilm's file: s3prl's own expert loads it
    strictly and gives our hidden states."""
    path, _, _ = our_model_file(tmp_path, family)
    out = export_upstream(path, "s3prl", tmp_path / "s3prl.pt")
    expert = expert_class(str(out)).eval()
    up = speechssl.load_upstream(out)
    report(f"{family}_export_read_by_s3prl", max_error(up, expert.model, batch="none"))


def test_wavlm_fairseq_export_is_refused_naming_what_works(tmp_path):
    path, _, _ = our_model_file(tmp_path, "wavlm")
    with pytest.raises(
        ValueError,
        match=r"format 'fairseq' does not exist for wavlm models \(unilm's WavLM is not a fairseq model;"
        r" --format s3prl writes its original \{cfg, model\} file\); formats that work for wavlm:"
        r" hf, s3prl, onnx, torchscript$",
    ):
        export_upstream(path, "fairseq", tmp_path / "wavlm_fairseq.pt")
    assert not (tmp_path / "wavlm_fairseq.pt").exists()
    up = speechssl.load_upstream(path)
    with pytest.raises(ValueError, match=r"^wavlm has no fairseq checkpoint format \(unilm's WavLM is not"):
        to_fairseq(up.config, up.model.state_dict())


# --------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda sd: sd.pop("encoder.layers.0.self_attn.relative_attention_bias.weight"),
            r"WavLM\.pt: missing keys: encoder\.layers\.0\.self_attn\.relative_attention_bias\.weight$",
        ),
        (
            lambda sd: sd.update(
                {"encoder.layers.1.self_attn.relative_attention_bias.weight": torch.zeros(12, 3)}
            ),
            r"WavLM\.pt: unexpected keys for this wavlm config: "
            r"encoder\.layers\.1\.self_attn\.relative_attention_bias\.weight$",
        ),
        (
            lambda sd: sd.pop("encoder.layers.2.self_attn.grep_a"),
            r"WavLM\.pt: missing keys: encoder\.layers\.2\.self_attn\.grep_a$",
        ),
    ],
)
def test_malformed_wavlm_file_names_file_and_keys(tmp_path, edit, match):
    ref = wavlm_reference(WAVLM_VARIANTS["wavlm_postln_groupnorm"])
    state = dict(ref.state_dict())
    edit(state)
    torch.save({"cfg": WAVLM_VARIANTS["wavlm_postln_groupnorm"], "model": state}, tmp_path / "WavLM.pt")
    with pytest.raises(CheckpointKeyError, match=match):
        speechssl.load_upstream(tmp_path / "WavLM.pt")


def test_malformed_data2vec_file_names_file_and_keys(tmp_path):
    ref, model_cfg = data2vec_reference(DATA2VEC_VARIANTS["data2vec_depth3_even_kernel"])
    state = data2vec_weights(ref)
    state.pop("encoder.pos_conv.2.0.bias")
    state["encoder.pos_conv.3.0.weight"] = torch.zeros(1)
    torch.save({"task_cfg": {}, "model_cfg": model_cfg, "model_weight": state}, tmp_path / "d2v.pt")
    with pytest.raises(
        CheckpointKeyError,
        match=r"d2v\.pt: unexpected keys for this data2vec_audio config: encoder\.pos_conv\.3\.0\.weight$",
    ):
        load_s3prl(tmp_path / "d2v.pt")
    state.pop("encoder.pos_conv.3.0.weight")
    torch.save({"task_cfg": {}, "model_cfg": model_cfg, "model_weight": state}, tmp_path / "d2v.pt")
    with pytest.raises(CheckpointKeyError, match=r"d2v\.pt: missing keys: encoder\.pos_conv\.2\.0\.bias$"):
        speechssl.load_upstream(tmp_path / "d2v.pt")


def test_data2vec_kernel_fairseq_cannot_express_is_refused(tmp_path):
    """fairseq builds kernel max(3, conv_pos // depth): a kernel-2 stack has no fairseq cfg."""
    path, config, state = our_model_file(tmp_path, "data2vec_audio")
    small = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, pos_conv_kernel=2))
    small_state = build_model(small).state_dict()
    for writer in (to_fairseq, to_s3prl):
        with pytest.raises(
            ValueError, match=r"kernels of at least 3 \(max\(3, conv_pos // depth\)\); this model's is 2$"
        ):
            writer(small, small_state)


def test_data2vec_stack_of_depth_one_is_refused_at_export(tmp_path):
    """fairseq reads pos_conv_depth 1 as one weight-normed conv: a one-conv data2vec stack has no
    fairseq (or s3prl) file that anything could load, so the writers refuse it instead of writing one."""
    path, config, state = our_model_file(tmp_path, "data2vec_audio")
    shallow = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, pos_conv_depth=1))
    shallow_state = build_model(shallow).state_dict()
    for writer in (to_fairseq, to_s3prl):
        with pytest.raises(ValueError, match=r"stack of depth 1 has no fairseq form \(formats that carry it"):
            writer(shallow, shallow_state)


@pytest.mark.parametrize("value", ["7", 7.9, True])
def test_integer_cfg_fields_are_typed(tmp_path, value):
    """A cfg integer of another type is an error naming the key, never truncated (7.9 -> 7)."""
    ref = wavlm_reference(WAVLM_VARIANTS["wavlm_postln_groupnorm"])
    cfg = {**WAVLM_VARIANTS["wavlm_postln_groupnorm"], "num_buckets": value}
    torch.save({"cfg": cfg, "model": dict(ref.state_dict())}, tmp_path / "WavLM.pt")
    with pytest.raises(ValueError, match=rf"WavLM\.pt: num_buckets must be an integer, found {value!r}$"):
        speechssl.load_upstream(tmp_path / "WavLM.pt")
