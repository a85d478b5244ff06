"""Fréchet distance between Gaussians fitted to two feature sets, in float64 torch.

d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})   (Dowson & Landau 1982)

This is the formula behind FID (Heusel et al. 2017), but the name of the figure depends on the
feature space: in the pool features of the FID Inception (:mod:`ldmctl.eval.inception`, weights
that must already be on the machine) it is **FID**; in the feature space of ldmctl's own
classifier (:mod:`ldmctl.eval.classifier`), the offline alternative, it is **FD_cls**, "Fréchet
distance in the feature space of the ldmctl classifier", never comparable with published FIDs.

Matrix square roots use symmetric eigen-decompositions (``torch.linalg.eigh``) with tiny
negative eigenvalues, which are round-off in PSD matrices, clamped to 0. No scipy.
"""

from __future__ import annotations

import math

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
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D).

    Takes the cheaper of two exact routes: D x D covariances (:func:`frechet_distance`), or,
    when the sets are small next to D (e.g. 1,000 Inception features of 2,048 dimensions), the
    N x M cross-Gram matrix of :func:`_frechet_from_samples`.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features, got {tuple(a.shape)} and {tuple(b.shape)}")
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    if n * m * min(n, m) < d**3:
        return _frechet_from_samples(a, b)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _frechet_from_samples(a: Tensor, b: Tensor) -> float:
    """The same distance from the centred samples A (N, D) and B (M, D) themselves.

    With S1 = A^T A / (N-1) and S2 = B^T B / (M-1), the non-zero eigenvalues of S1 S2 are those
    of (A B^T)(A B^T)^T / ((N-1)(M-1)), i.e. the squared singular values of A B^T scaled, so
    Tr((S1 S2)^{1/2}) = sum(svd(A B^T)) / sqrt((N-1)(M-1)); Tr(S1) = ||A||_F^2 / (N-1).
    """
    mu1, ca = _centred(a)  # (N, D)
    mu2, cb = _centred(b)  # (M, D)
    n, m = a.shape[0], b.shape[0]
    cross = torch.linalg.svdvals(ca @ cb.T).sum() / math.sqrt((n - 1) * (m - 1))  # (N, M) cross-Gram
    fd = (mu1 - mu2).pow(2).sum() + ca.pow(2).sum() / (n - 1) + cb.pow(2).sum() / (m - 1) - 2 * cross
    return max(float(fd), 0.0)


def _centred(features: Tensor) -> tuple[Tensor, Tensor]:
    """The mean (D,) and the centred features (N, D), in float64."""
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {features.shape[0]}")
    f = features.detach().to(torch.float64)
    mu = f.mean(0)
    return mu, f - mu


__all__ = ["frechet_distance", "frechet_distance_features", "gaussian_stats"]
