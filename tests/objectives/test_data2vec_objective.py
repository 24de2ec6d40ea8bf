"""data2vec pretraining against fairseq's Data2VecAudioModel (s3prl's fairseq-free copy in
s3prl/upstream/data2vec/data2vec_model.py, which keeps the training path: EMAModule, the teacher's
layer_results targets and the regression loss).

The reference is built tiny with odd shapes and every parameter perturbed, saved in fairseq's
layout and read with our fairseq loader, so both hold the same weights under their own names.
"Updates" are further perturbations of the student (the same on both sides, through the file);
after each one both take their EMA step. Then the loss and variances on the same mask, and
the teacher weights, must agree.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("s3prl")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from s3prl.upstream.data2vec import data2vec_model  # noqa: E402
    from s3prl.upstream.data2vec.data2vec_model import Data2VecAudioConfig, Data2VecAudioModel  # noqa: E402

from speechssl.interop.fairseq_io import load_fairseq  # noqa: E402
from speechssl.models.model import build_model  # noqa: E402
from speechssl.objectives import (  # noqa: E402
    Data2VecObjectiveConfig,
    Data2VecPretrainModel,
    MaskConfig,
    PretrainModelConfig,
    build_pretrain_model,
    get_pretrain_preset,
)
from speechssl.objectives.data2vec import ema_decay_at, instance_norm_valid  # noqa: E402
from speechssl.testing.models import perturb_, random_waves  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*weight_norm.*:FutureWarning", "ignore:.*weights_only.*:FutureWarning"
)
_CONV = "[(28,10,5)] + [(28,3,2)] * 4 + [(28,2,2)] * 2"
_NO_DROPOUT = dict(
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0
)
VARIANTS = {
    # fairseq Base's target recipe (instance norm per layer, L2, layers only), annealing inside N
    "l2_instance_norm_postln": dict(
        model=dict(
            encoder_layers=3,
            encoder_embed_dim=36,
            encoder_ffn_embed_dim=44,
            encoder_attention_heads=3,
            conv_pos=9,
            pos_conv_depth=2,
            conv_pos_groups=3,
            layer_norm_first=False,
        ),  # fmt: skip
        objective=dict(
            average_top_k_layers=2,
            instance_norm_target_layer=True,
            loss_beta=0.0,
            ema_decay=0.9,
            ema_end_decay=0.99,
            ema_anneal_end_step=3,
            ema_layers_only=True,
        ),  # fmt: skip
    ),
    # smooth L1, explicit scale, every norm, the positional conv averaged too, pre-LN. (fairseq's
    # instance_norm_targets without instance_norm_target_layer normalises over the batch axis,
    # its targets being (T, B, C) there; we normalise over time, so that case is not compared.)
    "smooth_l1_layer_norms_preln": dict(
        model=dict(
            encoder_layers=3,
            encoder_embed_dim=30,
            encoder_ffn_embed_dim=34,
            encoder_attention_heads=5,
            conv_pos=8,
            pos_conv_depth=2,
            conv_pos_groups=2,
            layer_norm_first=True,
        ),  # fmt: skip
        objective=dict(
            average_top_k_layers=3,
            instance_norm_target_layer=True,
            layer_norm_target_layer=True,
            layer_norm_targets=True,
            instance_norm_targets=True,
            loss_beta=0.25,
            loss_scale=0.7,
            ema_decay=0.8,
            ema_end_decay=0.95,
            ema_anneal_end_step=10,
            ema_layers_only=False,
        ),  # fmt: skip
    ),
}
NUM_UPDATES = 4


@dataclasses.dataclass
class _EMAModuleConfig:
    """s3prl's copy of fairseq's EMAModuleConfig lost its @dataclass (it takes no arguments)."""

    ema_decay: float = 0.9999
    ema_fp32: bool = False


@pytest.fixture(autouse=True)
def _ema_config(monkeypatch):
    monkeypatch.setattr(data2vec_model, "EMAModuleConfig", _EMAModuleConfig)


class _NumUpdates(nn.Module):
    """fairseq's BaseFairseqModel.set_num_updates, which the reference calls through super()."""

    def set_num_updates(self, num_updates: int) -> None:
        pass


class Reference(Data2VecAudioModel, _NumUpdates):
    pass


