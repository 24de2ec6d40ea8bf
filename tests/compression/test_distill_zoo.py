"""Distillation from the new families: a WavLM teacher gives a WavLM student (the shared relative
position table of the teacher's first layer, each copied layer's gate), a data2vec-audio teacher a
data2vec-audio student; `speechssl distill` runs a few steps and the result loads with load_upstream."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from speechssl import load_upstream
from speechssl.compression import Distiller, LossConfig, StudentConfig, build_student
from speechssl.data.dataset import Batch
from speechssl.models import build_model, save_checkpoint
from speechssl.models.presets import get_preset
from speechssl.testing.cli import run_cli
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.models import perturb_, random_waves

TEACHERS = ["wavlm_tiny", "wavlm_tiny_pre_ln", "data2vec_tiny"]


def _teacher(name: str, num_layers: int = 4):
    config = get_preset(name.removesuffix("_pre_ln"))
    encoder = dataclasses.replace(config.encoder, num_layers=num_layers)
    if name.endswith("_pre_ln"):  # WavLM Large's layout: pre-LN, normalised waveform
        encoder = dataclasses.replace(encoder, layer_norm_first=True)
        config = dataclasses.replace(config, normalize_waveform=True)
    config = dataclasses.replace(config, encoder=encoder)
    torch.manual_seed(0)
    return perturb_(build_model(config), seed=2).eval(), config


@pytest.mark.parametrize("name", TEACHERS)
def test_student_is_of_the_teachers_family_and_reproduces_its_lower_layers(name):
    teacher, config = _teacher(name)
    student, student_config = build_student(teacher, config, StudentConfig(num_layers=2))
    assert student_config.family == config.family
    assert student_config.encoder == dataclasses.replace(config.encoder, num_layers=2)
    wavs, lens = random_waves([6000, 4100, 5200])
    with torch.no_grad():
        t = teacher(wavs, lens).hidden_states
        s = student.eval()(wavs, lens).hidden_states
    for i in range(3):  # the first-layer input and the outputs of layers 1 and 2
        torch.testing.assert_close(s[i], t[i], atol=0, rtol=0)


def test_wavlm_student_from_upper_layers_keeps_the_shared_table():
    """Student layers copied from teacher layers 3 and 4: the relative position table lives in the
    teacher's layer 0 only, and the student's layer 0 must get it (layer 3 has none of its own)."""
    teacher, config = _teacher("wavlm_tiny")
    student, _ = build_student(teacher, config, StudentConfig(num_layers=2, init_layers=[3, 4]))
    table = "encoder.layers.0.attention.rel_attn_embed.weight"
    assert torch.equal(student.state_dict()[table], teacher.state_dict()[table])
    assert torch.equal(
        student.state_dict()["encoder.layers.0.attention.gru_rel_pos_const"],
        teacher.state_dict()["encoder.layers.2.attention.gru_rel_pos_const"],
    )
    wavs, lens = random_waves([5000, 3300])
    with torch.no_grad():
        out = student.eval()(wavs, lens)
        x, padding = out.hidden_states[0], out.padding_mask
        if not padding.any():
            padding = None
        encoder = teacher.encoder
        position = encoder.relative_position(encoder.layers[0].attention.rel_attn_embed, x.shape[1], x.dtype)
        expected = encoder.layers[3](encoder.layers[2](x, padding, position), padding, position)
    torch.testing.assert_close(out.hidden_states[2], expected, atol=1e-6, rtol=0)


def test_student_of_a_pruned_wavlm_keeps_its_heads_and_the_moved_table():
    """A pruned WavLM teacher (layer 0's attention removed, so the shared table lives in layer 1;
    uneven original heads kept): a student of its layers 1-2 reproduces them exactly."""
    config = get_preset("wavlm_tiny")
    encoder = dataclasses.replace(
        config.encoder, num_layers=3, layer_num_heads=[0, 2, 3], layer_head_index=[[], [1, 3], [0, 2, 4]]
    )
    config = dataclasses.replace(config, encoder=encoder)
    torch.manual_seed(0)
    teacher = perturb_(build_model(config), seed=3).eval()
    student, student_config = build_student(teacher, config, StudentConfig(num_layers=2))
    assert student_config.encoder.layer_head_index == [[], [1, 3]]
    wavs, lens = random_waves([6000, 4100])
    with torch.no_grad():
        t = teacher(wavs, lens).hidden_states
        s = student.eval()(wavs, lens).hidden_states
    for i in range(3):
        torch.testing.assert_close(s[i], t[i], atol=0, rtol=0)


@pytest.mark.parametrize("name", TEACHERS)
def test_distiller_steps_lower_the_loss(name):
    teacher, config = _teacher(name)
    student, _ = build_student(teacher, config, StudentConfig(num_layers=1))
    distiller = Distiller(
        student, teacher, teacher_layers=[2, 4], student_layers=[1, 1], heads=True, loss=LossConfig(),
        normalize_waveform=config.normalize_waveform,
    ).train()  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=3e-3)
    wavs, lens = random_waves([4100, 3200])
    batch = Batch(utt_ids=["a", "b"], wavs=wavs, wav_lens=lens)
    losses = []
    for _ in range(6):
        loss, _ = distiller(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    if config.family == "wavlm":  # the student's table and gates learn
        assert student.encoder.layers[0].attention.rel_attn_embed.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


TRAIN = """data: {max_batch_seconds: 4.0, max_seconds: 1.0, num_buckets: 2}
trainer: {max_steps: 100, lr: 0.002, save_every: 100, log_every: 1}
"""


@pytest.mark.parametrize("name", ["wavlm_tiny", "data2vec_tiny"])
def test_cli_distill_from_a_new_family_teacher_loads_with_load_upstream(tmp_path, name):
    teacher, config = _teacher(name, num_layers=2)
    save_checkpoint(teacher, config, tmp_path / "teacher")
    data = make_data_dir(tmp_path, num_speakers=2, utts_per_speaker=2)
    (tmp_path / "distill.yaml").write_text("student: {num_layers: 1}\ntarget_layers: [1, 2]\n" + TRAIN)
    status = run_cli(
        "distill", "--teacher", tmp_path / "teacher", "--train", data.path, "--max-steps", 3,
        "--config", tmp_path / "distill.yaml", "--out", tmp_path / "d",
    )  # fmt: skip
    assert status == 0
    distilled = load_upstream(tmp_path / "d" / "final")
    assert distilled.num_layers == 1 and distilled.config.family == config.family
    assert distilled.config.encoder == dataclasses.replace(config.encoder, num_layers=1)
    state = distilled.model.state_dict()
    if name == "wavlm_tiny":
        table = state["encoder.layers.0.attention.rel_attn_embed.weight"]
        assert table.shape == teacher.encoder.layers[0].attention.rel_attn_embed.weight.shape
    assert not any(k.startswith(("teacher.", "heads.")) for k in state)
    wavs, lens = random_waves([5000, 3000])
    with torch.no_grad():
        out = distilled.eval()(wavs, lens)
    assert len(out.hidden_states) == 2 and out.lengths.tolist() == [15, 9]
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
