"""StyleGAN2's resampling ops: upfirdn2d (upsample, FIR filter, downsample) and the fused bias + leaky ReLU.

Semantics are BasicSR's (`basicsr/ops/upfirdn2d`, `basicsr/ops/fused_act`, from rosinality/NVIDIA StyleGAN2):

* `upfirdn2d(x, kernel, up, down, pad)`: insert up-1 zeros after every sample, pad with zeros (a negative pad crops),
  convolve with `kernel` (a true convolution: conv2d with the flipped kernel, as `upfirdn2d_native`), keep every
  down-th sample. `up`/`down` are an int or (x, y); `pad` is (p0, p1) for both axes or (x0, x1, y0, y1).
* `fused_leaky_relu(x, bias, negative_slope, scale)`: leaky_relu(x + bias on dim 1, negative_slope) * scale.

Each call uses the compiled kernel (csrc/upfirdn2d) for float32/float16/bfloat16 CUDA tensors when the build
succeeded and no gradient is wanted (the kernels are forward-only); otherwise the PyTorch reference below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType

import torch
import torch.nn.functional as F

from . import _build

NAME = "upfirdn2d"
_build.register(NAME, ["upfirdn2d/upfirdn2d.cpp", "upfirdn2d/upfirdn2d_kernel.cu", "upfirdn2d/fused_act_kernel.cu"])

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    """(x, y) factors from an int or a pair."""
    if isinstance(v, int):
        pair = (v, v)
    else:
        if len(v) != 2:
            raise ValueError(f"upfirdn2d: {what} must be an int or (x, y), got {v!r}")
        pair = (int(v[0]), int(v[1]))
    if min(pair) < 1:
        raise ValueError(f"upfirdn2d: {what} factors must be >= 1, got {v!r}")
    return pair


def _pads(pad: Sequence[int]) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) from (p0, p1) (both axes, BasicSR) or the four values (rosinality's order)."""
    if len(pad) == 2:
        return int(pad[0]), int(pad[1]), int(pad[0]), int(pad[1])
    if len(pad) == 4:
        return int(pad[0]), int(pad[1]), int(pad[2]), int(pad[3])
    raise ValueError(f"upfirdn2d: pad must have 2 or 4 values, got {pad!r}")


def _out_size(size: int, up: int, p0: int, p1: int, k: int, down: int) -> int:
    span = size * up + p0 + p1 - k
    if span < 0:
        raise ValueError(f"upfirdn2d: the padded signal ({size * up + p0 + p1}) is shorter than the kernel ({k})")
    return span // down + 1


def _wants_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _extension(x: torch.Tensor, *others: torch.Tensor | None) -> ModuleType | None:
    """The compiled module when this call can use it, else None (CPU, float64, autograd, failed build)."""
    if not x.is_cuda or x.dtype not in _KERNEL_DTYPES or _wants_grad(x, *others):
        return None
    return _build.load(NAME)


# ---------------------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------------------


def upfirdn2d_reference(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int],
) -> torch.Tensor:
    """Vectorised upfirdn2d: zero insertion, pad/crop, conv2d with the flipped kernel at stride `down`.

    Equal to BasicSR's upfirdn2d_native (its `[::down]` after a stride-1 conv is a strided conv). Computed in x's
    dtype, on x's device; `up`, `down` are (x, y), `pad` is (x0, x1, y0, y1).
    """
    (up_x, up_y), (down_x, down_y), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    _out_size(h, up_y, py0, py1, kh, down_y)  # validates
    _out_size(w, up_x, px0, px1, kw, down_x)
    y = x.reshape(n * c, 1, h, w)
    if up_x > 1 or up_y > 1:
        z = y.new_zeros(n * c, 1, h * up_y, w * up_x)
        z[:, :, ::up_y, ::up_x] = y
        y = z
    y = F.pad(y, [px0, px1, py0, py1])  # negative values crop
    weight = torch.flip(kernel, [0, 1]).to(device=y.device, dtype=y.dtype).reshape(1, 1, kh, kw)
    y = F.conv2d(y, weight, stride=(down_y, down_x))
    return y.reshape(n, c, y.shape[-2], y.shape[-1])


def fused_leaky_relu_reference(
    x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2, scale: float = math.sqrt(2)
) -> torch.Tensor:
    """leaky_relu(x + bias, negative_slope) * scale with bias (C,) broadcast on dim 1; in x's dtype."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


# ---------------------------------------------------------------------------------------------------------------------
# dispatchers
# ---------------------------------------------------------------------------------------------------------------------


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    pad: Sequence[int] = (0, 0),
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), FIR-filter with `kernel` (kh, kw), downsample; x (N, C, H, W).

    Output size per axis: (size * up + pad0 + pad1 - k) // down + 1.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if kernel.ndim != 2:
        raise ValueError(f"upfirdn2d: kernel must be 2-D, got shape {tuple(kernel.shape)}")
    ups, downs, pads = _pair(up, "up"), _pair(down, "down"), _pads(pad)
    ext = _extension(x, kernel)
    if ext is not None and kernel.numel() <= 4096:
        taps = kernel.detach().to(device=x.device, dtype=torch.float32).contiguous()
        return ext.upfirdn2d(x.contiguous(), taps, *ups, *downs, *pads)
    return upfirdn2d_reference(x, kernel, ups, downs, pads)


def fused_leaky_relu(
    x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2, scale: float = math.sqrt(2)
) -> torch.Tensor:
    """leaky_relu(x + bias, negative_slope) * scale, bias (C,) broadcast on dim 1 of x; output in x's dtype."""
    if bias is not None and (bias.ndim != 1 or x.ndim < 2 or bias.shape[0] != x.shape[1]):
        raise ValueError(f"fused_leaky_relu: bias {tuple(bias.shape)} does not match dim 1 of x {tuple(x.shape)}")
    ext = _extension(x, bias)
    if ext is not None:
        b = None if bias is None else bias.detach().to(device=x.device, dtype=torch.float32).contiguous()
        return ext.fused_bias_leaky_relu(x.contiguous(), b, float(negative_slope), float(scale))
    return fused_leaky_relu_reference(x, bias, negative_slope, scale)


__all__ = ["fused_leaky_relu", "fused_leaky_relu_reference", "upfirdn2d", "upfirdn2d_reference"]
