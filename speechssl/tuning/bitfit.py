"""BitFit (Ben Zaken et al., 2022): train only the bias terms.

"Bias" means every parameter named `*.bias`: Linear, convolution and
LayerNorm biases (BitFit trains the LayerNorm shift too). The conv frontend
stays frozen by default, as in every other tuning method here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True, kw_only=True)
class BitFitConfig:
    # also the conv frontend's biases (only conv_bias / LayerNorm models have any)
    include_frontend: bool = False
    include_layer_norm: bool = True  # LayerNorm shifts (beta) count as biases, as in the paper

    def __post_init__(self) -> None:
        for name in ("include_frontend", "include_layer_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, found {getattr(self, name)!r}")


def bias_names(module: nn.Module, config: BitFitConfig, *, frontend_prefix: str) -> list[str]:
    """Qualified names of the parameters BitFit trains under `module`."""
    norms = {f"{n}.bias" for n, m in module.named_modules() if isinstance(m, nn.LayerNorm)}
    names = []
    for name, _ in module.named_parameters():
        if not name.endswith(".bias"):
            continue
        if not config.include_frontend and name.startswith(frontend_prefix):
            continue
        if not config.include_layer_norm and name in norms:
            continue
        names.append(name)
    return names
