"""Float32 helpers for the Fourier units of SFHformer and GFISRV2.

torch.fft has no bfloat16 kernels on the CPU and handles float16 only for power-of-two sizes on CUDA, and a
spectrum is a poor fit for 16-bit floats anyway: with norm="ortho" the DC coefficient is sqrt(H*W) x the mean, so a
feature map of mean 32 at 2048x2048 already exceeds float16's range. The Fourier units therefore run their whole
spectral path (FFT, the layers on the spectrum, inverse FFT) in float32, casting their small weights on the fly,
and hand the result back in the caller's dtype. With float32 weights and inputs every cast is a no-op, so the
float32 path is exactly the upstream computation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def float32_region(x: torch.Tensor) -> Iterator[None]:
    """Autocast off for x's device, so spectral convs are not cast back down under an outer autocast."""
    kind = x.device.type
    if kind in ("cpu", "cuda", "mps", "xpu") and torch.is_autocast_enabled(kind):
        with torch.autocast(kind, enabled=False):
            yield
    else:
        yield


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def conv32(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a float32 x, whatever dtype the conv's parameters have been cast to."""
    if conv.weight.dtype == x.dtype:
        return conv(x)
    return F.conv2d(x, conv.weight.float(), _f32(conv.bias), conv.stride, conv.padding, conv.dilation, conv.groups)


def batch_norm32(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """bn(x) for a float32 x. With parameters in another dtype (inference in bf16/fp16) the running statistics are
    read as float32 copies; training in that state would not update them, which nobody does."""
    if bn.weight.dtype == x.dtype and (bn.running_mean is None or bn.running_mean.dtype == x.dtype):
        return bn(x)
    use_batch = bn.training or bn.running_mean is None
    return F.batch_norm(x, _f32(bn.running_mean), _f32(bn.running_var), _f32(bn.weight), _f32(bn.bias),
                        use_batch, 0.0, bn.eps)


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
