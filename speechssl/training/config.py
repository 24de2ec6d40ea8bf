"""TrainerConfig: every knob of the training loop, typed and validated.

Names follow fairseq where a speech researcher would look for them
(`update_freq` -> `accum_steps`, `clip_norm`, `max_update` -> `max_steps`,
tri-stage `phase_ratio` -> `tri_stage_ratios`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

from speechssl.data.audio import SAMPLE_RATE

# Every float knob (tuples item by item): each must be finite.
_FLOAT_KEYS = (
    "clip_norm",
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "end_lr_scale",
    "power",
    "tri_stage_ratios",
    "init_lr_scale",
    "final_lr_scale",
    "fp16_init_scale",
)

Precision = Literal["fp32", "bf16", "fp16"]
ScheduleName = Literal["linear", "polynomial", "tri_stage", "constant"]
Strategy = Literal["ddp", "fsdp"]
STRATEGIES = get_args(Strategy)
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES = get_args(CompileMode)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the compile modes that record CUDA graphs


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    max_steps: int = 1000  # optimizer updates (fairseq: max_update)
    accum_steps: int = 1  # micro-batches per update (fairseq: update_freq)
    precision: Precision = "fp32"  # autocast dtype; fp16 adds a GradScaler
    compile: bool = False  # torch.compile the training forward (dynamic shapes: bucketed batches vary)
    # torch.compile's mode; reduce-overhead (CUDA graphs: no per-kernel launch cost) replays a graph
    # only for a batch shape it has recorded, so pair it with data.static_shapes
    compile_mode: CompileMode = "default"
    clip_norm: float = 0.0  # max global grad norm; 0 = no clipping (norm is still logged)
    # AdamW
    lr: float = 5e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01  # never applied to norms, biases or other 1-d params
    # schedule (see schedules.py)
    schedule: ScheduleName = "linear"
    warmup_steps: int = 0  # linear / polynomial: 0 -> peak over this many updates
    end_lr_scale: float = 0.0  # linear / polynomial: final lr = lr * end_lr_scale
    power: float = 1.0  # polynomial decay power (1.0 = linear)
    tri_stage_ratios: tuple[float, float, float] = (0.1, 0.4, 0.5)  # warmup, hold, decay of max_steps
    init_lr_scale: float = 0.01  # tri_stage: lr at step 0 = lr * init_lr_scale
    final_lr_scale: float = 0.05  # tri_stage: lr after decay = lr * final_lr_scale
    # checkpoints, validation, logging
    save_every: int = 500  # updates between checkpoints (one is always written at the end)
    keep_last: int = 3  # step_<N> dirs kept (the `best` one is never deleted)
    valid_every: int = 0  # updates between validations; 0 = only at checkpoints
    log_every: int = 50  # updates between TensorBoard points / console lines
    max_bad_steps: int = 25  # consecutive NaN/inf updates that stop the run
    # reproducibility and loading
    seed: int = 1
    num_workers: int = 0  # DataLoader workers per rank
    pin_memory: bool = True  # only used on CUDA
    sample_rate: int = SAMPLE_RATE  # to turn batch lengths (samples) into audio seconds
    find_unused_parameters: bool | None = None  # None: True iff the model has LayerDrop > 0 (ddp)
    # ddp: a full replica per rank; fsdp: torch's fully_shard per transformer layer (sharded
    # weights, gradients and optimizer state; checkpoints hold DCP shards + a gathered model.safetensors)
    strategy: Strategy = "ddp"
    fp16_init_scale: float = 2.0**16

    def __post_init__(self) -> None:
        # inf or NaN passes every `<= 0` test and trains a NaN model that exits 0: refuse them first
        for name in _FLOAT_KEYS:
            values = getattr(self, name)
            for value in values if isinstance(values, tuple) else (values,):
                if not math.isfinite(value):
                    raise ValueError(f"{name} must be a finite number, found {value}")

        def positive(name: str) -> None:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, found {getattr(self, name)}")

        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, found {self.strategy!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode must be one of {', '.join(COMPILE_MODES)}, found {self.compile_mode!r}"
            )
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode {self.compile_mode} needs compile: true")
        if self.strategy == "fsdp" and self.precision == "fp16":
            raise ValueError(
                "strategy fsdp trains in precision fp32 or bf16, found fp16 (GradScaler's inf checks would "
                "see only each rank's gradient shards); use precision bf16"
            )
        for name in (
            "max_steps",
            "accum_steps",
            "lr",
            "eps",
            "power",
            "save_every",
            "keep_last",
            "log_every",
            "max_bad_steps",
            "sample_rate",
            "fp16_init_scale",
        ):
            positive(name)
        if self.clip_norm < 0 or self.weight_decay < 0 or self.valid_every < 0 or self.num_workers < 0:
            raise ValueError("clip_norm, weight_decay, valid_every and num_workers must be >= 0")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(
                f"warmup_steps must be in [0, max_steps={self.max_steps}], found {self.warmup_steps}"
            )
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), found {self.betas}")
        if any(r < 0 for r in self.tri_stage_ratios) or not math.isclose(
            sum(self.tri_stage_ratios), 1.0, abs_tol=1e-6
        ):
            raise ValueError(
                f"tri_stage_ratios (warmup, hold, decay) must be >= 0 and sum to 1, "
                f"found {self.tri_stage_ratios}"
            )
        for name in ("init_lr_scale", "final_lr_scale"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], found {getattr(self, name)}")
        if not 0 <= self.end_lr_scale <= 1:
            raise ValueError(f"end_lr_scale must be in [0, 1], found {self.end_lr_scale}")

    def with_max_steps(self, max_steps: int | None) -> TrainerConfig:
        """The same run shortened (or lengthened) to `max_steps` updates, for `--max-steps`:
        the warmup keeps its share of the run; save and log intervals fit inside it."""
        if max_steps is None:
            return self
        if max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, found {max_steps}")
        return replace(
            self, max_steps=max_steps, warmup_steps=self.warmup_steps * max_steps // self.max_steps,
            save_every=min(self.save_every, max_steps), log_every=min(self.log_every, max_steps),
        )  # fmt: skip
