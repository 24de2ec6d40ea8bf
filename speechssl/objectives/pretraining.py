"""Pretraining models: an SSLModel plus the heads of its objective, returning (loss, metrics).

`forward(wavs, lengths, targets)` draws the masks (and wav2vec 2.0 distractors) itself,
with an optional explicit generator, unless they are passed in. A generator must live where its
draws happen: the time mask on the device of `lengths`, channel masks, distractors and Gumbel
noise on that of `wavs`; with host lengths and wavs on an accelerator pass none (the global RNGs,
as the trainer does). The loss is normalised
per predicted frame (fairseq sums and divides by `sample_size`; `metrics["sample_size"]`
gives that count back). Metrics are 0-dim tensors: no `.item()`.

Host syncs: none when `lengths` are on the host (as the trainer passes them, from the loader):
the frame counts are read there, the time masks are drawn there and (wav2vec 2.0, data2vec) the
predicted frames are selected there, then copied to the device without blocking. With `lengths`
on the device a step syncs when reading the frame counts (SSLModel.frontend_forward) and, but for
HuBERT and WavLM, whose loss runs over every frame, when sizing the selection.

Module names follow transformers: `Wav2Vec2PretrainModel` holds `wav2vec2`, `quantizer`,
`project_hid`, `project_q` like Wav2Vec2ForPreTraining; `HubertPretrainModel` holds
`hubert` and `head` (fairseq's `final_proj` and `label_embs_concat`); `WavLMPretrainModel`
holds `wavlm` and `head`; `Data2VecPretrainModel` holds `data2vec_audio`, `final_proj` and
`ema` (the EMA teacher's encoder under `ema.encoder.`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.models import presets
from speechssl.models.config import ModelConfig
from speechssl.models.devices import host_side, host_to_device, to_device
from speechssl.models.frontends import lengths_to_padding_mask, normalize_waveform
from speechssl.models.model import EncoderOutput, SSLModel, build_model
from speechssl.models.quantizer import GumbelVectorQuantizer, QuantizerConfig
from speechssl.objectives.data2vec import (
    Data2VecObjectiveConfig,
    EMATeacher,
    check_variances,
    compute_var,
    ema_decay_at,
    loss_scale,
    regression_loss,
)
from speechssl.objectives.hubert import (
    HubertObjectiveConfig,
    build_label_head,
    check_labels,
    masked_prediction_loss,
)
from speechssl.objectives.masking import MaskConfig, compute_channel_mask, compute_time_mask
from speechssl.objectives.mixing import NoiseBank, mix_batch
from speechssl.objectives.wav2vec2 import (
    Wav2Vec2ObjectiveConfig,
    candidate_logits,
    contrastive_loss,
    diversity_loss,
    feature_penalty,
    gather_rows,
    sample_negatives,
)
from speechssl.objectives.wavlm import WavLMObjectiveConfig

# model.family -> the section that holds its objective
OBJECTIVE_SECTIONS = {
    "hubert": "hubert",
    "wav2vec2": "wav2vec2",
    "wavlm": "wavlm",
    "data2vec_audio": "data2vec",
}
_DEFAULT_OBJECTIVES = {
    "hubert": HubertObjectiveConfig,
    "wav2vec2": Wav2Vec2ObjectiveConfig,
    "wavlm": WavLMObjectiveConfig,
    "data2vec": Data2VecObjectiveConfig,
}


@dataclass(frozen=True, kw_only=True)
class PretrainModelConfig:
    """A network plus its pretraining objective. The objective section must match
    `model.family`: `hubert` for "hubert", `wav2vec2` for "wav2vec2", `wavlm` for "wavlm",
    `data2vec` for "data2vec_audio" (defaults if omitted)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    hubert: HubertObjectiveConfig | None = None
    wav2vec2: Wav2Vec2ObjectiveConfig | None = None
    wavlm: WavLMObjectiveConfig | None = None
    data2vec: Data2VecObjectiveConfig | None = None

    def __post_init__(self) -> None:
        family = self.model.family
        section = OBJECTIVE_SECTIONS.get(family)
        if section is None:
            raise ValueError(
                f"pretraining supports model families {', '.join(repr(f) for f in OBJECTIVE_SECTIONS)}, "
                f"found '{family}' (the other families load, tune and export, but have no pretraining "
                "objective here)"
            )
        for other in _DEFAULT_OBJECTIVES:
            if other != section and getattr(self, other) is not None:
                raise ValueError(
                    f"section '{other}' does not apply to a model of family '{family}'; remove it"
                )
        if getattr(self, section) is None:
            object.__setattr__(self, section, _DEFAULT_OBJECTIVES[section]())
        if section == "data2vec":
            assert self.data2vec is not None
            if self.data2vec.average_top_k_layers > self.model.encoder.num_layers:
                raise ValueError(
                    f"data2vec.average_top_k_layers ({self.data2vec.average_top_k_layers}) exceeds the "
                    f"encoder's {self.model.encoder.num_layers} layers"
                )


