"""Magic Kernel Sharp 2021 resampling (John Costella's magic kernel), as Philip Hofmann's families use it
(ParagonSR's "magic-conv" upsampler, ParagonSR2's classical base path): a fixed 7-tap sharpening filter on the
low-resolution map, nearest-neighbour upscaling, then the fixed 5-tap magic B-spline as reconstruction filter.

Both filters are separable and depthwise: a (1, k) conv along W then a (k, 1) conv along H, zero padded ("same").
Upstream keeps the taps as (frozen) conv weights in the state dict, so checkpoints carry them; the families load
whatever the file holds and only initialise with these values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The 5-tap magic kernel (a quadratic B-spline sampled at half-pixels): the reconstruction / anti-alias filter.
MAGIC_KERNEL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
# The 7-tap "sharp 2021" correction filter applied before resampling.
MAGIC_SHARP_2021 = (-1 / 32, 0.0, 9 / 32, 16 / 32, 9 / 32, 0.0, -1 / 32)


def separable_convs(channels: int, taps: tuple[float, ...]) -> tuple[nn.Conv2d, nn.Conv2d]:
    """(horizontal, vertical) depthwise bias-free convs holding `taps`, frozen (requires_grad False)."""
    k = len(taps)
    h = nn.Conv2d(channels, channels, (1, k), padding=(0, k // 2), groups=channels, bias=False)
    v = nn.Conv2d(channels, channels, (k, 1), padding=(k // 2, 0), groups=channels, bias=False)
    kernel = torch.tensor(taps, dtype=torch.float32)
    with torch.no_grad():
        if not h.weight.is_meta:
            h.weight.copy_(kernel.view(1, 1, 1, k).expand(channels, 1, 1, k))
            v.weight.copy_(kernel.view(1, 1, k, 1).expand(channels, 1, k, 1))
    h.weight.requires_grad_(False)
    v.weight.requires_grad_(False)
    return h, v


def nearest_upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour upscaling by an integer factor (F.interpolate(..., mode="nearest"), as upstream)."""
    return F.interpolate(x, scale_factor=scale, mode="nearest")
