"""PSNR and SSIM with the conventions of the restoration literature (BasicSR's `calculate_psnr`/`calculate_ssim`).

Images are HxWx3 RGB (or HxW gray) float arrays on the [0, 1] scale; `data_range` is 1.
* `y_channel=True` compares the luma Y of BT.601 YCbCr in studio range, Y = 16 + 65.481 R + 128.553 G + 24.966 B
  (MATLAB `rgb2ycbcr`), on the 0-255 scale divided by 255, as SR papers do. `y_channel=False` uses RGB.
* SSIM is Wang et al. (2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, statistics over the "valid"
  region only (5 px lost per side), per channel then averaged. This equals skimage's
  `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`.
* `crop_border` pixels are dropped on every side first (SR convention: crop = scale).
Computations run in float64.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 studio-range luma of an RGB image in [0, 1]; the result is in [16/255, 235/255]."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB, got {img.shape}")
    return img @ _Y_WEIGHTS + 16.0 / 255.0


def _prepare(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel and a.ndim == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, *, crop_border: int = 0, y_channel: bool = False,
         data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(range^2 / MSE); inf for identical images."""
    a, b = _prepare(a, b, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window() -> np.ndarray:
    k = cv2.getGaussianKernel(11, 1.5)
    return k @ k.T


def _ssim_2d(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    w = _gaussian_window()

    def filt(x: np.ndarray) -> np.ndarray:
        # correlation with a symmetric window; the 5-px border where the window leaves the image is dropped
        return cv2.filter2D(x, -1, w, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, *, crop_border: int = 0, y_channel: bool = False,
         data_range: float = 1.0) -> float:
    """Structural similarity (Gaussian window 11x11, sigma 1.5), mean over channels; 1 for identical images."""
    a, b = _prepare(a, b, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[:2]}")
    if a.ndim == 2:
        return _ssim_2d(a, b, data_range)
    return float(np.mean([_ssim_2d(a[..., c], b[..., c], data_range) for c in range(a.shape[2])]))


def psnr_batch(a: torch.Tensor, b: torch.Tensor, *, crop_border: int = 0, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample RGB PSNR of two (B, C, H, W) tensors, in float32 on their device (training validation)."""
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    mse = (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return 10.0 * torch.log10(data_range**2 / mse)


__all__ = ["psnr", "psnr_batch", "rgb_to_y", "ssim"]
