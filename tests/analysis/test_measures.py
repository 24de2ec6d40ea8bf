"""RankMe and linear CKA against their definitions (Garrido et al. 2023; Kornblith et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechssl.analysis.cka import cka_matrix, linear_cka
from speechssl.analysis.rankme import rankme


def rank_k(n: int, d: int, k: int, *, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    """(n, d) of rank k with k equal singular values: U[:, :k] diag(scale) V[:, :k]^T."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))  # (n, k) orthonormal columns
    v, _ = np.linalg.qr(rng.standard_normal((d, k)))  # (d, k)
    return scale * u @ v.T


@pytest.mark.parametrize("k", [1, 2, 7, 31])
def test_rankme_of_rank_k_data_with_equal_singular_values_is_k(k):
    assert rankme(rank_k(257, 33, k, seed=k)) == pytest.approx(k, abs=1e-6)
    assert rankme(torch.from_numpy(rank_k(40, 97, k)).float()) == pytest.approx(k, abs=1e-4)  # float32 in


def test_rankme_follows_the_entropy_of_the_normalised_singular_values():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((50, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((6, 4)))
    sigma = np.array([4.0, 2.0, 1.0, 1.0])
    p = sigma / sigma.sum()
    expected = np.exp(-(p * np.log(p)).sum())  # exp(H(p)) = 3.364...
    assert rankme(u @ np.diag(sigma) @ v.T) == pytest.approx(expected, rel=1e-9)
    assert 1 < expected < 4


def test_rankme_of_constant_and_zero_embeddings():
    constant = np.tile(np.random.default_rng(0).standard_normal(16), (100, 1))
    assert rankme(constant) == pytest.approx(1.0, abs=1e-6)  # a collapsed representation
    assert rankme(np.zeros((10, 4))) == 0.0
    with pytest.raises(ValueError, match="NaN or infinite"):
        rankme(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="samples, dims"):
        rankme(np.ones(5))


def test_rankme_is_near_the_dimension_for_white_noise_and_bounded_by_it():
    x = np.random.default_rng(0).standard_normal((20000, 24))
    assert 23.0 < rankme(x) <= 24.0


def test_cka_of_a_representation_with_itself_is_one_and_it_is_symmetric():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 17)), rng.standard_normal((300, 5))
    y = np.hstack([y, x[:, :3]])  # shares something with x
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert 0.05 < linear_cka(x, y) < 0.95


@pytest.mark.parametrize("n", [300, 9])  # features form and (n < dims) Gram form
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling_not_to_any_map(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 13)) @ rng.standard_normal((13, 13))  # correlated columns
    y = np.tanh(x[:, :7]) + 0.3 * rng.standard_normal((n, 7))
    q, _ = np.linalg.qr(rng.standard_normal((13, 13)))  # orthogonal
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 5.0, y) == pytest.approx(base, abs=1e-10)  # centred: an offset changes nothing
    if n > 13:  # a non-orthogonal invertible map does change it (with n <= 13 the rows span everything)
        assert abs(linear_cka(x @ np.diag(np.linspace(0.1, 10, 13)), y) - base) > 1e-3


def test_cka_gram_and_feature_forms_agree():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 30)), rng.standard_normal((40, 50))
    y[:, :30] += x
    gram = linear_cka(x, y)  # 40 rows < 50 columns: Gram form
    xc, yc = x - x.mean(0), y - y.mean(0)
    features = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert gram == pytest.approx(features, abs=1e-12)


def test_cka_of_independent_random_features_is_near_zero():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20000, 8)), rng.standard_normal((20000, 8))
    assert linear_cka(x, y) < 0.01  # expectation ~ d1 d2 / (n sqrt(d1 d2)) = 4e-4


def test_cka_matrix_layers_by_layers():
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((100, 6))]
    for _ in range(3):
        layers.append(np.tanh(layers[-1] @ rng.standard_normal((6, 6))))
    same = cka_matrix(layers)
    assert same.shape == (4, 4) and np.allclose(np.diag(same), 1.0) and np.allclose(same, same.T)
    cross = cka_matrix(layers, layers[:2])
    assert cross.shape == (4, 2) and np.allclose(cross, same[:, :2])
    assert np.isnan(cka_matrix([np.ones((5, 3))], [layers[0][:5]])[0, 0])  # a constant layer: no variance
    with pytest.raises(ValueError, match="same inputs"):
        cka_matrix(layers, [layers[0][:50]])
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(layers[0], layers[1][:99])
