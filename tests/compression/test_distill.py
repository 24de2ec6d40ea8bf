"""DistilHuBERT distillation: teacher-initialised student, loss, frozen teacher, masking, CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch

from speechssl import load_upstream
from speechssl.cli.main import main
from speechssl.compression import (
    DistillConfig,
    Distiller,
    LossConfig,
    PruneConfig,
    StudentConfig,
    build_student,
    layer_loss,
)
from speechssl.config import ConfigError, from_dict
from speechssl.data.dataset import Batch
from speechssl.models import build_model, save_checkpoint
from speechssl.objectives.masking import MaskConfig
from speechssl.outputs import ExperimentLock
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.models import perturb_, random_waves, tiny_config


def _teacher(num_layers: int = 4):
    config = tiny_config(num_layers=num_layers)
    torch.manual_seed(0)
    return perturb_(build_model(config)).eval(), config


def test_student_reproduces_teacher_lower_layers_at_step_zero():
    teacher, config = _teacher()
    student, student_config = build_student(teacher, config, StudentConfig(num_layers=2))
    assert student_config.encoder.num_layers == 2
    wavs, lens = random_waves([6000, 4000, 5200])
    with torch.no_grad():
        t = teacher(wavs, lens).hidden_states
        s = student.eval()(wavs, lens).hidden_states
    for i in range(3):  # the first-layer input and the outputs of layers 1 and 2
        torch.testing.assert_close(s[i], t[i], atol=0, rtol=0)


def test_loss_decreases_and_teacher_is_frozen():
    teacher, config = _teacher()
    student, _ = build_student(teacher, config, StudentConfig(num_layers=1))
    distiller = Distiller(
        student, teacher, teacher_layers=[2, 4], student_layers=[1, 1], heads=True, loss=LossConfig()
    ).train()
    assert not distiller.teacher.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=3e-3)
    wavs, lens = random_waves([4000, 3200])
    batch = Batch(utt_ids=["a", "b"], wavs=wavs, wav_lens=lens)
    losses = []
    for _ in range(8):
        loss, metrics = distiller(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert {"l1_2", "cos_2", "l1_4", "cos_4"} == set(metrics)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    state = distiller.state_dict()
    assert not any(k.startswith("teacher.") for k in state) and "heads.0.weight" in state
    distiller.load_state_dict(state)


def test_layer_loss_ignores_padding_and_is_zero_for_equal_inputs():
    x = torch.randn(2, 5, 8)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    y = x.clone()
    y[1, 2:] += 100.0  # differences only in padded frames
    l1, cos = layer_loss(x, y, valid)
    assert l1.item() == 0.0
    torch.testing.assert_close(cos, -torch.nn.functional.logsigmoid(torch.tensor(1.0)))


def test_masking_distillation_masks_the_student_only():
    teacher, config = _teacher(num_layers=2)
    student, _ = build_student(teacher, config, StudentConfig(num_layers=2))
    mask = MaskConfig(mask_prob=0.5, mask_length=2, min_masks=1)
    distiller = Distiller(
        student, teacher, teacher_layers=[2], student_layers=[2], heads=False, loss=LossConfig(), mask=mask
    ).train()
    wavs, lens = random_waves([6000, 4000])
    with torch.no_grad():
        _, masked = distiller.distill_loss(wavs, lens)
        distiller.eval()  # no masking in evaluation: the student equals the teacher
        _, clean = distiller.distill_loss(wavs, lens)
    assert clean["l1_2"].item() < 1e-6 < masked["l1_2"].item()


def test_config_errors():
    with pytest.raises(ValueError, match="student.init_layers must list 2 teacher layers"):
        StudentConfig(num_layers=2, init_layers=[1])
    with pytest.raises(ConfigError, match="unknown key 'target_layer'"):
        from_dict(DistillConfig, {"target_layer": [1]}, source="conf/distill.yaml")
    for config_class, command in ((DistillConfig, "distill"), (PruneConfig, "prune")):  # it was ignored
        with pytest.raises(
            ConfigError, match=f"data.padding_free is for pretraining: {command} runs its student"
        ):
            from_dict(config_class, {"data": {"padding_free": True}}, source="conf/x.yaml")
        with pytest.raises(ConfigError, match=f"trainer.strategy fsdp is for pretraining: {command} trains"):
            from_dict(config_class, {"trainer": {"strategy": "fsdp"}}, source="conf/x.yaml")
    teacher, config = _teacher(num_layers=2)
    with pytest.raises(ValueError, match=r"student.init_layers \[3\] exceed the teacher's 2 layers"):
        build_student(teacher, config, StudentConfig(num_layers=1, init_layers=[3]))
    with pytest.raises(ValueError, match=r"target layers \[4, 8, 12\] exceed the teacher's 2 layers"):
        Distiller(
            teacher,
            teacher,
            teacher_layers=[4, 8, 12],
            student_layers=[1, 1, 1],
            heads=True,
            loss=LossConfig(),
        )


TRAIN = """data: {max_batch_seconds: 4.0, max_seconds: 1.0, num_buckets: 2}
trainer: {max_steps: 100, lr: 0.002, save_every: 100, log_every: 1}
"""


def _cli_setup(tmp_path, prune_yaml: str, max_steps: int) -> list[str]:
    """A 2-layer teacher, a data dir and distill.yaml / prune.yaml -> the arguments both commands share."""
    teacher, config = _teacher(num_layers=2)
    save_checkpoint(teacher, config, tmp_path / "teacher")
    data = make_data_dir(tmp_path, num_speakers=2, utts_per_speaker=2)
    (tmp_path / "distill.yaml").write_text("student: {num_layers: 1}\ntarget_layers: [1, 2]\n" + TRAIN)
    (tmp_path / "prune.yaml").write_text(prune_yaml + TRAIN)
    return ["--teacher", str(tmp_path / "teacher"), "--train", str(data.path), "--max-steps", str(max_steps)]


def test_cli_distill_and_prune_write_upstreams(tmp_path):
    common = _cli_setup(tmp_path, "target_sparsity: 0.5\nsparsity_warmup_steps: 2\n", max_steps=3)
    assert (
        main(["distill", *common, "--config", str(tmp_path / "distill.yaml"), "--out", str(tmp_path / "d")])
        == 0
    )
    distilled = load_upstream(tmp_path / "d" / "final")
    assert distilled.num_layers == 1
    assert (
        main(
            [
                "prune",
                *common,
                "--config",
                str(tmp_path / "prune.yaml"),
                "--out",
                str(tmp_path / "p"),
                "--final-distill-steps",
                "2",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "p" / "prune_summary.json").read_text())
    assert abs(summary["pruned_params"] - summary["target_params"]) / summary["target_params"] < 0.02
    pruned = load_upstream(tmp_path / "p" / "pruned")
    final = load_upstream(tmp_path / "p" / "final")
    assert sum(p.numel() for p in pruned.parameters()) == summary["pruned_params"]
    assert final.config == pruned.config
    wavs, lens = random_waves([5000, 3000])
    with torch.no_grad():
        out = final(wavs, lens)
    assert len(out.hidden_states) == 3 and out.lengths.tolist() == [15, 9]


def _snapshot(directory):
    return {
        str(p.relative_to(directory)): (p.read_bytes() if p.is_file() and not p.is_symlink() else str(p))
        for p in sorted(directory.rglob("*"))
    }


def test_distill_and_prune_guard_their_experiment_dirs(tmp_path, capsys):
    """Each command's --out is its own: another command's experiment, a locked dir, an empty --valid and a
    resume with another student are refused in one line before anything in EXP changes."""
    common = _cli_setup(tmp_path, "target_sparsity: 0.5\n", max_steps=2)
    distill_args = [
        "distill",
        *common,
        "--config",
        str(tmp_path / "distill.yaml"),
        "--out",
        str(tmp_path / "d"),
    ]
    assert main(distill_args) == 0
    before = _snapshot(tmp_path / "d")
    capsys.readouterr()

    assert (
        main(["prune", *common, "--config", str(tmp_path / "prune.yaml"), "--out", str(tmp_path / "d")]) == 1
    )
    assert "is an experiment dir of `speechssl distill`" in capsys.readouterr().err
    assert main([*distill_args, "--resume", "--set", "student.num_layers=2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot resume from" in err and "student.num_layers (checkpoint 1, now 2)" in err
    assert "\n" not in err
    with ExperimentLock(tmp_path / "d", "distill"):
        assert main([*distill_args, "--resume"]) == 1
    assert f"(pid {os.getpid()} on host" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "wav.scp").write_text("")
    assert main([*distill_args, "--resume", "--valid", str(empty)]) == 1
    assert f"validation data dir {empty} holds no utterances" in capsys.readouterr().err
    assert _snapshot(tmp_path / "d") == before
    # an edited config.yaml: a resume never reads it, and would have written over it
    edited = tmp_path / "d" / "config.yaml"
    edited.write_text(edited.read_text() + "# lr 0.01 next time\n")
    before = _snapshot(tmp_path / "d")
    assert main([*distill_args, "--resume"]) == 1
    assert f"{edited} is not a config that distill wrote" in capsys.readouterr().err
    assert _snapshot(tmp_path / "d") == before
