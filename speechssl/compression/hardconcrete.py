"""HardConcrete gates (Louizos et al., 2018), as used by CoFi and DPHuBERT.

A gate z in [0, 1] per prunable unit: a stretched, clamped binary-concrete
sample in training (so exact zeros happen and gradients still flow to
`log_alpha`), a deterministic value in evaluation. `keep_prob()` is the
probability that z != 0 (the L0 "expected nonzero" term), which makes the
expected parameter count a differentiable function of `log_alpha`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HardConcrete(nn.Module):
    """`num_units` independent gates.

    beta (temperature) 2/3, stretch interval (l, r) = (-0.1, 1.1) as in the paper.
    `init_keep_prob`: initial P(unit kept) of the deterministic rule (DPHuBERT:
    droprate_init 0.01 -> log_alpha = log(0.99 / 0.01)).
    `lr_scale`: the generic Trainer has one learning rate; gates want a much larger
    one (DPHuBERT: 0.02 vs 2e-5). AdamW steps are invariant to gradient scale, so
    the parameter is stored divided by `lr_scale` and multiplied back on use,
    which multiplies its effective learning rate by `lr_scale`.
    """

    def __init__(
        self,
        num_units: int,
        *,
        init_keep_prob: float = 0.99,
        beta: float = 2.0 / 3.0,
        l: float = -0.1,  # noqa: E741 (the paper's name)
        r: float = 1.1,
        lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_units <= 0:
            raise ValueError(f"num_units must be > 0, found {num_units}")
        if not 0.0 < init_keep_prob < 1.0:
            raise ValueError(f"init_keep_prob must be in (0, 1), found {init_keep_prob}")
        if not (l < 0.0 and r > 1.0 and beta > 0.0 and lr_scale > 0.0):
            raise ValueError(f"need l < 0 < 1 < r, beta > 0, lr_scale > 0; found l={l}, r={r}, beta={beta}")
        self.num_units = num_units
        self.beta, self.l, self.r, self.lr_scale = beta, l, r, lr_scale
        self.shift = beta * math.log(-l / r)  # log_alpha offset of P(z > 0)
        init = math.log(init_keep_prob / (1.0 - init_keep_prob))
        self.log_alpha_scaled = nn.Parameter(torch.full((num_units,), init / lr_scale))
        # Fixed evaluation values (set by `fix`): the exact masks the pruned model is cut with.
        self.register_buffer("fixed", None, persistent=False)

    @property
    def log_alpha(self) -> Tensor:
        return self.log_alpha_scaled * self.lr_scale

    def keep_prob(self) -> Tensor:
        """(num_units,) P(z != 0) = sigmoid(log_alpha - beta * log(-l / r)); differentiable."""
        return torch.sigmoid(self.log_alpha - self.shift)

    def l0_norm(self) -> Tensor:
        """Expected number of nonzero gates."""
        return self.keep_prob().sum()

    def sample(self) -> Tensor:
        """(num_units,) a stretched, clamped binary-concrete sample (training)."""
        log_alpha = self.log_alpha
        u = torch.rand_like(log_alpha).clamp(1e-6, 1.0 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        return (s * (self.r - self.l) + self.l).clamp(0.0, 1.0)

    @torch.no_grad()
    def deterministic(self) -> Tensor:
        """(num_units,) evaluation values, DPHuBERT's rule: the round(num_units - L0) gates with the
        smallest log_alpha are 0, the others sigmoid(0.8 log_alpha / beta) > 0. Keeping as many units
        as the expected count says ties the deterministic parameter count to the expected one."""
        if self.fixed is not None:
            return self.fixed
        log_alpha = self.log_alpha
        num_zeros = round(self.num_units - float(self.l0_norm()))
        z = torch.sigmoid(log_alpha / self.beta * 0.8)
        if num_zeros > 0:
            z[torch.topk(log_alpha, k=num_zeros, largest=False).indices] = 0.0
        return z

    @torch.no_grad()
    def fix(self, values: Tensor | None) -> None:
        """Freeze the evaluation values (None: back to the rule)."""
        if values is not None and values.shape != (self.num_units,):
            raise ValueError(f"fixed gate values need shape ({self.num_units},), found {tuple(values.shape)}")
        self.fixed = None if values is None else values.detach().clone().to(self.log_alpha_scaled.device)

    def forward(self) -> Tensor:
        """A sample in training mode, the deterministic values in eval mode."""
        return self.sample() if self.training else self.deterministic()

    def extra_repr(self) -> str:
        return (
            f"num_units={self.num_units}, beta={self.beta:.3g}, l={self.l}, r={self.r}, "
            f"lr_scale={self.lr_scale}"
        )
