"""data2vec (audio) objective: regress an EMA teacher's averaged top-K layer outputs at masked frames.

As fairseq's `Data2VecAudioModel` (examples/data2vec; s3prl ships a fairseq-free copy):

- the student sees masked input; the teacher, an exponential moving average of the student's
  transformer encoder only (fairseq ema_transformer_only), sees the same projected features
  unmasked (fairseq: `pre_encoder_features`, taken before dropout_input);
- the EMA decay is annealed linearly from `ema_decay` to `ema_end_decay` over
  `ema_anneal_end_step` updates; with `ema_layers_only` the positional conv is copied from the
  student instead of averaged (fairseq's default);
- each of the top `average_top_k_layers` teacher layers gives its feed-forward output before
  the residual and the layer's final LayerNorm (fairseq `layer_results[i][2]`, the fc2 output),
  optionally instance-normed over time and/or layer-normed, then averaged, then optionally
  normed again (layer_norm_targets / instance_norm_targets);
- the loss is L2 (loss_beta 0) or smooth L1 with beta, summed over channels, scaled by
  `loss_scale` (None: 1/sqrt(D)) and summed over masked frames; we divide by the masked-frame
  count (fairseq's sample_size), as every objective here returns a per-frame loss.

One deliberate difference: instance norms run over each utterance's valid frames (fairseq's
F.instance_norm also counts the padded frames of a padded batch), so the norms add no
dependence on the batch an utterance is in (the multi-layer positional conv still has one: the
LayerNorm between its convs makes padded frames non-zero, as in fairseq and transformers).
fairseq's data2vec recipes crop batches to equal lengths, where the two agree. And
`instance_norm_targets` normalises over time here in every case (fairseq, without
instance_norm_target_layer, applies it to (T, B, C) targets: over the batch).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.models.encoder import TransformerEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Data2VecObjectiveConfig:
    """Teacher, targets and loss (fairseq data2vec_audio names)."""

    average_top_k_layers: int = 8
    instance_norm_target_layer: bool = True  # fairseq base_librispeech.yaml
    layer_norm_target_layer: bool = False
    instance_norm_targets: bool = False
    layer_norm_targets: bool = False
    loss_beta: float = 0.0  # 0: L2; > 0: smooth L1 with this beta
    loss_scale: float | None = None  # None: 1 / sqrt(embed_dim)
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int = 30000
    ema_layers_only: bool = True  # the positional conv is copied, not averaged
    min_target_var: float = 0.1  # warn below this (fairseq stops after 5000 updates)
    min_pred_var: float = 0.01
    var_check_every: int = 100  # updates between the (host-syncing) variance checks

    def __post_init__(self) -> None:
        if self.average_top_k_layers < 1:
            raise ValueError(f"average_top_k_layers must be >= 1, found {self.average_top_k_layers}")
        for name in ("ema_decay", "ema_end_decay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], found {value}")
        if self.ema_anneal_end_step < 0:
            raise ValueError(f"ema_anneal_end_step must be >= 0, found {self.ema_anneal_end_step}")
        if self.loss_beta < 0:
            raise ValueError(f"loss_beta must be >= 0 (0 = L2), found {self.loss_beta}")
        if self.loss_scale is not None and not self.loss_scale > 0:
            raise ValueError(f"loss_scale must be > 0 or null (1/sqrt(D)), found {self.loss_scale}")
        if self.var_check_every < 1:
            raise ValueError(f"var_check_every must be >= 1, found {self.var_check_every}")


def ema_decay_at(config: Data2VecObjectiveConfig, num_updates: int) -> float:
    """The decay used by the EMA step after `num_updates` updates (fairseq get_annealed_rate)."""
    start, end = config.ema_decay, config.ema_end_decay
    if start == end:
        return start
    if num_updates >= config.ema_anneal_end_step:
        return end
    return end - (end - start) * (1 - num_updates / config.ema_anneal_end_step)


def instance_norm_valid(x: Tensor, valid: Tensor | None, eps: float = 1e-5) -> Tensor:
    """x: (B, T, C) normalised over time per utterance and channel, on valid frames (B, T) only
    (None: every frame; then exactly F.instance_norm). Biased variance, as F.instance_norm."""
    x = x.float()
    if valid is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    w = valid[..., None].to(x.dtype)  # (B, T, 1)
    count = w.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * w).sum(dim=1, keepdim=True) / count
    var = ((x - mean).pow(2) * w).sum(dim=1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * w


def regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """(M, D) x (M, D) -> (M,) per-frame loss summed over channels: L2 or smooth L1 (beta > 0)."""
    if beta == 0:
        return F.mse_loss(pred.float(), target.float(), reduction="none").sum(dim=-1)
    return F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=beta).sum(dim=-1)


def compute_var(y: Tensor) -> Tensor:
    """Mean over channels of the std over frames (fairseq compute_var, one rank): (M, D) -> 0-dim."""
    y = y.reshape(-1, y.shape[-1]).float()
    return torch.sqrt(y.var(dim=0) + 1e-6).mean()


@contextlib.contextmanager
def feed_forward_outputs(encoder: TransformerEncoder, first: int) -> Iterator[list[Tensor]]:
    """Collects the feed-forward output (before the residual) of layers `first`.. while active.
    A forward hook: the encoder itself stays as it is."""
    outputs: list[Tensor] = []
    hooks = []
    for i, layer in enumerate(encoder.layers):
        if i < first:
            continue
        if layer.feed_forward is None:
            raise ValueError(f"data2vec targets need layer {i}'s feed-forward block, which is pruned away")
        hooks.append(layer.feed_forward.register_forward_hook(lambda m, args, out: outputs.append(out)))
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


class EMATeacher(nn.Module):
    """The EMA copy of a student's TransformerEncoder (fairseq EMAModule on `encoder`), in fp32.

    Its weights are parameters without gradients (the optimizer leaves them out), so they are in
    the model's state dict and in every checkpoint; `num_updates` (a buffer) is the last update
    it followed, which makes `step` idempotent: the trainer's call after loading a checkpoint
    does not step it twice."""

    def __init__(self, student: TransformerEncoder, config: Data2VecObjectiveConfig) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(student).float().requires_grad_(False)
        self.config = config
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._num_updates = 0  # host mirror of the buffer (no device read per step)
        self.register_load_state_dict_post_hook(EMATeacher._after_load)

    @staticmethod
    def _after_load(module: nn.Module, incompatible_keys: object) -> None:
        module._num_updates = int(module.num_updates)

    @torch.no_grad()
    def reset(self, student: TransformerEncoder) -> None:
        """The teacher becomes the student (a fresh run from initial or imported weights)."""
        self.encoder.load_state_dict(student.state_dict())
        self.num_updates.zero_()
        self._num_updates = 0

    @torch.no_grad()
    def step(self, student: TransformerEncoder, num_updates: int) -> float | None:
        """Follow the student after its update `num_updates` (fairseq's set_num_updates on the
        next forward). Returns the decay used, None when nothing was done."""
        if num_updates <= self._num_updates:
            return None
        decay = ema_decay_at(self.config, num_updates)
        if decay < 1:  # fairseq: no step at decay 1
            theirs = dict(student.named_parameters())
            for name, p in self.encoder.named_parameters():
                src = theirs[name].detach().to(p.dtype)
                if self.config.ema_layers_only and name.startswith("pos_conv_embed."):
                    p.copy_(src)
                else:
                    p.mul_(decay).add_(src, alpha=1 - decay)
            theirs_buffers = dict(student.named_buffers())
            for name, b in self.encoder.named_buffers():
                b.copy_(theirs_buffers[name])
        self.num_updates.fill_(num_updates)
        self._num_updates = num_updates
        return decay

    @torch.no_grad()
    def targets(self, x: Tensor, padding_mask: Tensor, padded: bool) -> Tensor:
        """x: (B, T, D) the student's projected, unmasked features; padding_mask (B, T).
        Returns the regression targets (B, T, D) in fp32."""
        cfg = self.config
        self.encoder.eval()
        num_layers = len(self.encoder.layers)
        k = min(cfg.average_top_k_layers, num_layers)
        valid = ~padding_mask if padded else None
        with feed_forward_outputs(self.encoder, num_layers - k) as outputs:
            self.encoder(x.float(), padding_mask if padded else None)
        layers = [o.float() for o in outputs]
        if cfg.instance_norm_target_layer:
            layers = [instance_norm_valid(y, valid) for y in layers]
        if cfg.layer_norm_target_layer:
            layers = [F.layer_norm(y, y.shape[-1:]) for y in layers]
        y = sum(layers) / len(layers)
        if cfg.layer_norm_targets:
            y = F.layer_norm(y, y.shape[-1:])
        if cfg.instance_norm_targets:
            y = instance_norm_valid(y, valid)
        return y


def loss_scale(config: Data2VecObjectiveConfig, dim: int) -> float:
    return config.loss_scale if config.loss_scale is not None else 1 / math.sqrt(dim)


def check_variances(config: Data2VecObjectiveConfig, target_var: Tensor, pred_var: Tensor, step: int) -> None:
    """Warn when the targets (a collapsing teacher) or the predictions lose their variance."""
    t, p = float(target_var), float(pred_var)
    if t < config.min_target_var:
        logger.warning(
            "data2vec: target variance %.4f < min_target_var %g at update %d: the teacher is collapsing"
            " (lower the learning rate, raise ema_decay or check the data)", t, config.min_target_var, step,
        )  # fmt: skip
    if p < config.min_pred_var:
        logger.warning(
            "data2vec: prediction variance %.4f < min_pred_var %g at update %d", p, config.min_pred_var, step
        )
