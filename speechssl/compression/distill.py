"""DistilHuBERT-style layer distillation (and Recycle-and-Distill masking distillation).

The student is the teacher's frontend, feature projection, positional conv and its
lower transformer layers (copied), with linear prediction heads that map the
student's last layer to chosen teacher layers (DistilHuBERT: 4, 8, 12 of 12).
The student is of the teacher's family: a WavLM teacher gives a WavLM student (its
gated relative position bias, the shared table of the teacher's first layer and each
copied layer's gate), a data2vec-audio teacher one with its layer-norm positional
stack. Copied layers were trained with those positions, and a HuBERT-style student
would drop them and start far from the teacher; it is also what DPHuBERT's WavLM
pruning (DPWavLM) and DistilWavLM-style students keep, and the result loads and
exports as the teacher's family. The
loss per head is L1 + cos_weight * (-log sigmoid(cos)) over valid frames. The
`Distiller` also serves structured pruning (speechssl.compression.prune): there the
student is the gated teacher and each student layer matches the same teacher layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.compression.config import DistillConfig, LossConfig, StudentConfig
from speechssl.config import load_config
from speechssl.data.dataset import Batch
from speechssl.interop.upstream import Upstream, load_upstream, normalize_waveform, require_network
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.config import ModelConfig
from speechssl.models.model import SSLModel, build_model
from speechssl.models.relative_position import TABLE_KEY
from speechssl.objectives.masking import MaskConfig, compute_mask_indices
from speechssl.training.distributed import env_rank
from speechssl.training.experiment import experiment
from speechssl.training.pretrain import build_data
from speechssl.training.trainer import TrainResult, train_on_loaders

logger = logging.getLogger(__name__)

# WavLM's bias table, under layer 0's attention but used by every layer (models.relative_position)


def layer_loss(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """pred, target: (B, T, D); valid: (B, T) bool. Returns (L1, -log sigmoid(cos)), each a mean
    over valid frames (L1 also over channels), as DistilHuBERT."""
    weight = valid.to(pred.dtype)  # (B, T)
    count = weight.sum().clamp(min=1.0)
    l1 = ((pred - target).abs().mean(dim=-1) * weight).sum() / count
    cos = F.cosine_similarity(pred, target, dim=-1)  # (B, T)
    cos_term = (-F.logsigmoid(cos) * weight).sum() / count
    return l1, cos_term


def build_student(
    teacher: SSLModel, teacher_config: ModelConfig, config: StudentConfig
) -> tuple[SSLModel, ModelConfig]:
    """A student with the teacher's frontend and width and `config.num_layers` layers, initialised
    (unless `init_from_teacher` is False) from the teacher's frontend and the listed layers."""
    copy_from = config.teacher_layers_to_copy()
    enc = teacher_config.encoder
    if max(copy_from) > enc.num_layers:
        raise ValueError(f"student.init_layers {copy_from} exceed the teacher's {enc.num_layers} layers")
    per_layer = {
        name: None if getattr(enc, name) is None else [getattr(enc, name)[i - 1] for i in copy_from]
        for name in ("layer_num_heads", "layer_ffn_dims", "layer_head_index")
    }
    student_config = replace(
        teacher_config,
        encoder=replace(enc, num_layers=config.num_layers, layerdrop=config.layerdrop, **per_layer),
    )
    student = build_model(student_config)  # pruned WavLM heads: layer_head_index sets their gates' chunks
    if config.init_from_teacher:
        source = teacher.state_dict()
        state = {}
        for key in student.state_dict():
            key_in_teacher = key  # not a layer's
            if key.startswith("encoder.layers."):
                _, _, index, rest = key.split(".", 3)
                if rest == f"attention.{TABLE_KEY}":  # WavLM's shared table: where the teacher has it
                    key_in_teacher = f"encoder.layers.{teacher.encoder.table_layer}.{rest}"
                else:
                    key_in_teacher = f"encoder.layers.{copy_from[int(index)] - 1}.{rest}"
            state[key] = source[key_in_teacher].detach().clone()
        student.load_state_dict(state, strict=True)
    return student, student_config


class FrozenTeacher(nn.Module):
    """Holds the teacher in eval mode without gradients; its weights stay out of checkpoints
    (state_dict / load_state_dict skip `teacher.`), so resuming needs only the student."""

    teacher: SSLModel

    def _freeze_teacher(self, teacher: SSLModel) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        super().train(mode)
        self.teacher.eval()  # never dropout / LayerDrop in the teacher
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if not k.startswith("teacher."))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        full = dict(state_dict)
        full.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        return super().load_state_dict(full, strict=strict, assign=assign)


