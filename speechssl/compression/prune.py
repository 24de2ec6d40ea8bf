"""DPHuBERT: joint distillation and structured pruning with HardConcrete gates.

`GatedModel` wraps a copy of the teacher and multiplies, through forward hooks
(so the network code is the SSLModel's own), by gates on

- the output channels of each conv layer but the last (after its GELU),
- each attention head (the head's output before `out_proj`) and each whole attention block,
- each feed-forward unit (before `output_dense`) and each whole feed-forward block.

The last conv layer is not gated: its channels are normalised by the feature
projection's LayerNorm, whose statistics would change if a channel were removed,
so removal could not keep the outputs. For the same reason conv channels are not
gated in `layer_norm` mode (a LayerNorm over channels after every conv) nor in the
fbank frontend.

WavLM (gated relative position bias): a head's gate reads its own chunk of the layer input
and its column of the bias table shared by all layers, so removing a head slices its entry of
`gru_rel_pos_const` and records, per layer, the original index of every kept head
(`EncoderConfig.layer_head_index`); the table keeps every original head and moves to the first
layer that still attends when pruning removes layer 0's attention block.

`expected_params()` is the expected parameter count of the model that removal
would leave, as a differentiable function of the gates' keep probabilities; the
`Pruner` adds the Lagrangian term lambda1 (s - t) + lambda2 (s - t)^2 on the
expected sparsity s = 1 - E[params] / teacher params (t ramps to the target over
`sparsity_warmup_steps`), with the lambdas maximised (plain dual ascent steps), next to
layer-wise distillation from the teacher. `prune_model` then cuts the dense model,
folding the evaluation gate values into the following weights so the outputs do
not change.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speechssl.compression.config import GatesConfig, PruneConfig
from speechssl.compression.distill import (
    Distiller,
    count_params,
    load_teacher,
    run_training,
)
from speechssl.compression.hardconcrete import HardConcrete
from speechssl.config import load_config
from speechssl.io import atomic_write_text
from speechssl.models.checkpoint import load_state_into, save_checkpoint
from speechssl.models.config import ConvFrontendConfig, EncoderConfig, ModelConfig
from speechssl.models.encoder import RelativeSelfAttention
from speechssl.models.model import EncoderOutput, SSLModel, build_model
from speechssl.models.relative_position import TABLE_KEY
from speechssl.training.distributed import env_rank
from speechssl.training.experiment import RESUMABLE_KEYS, Experiment, experiment

logger = logging.getLogger(__name__)

# How far (in sparsity) the gates' expected sparsity may end from the target before the run warns
# that `fix_gates` forces the count, which the training did not prepare the model for.
SPARSITY_TOLERANCE = 0.02


def _any_kept(keep: Tensor) -> Tensor:
    """P(at least one unit kept) for independent keep probabilities (1/0 for masks)."""
    return 1.0 - torch.prod(1.0 - keep)


class GatedModel(nn.Module):
    """An SSLModel with HardConcrete gates; forward has SSLModel's signature.

    Gate keys: `conv_{i}`, `heads_{i}`, `attention_{i}`, `ffn_units_{i}`, `ffn_{i}` (layer i, 0-based).
    """

    def __init__(self, model: SSLModel, config: ModelConfig, gates: GatesConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        args = dict(init_keep_prob=gates.init_keep_prob, lr_scale=gates.lr_scale)
        self.gates = nn.ModuleDict()
        self._values: dict[str, Tensor] | None = None
        front = config.frontend
        if gates.conv_channels and isinstance(front, ConvFrontendConfig) and front.mode == "group_norm":
            if front.feature_grad_mult == 0.0:
                raise ValueError(
                    "conv channel gates need gradients through the frontend, but its "
                    "feature_grad_mult is 0; set gates.conv_channels: false"
                )
            for i, layer in enumerate(model.feature_extractor.conv_layers[:-1]):
                self.gates[f"conv_{i}"] = HardConcrete(front.conv_dim[i], **args)
                layer.register_forward_hook(self._scale_output(f"conv_{i}", channel_dim=1))
        elif gates.conv_channels:
            logger.info(
                "conv channels are not pruned: the %s frontend normalises over channels",
                getattr(front, "mode", front.type),
            )
        enc = config.encoder
        for i, layer in enumerate(model.encoder.layers):
            if layer.attention is not None:
                if gates.heads:
                    self.gates[f"heads_{i}"] = HardConcrete(enc.heads_of(i), **args)
                    layer.attention.out_proj.register_forward_pre_hook(
                        self._scale_input(f"heads_{i}", repeat=enc.head_dim)
                    )
                if gates.attention:
                    self.gates[f"attention_{i}"] = HardConcrete(1, **args)
                    layer.attention.register_forward_hook(
                        self._scale_output(f"attention_{i}", channel_dim=-1)
                    )
            if layer.feed_forward is not None:
                if gates.ffn_units:
                    self.gates[f"ffn_units_{i}"] = HardConcrete(enc.ffn_dim_of(i), **args)
                    layer.feed_forward.output_dense.register_forward_pre_hook(
                        self._scale_input(f"ffn_units_{i}")
                    )
                if gates.ffn:
                    self.gates[f"ffn_{i}"] = HardConcrete(1, **args)
                    layer.feed_forward.register_forward_hook(self._scale_output(f"ffn_{i}", channel_dim=-1))
        if not self.gates:
            raise ValueError("no structure to prune: every gate type is off or absent from this model")
        self.full_params = count_params(model)
        self.fixed_params = self.full_params - int(round(float(self.prunable_params(self._ones()))))

    # --- the SSLModel surface the Distiller uses ---------------------------------------------
    @property
    def feature_extractor(self) -> nn.Module:
        return self.model.feature_extractor

    @property
    def hidden_dim(self) -> int:
        return self.model.hidden_dim

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    # --- hooks ---------------------------------------------------------------------------------
    def _scale_output(self, key: str, channel_dim: int):
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
            if self._values is None:
                return None
            z = self._values[key].to(output.dtype)
            if channel_dim == 1:
                return output * z[None, :, None]  # (B, C, T) conv output
            return output * z  # (B, T, D) block output, z: (1,)

        return hook

    def _scale_input(self, key: str, repeat: int = 1):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
            if self._values is None:
                return None
            z = self._values[key].to(inputs[0].dtype)
            if repeat > 1:
                z = z.repeat_interleave(repeat)  # one value per head -> (H * d,)
            return (inputs[0] * z,)  # (B, T, units)

        return hook

    # --- gate values and counts ----------------------------------------------------------------
    def _ones(self) -> dict[str, Tensor]:
        return {k: torch.ones(g.num_units) for k, g in self.gates.items()}

    def keep_probs(self) -> dict[str, Tensor]:
        return {k: g.keep_prob() for k, g in self.gates.items()}

    @torch.no_grad()
    def eval_values(self) -> dict[str, Tensor]:
        """Deterministic gate values; a block whose units are all gone is gone too (its output
        bias would otherwise remain), so the values describe exactly what removal leaves."""
        return self._complete({k: g.deterministic().clone() for k, g in self.gates.items()})

    def _complete(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """A conv layer keeps at least its most likely channel (a conv cannot have 0 channels);
        a block without units goes too."""
        for key, z in values.items():
            if key.startswith("conv_") and not (z > 0).any():
                g = self.gates[key]
                best = int(g.log_alpha.argmax())
                z[best] = torch.sigmoid(g.log_alpha[best] / g.beta * 0.8)
        for i in range(self.num_layers):
            for units, block in ((f"heads_{i}", f"attention_{i}"), (f"ffn_units_{i}", f"ffn_{i}")):
                if units in values and block in values and not (values[units] > 0).any():
                    values[block].zero_()
        return values

    def gate_values(self) -> dict[str, Tensor]:
        """Samples in training mode, `eval_values()` in eval mode."""
        if self.training:
            return {k: g.sample() for k, g in self.gates.items()}
        return self.eval_values()

    def prunable_params(self, keep: dict[str, Tensor]) -> Tensor:
        """Parameters in the gated structures when unit u survives with probability keep[key][u]
        (or 0/1 masks): exactly what `prune_model` keeps, in expectation."""
        front, enc = self.config.frontend, self.config.encoder
        total = torch.zeros(())
        if isinstance(front, ConvFrontendConfig):
            width_in: Tensor | float = 1.0
            for i, (dim, kernel) in enumerate(zip(front.conv_dim, front.conv_kernel)):
                key = f"conv_{i}"
                width_out = keep[key].sum() if key in keep else torch.tensor(float(dim))
                per_channel = int(front.conv_bias)
                if front.mode == "layer_norm" or i == 0:
                    per_channel += 2  # norm weight and bias per channel
                total = total + kernel * width_in * width_out + per_channel * width_out
                width_in = width_out
        D, d = enc.embed_dim, enc.head_dim
        any_attention = torch.zeros(())  # P(some layer still attends): WavLM's table needs one
        for i, layer in enumerate(self.model.encoder.layers):
            # per head: q, k, v rows and biases, out_proj columns (+ WavLM's gru_rel_pos_const entry);
            # per block: out_proj bias (+ WavLM's gate, gru_rel_pos_linear). Per FFN unit: fc1 row
            # and bias, fc2 column; per FFN block: fc2 bias.
            relative = isinstance(layer.attention, RelativeSelfAttention)
            per_head, per_block = 4 * D * d + 3 * d + int(relative), D + relative * (8 * d + 8)
            blocks = (
                (layer.attention, "heads", "attention", enc.heads_of(i), per_head, per_block),
                (layer.feed_forward, "ffn_units", "ffn", enc.ffn_dim_of(i), 2 * D + 1, D),
            )  # fmt: skip
            for module, unit_name, block_name, num_units, per_unit, block_params in blocks:
                if module is None:
                    continue
                units = keep.get(f"{unit_name}_{i}", torch.ones(num_units))
                block = keep.get(f"{block_name}_{i}", torch.ones(1)).sum()
                kept = block * _any_kept(units)
                total = total + block * units.sum() * per_unit + block_params * kept
                if module is layer.attention:
                    any_attention = 1.0 - (1.0 - any_attention) * (1.0 - kept)
        return total + self._table_params * any_attention

    @property
    def _table_params(self) -> int:
        """Parameters of WavLM's shared bias table (0 for the other families)."""
        table = _relative_table(self.model)
        return 0 if table is None else table.weight.numel()

    def expected_params(self) -> Tensor:
        """E[parameters after removal], differentiable in the gates' log_alpha."""
        return self.fixed_params + self.prunable_params(self.keep_probs())

    def deterministic_params(self) -> int:
        """Parameters that `prune_model` leaves with the evaluation gate values."""
        masks = {k: (v > 0).float() for k, v in self.eval_values().items()}
        return self.fixed_params + int(round(float(self.prunable_params(masks))))

    @torch.no_grad()
    def fix_gates(self, target_params: int) -> int:
        """Freeze the evaluation values: DPHuBERT's rule, then the fewest units (lowest log_alpha
        first) removed, or restored (highest first), to bring the count nearest `target_params`.
        Returns the resulting count."""
        for g in self.gates.values():
            g.fix(None)
        values = self.eval_values()
        count = self.deterministic_params()
        fine = [k for k in values if k.rsplit("_", 1)[0] in ("conv", "heads", "ffn_units")]
        shrink = count > target_params
        candidates = []  # (log_alpha, key, index)
        for key in fine:
            la = self.gates[key].log_alpha
            for u in range(la.numel()):
                if (values[key][u] > 0) == shrink:
                    candidates.append((float(la[u]), key, u))
        candidates.sort(reverse=not shrink)

        def apply(base: dict[str, Tensor], chosen: Sequence[int]) -> dict[str, Tensor]:
            new = {k: v.clone() for k, v in base.items()}
            by_key: dict[str, list[int]] = {}
            for c in chosen:
                by_key.setdefault(candidates[c][1], []).append(candidates[c][2])
            for key, units in by_key.items():
                g, index = self.gates[key], torch.tensor(units)
                new[key][index] = 0.0 if shrink else torch.sigmoid(g.log_alpha[index] / g.beta * 0.8)
            return new

        def count_of(raw: dict[str, Tensor]) -> int:
            masks = {
                k: (v > 0).float() for k, v in self._complete({k: v.clone() for k, v in raw.items()}).items()
            }
            return self.fixed_params + int(round(float(self.prunable_params(masks))))

        def reached(c: int) -> bool:
            return c <= target_params if shrink else c >= target_params

        lo, hi = 0, len(candidates)  # bisection: the fewest units (in log_alpha order) that reach the target
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reached(count_of(apply(values, range(mid)))) else (mid + 1, hi)
        crossing = apply(values, range(lo))
        current = apply(values, range(max(lo - 1, 0)))
        # the unit that crosses may be large (a head): try the next ones in order, taking each
        # one that does not cross, to end within one small unit of the target
        for c in range(max(lo - 1, 0), min(lo + 255, len(candidates))):
            trial = apply(current, [c])
            n = count_of(trial)
            if not reached(n) or n == target_params:
                current = trial
        best = min((current, crossing), key=lambda raw: abs(count_of(raw) - target_params))
        for key, v in self._complete(best).items():
            self.gates[key].fix(v)
        final = self.deterministic_params()
        logger.info(
            "gates fixed: %d parameters by the rule, %d after adjusting (target %d)",
            count,
            final,
            target_params,
        )
        return final

    def forward(self, wavs: Tensor, lengths: Tensor | None = None, **kwargs: Any) -> EncoderOutput:
        self._values = self.gate_values()
        try:
            return self.model(wavs, lengths, **kwargs)
        finally:
            self._values = None