class MaskedFrames(NamedTuple):
    """A step's time mask and the frames it predicts, on the device."""

    time_mask: Tensor  # (B, T) bool: the time mask applied to the input
    predicted: Tensor  # (B, T) bool: the time mask at valid frames only
    index: Tensor | None  # (M,) flat positions of the predicted frames in time order, if asked for


@host_side
def masked_frames(
    model: SSLModel,
    config: MaskConfig,
    lengths: Tensor,
    num_frames: int,
    device: torch.device,
    mask_time_indices: Tensor | None,
    generator: torch.Generator | None,
    *,
    index: bool,
) -> MaskedFrames:
    """The time mask (drawn where `lengths` are unless given), its valid frames and (`index`) their
    flat positions, computed where the mask lives and copied to `device`: on the host, from the
    loader's lengths, with no device sync; on the device, sizing the index syncs once."""
    if mask_time_indices is None:  # drawn where the lengths are: their frame counts serve both
        valid_lengths = model.num_frames(lengths)
        mask_time_indices = compute_time_mask(valid_lengths, num_frames, config, generator=generator)
    else:
        valid_lengths = model.num_frames(to_device(lengths, mask_time_indices.device))
    predicted = mask_time_indices & ~lengths_to_padding_mask(valid_lengths, num_frames)
    positions = predicted.reshape(-1).nonzero().squeeze(1) if index else None
    return MaskedFrames(
        to_device(mask_time_indices, device),
        to_device(predicted, device),
        None if positions is None else to_device(positions, device),
    )


def masked_forward(
    model: SSLModel,
    config: MaskConfig,
    wavs: Tensor,
    lengths: Tensor,
    mask_time_indices: Tensor | None,
    mask_channel_indices: Tensor | None,
    generator: torch.Generator | None,
    *,
    index: bool = False,
) -> tuple[EncoderOutput, MaskedFrames]:
    """Run `model` on masked input, drawing the time / channel masks that were not given."""
    frames = masked_frames(
        model, config, lengths, model.num_frames(wavs.shape[1]), wavs.device, mask_time_indices, generator,
        index=index,
    )  # fmt: skip
    if mask_channel_indices is None:
        mask_channel_indices = compute_channel_mask(
            wavs.shape[0], model.hidden_dim, config, device=wavs.device, generator=generator
        )
    out = model(
        wavs, lengths, mask_time_indices=frames.time_mask, mask_channel_indices=mask_channel_indices,
        output_hidden_states=False,  # predicted from the last only
    )  # fmt: skip
    return out, frames