class Distiller(FrozenTeacher):
    """batch -> (loss, metrics): student layer `student_layers[k]` (through head k, if heads)
    predicts teacher layer `teacher_layers[k]`.

    student: an SSLModel or anything with its forward signature (the gated model of pruning).
    heads: one Linear per pair (DistilHuBERT), else the hidden states are compared directly.
    mask: masking distillation; the student's input frames are masked with its
    `masked_spec_embed`, the teacher sees the unmasked input.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: SSLModel,
        *,
        teacher_layers: Sequence[int],
        student_layers: Sequence[int],
        heads: bool,
        loss: LossConfig,
        mask: MaskConfig | None = None,
        normalize_waveform: bool = False,
    ) -> None:
        super().__init__()
        if len(teacher_layers) != len(student_layers):
            raise ValueError(
                f"teacher_layers {list(teacher_layers)} and student_layers {list(student_layers)} "
                "must have the same length"
            )
        if max(teacher_layers) > teacher.num_layers:
            raise ValueError(
                f"target layers {list(teacher_layers)} exceed the teacher's {teacher.num_layers} layers"
            )
        self.student = student
        self._freeze_teacher(teacher)
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        D_t, D_s = teacher.hidden_dim, student.hidden_dim
        self.heads = nn.ModuleList(nn.Linear(D_s, D_t) for _ in teacher_layers) if heads else None
        if not heads and D_s != D_t:
            raise ValueError(f"without heads the student width ({D_s}) must equal the teacher's ({D_t})")
        self.loss_config = loss
        self.mask = mask
        self.normalize_waveform = normalize_waveform

    def _mask_indices(self, wav_lens: Tensor) -> Tensor | None:
        if self.mask is None or not self.training:
            return None
        frames = self.student.num_frames(wav_lens)  # (B,)
        m = self.mask
        return compute_mask_indices(
            frames,
            int(frames.max()),
            mask_prob=m.mask_prob,
            mask_length=m.mask_length,
            min_masks=m.min_masks,
            no_overlap=m.no_overlap,
            min_space=m.min_space,
            require_same_masks=m.require_same_masks,
        )

    def distill_loss(self, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if self.normalize_waveform:
            wavs = normalize_waveform(wavs, wav_lens)
        with torch.no_grad():
            target = self.teacher(wavs, wav_lens, num_layers=max(self.teacher_layers)).hidden_states
        out = self.student(
            wavs,
            wav_lens,
            mask_time_indices=self._mask_indices(wav_lens),
            num_layers=max(self.student_layers),
        )
        valid = ~out.padding_mask  # (B, T)
        total = wavs.new_zeros(())
        metrics: dict[str, Tensor] = {}
        for k, (s, t) in enumerate(zip(self.student_layers, self.teacher_layers)):
            pred = out.hidden_states[s]  # (B, T, D_s)
            if self.heads is not None:
                pred = self.heads[k](pred)  # (B, T, D_t)
            l1, cos = layer_loss(pred, target[t], valid)
            total = total + self.loss_config.l1_weight * l1 + self.loss_config.cos_weight * cos
            metrics[f"l1_{t}"], metrics[f"cos_{t}"] = l1.detach(), cos.detach()
        return total, metrics

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.distill_loss(batch.wavs, batch.wav_lens)


def run_training(
    module: nn.Module,
    config: Any,
    train_dir: Path,
    valid_dir: Path | None,
    out_dir: Path,
    teacher: SSLModel,
    *,
    resume: bool | Path,
    save_config: Any,
    begin: Callable[[], None] | None = None,
) -> TrainResult:
    """Train `module` on the audio of `train_dir` (the teacher gives the frame counts). `begin`
    runs once the data is checked, before anything is written (Experiment.begin)."""
    loaders = build_data(config, teacher, train_dir, valid_dir)
    if begin is not None:
        begin()
    return train_on_loaders(
        module, loaders.train, config.trainer, out_dir, valid_loader=loaders.valid, resume=resume,
        save_config=save_config,
    )  # fmt: skip


def load_teacher(source: str | Path) -> Upstream:
    upstream = require_network(load_upstream(source), source, "a teacher")
    logger.info(
        "teacher %s: %s, %d layers, %.2fM parameters",
        source,
        upstream.config.family,
        upstream.num_layers,
        sum(p.numel() for p in upstream.model.parameters()) / 1e6,
    )
    return upstream


def build_distiller(teacher: Upstream, config: DistillConfig) -> tuple[Distiller, ModelConfig]:
    student, student_config = build_student(teacher.model, teacher.config, config.student)
    distiller = Distiller(
        student, teacher.model, teacher_layers=config.target_layers,
        student_layers=[config.student.num_layers] * len(config.target_layers), heads=True,
        loss=config.loss, mask=config.mask, normalize_waveform=teacher.config.normalize_waveform,
    )  # fmt: skip
    return distiller, student_config


def distill(
    teacher_source: str | Path,
    config_path: str | Path,
    train_dir: str | Path,
    out_dir: str | Path,
    *,
    valid_dir: str | Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Distil `teacher_source` (any load_upstream source) into a student; returns EXP/final, a
    speechssl checkpoint that load_upstream reads (the heads are training-only and left out).
    EXP is locked and checked before any write (speechssl.training.experiment)."""
    out_dir = Path(out_dir)
    config: DistillConfig = load_config(DistillConfig, config_path, list(overrides))
    config = replace(config, trainer=config.trainer.with_max_steps(max_steps))
    with experiment(
        out_dir,
        "distill",
        resume=resume,
        config=config,
        overwrite=overwrite,
        inputs=(train_dir, valid_dir, teacher_source),
    ) as run:
        teacher = load_teacher(teacher_source)
        torch.manual_seed(config.trainer.seed)
        distiller, student_config = build_distiller(teacher, config)
        run_training(
            distiller,
            config,
            Path(train_dir),
            Path(valid_dir) if valid_dir else None,
            out_dir,
            teacher.model,
            resume=run.resume_from or False,
            save_config=config,
            begin=run.begin,
        )
        final = out_dir / "final"
        if env_rank() == 0:
            save_checkpoint(distiller.student, student_config, final)
            logger.info(
                "student: %.2fM parameters (teacher %.2fM) -> %s",
                count_params(distiller.student) / 1e6,
                count_params(teacher.model) / 1e6,
                final,
            )
    return final


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