@torch.no_grad()
def _kept_units(z_units: Tensor, z_block: Tensor) -> Tensor:
    """Indices of the units (heads, FFN units) whose gate is open; none when the block's gate is shut."""
    if not bool(z_block > 0):
        return torch.zeros(0, dtype=torch.long)
    return (z_units > 0).nonzero().flatten()


def _relative_table(model: SSLModel) -> nn.Embedding | None:
    """WavLM's shared bias table (None for the other families), where the encoder keeps it."""
    encoder = model.encoder
    if encoder.relative_position is None:
        return None
    return encoder.layers[encoder.table_layer].attention.rel_attn_embed


def _take_relative_table(model: SSLModel, state: dict[str, Tensor]) -> Tensor | None:
    """Remove WavLM's shared bias table from `state` and return it (None for the other families);
    `prune_model` puts it into the first layer that still attends, where the encoder looks for it."""
    if _relative_table(model) is None:
        return None
    return state.pop(f"encoder.layers.{model.encoder.table_layer}.attention.{TABLE_KEY}")


def _head_index(enc: EncoderConfig, layer: int) -> list[int]:
    """The original heads of `layer`'s current heads (a pruned teacher may be pruned again)."""
    if enc.layer_head_index is not None:
        return list(enc.layer_head_index[layer])
    return list(range(enc.heads_of(layer)))


