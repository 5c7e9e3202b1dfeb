"""PSNR/SSIM against hand-computed values and the reference definition (Wang et al. 2004, BasicSR conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from restore_cli import metrics


def _rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_psnr_known_mse() -> None:
    a = np.zeros((16, 16, 3))
    assert metrics.psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01
    assert metrics.psnr(a, a + 0.01) == pytest.approx(40.0)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr(a * 255, a * 255 + 25.5, data_range=255) == pytest.approx(20.0)


def test_psnr_y_channel_known_value() -> None:
    black = np.zeros((8, 8, 3))
    white = np.ones((8, 8, 3))
    # Y spans 16..235 of 255, so the MSE of white vs black on Y is (219/255)^2
    assert metrics.psnr(black, white, y_channel=True) == pytest.approx(20 * math.log10(255 / 219))
    assert metrics.rgb_to_y(white)[0, 0] == pytest.approx(235 / 255)
    assert metrics.rgb_to_y(black)[0, 0] == pytest.approx(16 / 255)


def test_crop_border_ignores_the_border() -> None:
    a = _rand((20, 20, 3))
    b = a.copy()
    b[:2] = 0
    b[:, -2:] = 1
    assert metrics.psnr(a, b, crop_border=2) == math.inf
    assert metrics.ssim(a, b, crop_border=2) == pytest.approx(1.0)
    assert metrics.psnr(a, b) < 30


def test_ssim_identity_and_symmetry() -> None:
    a = _rand((32, 40, 3), 1)
    b = np.clip(a + 0.05 * np.random.default_rng(2).standard_normal(a.shape), 0, 1)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, a, y_channel=True) == pytest.approx(1.0)
    s = metrics.ssim(a, b)
    assert 0 < s < 1
    assert metrics.ssim(b, a) == pytest.approx(s)


def test_ssim_of_constant_images_closed_form() -> None:
    # no variance: only the luminance term remains, (2 ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.2, 0.4
    c1 = 0.01**2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    got = metrics.ssim(np.full((24, 24), a), np.full((24, 24), b))
    assert got == pytest.approx(want, rel=1e-9)


def test_ssim_matches_gaussian_filter_reference() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    a = _rand((40, 36), 3).astype(np.float64)
    b = np.clip(a + 0.1 * np.random.default_rng(4).standard_normal(a.shape), 0, 1)

    def filt(x: np.ndarray) -> np.ndarray:  # skimage's gaussian_weights=True path: truncate 3.5 -> 11x11
        return ndimage.gaussian_filter(x, 1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]

    mu_a, mu_b = filt(a), filt(b)
    va, vb, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ref = np.mean((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2)))
    assert metrics.ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_ssim_rejects_tiny_images_and_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


def test_psnr_batch_matches_numpy() -> None:
    a = _rand((2, 3, 16, 16), 5)
    b = _rand((2, 3, 16, 16), 6)
    got = metrics.psnr_batch(torch.from_numpy(a), torch.from_numpy(b), crop_border=2)
    for i in range(2):
        want = metrics.psnr(a[i].transpose(1, 2, 0), b[i].transpose(1, 2, 0), crop_border=2)
        assert float(got[i]) == pytest.approx(want, rel=1e-4)
