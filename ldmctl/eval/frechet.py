"""Fréchet distance between Gaussians fitted to two feature sets, in float64 torch.

d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})   (Dowson & Landau 1982)

This is the formula behind FID (Heusel et al. 2017), but the name of the figure depends on the
feature space: ldmctl cannot download Inception weights, so it reports the distance in the
feature space of its own classifier (:mod:`ldmctl.eval.classifier`) as **FD_cls**, "Fréchet
distance in the feature space of the ldmctl classifier". It is never comparable with published
FID numbers.

Matrix square roots use symmetric eigen-decompositions (``torch.linalg.eigh``) with tiny
negative eigenvalues, which are round-off in PSD matrices, clamped to 0. No scipy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Return the mean (D,) and unbiased covariance (D, D) of ``features`` (N, D), in float64."""
    if features.dim() != 2:
        raise ValueError(f"expected features of shape (N, D), got {tuple(features.shape)}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {n}")
    f = features.detach().to(torch.float64)
    mu = f.mean(0)
    centred = f - mu
    sigma = centred.T @ centred / (n - 1)  # (D, D)
    return mu, sigma


def _psd_sqrt(m: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix via ``eigh``."""
    m = (m + m.T) / 2  # remove round-off asymmetry before eigh, which reads one triangle
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Tr((S1^{1/2} S2 S1^{1/2})^{1/2}) equals Tr((S1 S2)^{1/2}) but is computed on a symmetric
    PSD matrix, so it needs only ``eigh`` and stays real.
    """
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    s1, s2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    if mu1.shape != mu2.shape or mu1.dim() != 1:
        raise ValueError(f"expected two means of one shape (D,), got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"expected covariances of shape ({d}, {d}), got {tuple(s1.shape)} and {tuple(s2.shape)}")
    # 1. the mean term
    mean_term = (mu1 - mu2).pow(2).sum()
    # 2. Tr((S1^{1/2} S2 S1^{1/2})^{1/2}) from the eigenvalues of that symmetric PSD product
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    inner = (inner + inner.T) / 2
    cross = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()
    # 3. combine; round-off can leave a tiny negative value for identical distributions
    fd = mean_term + torch.trace(s1) + torch.trace(s2) - 2 * cross
    return max(float(fd), 0.0)


def frechet_distance_features(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features, got {tuple(a.shape)} and {tuple(b.shape)}")
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


__all__ = ["frechet_distance", "frechet_distance_features", "gaussian_stats"]