def reference_model(variant: dict, seed: int = 0) -> Reference:
    obj = variant["objective"]
    cfg = Data2VecAudioConfig(
        extractor_mode="layer_norm", conv_feature_layers=_CONV, conv_bias=True, **variant["model"],
        **_NO_DROPOUT, average_top_k_layers=obj["average_top_k_layers"],
        instance_norm_target_layer=obj["instance_norm_target_layer"],
        layer_norm_target_layer=obj.get("layer_norm_target_layer", False),
        layer_norm_targets=obj.get("layer_norm_targets", False),
        instance_norm_targets=obj.get("instance_norm_targets", False),
        loss_beta=obj["loss_beta"], loss_scale=obj.get("loss_scale"), ema_decay=obj["ema_decay"],
        ema_end_decay=obj["ema_end_decay"], ema_anneal_end_step=obj["ema_anneal_end_step"],
        ema_layers_only=obj["ema_layers_only"], ema_transformer_only=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Reference(cfg)
    return perturb_(model, seed=seed + 1).train()


def fairseq_file(ref: Reference, path, encoder_state: dict | None = None):
    """ref saved as fairseq does; `encoder_state` replaces its encoder weights (the teacher's)."""
    model_cfg = {"_name": "data2vec_audio", **dataclasses.asdict(ref.cfg)}
    model_cfg["latent_temp"] = list(model_cfg["latent_temp"])
    state = {k: v.clone() for k, v in nn.Module.state_dict(ref).items()}
    if encoder_state is not None:
        state.update({f"encoder.{k}": v.clone() for k, v in encoder_state.items()})
    ckpt = {"args": None, "cfg": {"model": model_cfg, "task": {"_name": "audio_pretraining"}}, "model": state}
    torch.save(ckpt, path)
    return path


def ours_state(ref: Reference, path, encoder_state: dict | None = None) -> dict:
    _, state, _ = load_fairseq(fairseq_file(ref, path, encoder_state))
    return state


def ours_from(ref: Reference, tmp_path, objective: Data2VecObjectiveConfig) -> Data2VecPretrainModel:
    config, state, _ = load_fairseq(fairseq_file(ref, tmp_path / "ref.pt"))
    student = build_model(config)
    student.load_state_dict(state)
    final_proj = nn.Linear(student.hidden_dim, student.hidden_dim)
    final_proj.load_state_dict(ref.final_proj.state_dict())
    return Data2VecPretrainModel(student, final_proj, MaskConfig(), objective).train()


@torch.no_grad()
def _update(ref: Reference, ours: Data2VecPretrainModel, step: int, tmp_path) -> None:
    """One simulated optimizer update of both students (the same weights), then both EMA steps."""
    gen = torch.Generator().manual_seed(100 + step)
    for p in ref.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=gen))
    ours.data2vec_audio.load_state_dict(ours_state(ref, tmp_path / "ref.pt"))
    ours.final_proj.load_state_dict(ref.final_proj.state_dict())
    ref.set_num_updates(step)
    ours.set_num_updates(step)


@pytest.mark.parametrize("name", VARIANTS)
def test_loss_variances_and_ema_match_fairseq(tmp_path, name):
    variant = VARIANTS[name]
    objective = Data2VecObjectiveConfig(**variant["objective"])
    ref = reference_model(variant)
    ours = ours_from(ref, tmp_path, objective)
    ref.set_num_updates(0)  # fairseq makes the teacher on the first call
    for step in range(1, NUM_UPDATES + 1):
        _update(ref, ours, step, tmp_path)
        assert ref.ema.get_decay() == pytest.approx(ema_decay_at(objective, step), abs=1e-12)

    # the teachers: fairseq's EMA encoder, read through our loader, against ours
    teacher = ours_state(ref, tmp_path / "teacher.pt", ref.ema.model.state_dict())
    theirs = {k[len("encoder.") :]: v for k, v in teacher.items() if k.startswith("encoder.")}
    mine = ours.ema.encoder.state_dict()
    assert theirs.keys() == mine.keys()
    ema_err = max((theirs[k] - mine[k]).abs().max().item() for k in mine)
    moved = max((mine[k] - ours.data2vec_audio.encoder.state_dict()[k]).abs().max().item() for k in mine)
    print(f"{name}: EMA max abs error {ema_err:.2e} (teacher - student up to {moved:.2e})")
    assert ema_err <= 1e-7 and moved > 1e-2  # the teacher lags the student: the EMA did something

    # the loss on the same (unpadded) batch and mask
    wavs, _ = random_waves([5431, 5431], seed=3)
    T = ours.data2vec_audio.num_frames(wavs.shape[1])
    mask = torch.zeros(2, T, dtype=torch.bool)
    mask[0, 2:9] = True
    mask[1, [0, 1, 5, 6, 7, 12]] = True
    with torch.no_grad():
        result = ref(wavs, None, mask=True, mask_indices=mask)
        loss, metrics = ours(wavs, None, mask_time_indices=mask)
    expected = result["losses"]["regression"] / result["sample_size"]
    rel = abs(loss.item() - expected.item()) / abs(expected.item())
    print(f"{name}: loss {loss.item():.6f} vs {expected.item():.6f}, relative error {rel:.1e}")
    assert rel <= 1e-6
    assert int(metrics["sample_size"]) == result["sample_size"] == int(mask.sum())
    for key in ("target_var", "pred_var"):
        assert metrics[key].item() == pytest.approx(result[key].item(), rel=1e-6), key


