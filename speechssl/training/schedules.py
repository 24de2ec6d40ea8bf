"""Learning-rate schedules as pure functions of the update count.

A schedule maps `step` (updates already done, so the lr of the next update)
to a multiplier of the peak lr. Being a pure function, its whole state is
the step: resuming needs nothing but the step, and `torch.load(weights_only=True)`
never meets a pickled lambda.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from speechssl.training.config import TrainerConfig


@dataclass(frozen=True)
class PolynomialDecay:
    """Linear warmup 0 -> 1 over `warmup_steps`, then (1 - progress)^power decay to
    `end_scale` at `max_steps` (fairseq: polynomial_decay; power 1 = linear)."""

    warmup_steps: int
    max_steps: int
    end_scale: float = 0.0
    power: float = 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        decay_steps = max(self.max_steps - self.warmup_steps, 1)
        remaining = max(1.0 - (step - self.warmup_steps) / decay_steps, 0.0)
        return self.end_scale + (1.0 - self.end_scale) * remaining**self.power


@dataclass(frozen=True)
class TriStage:
    """fairseq's tri_stage: linear warmup from `init_scale`, hold at 1, exponential
    decay to `final_scale`, then stay there. Stage lengths in updates."""

    warmup_steps: int
    hold_steps: int
    decay_steps: int
    init_scale: float = 0.01
    final_scale: float = 0.05

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init_scale + (1.0 - self.init_scale) * step / self.warmup_steps
        step -= self.warmup_steps
        if step < self.hold_steps:
            return 1.0
        step -= self.hold_steps
        if step <= self.decay_steps and self.decay_steps > 0:
            return math.exp(math.log(self.final_scale) * step / self.decay_steps)
        return self.final_scale

    def boundaries(self) -> tuple[int, int, int]:
        """Steps where hold, decay and the final constant begin."""
        a = self.warmup_steps
        return a, a + self.hold_steps, a + self.hold_steps + self.decay_steps


@dataclass(frozen=True)
class Constant:
    """The peak lr after an optional linear warmup (fairseq's `fixed` with warmup_updates)."""

    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        return step / self.warmup_steps if step < self.warmup_steps else 1.0


def build_schedule(config: TrainerConfig) -> PolynomialDecay | TriStage | Constant:
    """The schedule named by `config.schedule`."""
    if config.schedule == "constant":
        return Constant(config.warmup_steps)
    if config.schedule in ("linear", "polynomial"):
        power = 1.0 if config.schedule == "linear" else config.power
        return PolynomialDecay(config.warmup_steps, config.max_steps, config.end_lr_scale, power)
    if config.schedule == "tri_stage":
        warmup, hold, _ = (int(r * config.max_steps) for r in config.tri_stage_ratios)
        decay = config.max_steps - warmup - hold  # rounding leftovers go to decay
        return TriStage(warmup, hold, decay, config.init_lr_scale, config.final_lr_scale)
    raise ValueError(f"unknown schedule '{config.schedule}'; valid: constant, linear, polynomial, tri_stage")


def set_lr(optimizer, peak_lr: float, schedule, step: int) -> float:
    """Write the lr of update `step` into every param group; returns it."""
    lr = peak_lr * schedule(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
