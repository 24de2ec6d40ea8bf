"""--init-from: a fresh pretraining run starts from a released model's backbone and heads.

The step-0 numbers are those of the reference implementations on the same weights:
transformers' Wav2Vec2ForPreTraining loss from its own saved dir, and torchaudio's
HuBERTPretrainModel logits from a fairseq-style HuBERT `.pt` (fairseq's names, label
dictionaries with fairseq's 4 special symbols and units out of order)."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.models.wav2vec2.components as ta_components
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.config import ConvFrontendConfig, EncoderConfig, ModelConfig
from speechssl.models.quantizer import QuantizerConfig
from speechssl.objectives.hubert import HubertObjectiveConfig
from speechssl.objectives.masking import MaskConfig, compute_mask_indices
from speechssl.objectives.pretraining import PretrainModelConfig, build_pretrain_model
from speechssl.objectives.wav2vec2 import Wav2Vec2ObjectiveConfig
from speechssl.testing.models import perturb_, tiny_config
from speechssl.testing.references import torchaudio_hubert_pretrain, transformers_pretrain
from speechssl.training.init_from import InitFromError, init_pretrain_model

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

# fairseq's label dictionary of a 5-unit k-means: 4 specials, then dict.km.txt's order (by count)
SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>", "3", "0", "4", "1", "2"]
NUM_UNITS = 5
CONV = [(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (48, 2, 2), (48, 2, 2)]


# --------------------------------------------------------------------------- transformers
def _w2v_config() -> PretrainModelConfig:
    objective = Wav2Vec2ObjectiveConfig(
        quantizer=QuantizerConfig(num_groups=2, num_vars=8, codevector_dim=16), final_dim=12,
        num_negatives=6, dropout_features=0.0, diversity_perplexity="code", feature_penalty_weight=0.0,
    )  # fmt: skip
    return PretrainModelConfig(model=tiny_config(family="wav2vec2"), mask=MaskConfig(mask_prob=0.65),
                               wav2vec2=objective)  # fmt: skip


def test_transformers_pretraining_dir_gives_transformers_step0_loss(tmp_path):
    config = _w2v_config()
    torch.manual_seed(1)
    hf = perturb_(transformers_pretrain(config), seed=1).eval()
    hf.save_pretrained(tmp_path / "hf")
    torch.manual_seed(2)
    ours = build_pretrain_model(config)  # other initial weights: everything must come from the dir
    report = init_pretrain_model(ours, tmp_path / "hf")
    assert sorted(report.loaded) == ["backbone", "project_hid", "project_q", "quantizer"]
    assert report.fresh == {} and report.unused == []
    ours.eval()

    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([8000, 6430, 5001])
    wavs = torch.randn(3, 8000, generator=g) * (torch.arange(8000)[None] < lengths[:, None])
    frames = ours.wav2vec2.num_frames(lengths)
    T = int(frames.max())
    np.random.seed(0)
    attn = (torch.arange(T)[None] < frames[:, None]).long()
    mask_np = _compute_mask_indices((3, T), mask_prob=0.5, mask_length=3, attention_mask=attn, min_masks=2)
    negatives = torch.from_numpy(_sample_negative_indices((3, T), 6, mask_time_indices=mask_np)).long()
    mask = torch.from_numpy(mask_np)
    with torch.no_grad():
        ref = hf(wavs, attention_mask=(torch.arange(8000)[None] < lengths[:, None]).long(),
                 mask_time_indices=mask, sampled_negative_indices=negatives)  # fmt: skip
        loss, metrics = ours(wavs, lengths, mask_time_indices=mask, negative_indices=negatives)
    n = metrics["sample_size"].float()
    rel = ((loss * n - ref.loss).abs() / ref.loss.abs()).item()  # transformers sums over masked frames
    assert rel < 1e-5, rel
    assert torch.allclose(metrics["contrastive_loss"] * n, ref.contrastive_loss, rtol=1e-5)


# --------------------------------------------------------------------------- fairseq HuBERT
class _Dictionary:
    def __init__(self, symbols):
        self.symbols = list(symbols)
        self.count = [1] * len(symbols)
        self.indices = {s: i for i, s in enumerate(symbols)}


def _save_fairseq(path: Path, model: torch.nn.Module, model_cfg: dict, symbols: list[str] | None) -> Path:
    """A fairseq checkpoint: cfg dicts, the model's fairseq-named weights, HuBERT's label dictionaries
    pickled under fairseq's class name (fairseq is not installed: a stand-in module while saving)."""
    ckpt = {"cfg": {"model": model_cfg, "task": {"_name": "hubert_pretraining", "normalize": False}},
            "model": model.state_dict()}  # fmt: skip
    fake = {name: types.ModuleType(name) for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary")}
    cls = type("Dictionary", (_Dictionary,), {"__module__": "fairseq.data.dictionary"})
    fake["fairseq.data.dictionary"].Dictionary = cls
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        if symbols is not None:
            ckpt["task_state"] = {"dictionaries": [cls(symbols)]}
        torch.save(ckpt, path)
    finally:
        for k, v in saved.items():
            if v is None:
                del sys.modules[k]
            else:
                sys.modules[k] = v
    return path


def _fairseq_hubert(tmp_path: Path) -> tuple[Path, dict]:
    """s3prl's copy of fairseq's HubertModel (fairseq names), perturbed, saved as a fairseq .pt."""
    s3prl_hubert = pytest.importorskip("s3prl.upstream.hubert.hubert_model")
    layers = " + ".join(f"[({c},{k},{s})]" for c, k, s in CONV)
    cfg = s3prl_hubert.HubertConfig(
        label_rate=50.0, extractor_mode="default", conv_feature_layers=layers, conv_bias=False,
        encoder_layers=2, encoder_embed_dim=40, encoder_ffn_embed_dim=72, encoder_attention_heads=4,
        conv_pos=16, conv_pos_groups=4, final_dim=12, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, dropout_features=0.0,
    )  # fmt: skip
    torch.manual_seed(3)
    model = s3prl_hubert.HubertModel(cfg, s3prl_hubert.HubertPretrainingConfig(), [SYMBOLS])
    perturb_(model, seed=3)
    import dataclasses

    model_cfg = {"_name": "hubert", **dataclasses.asdict(cfg)}
    model_cfg["latent_temp"] = list(model_cfg["latent_temp"])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return _save_fairseq(tmp_path / "hubert.pt", model, model_cfg, SYMBOLS), state


def _hubert_config(num_classes: int = NUM_UNITS, num_layers: int = 2) -> PretrainModelConfig:
    model = ModelConfig(
        family="hubert",
        frontend=ConvFrontendConfig(conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV],
                                    conv_stride=[s for _, _, s in CONV],
                                    feature_grad_mult=0.1),  # torchaudio's range; gradients only  # fmt: skip
        encoder=EncoderConfig(
            embed_dim=40, num_layers=num_layers, num_heads=4, ffn_dim=72, pos_conv_kernel=16,
            pos_conv_groups=4, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feature_proj_dropout=0.0, layerdrop=0.0,
        ),
    )  # fmt: skip
    objective = HubertObjectiveConfig(num_classes=[num_classes], final_dim=12, pred_nomask_weight=1.0)
    return PretrainModelConfig(model=model, mask=MaskConfig(mask_prob=0.8), hubert=objective)