def _default_lengths(wavs: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
    return lengths


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return num.float() / den.float().clamp(min=1.0)


class HubertPredictions(NamedTuple):
    """The head's logits at every frame, padding included: selecting the predicted frames first
    would give the step shapes that change with each mask (a host `nonzero`, a graph break under
    `torch.compile`, new CUDA graphs every step); the loss ignores the other frames instead."""

    encoder: EncoderOutput
    mask: Tensor  # (B, T) bool: the masked valid frames (the time mask used, padding removed)
    logits: list[Tensor]  # per label set, (B * T, classes_i)
    labels: list[Tensor]  # per label set, (B * T,), -100 where a frame has no label

    def frames(self, kind: str) -> Tensor:
        """(B * T,) bool: the frames predicted as `kind` ("masked" or "unmasked")."""
        if kind == "masked":
            return self.mask.reshape(-1)
        return (~self.mask & ~self.encoder.padding_mask).reshape(-1)

    def selected(self, kind: str, i: int = 0) -> tuple[Tensor, Tensor]:
        """(logits (M, classes_i), labels (M,)) of label set `i` at the `kind` frames, in time
        order: fairseq's logit_m_list / logit_u_list (for tests and analysis; a host sync on GPU)."""
        rows = self.frames(kind)
        return self.logits[i][rows], self.labels[i][rows]


class HubertPretrainModel(nn.Module):
    """HuBERT masked prediction over one or several label sets (fairseq: HubertModel + criterion)."""

    backbone_name = "hubert"  # the attribute (and state-dict prefix) of the backbone

    def __init__(self, model: SSLModel, head: nn.Module, mask: MaskConfig, objective: HubertObjectiveConfig):
        super().__init__()
        setattr(self, self.backbone_name, model)
        self.head = head
        self.mask_config = mask
        self.objective = objective

    def predict(
        self,
        wavs: Tensor,
        lengths: Tensor | None,
        targets: Tensor | Sequence[Tensor],
        *,
        mask_time_indices: Tensor | None = None,
        mask_channel_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> HubertPredictions:
        """wavs: (B, S); lengths: (B,) samples; targets: (B, T') unit ids per label set, -100 = none.
        Labels longer than the T model frames are cut, shorter ones padded with -100."""
        lengths = _default_lengths(wavs, lengths)
        label_sets = [targets] if isinstance(targets, Tensor) else list(targets)
        check_labels(label_sets, self.objective.num_classes, wavs.shape[0])
        out, masked = masked_forward(
            self.backbone, self.mask_config, wavs, lengths, mask_time_indices, mask_channel_indices, generator
        )
        B, T, D = out.last_hidden_state.shape  # batch, frames, embed_dim
        # padded frames zeroed: the loss ignores their rows, but a non-finite value there would
        # still reach the head's gradients through the softmax backward
        frames = out.last_hidden_state.masked_fill(out.padding_mask[..., None], 0.0).reshape(B * T, D)
        labels = [
            F.pad(t[:, :T], (0, max(0, T - t.shape[1])), value=-100).reshape(B * T).long() for t in label_sets
        ]
        return HubertPredictions(out, masked.predicted, self.head(frames), labels)

    @property
    def backbone(self) -> SSLModel:
        return getattr(self, self.backbone_name)

    def forward(
        self,
        wavs: Tensor,
        lengths: Tensor | None,
        targets: Tensor | Sequence[Tensor],
        *,
        mask_time_indices: Tensor | None = None,
        mask_channel_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (loss per predicted frame, metrics). Metric names: loss, masked_loss,
        masked_accuracy (and unmasked_* when pred_nomask_weight > 0), feature_penalty,
        sample_size; label set i > 0 adds the suffix `_{i}`."""
        p = self.predict(
            wavs, lengths, targets, mask_time_indices=mask_time_indices,
            mask_channel_indices=mask_channel_indices, generator=generator,
        )  # fmt: skip
        cfg = self.objective
        out = p.encoder
        # fairseq's hubert_criterion: sample_size counts the frames of every predicted kind
        sample_size = p.mask.new_zeros((), dtype=torch.long)
        metrics: dict[str, Tensor] = {}
        total = out.last_hidden_state.new_zeros((), dtype=torch.float32)
        for kind, weight in (("masked", cfg.pred_masked_weight), ("unmasked", cfg.pred_nomask_weight)):
            if weight == 0:  # fairseq's skip_masked / skip_nomask
                continue
            frames = p.frames(kind)
            sample_size = sample_size + frames.sum()
            for i, (lg, lab) in enumerate(zip(p.logits, p.labels)):
                loss_sum, correct, counted = masked_prediction_loss(lg, torch.where(frames, lab, -100))
                total = total + weight * loss_sum
                suffix = f"_{i}" if i else ""
                metrics[f"{kind}_loss{suffix}"] = _ratio(loss_sum.detach(), counted)
                metrics[f"{kind}_accuracy{suffix}"] = _ratio(correct, counted)
        loss = total / sample_size.float().clamp(min=1.0)
        if cfg.feature_penalty_weight > 0:
            pen = feature_penalty(out.features_unnormed, out.padding_mask)
            loss = loss + cfg.feature_penalty_weight * pen
            metrics["feature_penalty"] = pen.detach()
        metrics["loss"] = loss.detach()
        metrics["sample_size"] = sample_size
        return loss, metrics


class Wav2Vec2Predictions(NamedTuple):
    encoder: EncoderOutput
    mask: Tensor  # (B, T) bool
    negative_indices: Tensor  # (B, T, K) flat indices into B * T
    logits: Tensor  # (M, 1 + K) over masked frames in time order, positive first
    code_perplexity: Tensor
    prob_perplexity: Tensor


class Wav2Vec2PretrainModel(nn.Module):
    """wav2vec 2.0 contrastive pretraining (fairseq: Wav2Vec2Model + wav2vec criterion)."""

    def __init__(
        self,
        model: SSLModel,
        quantizer: GumbelVectorQuantizer,
        project_hid: nn.Linear,
        project_q: nn.Linear,
        mask: MaskConfig,
        objective: Wav2Vec2ObjectiveConfig,
    ):
        super().__init__()
        self.wav2vec2 = model
        self.quantizer = quantizer
        self.project_hid = project_hid  # fairseq: final_proj
        self.project_q = project_q
        self.dropout_features = nn.Dropout(objective.dropout_features)
        self.mask_config = mask
        self.objective = objective

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the quantizer temperature (call once per optimizer step, and after resuming)."""
        self.quantizer.set_num_updates(num_updates)

    def predict(
        self,
        wavs: Tensor,
        lengths: Tensor | None = None,
        *,
        mask_time_indices: Tensor | None = None,
        mask_channel_indices: Tensor | None = None,
        negative_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Wav2Vec2Predictions:
        """wavs: (B, S); lengths: (B,) samples. negative_indices: (B, T, K) as transformers'
        `sampled_negative_indices` (drawn here when None)."""
        cfg = self.objective
        lengths = _default_lengths(wavs, lengths)
        out, masked = masked_forward(
            self.wav2vec2, self.mask_config, wavs, lengths, mask_time_indices, mask_channel_indices,
            generator, index=True,
        )  # fmt: skip
        B, T, _ = out.last_hidden_state.shape  # batch, frames, embed_dim
        mask, index = masked.predicted, masked.index  # (B, T), (M,)
        predicted = self.project_hid(out.last_hidden_state)  # (B, T, final_dim)
        q = self.quantizer(self.dropout_features(out.extract_features), mask, generator=generator)
        targets = self.project_q(q.codevectors.to(self.project_q.weight.dtype))  # (B, T, final_dim)
        if negative_indices is None:
            negative_indices = sample_negatives(
                mask, cfg.num_negatives, cross_sample_negatives=cfg.cross_sample_negatives,
                lengths=out.lengths, from_everywhere=cfg.negatives_from_everywhere, generator=generator,
            )  # fmt: skip
        rows = torch.cat([index[:, None], negative_indices.reshape(B * T, -1)[index]], dim=1)  # (M, 1 + K)
        candidates = gather_rows(targets.reshape(B * T, -1), rows)  # (M, 1 + K, final_dim): positive first
        logits = candidate_logits(
            gather_rows(predicted.reshape(B * T, -1), index), candidates, cfg.logit_temp
        )
        return Wav2Vec2Predictions(out, mask, negative_indices, logits, q.code_perplexity, q.prob_perplexity)

    def forward(
        self,
        wavs: Tensor,
        lengths: Tensor | None = None,
        targets: None = None,
        *,
        mask_time_indices: Tensor | None = None,
        mask_channel_indices: Tensor | None = None,
        negative_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (loss per masked frame, metrics): loss, contrastive_loss, diversity_loss,
        feature_penalty, accuracy, code_perplexity, prob_perplexity, temperature, sample_size.
        `targets` must be None: wav2vec 2.0 learns its own targets."""
        if targets is not None:
            raise ValueError("wav2vec 2.0 pretraining takes no labels (targets must be None)")
        cfg = self.objective
        p = self.predict(
            wavs, lengths, mask_time_indices=mask_time_indices, mask_channel_indices=mask_channel_indices,
            negative_indices=negative_indices, generator=generator,
        )  # fmt: skip
        sample_size = p.mask.sum()
        nce_sum, correct = contrastive_loss(p.logits)
        ppl = p.prob_perplexity if cfg.diversity_perplexity == "prob" else p.code_perplexity
        div = diversity_loss(ppl, self.quantizer.num_codevectors)
        loss = nce_sum / sample_size.float().clamp(min=1.0) + cfg.diversity_weight * div
        metrics = {
            "contrastive_loss": _ratio(nce_sum.detach(), sample_size),
            "diversity_loss": div.detach(),
            "accuracy": _ratio(correct, sample_size),
            "code_perplexity": p.code_perplexity.detach(),
            "prob_perplexity": p.prob_perplexity.detach(),
            "temperature": loss.new_full((), self.quantizer.temperature),  # a fill: no host-to-device copy
            "sample_size": sample_size,
        }
        if cfg.feature_penalty_weight > 0:
            pen = feature_penalty(p.encoder.features_unnormed, p.encoder.padding_mask)
            loss = loss + cfg.feature_penalty_weight * pen
            metrics["feature_penalty"] = pen.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


class WavLMPretrainModel(HubertPretrainModel):
    """WavLM: HuBERT masked prediction on utterance-mixed input (speechssl.objectives.mixing).

    Mixing happens in training mode only (validation measures the clean task), before waveform
    normalisation (as UniSpeech-SAT normalises after mixing); the labels are the primary
    utterance's. Noise clips come from `set_noise` (not part of the state dict)."""

    backbone_name = "wavlm"
    normalizes_input = True  # BatchObjective hands normalisation to forward (after mixing)

    def __init__(self, model: SSLModel, head: nn.Module, mask: MaskConfig, objective: WavLMObjectiveConfig):
        super().__init__(model, head, mask, objective)
        self.objective: WavLMObjectiveConfig = objective
        self.noise: NoiseBank | None = None

    def set_noise(self, noise: NoiseBank | None) -> None:
        """Noise clips for `mixing.noise_prob` (kept out of the state dict)."""
        self.noise = noise

    def forward(  # type: ignore[override]
        self,
        wavs: Tensor,
        lengths: Tensor | None,
        targets: Tensor | Sequence[Tensor],
        *,
        normalize: bool = False,
        mix: bool | None = None,
        mask_time_indices: Tensor | None = None,
        mask_channel_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """As HubertPretrainModel.forward, on mixed input when `mix` (default: in training mode).
        `normalize`: the model's normalize_waveform, applied after mixing. Adds the metrics
        mix_rate (utterances mixed) and noise_mix_rate (of them, with noise), per utterance."""
        lengths = _default_lengths(wavs, lengths)
        mix = self.training if mix is None else mix
        info = None
        if mix:
            if self.noise is not None and self.noise.clips.device != wavs.device:
                self.noise = self.noise.to(wavs.device)  # once, not every step
            wavs, info = mix_batch(
                wavs, lengths, self.objective.mixing, noise=self.noise, generator=generator
            )
        if normalize:
            wavs = normalize_waveform(wavs, host_to_device(lengths, wavs.device))
        loss, metrics = super().forward(
            wavs, lengths, targets, mask_time_indices=mask_time_indices,
            mask_channel_indices=mask_channel_indices, generator=generator,
        )  # fmt: skip
        if info is not None:
            metrics["mix_rate"] = info.mixed.float().mean()
            metrics["noise_mix_rate"] = info.noise.float().mean()
        return loss, metrics


class Data2VecPredictions(NamedTuple):
    encoder: EncoderOutput  # the student's
    mask: Tensor  # (B, T) bool, masked valid frames
    predictions: Tensor  # (M, D) final_proj of the student at masked frames (time order)
    targets: Tensor  # (M, D) the teacher's targets there (fp32, no gradient)


class Data2VecPretrainModel(nn.Module):
    """data2vec-audio pretraining (fairseq Data2VecAudioModel; speechssl.objectives.data2vec):
    the student `data2vec_audio`, its `final_proj` and the EMA teacher `ema`."""

    def __init__(
        self, model: SSLModel, final_proj: nn.Linear, mask: MaskConfig, objective: Data2VecObjectiveConfig
    ):
        super().__init__()
        self.data2vec_audio = model
        self.final_proj = final_proj
        self.ema = EMATeacher(model.encoder, objective)
        self.mask_config = mask
        self.objective = objective
        self._last_vars: tuple[Tensor, Tensor] | None = None

    @property
    def backbone(self) -> SSLModel:
        return self.data2vec_audio

    def reset_teacher(self) -> None:
        """Teacher := student (after importing weights into a fresh run, e.g. --init-from)."""
        self.ema.reset(self.data2vec_audio.encoder)

    def set_num_updates(self, num_updates: int) -> None:
        """The EMA step after update `num_updates` (call once per optimizer step, and after
        resuming: it is idempotent), every `var_check_every` updates the variance check."""
        if not self.training:
            return
        if self.ema.step(self.data2vec_audio.encoder, num_updates) is None:
            return
        every = self.objective.var_check_every
        if self._last_vars is not None and num_updates % every == 0:
            check_variances(self.objective, *self._last_vars, num_updates)

    def predict(
        self,
        wavs: Tensor,
        lengths: Tensor | None = None,
        *,
        mask_time_indices: Tensor | None = None,
        mask_channel_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Data2VecPredictions:
        """wavs: (B, S); lengths: (B,) samples. The student sees masked features, the teacher the
        same projected features unmasked (before the projection dropout)."""
        student = self.data2vec_audio
        lengths = _default_lengths(wavs, lengths)
        feats, frame_lengths, padded = student.frontend_forward(wavs, lengths)  # (B, T, C)
        B, T, _ = feats.shape  # batch, frames, channels
        padding_mask = lengths_to_padding_mask(frame_lengths, T)  # (B, T)
        proj = student.feature_projection
        normed = proj.layer_norm(feats)
        clean = proj.projection(normed)  # (B, T, D) fairseq pre_encoder_features
        masked = masked_frames(
            student, self.mask_config, lengths, T, wavs.device, mask_time_indices, generator, index=True
        )
        if mask_channel_indices is None:
            mask_channel_indices = compute_channel_mask(
                B, student.hidden_dim, self.mask_config, device=wavs.device, generator=generator
            )
        mask, index = masked.predicted, masked.index  # (B, T), (M,)
        x = student.apply_masks(proj.dropout(clean), masked.time_mask, mask_channel_indices)
        last, hidden = student.encoder_forward(x, padding_mask if padded else None)
        out = EncoderOutput(last, hidden, frame_lengths, padding_mask, normed, feats)
        targets = self.ema.targets(clean.detach(), padding_mask, padded)  # (B, T, D)
        D = last.shape[-1]
        predictions = self.final_proj(last.reshape(B * T, D)[index])
        return Data2VecPredictions(out, mask, predictions, targets.reshape(B * T, -1)[index])

    def forward(
        self,
        wavs: Tensor,
        lengths: Tensor | None = None,
        targets: None = None,
        *,
        mask_time_indices: Tensor | None = None,
        mask_channel_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (loss per masked frame, metrics): loss, regression_loss (the same, before any
        other term), target_var, pred_var (fairseq compute_var), ema_decay, sample_size.
        `targets` must be None: the teacher makes the targets."""
        if targets is not None:
            raise ValueError("data2vec pretraining takes no labels (targets must be None)")
        cfg = self.objective
        p = self.predict(
            wavs, lengths, mask_time_indices=mask_time_indices,
            mask_channel_indices=mask_channel_indices, generator=generator,
        )  # fmt: skip
        sample_size = p.mask.sum()
        per_frame = regression_loss(p.predictions, p.targets, cfg.loss_beta)  # (M,)
        total = per_frame.sum() * loss_scale(cfg, p.predictions.shape[-1])
        loss = total / sample_size.float().clamp(min=1.0)
        with torch.no_grad():
            target_var = compute_var(p.targets)
            pred_var = compute_var(p.predictions.detach())
        self._last_vars = (target_var, pred_var)
        metrics = {
            "loss": loss.detach(),
            "regression_loss": loss.detach(),
            "target_var": target_var,
            "pred_var": pred_var,
            "ema_decay": loss.new_full((), ema_decay_now(self)),  # a fill: no host-to-device copy
            "sample_size": sample_size,
        }
        return loss, metrics


def ema_decay_now(model: Data2VecPretrainModel) -> float:
    """The decay of the teacher's next step (fairseq logs ema_decay * 1000; we log the decay)."""
    return ema_decay_at(model.objective, model.ema._num_updates + 1)


PretrainModel = HubertPretrainModel | Wav2Vec2PretrainModel | WavLMPretrainModel | Data2VecPretrainModel


def build_pretrain_model(config: PretrainModelConfig) -> PretrainModel:
    """The one place a PretrainModelConfig becomes modules."""
    model = build_model(config.model)
    family = config.model.family
    if family == "hubert":
        assert config.hubert is not None  # filled by PretrainModelConfig.__post_init__
        head = build_label_head(model.hidden_dim, config.hubert)
        return HubertPretrainModel(model, head, config.mask, config.hubert)
    if family == "wavlm":
        assert config.wavlm is not None
        head = build_label_head(model.hidden_dim, config.wavlm)
        return WavLMPretrainModel(model, head, config.mask, config.wavlm)
    if family == "data2vec_audio":
        assert config.data2vec is not None
        final_proj = nn.Linear(model.hidden_dim, model.hidden_dim)
        return Data2VecPretrainModel(model, final_proj, config.mask, config.data2vec)
    obj = config.wav2vec2
    assert obj is not None
    quantizer = GumbelVectorQuantizer(config.model.frontend.output_dim, obj.quantizer)
    project_hid = nn.Linear(model.hidden_dim, obj.final_dim)
    project_q = nn.Linear(obj.quantizer.codevector_dim, obj.final_dim)
    return Wav2Vec2PretrainModel(model, quantizer, project_hid, project_q, config.mask, obj)


# Presets: one function per model preset, named like it (get_pretrain_preset finds it by that name):
# fairseq's pretraining defaults (hubert_base_librispeech.yaml, wav2vec2_base_librispeech.yaml,
# the *_large_* configs); tiny ones keep the masking of Base and shrink the heads.


def hubert_base(num_classes: int = 500) -> PretrainModelConfig:
    """HuBERT Base: mask_prob 0.8, span 10, cosine head to 256-d, masked frames only."""
    return PretrainModelConfig(
        model=presets.hubert_base(),
        mask=MaskConfig(mask_prob=0.8),
        hubert=HubertObjectiveConfig(num_classes=[num_classes]),
    )


def hubert_large(num_classes: int = 500) -> PretrainModelConfig:
    """HuBERT Large: as Base with final_dim 768."""
    objective = HubertObjectiveConfig(num_classes=[num_classes], final_dim=768)
    return PretrainModelConfig(model=presets.hubert_large(), mask=MaskConfig(mask_prob=0.8), hubert=objective)


def wav2vec2_base() -> PretrainModelConfig:
    """wav2vec 2.0 Base: mask_prob 0.65, 2 x 320 codes of 256-d, 100 distractors, weights 0.1 / 10."""
    return PretrainModelConfig(model=presets.wav2vec2_base(), mask=MaskConfig(mask_prob=0.65))


def wav2vec2_large_lv60() -> PretrainModelConfig:
    """wav2vec 2.0 Large LV-60: 768-d codes and projections, temperature 2 -> 0.1, no feature penalty."""
    objective = Wav2Vec2ObjectiveConfig(
        quantizer=QuantizerConfig(codevector_dim=768, min_temp=0.1), final_dim=768,
        dropout_features=0.0, feature_penalty_weight=0.0,
    )  # fmt: skip
    return PretrainModelConfig(
        model=presets.wav2vec2_large_lv60(), mask=MaskConfig(mask_prob=0.65), wav2vec2=objective
    )


def hubert_tiny(num_classes: int = 50) -> PretrainModelConfig:
    """Tiny HuBERT for CPU tests and the embedded recipe: 32-d cosine head."""
    objective = HubertObjectiveConfig(num_classes=[num_classes], final_dim=32)
    return PretrainModelConfig(model=presets.hubert_tiny(), mask=MaskConfig(mask_prob=0.8), hubert=objective)


def hubert_tiny_fbank(num_classes: int = 50) -> PretrainModelConfig:
    """hubert_tiny on the fbank frontend (Fast-HuBERT style): linear head, no feature penalty."""
    objective = HubertObjectiveConfig(num_classes=[num_classes], head="linear", feature_penalty_weight=0.0)
    return PretrainModelConfig(
        model=presets.hubert_tiny_fbank(), mask=MaskConfig(mask_prob=0.8), hubert=objective
    )


def wav2vec2_tiny() -> PretrainModelConfig:
    """Tiny wav2vec 2.0: 2 x 16 codes of 32-d, 32-d projections, 10 distractors."""
    objective = Wav2Vec2ObjectiveConfig(
        quantizer=QuantizerConfig(num_groups=2, num_vars=16, codevector_dim=32),
        final_dim=32,
        num_negatives=10,
    )
    return PretrainModelConfig(
        model=presets.wav2vec2_tiny(), mask=MaskConfig(mask_prob=0.65), wav2vec2=objective
    )


def _wavlm_defaults(model: ModelConfig, num_classes: int, **objective: object) -> PretrainModelConfig:
    """WavLM (unilm): HuBERT Base's masking and head, utterance mixing at 0.2 (-5..5 dB), at most
    half an utterance overlapped; noise mixing is off unless a noise dir is given with noise_prob."""
    return PretrainModelConfig(
        model=model,
        mask=MaskConfig(mask_prob=0.8),
        wavlm=WavLMObjectiveConfig(num_classes=[num_classes], **objective),  # type: ignore[arg-type]
    )


def wavlm_base(num_classes: int = 500) -> PretrainModelConfig:
    return _wavlm_defaults(presets.wavlm_base(), num_classes)


def wavlm_base_plus(num_classes: int = 500) -> PretrainModelConfig:
    return _wavlm_defaults(presets.wavlm_base_plus(), num_classes)


def wavlm_large(num_classes: int = 500) -> PretrainModelConfig:
    return _wavlm_defaults(presets.wavlm_large(), num_classes, final_dim=768)


def wavlm_tiny(num_classes: int = 50) -> PretrainModelConfig:
    """Tiny WavLM: 32-d cosine head, mixing as Base."""
    return _wavlm_defaults(presets.wavlm_tiny(), num_classes, final_dim=32)


def _data2vec_mask() -> MaskConfig:
    # fairseq data2vec_audio apply_mask: min_masks=1
    return MaskConfig(mask_prob=0.65, min_masks=1)


def data2vec_audio_base() -> PretrainModelConfig:
    """data2vec-audio Base (fairseq base_librispeech.yaml): top 8 layers instance-normed, L2,
    EMA 0.999 -> 0.9999 over 30k updates, transformer layers only."""
    return PretrainModelConfig(
        model=presets.data2vec_audio_base(), mask=_data2vec_mask(), data2vec=Data2VecObjectiveConfig()
    )


def data2vec_audio_large() -> PretrainModelConfig:
    """data2vec-audio Large (fairseq large_librivox.yaml): top 8 layers, EMA 0.999 -> 0.9999."""
    return PretrainModelConfig(
        model=presets.data2vec_audio_large(), mask=_data2vec_mask(), data2vec=Data2VecObjectiveConfig()
    )


def data2vec_tiny() -> PretrainModelConfig:
    """Tiny data2vec: both layers averaged, EMA 0.99 -> 0.999 over 1000 updates (short runs)."""
    objective = Data2VecObjectiveConfig(
        average_top_k_layers=2, ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=1000
    )
    return PretrainModelConfig(model=presets.data2vec_tiny(), mask=_data2vec_mask(), data2vec=objective)


def get_pretrain_preset(name: str, **overrides: object) -> PretrainModelConfig:
    """A model preset (speechssl.models.presets.PRESETS, the one table of names) with its pretraining
    defaults (the function of the same name above), top-level fields replaced; the error lists names."""
    if name not in presets.PRESETS:
        raise ValueError(f"unknown pretraining preset '{name}'; valid presets: {', '.join(presets.PRESETS)}")
    family = presets.PRESETS[name]().family
    if family not in OBJECTIVE_SECTIONS:  # UniSpeech-SAT: loads, tunes and exports; no objective here
        raise ValueError(
            f"model preset '{name}' is of family '{family}', which has no pretraining objective here"
            f" (families with one: {', '.join(OBJECTIVE_SECTIONS)})"
        )
    defaults = globals().get(name)
    if defaults is None:  # a model preset added without its pretraining defaults (a test holds this)
        raise ValueError(f"model preset '{name}' has no pretraining defaults: add {name}() to {__name__}")
    return replace(defaults(), **overrides)
