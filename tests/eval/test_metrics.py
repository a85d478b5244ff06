from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldmctl.eval.metrics import bicubic_roundtrip, psnr, quantize_8bit, ssim


def _pair(generator, shape=(2, 3, 32, 40)):
    x = torch.rand(shape, generator=generator)
    y = (x + 0.1 * torch.randn(shape, generator=generator)).clamp(0, 1)
    return x, y


def test_psnr_closed_form(generator):
    x, y = _pair(generator)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    assert torch.allclose(psnr(x, y), 10 * torch.log10(1 / mse), atol=1e-4)
    assert math.isinf(psnr(x, x)[0].item())


def test_psnr_matches_skimage(generator):
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _pair(generator)
    for i in range(2):
        ref = metrics.peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=1.0)
        assert psnr(x, y)[i].item() == pytest.approx(ref, abs=1e-3)


def test_ssim_matches_skimage(generator):
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _pair(generator)
    ours = ssim(x, y)
    for i in range(2):
        ref = metrics.structural_similarity(
            x[i].permute(1, 2, 0).double().numpy(),
            y[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)


def test_ssim_identity_and_range(generator):
    x, y = _pair(generator)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    s = ssim(x, y)
    assert ((s > -1) & (s < 1)).all()
    with pytest.raises(ValueError):
        ssim(x[..., :5, :5], y[..., :5, :5])


def test_quantize_and_bicubic(generator):
    x = torch.rand(1, 3, 33, 17, generator=generator)
    q = quantize_8bit(x)
    assert torch.allclose(q * 255, torch.round(q * 255))
    assert (q - x).abs().max() <= 0.5 / 255 + 1e-7
    b = bicubic_roundtrip(x, 4)
    assert b.shape == x.shape and b.min() >= 0 and b.max() <= 1
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(bicubic_roundtrip(flat, 4), flat, atol=1e-6)


def test_shape_mismatch_is_rejected(generator):
    x, _ = _pair(generator)
    with pytest.raises(ValueError):
        psnr(x, x[:, :, :10])
    assert np.isfinite(psnr(x, 1 - x).numpy()).all()