def test_ema_decay_anneals_linearly_and_the_step_is_idempotent():
    cfg = Data2VecObjectiveConfig(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10)
    assert [round(ema_decay_at(cfg, n), 6) for n in (0, 5, 10, 50)] == [0.9, 0.945, 0.99, 0.99]
    model = build_pretrain_model(get_pretrain_preset("data2vec_tiny")).train()
    teacher = model.ema.encoder
    with torch.no_grad():
        for p in model.data2vec_audio.encoder.parameters():
            p.add_(1.0)
    model.set_num_updates(1)
    after_one = {k: v.clone() for k, v in teacher.state_dict().items()}
    model.set_num_updates(1)  # the trainer calls it again after loading a checkpoint at step 1
    assert all(torch.equal(after_one[k], v) for k, v in teacher.state_dict().items())
    assert int(model.ema.num_updates) == 1
    model.eval().set_num_updates(2)  # no EMA step outside training, as fairseq
    assert int(model.ema.num_updates) == 1
    # the teacher is in the state dict, without gradients (the optimizer leaves it out)
    assert any(k.startswith("ema.encoder.layers.0.") for k in model.state_dict())
    assert not any(p.requires_grad for p in teacher.parameters())
    fresh = build_pretrain_model(get_pretrain_preset("data2vec_tiny"))
    fresh.load_state_dict(model.state_dict())
    assert fresh.ema._num_updates == 1  # the host mirror follows the loaded buffer


def test_instance_norm_runs_over_valid_frames_only():
    """An utterance's normalised targets do not depend on the padding after it (fairseq's
    F.instance_norm counts padded frames too); without padding it is F.instance_norm."""
    x = torch.randn(2, 11, 5)
    valid = torch.arange(11)[None, :] < torch.tensor([[11], [7]])
    normed = instance_norm_valid(x, valid)
    alone = instance_norm_valid(x[1:, :7], None)
    assert torch.allclose(normed[1, :7], alone[0], atol=1e-6)
    assert normed[1, 7:].abs().max() == 0
    assert torch.allclose(normed[0], instance_norm_valid(x[:1], None)[0], atol=1e-6)
    ref = torch.nn.functional.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(instance_norm_valid(x, None), ref)


def test_collapse_warns_and_config_errors(caplog):
    cfg = Data2VecObjectiveConfig(var_check_every=1, min_target_var=10.0, average_top_k_layers=2)
    preset = get_pretrain_preset("data2vec_tiny")
    model = build_pretrain_model(dataclasses.replace(preset, data2vec=cfg)).train()
    model(torch.randn(2, 6400), None)
    with caplog.at_level(logging.WARNING, logger="speechssl.objectives.data2vec"):
        model.set_num_updates(1)
    assert "target variance" in caplog.text and "min_target_var 10" in caplog.text
    with pytest.raises(ValueError, match="average_top_k_layers \\(3\\) exceeds the encoder's 2 layers"):
        PretrainModelConfig(model=preset.model, data2vec=Data2VecObjectiveConfig(average_top_k_layers=3))
    with pytest.raises(ValueError, match="ema_end_decay must be in \\[0, 1\\], found 1.5"):
        Data2VecObjectiveConfig(ema_end_decay=1.5)
    with pytest.raises(
        ValueError, match="section 'hubert' does not apply to a model of family 'data2vec_audio'"
    ):
        PretrainModelConfig(model=preset.model, hubert=get_pretrain_preset("hubert_tiny").hubert)
    with pytest.raises(ValueError, match="takes no labels"):
        model(torch.randn(1, 4000), None, torch.zeros(1, 12))


def test_every_model_preset_with_an_objective_has_pretraining_defaults():
    from speechssl.models import PRESETS, get_preset
    from speechssl.objectives.pretraining import OBJECTIVE_SECTIONS

    for name in PRESETS:
        if get_preset(name).family in OBJECTIVE_SECTIONS:
            assert get_pretrain_preset(name).model == get_preset(name), name
        else:
            with pytest.raises(
                ValueError, match=f"'{name}' is of family 'unispeech_sat', which has no pretraining"
            ):
                get_pretrain_preset(name)
    base = get_pretrain_preset("data2vec_audio_base")
    assert (base.mask.mask_prob, base.mask.min_masks, base.data2vec.average_top_k_layers) == (0.65, 1, 8)
    assert (base.data2vec.ema_decay, base.data2vec.ema_end_decay, base.data2vec.ema_anneal_end_step) == (
        0.999, 0.9999, 30000,
    )  # fmt: skip
    assert get_pretrain_preset("wavlm_base").wavlm.mixing.mix_prob == 0.2