def prune_model(gated: GatedModel) -> tuple[SSLModel, ModelConfig]:
    """Physically remove what the evaluation gates remove: a dense SSLModel whose config records
    each layer's heads and FFN width and the conv widths, with the gate values folded into the
    following weights (outputs equal the gated model's in eval mode)."""
    values = gated.eval_values()
    config, enc = gated.config, gated.config.encoder
    state = {k: v.detach().clone() for k, v in gated.model.state_dict().items()}
    new_frontend = config.frontend
    if isinstance(config.frontend, ConvFrontendConfig):
        conv_dim = list(config.frontend.conv_dim)
        prev_keep: Tensor | None = None
        prev_scale: Tensor | None = None
        for i in range(len(conv_dim)):
            prefix = f"feature_extractor.conv_layers.{i}."
            z = values.get(f"conv_{i}")
            keep = torch.arange(conv_dim[i]) if z is None else (z > 0).nonzero().flatten()
            weight = state[prefix + "conv.weight"][keep]  # (out', in, k)
            if prev_keep is not None:
                weight = (
                    weight[:, prev_keep] * prev_scale[None, :, None]
                )  # (out', in', k): fold z of layer i-1
            state[prefix + "conv.weight"] = weight
            for name in ("conv.bias", "layer_norm.weight", "layer_norm.bias"):
                if prefix + name in state:
                    state[prefix + name] = state[prefix + name][keep]
            conv_dim[i] = int(keep.numel())
            prev_keep, prev_scale = (None, None) if z is None else (keep, z[keep])
        if conv_dim[-1] != config.frontend.conv_dim[-1]:
            raise AssertionError("the last conv layer is never pruned")
        new_frontend = replace(config.frontend, conv_dim=conv_dim)
    heads, ffn_dims, head_index = [], [], []
    d = enc.head_dim
    table = _take_relative_table(gated.model, state)
    table_placed = False
    for i, layer in enumerate(gated.model.encoder.layers):
        # attention: keep the rows of kept heads in q/k/v, fold head and block gates into out_proj
        prefix = f"encoder.layers.{i}.attention."
        num_heads = 0
        kept = torch.zeros(0, dtype=torch.long)
        if layer.attention is not None:
            z_units = values.get(f"heads_{i}", torch.ones(enc.heads_of(i)))
            z_block = values.get(f"attention_{i}", torch.ones(1))
            kept = _kept_units(z_units, z_block)
            num_heads = int(kept.numel())
            rows = (kept[:, None] * d + torch.arange(d)[None, :]).flatten()  # (H' * d,)
            if num_heads:
                for name in ("q_proj", "k_proj", "v_proj"):
                    state[f"{prefix}{name}.weight"] = state[f"{prefix}{name}.weight"][rows]
                    state[f"{prefix}{name}.bias"] = state[f"{prefix}{name}.bias"][rows]
                scale = z_units[kept].repeat_interleave(d) * z_block  # (H' * d,)
                state[f"{prefix}out_proj.weight"] = (
                    state[f"{prefix}out_proj.weight"][:, rows] * scale[None, :]
                )
                state[f"{prefix}out_proj.bias"] = state[f"{prefix}out_proj.bias"] * z_block
                if isinstance(layer.attention, RelativeSelfAttention):  # (1, H, 1, 1) -> (1, H', 1, 1)
                    const = f"{prefix}gru_rel_pos_const"
                    state[const] = state[const][:, kept]
        if not num_heads:
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        elif table is not None and not table_placed:
            # the first layer that still attends holds the shared table (all original heads)
            state[prefix + TABLE_KEY], table_placed = table, True
        original = _head_index(enc, i)
        head_index.append([original[h] for h in kept.tolist()])
        heads.append(num_heads)
        # feed-forward: keep the rows of kept units in fc1, fold unit and block gates into fc2
        prefix = f"encoder.layers.{i}.feed_forward."
        width = 0
        if layer.feed_forward is not None:
            z_units = values.get(f"ffn_units_{i}", torch.ones(enc.ffn_dim_of(i)))
            z_block = values.get(f"ffn_{i}", torch.ones(1))
            kept = _kept_units(z_units, z_block)
            width = int(kept.numel())
            if width:
                state[f"{prefix}intermediate_dense.weight"] = state[f"{prefix}intermediate_dense.weight"][
                    kept
                ]
                state[f"{prefix}intermediate_dense.bias"] = state[f"{prefix}intermediate_dense.bias"][kept]
                scale = z_units[kept] * z_block  # (F',)
                state[f"{prefix}output_dense.weight"] = (
                    state[f"{prefix}output_dense.weight"][:, kept] * scale[None, :]
                )
                state[f"{prefix}output_dense.bias"] = state[f"{prefix}output_dense.bias"] * z_block
        if not width:
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        ffn_dims.append(width)
    new_encoder = replace(
        enc,
        layer_num_heads=heads,
        layer_ffn_dims=ffn_dims,
        # WavLM: the original heads whose gate input chunk and table column each layer reads
        layer_head_index=head_index if table is not None else None,
    )
    new_config = replace(config, frontend=new_frontend, encoder=new_encoder)
    model = build_model(new_config)
    load_state_into(model, state, "pruned state")
    return model.train(gated.training), new_config