def _torchaudio_from_fairseq(config: PretrainModelConfig, fairseq_state: dict) -> torch.nn.Module:
    """torchaudio's HuBERTPretrainModel loaded straight from the fairseq weights (torchaudio's own key
    map for the encoder; label rows picked by symbol), not through our importer."""
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    ref = torchaudio_hubert_pretrain(config).eval()
    state = {}
    for key, value in _convert_state_dict(fairseq_state).items():
        if key == "label_embs_concat":
            continue
        key = key.replace("conv.weight_g", "conv.parametrizations.weight.original0")
        key = key.replace("conv.weight_v", "conv.parametrizations.weight.original1")
        state[f"wav2vec2.{key}"] = value
    state["mask_generator.mask_embedding"] = fairseq_state["mask_emb"]
    state["logit_generator.final_proj.weight"] = fairseq_state["final_proj.weight"]
    state["logit_generator.final_proj.bias"] = fairseq_state["final_proj.bias"]
    rows = [SYMBOLS.index(str(u)) for u in range(NUM_UNITS)]
    state["logit_generator.label_embeddings"] = fairseq_state["label_embs_concat"][rows]
    ref.load_state_dict(state)
    return ref


def test_fairseq_hubert_pt_gives_torchaudio_step0_logits(tmp_path, monkeypatch):
    path, fairseq_state = _fairseq_hubert(tmp_path)
    config = _hubert_config()
    torch.manual_seed(4)
    ours = build_pretrain_model(config)
    report = init_pretrain_model(ours, path)
    assert report.loaded == ["backbone", "head"] and report.fresh == {}
    ours.eval()
    ref = _torchaudio_from_fairseq(config, fairseq_state)

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([8000, 6001, 4533])
    wavs = torch.randn(3, 8000, generator=g)
    frames = ours.hubert.num_frames(lengths)
    T = int(frames.max())
    mask = compute_mask_indices(frames, T, mask_prob=0.8, mask_length=5, min_masks=2, generator=g)
    labels = torch.randint(0, NUM_UNITS, (3, T), generator=g)
    monkeypatch.setattr(ta_components, "_compute_mask_indices", lambda *a, **k: mask.clone())
    with torch.no_grad():
        ref_m, ref_u, _ = ref(wavs, labels, lengths)
        p = ours.predict(wavs, lengths, labels, mask_time_indices=mask)
    # torchaudio: (M, 1 + classes), the positive first and the label's own column -inf
    for (logits, lab), theirs in ((p.selected("masked"), ref_m), (p.selected("unmasked"), ref_u)):
        rebuilt = torch.cat(
            [logits.gather(1, lab[:, None]), logits.scatter(1, lab[:, None], float("-inf"))], 1
        )
        finite = torch.isfinite(theirs)
        assert rebuilt.shape == theirs.shape and torch.equal(finite, torch.isfinite(rebuilt))
        err = (rebuilt[finite] - theirs[finite]).abs().max().item()
        assert err < 1e-4, err


