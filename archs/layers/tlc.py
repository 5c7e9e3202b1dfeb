"""Test-time Local Converter (TLC; Chu et al., arXiv:2112.04491) as used by NAFNet's `*Local` classes.

A model trained on crops sees its global average pools cover one crop. On a full image at test time the same pools
average over far more, which shifts the statistics. TLC swaps every `AdaptiveAvgPool2d(1)` for a box filter whose
window is the area the pool saw in training, scaled by base_size/train_size (upstream: base = 1.5 x train). Every
pixel then sees training-like local statistics, and the output depends only on a bounded neighbourhood.

Upstream (megvii-research/NAFNet `local_arch.py`) fixes each window by running one forward pass on a random
`train_size` image inside `__init__`. Here the windows are computed from the U-Net level each pool sits at, which
gives the same numbers without that forward pass (and works on the meta device).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_REDUCTIONS = (5, 4, 3, 2, 1)  # fast_imp's candidate subsampling strides, largest first (upstream `rs`)


class LocalAvgPool2d(nn.Module):
    """Drop-in for `AdaptiveAvgPool2d(1)`: box mean over `kernel_size`, replicate-padded back to the input size.

    Falls back to the global mean when the window covers the whole map, as upstream `AvgPool2d` does.
    """

    def __init__(
        self,
        kernel_size: tuple[int, int],
        *,
        fast_imp: bool = False,
        max_r: tuple[int, int] = (5, 5),
        auto_pad: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.fast_imp = fast_imp
        self.max_r = max_r
        self.auto_pad = auto_pad

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, fast_imp={self.fast_imp}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        h, w = x.shape[-2:]
        if kh >= h and kw >= w:
            return F.adaptive_avg_pool2d(x, 1)
        dtype = x.dtype
        # integral images lose everything in half precision (sums overflow float16 at 65504), so run them in fp32
        xs = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        out = self._fast(xs) if self.fast_imp else None
        if out is None:
            out = self._exact(xs)
        if self.auto_pad:
            oh, ow = out.shape[-2:]
            pad = ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2)
            out = F.pad(out, pad, mode="replicate")
        return out.to(dtype)

    def _exact(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k1, k2 = min(h, self.kernel_size[0]), min(w, self.kernel_size[1])
        s = F.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))  # leading zero row/column: sums of empty boxes
        # same summation order as upstream, so float32 results match it bit for bit
        out = s[..., k1:, k2:] + s[..., :-k1, :-k2] - s[..., :-k1, k2:] - s[..., k1:, :-k2]
        return out / (k1 * k2)

    def _fast(self, x: torch.Tensor) -> torch.Tensor | None:
        """Upstream's `fast_imp`: integral image of a subsampled grid, nearest-upsampled; not equal to `_exact`."""
        h, w = x.shape[-2:]
        r1 = min(self.max_r[0], next(r for r in _REDUCTIONS if h % r == 0))
        r2 = min(self.max_r[1], next(r for r in _REDUCTIONS if w % r == 0))
        s = x[..., ::r1, ::r2].cumsum(dim=-1).cumsum(dim=-2)
        sh, sw = s.shape[-2:]
        k1, k2 = min(sh - 1, self.kernel_size[0] // r1), min(sw - 1, self.kernel_size[1] // r2)
        if k1 < 1 or k2 < 1:
            return None  # upstream divides by zero here; the exact box filter is the sensible answer
        out = s[..., :-k1, :-k2] - s[..., :-k1, k2:] - s[..., k1:, :-k2] + s[..., k1:, k2:]
        out = out / (k1 * k2)
        return F.interpolate(out, scale_factor=(r1, r2))


def default_base_size(train_size: Sequence[int], base_size: int | Sequence[int] | None) -> tuple[int, int]:
    """Upstream's `base_size = (int(H * 1.5), int(W * 1.5))` unless given explicitly."""
    th, tw = int(train_size[-2]), int(train_size[-1])
    if base_size is None:
        return int(th * 1.5), int(tw * 1.5)
    if isinstance(base_size, int):
        return base_size, base_size
    bh, bw = base_size
    return int(bh), int(bw)


def localize(
    levels: Iterable[tuple[int, nn.Module]],
    *,
    train_size: Sequence[int],
    base_size: tuple[int, int],
    fast_imp: bool,
    multiple_of: int,
) -> int:
    """Replace every `AdaptiveAvgPool2d(1)` under each (U-Net level, module) with a `LocalAvgPool2d`.

    Level l runs at 1/2**l of the input, which the model pads to `multiple_of` first; at training size that gives
    the feature size each pool saw, hence upstream's window `feat * base // train` per axis. Returns the count.
    """
    th, tw = int(train_size[-2]), int(train_size[-1])
    ph, pw = math.ceil(th / multiple_of) * multiple_of, math.ceil(tw / multiple_of) * multiple_of
    count = 0
    for level, module in levels:
        fh, fw = ph >> level, pw >> level
        kernel = (fh * base_size[0] // th, fw * base_size[1] // tw)
        max_r = (max(1, _REDUCTIONS[0] * fh // th), max(1, _REDUCTIONS[0] * fw // tw))
        targets = [
            (parent, name)
            for parent in module.modules()
            for name, child in parent.named_children()
            if isinstance(child, nn.AdaptiveAvgPool2d)
        ]
        for parent, name in targets:
            pool = getattr(parent, name)
            if pool.output_size not in (1, (1, 1)):
                raise ValueError(f"TLC converts only global pools, found output_size={pool.output_size}")
            setattr(parent, name, LocalAvgPool2d(kernel, fast_imp=fast_imp, max_r=max_r))
            count += 1
    return count