class Pruner(Distiller):
    """Layer-wise distillation of the gated student + the Lagrangian sparsity term."""

    def __init__(
        self, gated: GatedModel, teacher: SSLModel, config: PruneConfig, *, normalize_waveform: bool = False
    ) -> None:
        layers = config.layers_for(teacher.num_layers)
        super().__init__(
            gated,
            teacher,
            teacher_layers=layers,
            student_layers=layers,
            heads=False,
            loss=config.loss,
            normalize_waveform=normalize_waveform,
        )
        self.config = config
        # lambda1, lambda2: a buffer, not a Parameter: the dual ascent step is taken here
        # (see set_num_updates), proportional to the gap, and resumes with the checkpoint.
        self.register_buffer("lambdas", torch.zeros(2))
        self.total_params = count_params(teacher)
        self.num_updates = 0
        self._last_gap: Tensor | None = None

    @property
    def target_params(self) -> int:
        return round((1.0 - self.config.target_sparsity) * self.total_params)

    def set_num_updates(self, num_updates: int) -> None:
        """Called by the Trainer after every update (and on resume): one gradient-ascent step on
        the multipliers, lambda1 += lr * gap, lambda2 += lr * gap^2 (CoFi / DPHuBERT maximise the
        Lagrangian over them). A plain step, not AdamW's sign-like one: the multipliers must
        answer the size of the gap, or they overshoot and the sparsity oscillates."""
        if num_updates == self.num_updates + 1 and self._last_gap is not None:
            gap = self._last_gap
            self.lambdas += self.config.lambda_lr * torch.stack([gap, gap * gap]).to(self.lambdas)
        self._last_gap = None
        self.num_updates = num_updates

    def current_target(self) -> float:
        """Target sparsity now: linear ramp from 0 over sparsity_warmup_steps (CoFi)."""
        warmup = self.config.sparsity_warmup_steps
        ramp = 1.0 if warmup == 0 else min(1.0, self.num_updates / warmup)
        return self.config.target_sparsity * ramp

    def lagrangian(self) -> tuple[Tensor, dict[str, Tensor]]:
        expected = self.student.expected_params()
        sparsity = 1.0 - expected / self.total_params
        gap = sparsity - self.current_target()
        if self.training:
            self._last_gap = gap.detach()
        lambdas = self.lambdas.to(gap)
        term = lambdas[0] * gap + lambdas[1] * gap * gap
        metrics = {
            "expected_sparsity": sparsity.detach(),
            "target_sparsity": torch.tensor(self.current_target()),
            "lambda1": lambdas[0],
            "lambda2": lambdas[1],
        }
        return term, metrics

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = self.distill_loss(batch.wavs, batch.wav_lens)
        term, reg = self.lagrangian()
        metrics.update(reg, distill=loss.detach())
        return loss + term.to(loss.device), metrics


