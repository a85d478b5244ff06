from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmctl.eval.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel


def _brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written as the three double sums."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(a @ b) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kernel_is_the_cubic_polynomial(generator):
    x, y = torch.randn(3, 5, generator=generator), torch.randn(4, 5, generator=generator)
    k = polynomial_kernel(x, y)
    assert k.shape == (3, 4)
    assert float(k[1, 2]) == pytest.approx((float(x[1] @ y[2]) / 5 + 1) ** 3, rel=1e-5)


def test_mmd2_matches_brute_force(generator):
    x = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(12, 4, generator=generator, dtype=torch.float64) * 1.5 + 0.3
    assert float(mmd2_unbiased(x, y)) == pytest.approx(_brute_force_mmd2(x.numpy(), y.numpy()), rel=1e-10)


def test_kid_with_whole_sets_is_the_brute_force_value(generator):
    # a subset as large as both sets is a permutation of them: every estimate is the same
    x = torch.randn(10, 6, generator=generator)
    y = torch.randn(10, 6, generator=generator) + 0.5
    mean, std = kernel_inception_distance(x, y, subsets=5, subset_size=1000)
    assert mean == pytest.approx(_brute_force_mmd2(x.double().numpy(), y.double().numpy()), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_of_one_distribution_is_zero_in_expectation(generator):
    # two independent draws; a set against itself is not such a pair (shared points make the
    # cross term larger, so the estimate goes negative)
    a = torch.randn(400, 8, generator=generator)
    b = torch.randn(400, 8, generator=generator)
    same, same_std = kernel_inception_distance(a, b, subsets=50, subset_size=100, generator=generator)
    other, _ = kernel_inception_distance(a, b + 0.5, subsets=50, subset_size=100, generator=generator)
    # unbiased: the mean over subsets sits within a few standard errors of 0
    assert abs(same) < 4 * same_std / np.sqrt(50) + 1e-3
    assert other > 20 * abs(same)


def test_kid_is_seeded_and_clamps_the_subset_size(generator):
    a, b = torch.randn(30, 4, generator=generator), torch.randn(20, 4, generator=generator)
    one = kernel_inception_distance(a, b, subsets=4, generator=torch.Generator().manual_seed(1))
    two = kernel_inception_distance(a, b, subsets=4, generator=torch.Generator().manual_seed(1))
    assert one == two  # subset_size 1000 is clamped to 20


def test_kid_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError):
        kernel_inception_distance(torch.zeros(4, 3), torch.zeros(4, 2))
