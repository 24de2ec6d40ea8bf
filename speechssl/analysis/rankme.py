"""RankMe: the effective rank of a set of embeddings, a label-free predictor of downstream quality.

Garrido et al., "RankMe: Assessing the downstream performance of pretrained self-supervised
representations by their rank" (ICML 2023), eq. 1-2: for embeddings Z (N x D) with singular
values sigma_1..sigma_min(N, D),

    p_k     = sigma_k / ||sigma||_1 + eps
    RankMe  = exp(-sum_k p_k log p_k)

i.e. the exponential of the entropy of the normalised singular values: D for perfectly spread
(whitened) embeddings, k for a rank-k set with equal singular values, 1 for a constant vector.
The embeddings are not centred (the paper does not centre them). eps only keeps log away from 0:
the paper's 1e-7 suits float32; we compute in float64, where 1e-12 does, so a rank-k set scores k
to 1e-9 instead of ~1e-4. RankMe can never exceed min(N, D): use many more samples than dimensions
(the paper uses 25600).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

EPS = 1e-12


def rankme(embeddings: Tensor | np.ndarray, *, eps: float = EPS) -> float:
    """RankMe of (N, D) embeddings (any float dtype; computed in float64 on their device).

    An all-zero matrix (no singular value above 0) has rank 0 and scores 0.0; a NaN or infinite
    embedding is a ValueError (the SVD of one is meaningless).
    """
    z = torch.as_tensor(embeddings)
    if z.ndim != 2 or min(z.shape) == 0:
        raise ValueError(f"RankMe needs a non-empty (samples, dims) matrix, found shape {tuple(z.shape)}")
    z = z.to(torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ValueError("RankMe: the embeddings hold NaN or infinite values")
    sigma = torch.linalg.svdvals(z)  # (min(N, D),)
    total = sigma.sum()
    if not bool(total > 0):
        return 0.0
    p = sigma / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()).item())
