"""Half-precision helpers: which dtypes count as low precision, and float32 islands inside a half-precision model.

Models run in float16/bfloat16 keep a few computations in float32 where 16-bit floats break them (statistics over
many pixels, spectra, sampling grids, exp() chains). These helpers do that the same way everywhere: cast the input
up, cast small weights on the fly, hand the result back in the caller's dtype. With float32 weights and inputs
every cast is a no-op, so the float32 path is exactly the plain computation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

LOW_PRECISION = (torch.float16, torch.bfloat16)


def is_low_precision(dtype: torch.dtype) -> bool:
    return dtype in LOW_PRECISION


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in float32 when it is float16/bfloat16, else x itself."""
    return x.float() if x.dtype in LOW_PRECISION else x


def f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """An optional tensor (a bias) as float32."""
    return None if t is None else t.float()


@contextlib.contextmanager
def float32_region(x: torch.Tensor) -> Iterator[None]:
    """Autocast off for x's device, so float32 layers are not cast back down under an outer autocast."""
    kind = x.device.type
    if kind in ("cpu", "cuda", "mps", "xpu") and torch.is_autocast_enabled(kind):
        with torch.autocast(kind, enabled=False):
            yield
    else:
        yield


def conv32(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a float32 x, whatever dtype the conv's parameters have been cast to."""
    if conv.weight.dtype == x.dtype:
        return conv(x)
    return F.conv2d(x, conv.weight.float(), f32(conv.bias), conv.stride, conv.padding, conv.dilation, conv.groups)


def batch_norm32(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """bn(x) for a float32 x. With parameters in another dtype (inference in bf16/fp16) the running statistics are
    read as float32 copies; training in that state would not update them, which nobody does."""
    if bn.weight.dtype == x.dtype and (bn.running_mean is None or bn.running_mean.dtype == x.dtype):
        return bn(x)
    use_batch = bn.training or bn.running_mean is None
    return F.batch_norm(x, f32(bn.running_mean), f32(bn.running_var), f32(bn.weight), f32(bn.bias),
                        use_batch, 0.0, bn.eps)
