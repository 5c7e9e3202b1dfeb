"""Real 2-D FFTs with the spectrum laid out as channels, for the Fourier units of SFHformer and GFISRV2.

torch.fft has no bfloat16 kernels on the CPU and handles float16 only for power-of-two sizes on CUDA, and a
spectrum is a poor fit for 16-bit floats anyway: with norm="ortho" the DC coefficient is sqrt(H*W) x the mean, so a
feature map of mean 32 at 2048x2048 already exceeds float16's range. Fourier units therefore run their whole
spectral path (FFT, the layers on the spectrum, inverse FFT) in float32 with `precision.conv32` /
`precision.batch_norm32` inside `precision.float32_region`, and hand the result back in the caller's dtype.
"""

from __future__ import annotations

import torch


def rfft2_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> float32 (B, 2C, H, W//2+1): ortho rFFT2, channel 2c = Re(c), 2c+1 = Im(c)."""
    b, c, h, _ = x.shape
    spec = torch.view_as_real(torch.fft.rfft2(x.float(), norm="ortho"))  # (B, C, H, W', 2)
    return spec.permute(0, 1, 4, 2, 3).reshape(b, 2 * c, h, -1)


def irfft2_interleaved(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of rfft2_interleaved: (B, 2C, H, W') with (Re, Im) channel pairs -> float32 (B, C, *size)."""
    b, c2, h, w2 = y.shape
    spec = y.float().reshape(b, c2 // 2, 2, h, w2).permute(0, 1, 3, 4, 2).contiguous()
    return torch.fft.irfft2(torch.view_as_complex(spec), s=size, norm="ortho")
