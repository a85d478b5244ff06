from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmctl.eval.frechet import frechet_distance, frechet_distance_features, gaussian_stats


def _random_spd(d: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_gaussian_stats_matches_numpy(generator):
    f = torch.randn(50, 6, generator=generator)
    mu, sigma = gaussian_stats(f)
    assert mu.dtype == sigma.dtype == torch.float64
    assert mu.shape == (6,) and sigma.shape == (6, 6)
    assert np.allclose(mu.numpy(), f.double().numpy().mean(0))
    assert np.allclose(sigma.numpy(), np.cov(f.double().numpy(), rowvar=False))  # unbiased (N - 1)


def test_gaussian_stats_needs_two_vectors():
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(torch.zeros(1, 4))


def test_diagonal_closed_form(generator):
    d = 8
    mu1, mu2 = torch.randn(2, d, generator=generator, dtype=torch.float64)
    s1, s2 = torch.rand(2, d, generator=generator, dtype=torch.float64) + 0.1
    expected = (mu1 - mu2).pow(2).sum() + (s1.sqrt() - s2.sqrt()).pow(2).sum()
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-9)


def test_commuting_full_covariances(generator):
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute: Tr term is sum (sqrt(a) - sqrt(b))^2
    d = 6
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    a = torch.rand(d, generator=generator, dtype=torch.float64) + 0.05
    b = torch.rand(d, generator=generator, dtype=torch.float64) + 0.05
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    mu = torch.randn(d, generator=generator, dtype=torch.float64)
    got = frechet_distance(mu, s1, mu + 1.0, s2)
    expected = d * 1.0 + float((a.sqrt() - b.sqrt()).pow(2).sum())
    assert got == pytest.approx(expected, rel=1e-9)


def test_self_distance_is_zero_and_symmetric(generator):
    a = torch.randn(200, 16, generator=generator) * 3 + 1
    b = torch.randn(150, 16, generator=generator) * 2
    assert abs(frechet_distance_features(a, a)) < 1e-6
    # rank-deficient covariance (N < D): still zero against itself
    few = torch.randn(5, 16, generator=generator)
    assert abs(frechet_distance_features(few, few)) < 1e-6
    assert frechet_distance_features(a, b) == pytest.approx(frechet_distance_features(b, a), rel=1e-9)
    assert frechet_distance_features(a, b) > 1.0


def test_matches_scipy_sqrtm(generator):
    linalg = pytest.importorskip("scipy.linalg")
    d = 10
    for _ in range(3):
        s1, s2 = _random_spd(d, generator), _random_spd(d, generator)
        mu1 = torch.randn(d, generator=generator, dtype=torch.float64)
        mu2 = torch.randn(d, generator=generator, dtype=torch.float64)
        covmean = linalg.sqrtm(s1.numpy() @ s2.numpy())
        covmean = np.real(covmean)
        ref = float(((mu1 - mu2) ** 2).sum()) + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_shape_errors():
    with pytest.raises(ValueError):
        frechet_distance_features(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))


def test_sample_route_equals_covariance_route(generator):
    """Small sets in many dimensions take the N x M cross-Gram route; it gives the same value."""
    from ldmctl.eval.frechet import _frechet_from_samples

    for n, m, d in [(6, 9, 40), (30, 20, 8), (3, 3, 64)]:
        a = torch.randn(n, d, generator=generator) * 2 + 0.5
        b = torch.randn(m, d, generator=generator) @ torch.randn(d, d, generator=generator) / d**0.5
        via_cov = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
        # rank-deficient covariances: eigh's round-off near 0 is amplified by the square root
        assert _frechet_from_samples(a, b) == pytest.approx(via_cov, rel=1e-6)
        assert frechet_distance_features(a, b) == pytest.approx(via_cov, rel=1e-6)
    x = torch.randn(4, 2048, generator=generator)
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)