def test_head_with_other_class_count_starts_fresh_and_says_so(tmp_path, caplog):
    path, fairseq_state = _fairseq_hubert(tmp_path)
    torch.manual_seed(4)
    ours = build_pretrain_model(_hubert_config(num_classes=7))
    fresh_head = {k: v.clone() for k, v in ours.head.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="speechssl.training.init_from"):
        report = init_pretrain_model(ours, path)
    assert report.loaded == ["backbone"]
    why = "label set 0 of the source has 5 units (9 rows with fairseq's 4 special symbols), the units have 7"
    assert why in report.fresh["head"]
    assert f"head starts fresh: {why}" in caplog.text
    assert all(torch.equal(v, fresh_head[k]) for k, v in ours.head.state_dict().items())
    assert torch.equal(ours.hubert.masked_spec_embed, fairseq_state["mask_emb"])


def test_backbone_mismatch_is_one_line(tmp_path):
    path, _ = _fairseq_hubert(tmp_path)
    ours = build_pretrain_model(_hubert_config(num_layers=3))
    with pytest.raises(InitFromError, match=r"model.encoder.num_layers is 2 there, 3 in the config") as err:
        init_pretrain_model(ours, path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_speechssl_pretraining_checkpoint_with_heads(tmp_path):
    config = PretrainModelConfig(
        model=tiny_config(), hubert=HubertObjectiveConfig(num_classes=[6], final_dim=8)
    )
    torch.manual_seed(5)
    source = perturb_(build_pretrain_model(config), seed=5)
    save_checkpoint(source.state_dict(), config.model, tmp_path / "exp" / "checkpoints" / "last")
    torch.manual_seed(6)
    ours = build_pretrain_model(config)
    report = init_pretrain_model(ours, tmp_path / "exp" / "checkpoints" / "last")
    assert report.loaded == ["backbone", "head"]
    theirs = source.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    # a plain backbone checkpoint (no heads): the head starts fresh, named
    save_checkpoint(source.hubert.state_dict(), config.model, tmp_path / "plain")
    report = init_pretrain_model(build_pretrain_model(config), tmp_path / "plain")
    assert report.fresh == {"head": "the source has no such weights"}
    # a linear head from a cosine one: other weights, other shapes -> fresh, with the shape
    linear = PretrainModelConfig(
        model=tiny_config(), hubert=HubertObjectiveConfig(num_classes=[6], head="linear")
    )
    report = init_pretrain_model(build_pretrain_model(linear), tmp_path / "exp" / "checkpoints" / "last")
    assert "head.final_proj.weight has shape (8, 32) there, (6, 32) here" in report.fresh["head"]


def test_fairseq_wav2vec2_heads_map_to_ours(tmp_path):
    s3prl_w2v = pytest.importorskip("s3prl.upstream.wav2vec2.wav2vec2_model")
    import dataclasses

    layers = " + ".join(f"[({c},{k},{s})]" for c, k, s in CONV)
    cfg = s3prl_w2v.Wav2Vec2Config(
        extractor_mode="default", conv_feature_layers=layers, conv_bias=False, encoder_layers=2,
        encoder_embed_dim=40, encoder_ffn_embed_dim=72, encoder_attention_heads=4, conv_pos=16,
        conv_pos_groups=4, quantize_targets=True, latent_vars=5, latent_groups=2, final_dim=12,
    )  # fmt: skip
    torch.manual_seed(7)
    model = perturb_(s3prl_w2v.Wav2Vec2Model(cfg), seed=7)
    model_cfg = {"_name": "wav2vec2", **dataclasses.asdict(cfg)}
    model_cfg["latent_temp"] = list(model_cfg["latent_temp"])
    path = _save_fairseq(tmp_path / "w2v.pt", model, model_cfg, None)
    hubert = _hubert_config()
    objective = Wav2Vec2ObjectiveConfig(
        quantizer=QuantizerConfig(num_groups=2, num_vars=5, codevector_dim=12), final_dim=12
    )
    ours = build_pretrain_model(PretrainModelConfig(
        model=ModelConfig(family="wav2vec2", frontend=hubert.model.frontend, encoder=hubert.model.encoder),
        wav2vec2=objective,
    ))  # fmt: skip
    report = init_pretrain_model(ours, path)
    assert sorted(report.loaded) == ["backbone", "project_hid", "project_q", "quantizer"]
    theirs = model.state_dict()
    assert torch.equal(ours.quantizer.codevectors, theirs["quantizer.vars"])
    assert torch.equal(ours.project_hid.weight, theirs["final_proj.weight"])
    assert torch.equal(ours.project_q.bias, theirs["project_q.bias"])


def test_wavlm_and_data2vec_models(tmp_path):
    from speechssl.objectives.pretraining import get_pretrain_preset

    wavlm = get_pretrain_preset("wavlm_tiny", mask=MaskConfig(mask_prob=0.8))
    torch.manual_seed(8)
    source = perturb_(build_pretrain_model(wavlm), seed=8)
    save_checkpoint(source.state_dict(), wavlm.model, tmp_path / "wavlm")
    ours = build_pretrain_model(wavlm)
    assert init_pretrain_model(ours, tmp_path / "wavlm").loaded == ["backbone", "head"]
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in ours.state_dict().items())
    # a WavLM network is not a HuBERT one: the relative position bias is named
    with pytest.raises(InitFromError, match="model.encoder.relative_position_buckets is"):
        hubert = replace(
            wavlm.model, family="hubert", encoder=replace(wavlm.model.encoder, relative_position_buckets=0)
        )
        init_pretrain_model(build_pretrain_model(PretrainModelConfig(model=hubert)), tmp_path / "wavlm")

    data2vec = get_pretrain_preset("data2vec_tiny")
    student = perturb_(build_pretrain_model(data2vec), seed=9).data2vec_audio
    save_checkpoint(student.state_dict(), data2vec.model, tmp_path / "d2v")  # a backbone, no final_proj
    ours = build_pretrain_model(data2vec)
    report = init_pretrain_model(ours, tmp_path / "d2v")
    assert report.loaded == ["backbone"] and set(report.fresh) == {"final_proj", "ema"}
    teacher = ours.ema.encoder.state_dict()
    assert all(torch.equal(v.float(), teacher[k]) for k, v in student.encoder.state_dict().items())


