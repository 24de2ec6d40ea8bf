"""Linear CKA (centred kernel alignment): how alike two representations of the same inputs are.

Kornblith et al., "Similarity of neural network representations revisited" (ICML 2019), eq. 5:
for X (N x D1) and Y (N x D2), rows the same N inputs (here frames) and columns centred,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It is 1 for X = Y, unchanged by an orthogonal transform or an isotropic scaling of either side
(not by an arbitrary invertible one), and near 0 for independent features. The same value is
HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the Gram matrices K = X X^T, L = Y Y^T: we use
that form when N is smaller than the widths (it is then the cheaper one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def _centred(x: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(x).to(torch.float64)
    if x.ndim != 2:
        raise ValueError(f"CKA needs (samples, dims) matrices, found shape {tuple(x.shape)}")
    return x - x.mean(dim=0, keepdim=True)


def _similarity(x: Tensor, y: Tensor) -> Tensor:
    """<X X^T, Y Y^T> for centred X, Y: ||Y^T X||_F^2, or via the Gram matrices when N is small."""
    n = x.shape[0]
    if n < max(x.shape[1], y.shape[1]):
        return ((x @ x.T) * (y @ y.T)).sum()  # (N, N) Gram matrices
    return (y.T @ x).square().sum()  # (D2, D1)


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Linear CKA of (N, D1) and (N, D2) features of the same N inputs, in [0, 1].

    NaN when one side is constant over the inputs (no variance: nothing to compare)."""
    xc, yc = _centred(x), _centred(y)
    if xc.shape[0] != yc.shape[0]:
        raise ValueError(
            f"CKA compares features of the same inputs, found {xc.shape[0]} and {yc.shape[0]} rows"
        )
    xy = _similarity(xc, yc)
    denom = torch.sqrt(_similarity(xc, xc) * _similarity(yc, yc))
    if not bool(denom > 0):
        return float("nan")
    return float((xy / denom).item())


def cka_matrix(
    xs: Sequence[Tensor | np.ndarray], ys: Sequence[Tensor | np.ndarray] | None = None
) -> np.ndarray:
    """(len(xs), len(ys)) linear CKA of every pair, e.g. every layer of one model against every layer
    of another on the same frames; `ys` None: `xs` against itself (symmetric, 1 on the diagonal).
    Each side is centred and its self-similarity computed once."""
    same = ys is None
    xc = [_centred(x) for x in xs]
    yc = xc if same else [_centred(y) for y in ys]
    rows = {int(x.shape[0]) for x in (*xc, *yc)}
    if len(rows) > 1:
        raise ValueError(f"CKA compares features of the same inputs, found row counts {sorted(rows)}")
    x_norm = [torch.sqrt(_similarity(x, x)) for x in xc]
    y_norm = x_norm if same else [torch.sqrt(_similarity(y, y)) for y in yc]
    out = np.full((len(xc), len(yc)), np.nan)
    for i, x in enumerate(xc):
        for j, y in enumerate(yc):
            if same and j < i:
                out[i, j] = out[j, i]
                continue
            denom = x_norm[i] * y_norm[j]
            if bool(denom > 0):
                out[i, j] = float((_similarity(x, y) / denom).item())
    return out