def build_pruner(teacher_model: SSLModel, teacher_config: ModelConfig, config: PruneConfig) -> Pruner:
    student = copy.deepcopy(teacher_model)
    gated = GatedModel(student, teacher_config, config.gates)
    return Pruner(gated, teacher_model, config, normalize_waveform=teacher_config.normalize_waveform)


# a resumed run may also change how long the sparsity target ramps and the final distillation runs
_RESUMABLE = RESUMABLE_KEYS | {"sparsity_warmup_steps", "final_distill_steps"}


def prune(
    teacher_source: str | Path,
    config_path: str | Path,
    train_dir: str | Path,
    out_dir: str | Path,
    *,
    valid_dir: str | Path | None = None,
    target_sparsity: float | None = None,
    max_steps: int | None = None,
    final_distill_steps: int | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """DPHuBERT on any load_upstream teacher. Writes EXP/pruned (dense pruned model), and EXP/final
    (after the final distillation, or the pruned model itself without one); returns EXP/final."""
    out_dir = Path(out_dir)
    config: PruneConfig = load_config(PruneConfig, config_path, list(overrides))
    changes: dict[str, Any] = {"trainer": config.trainer.with_max_steps(max_steps)}
    if target_sparsity is not None:
        changes["target_sparsity"] = target_sparsity
    if final_distill_steps is not None:
        changes["final_distill_steps"] = final_distill_steps
    if max_steps and config.sparsity_warmup_steps:
        # the sparsity ramp keeps its share of the run, as the lr warmup does
        scaled = config.sparsity_warmup_steps * max_steps // config.trainer.max_steps
        if scaled != config.sparsity_warmup_steps:
            logger.info(
                "sparsity warm-up: %d updates (the config's %d of %d; --max-steps %d keeps its share)",
                scaled, config.sparsity_warmup_steps, config.trainer.max_steps, max_steps,
            )  # fmt: skip
        changes["sparsity_warmup_steps"] = scaled
    config = replace(config, **changes)
    check_warmup_fits(config)
    train_dir = Path(train_dir)
    valid = Path(valid_dir) if valid_dir else None
    with experiment(
        out_dir,
        "prune",
        resume=resume,
        config=config,
        overwrite=overwrite,
        inputs=(train_dir, valid, teacher_source),
        allowed=_RESUMABLE,
    ) as run:
        return _prune(teacher_source, config, train_dir, valid, out_dir, run)


def check_warmup_fits(config: PruneConfig) -> None:
    """Warn when the sparsity target would still be ramping at the end of the run: the gates
    cannot reach a target they are never given."""
    warmup, steps = config.sparsity_warmup_steps, config.trainer.max_steps
    if warmup >= steps:
        reached = config.target_sparsity * steps / warmup
        logger.warning(
            "sparsity_warmup_steps (%d) is not shorter than the run (trainer.max_steps %d): by the last "
            "update the target has ramped to %.3f of %.3f; shorten sparsity_warmup_steps or train longer",
            warmup, steps, reached, config.target_sparsity,
        )  # fmt: skip


def report_sparsity(expected_sparsity: float, target_sparsity: float, steps: int) -> bool:
    """Log whether the gates reached the target in training (True) or `fix_gates` must force
    them there (False, a warning with both sparsities and what to change)."""
    if abs(expected_sparsity - target_sparsity) <= SPARSITY_TOLERANCE:
        logger.info(
            "gates reached the target: expected sparsity %.3f (target %.3f)",
            expected_sparsity,
            target_sparsity,
        )
        return True
    logger.warning(
        "the gates missed the target: expected sparsity %.3f after %d updates, target %.3f; the pruned "
        "model is forced to the target by removing (or keeping) the units of lowest (highest) log_alpha, "
        "which the training did not prepare it for. Train longer (--max-steps), shorten "
        "sparsity_warmup_steps or raise lambda_lr, and distil the result (--final-distill-steps)",
        expected_sparsity, steps, target_sparsity,
    )  # fmt: skip
    return False


def _prune(
    teacher_source: str | Path,
    config: PruneConfig,
    train_dir: Path,
    valid: Path | None,
    out_dir: Path,
    run: Experiment,
) -> Path:
    teacher = load_teacher(teacher_source)
    torch.manual_seed(config.trainer.seed)
    pruner = build_pruner(teacher.model, teacher.config, config)
    run_training(
        pruner,
        config,
        train_dir,
        valid,
        out_dir,
        teacher.model,
        resume=run.resume_from or False,
        save_config=config,
        begin=run.begin,
    )
    gated: GatedModel = pruner.student
    gated.eval()
    expected = float(gated.expected_params().detach())
    expected_sparsity = 1.0 - expected / pruner.total_params
    reached = report_sparsity(expected_sparsity, config.target_sparsity, config.trainer.max_steps)
    by_rule = gated.deterministic_params()
    final_count = gated.fix_gates(pruner.target_params)
    model, model_config = prune_model(gated)
    summary = {
        "teacher_params": pruner.total_params, "target_params": pruner.target_params,
        "expected_params": round(expected), "rule_params": by_rule, "pruned_params": count_params(model),
        "target_sparsity": config.target_sparsity, "sparsity": 1 - count_params(model) / pruner.total_params,
        "expected_sparsity": expected_sparsity, "reached_target": reached,  # False: fix_gates forced it
        "conv_dim": list(getattr(model_config.frontend, "conv_dim", [])),
        "layer_num_heads": model_config.encoder.layer_num_heads,
        "layer_ffn_dims": model_config.encoder.layer_ffn_dims,
        "layer_head_index": model_config.encoder.layer_head_index,  # WavLM: original heads kept (else None)
    }  # fmt: skip
    if final_count != summary["pruned_params"]:
        raise AssertionError(f"gated count {final_count} != pruned model count {summary['pruned_params']}")
    final = out_dir / "final"
    if env_rank() == 0:
        save_checkpoint(model, model_config, out_dir / "pruned")
        atomic_write_text(out_dir / "prune_summary.json", json.dumps(summary, indent=2) + "\n")
        logger.info(
            "pruned: %d -> %d parameters (target %d) -> %s",
            pruner.total_params,
            summary["pruned_params"],
            pruner.target_params,
            out_dir / "pruned",
        )
    if config.final_distill_steps > 0:
        layers = config.layers_for(teacher.num_layers)
        distiller = Distiller(
            model.train(),
            teacher.model,
            teacher_layers=layers,
            student_layers=layers,
            heads=False,
            loss=config.loss,
            normalize_waveform=teacher.config.normalize_waveform,
        )
        stage = replace(
            config, trainer=replace(config.trainer, max_steps=config.final_distill_steps, warmup_steps=0)
        )
        run_training(
            distiller,
            stage,
            train_dir,
            valid,
            out_dir / "final_distill",
            teacher.model,
            resume=not run.fresh,
            save_config=stage,
        )
    if env_rank() == 0:
        save_checkpoint(model, model_config, final)
    return final