# --------------------------------------------------------------------------- the CLI
def test_cli_pretrain_init_from(tmp_path, caplog, capsys):
    from speechssl.features.dump import FeatureReader, build_extractor, dump_features
    from speechssl.testing.cli import run_cli
    from speechssl.testing.datadirs import make_data_dir
    from speechssl.testing.training import TINY_PRETRAIN_ARGS
    from speechssl.units.kmeans import fit_kmeans, label

    conf = (
        Path(__file__).resolve().parents[2]
        / "egs"
        / "mini_synth"
        / "ssl1"
        / "conf"
        / "pretrain_hubert_tiny.yaml"
    )
    make_data_dir(tmp_path, num_speakers=2, utts_per_speaker=2, base_seconds=1.0, name="train")
    train = tmp_path / "train"
    dump_features(train, build_extractor("mfcc"), tmp_path / "feats", progress=False)
    km = fit_kmeans(FeatureReader(tmp_path / "feats"), 4, n_init=1)
    label(FeatureReader(tmp_path / "feats"), km, train / "units", progress=False)
    args = ["--config", conf, "--train", train, "--units", "units", "--max-steps", "1", *TINY_PRETRAIN_ARGS]
    assert run_cli("pretrain", *args, "--out", tmp_path / "exp1") == 0
    source = tmp_path / "exp1" / "checkpoints" / "last"
    with caplog.at_level(logging.INFO, logger="speechssl.training.init_from"):
        assert run_cli("pretrain", *args, "--out", tmp_path / "exp2", "--init-from", source) == 0
    assert f"--init-from {source}: loaded backbone, head" in caplog.text
    capsys.readouterr()
    code = run_cli("pretrain", *args, "--out", tmp_path / "exp3", "--init-from", source,
                   "--set", "model.encoder.num_layers=3")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "model.encoder.num_layers is 2 there, 3 in the config" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "exp3").exists()
