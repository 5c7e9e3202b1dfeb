"""Normalisations over the channels of NCHW maps, with the parameter names upstream checkpoints use.

* `LayerNorm2d`: NAFNet/BasicSR `LayerNorm2d` (weight, bias; eps 1e-6), also used by CAMixerSR, RHA, GFISRV2,
  DSwinIR's offset nets and AdaRevD's decoders; `channel_layer_norm` is its function.
* `RestormerLayerNorm`: Restormer's `LayerNorm(dim, LayerNorm_type)` with its `body.weight` (/ `body.bias`) keys,
  "WithBias" (mean-subtracting) or "BiasFree" (scale only); eps 1e-5.
* `RMSNorm2d`: umzi's RMSNorm (scale, offset).

Statistics of float16/bfloat16 inputs are taken in float32: squared deviations overflow float16 for activations
above ~256, and eps 1e-6 is below float16's normal range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import LOW_PRECISION

LAYER_NORM_TYPES = ("WithBias", "BiasFree")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (upstream `arch_util.LayerNorm2d`, eps 1e-6).

    Upstream uses a hand-written autograd Function of six elementwise passes; `F.layer_norm` on a channels-last
    view is the same function in one fused kernel that takes the statistics of half inputs in float32 (the squared
    deviations overflow float16 for activations above ~256, and eps=1e-6 is below float16's normal range). The
    output keeps the input's memory format.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_layer_norm(x, self.weight, self.bias, self.eps)


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over dim 1 of an NCHW map in one fused pass, float32 statistics for half inputs.

    A channels-last input is normalised in place of layout; an NCHW one is permuted (one copy in `F.layer_norm`)
    and the result copied back to NCHW, so the layers after it see the layout they were given.
    """
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


class WithBiasLayerNorm(nn.Module):
    """Holds the affine parameters of a mean-subtracting LayerNorm (upstream `WithBias_LayerNorm`)."""

    def __init__(self, normalized_shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))


class BiasFreeLayerNorm(nn.Module):
    """Upstream `BiasFree_LayerNorm`'s scale w: x / sqrt(var(x) + eps) * w, x itself is not centred."""

    def __init__(self, normalized_shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))


class RestormerLayerNorm(nn.Module):
    """Restormer's LayerNorm over the channels of an NCHW map (eps 1e-5, biased variance).

    Upstream moves channels last with einops and normalises the last axis; we normalise dim 1 directly, which is
    the same function.
    """

    def __init__(self, dim: int, LayerNorm_type: str) -> None:
        super().__init__()
        if LayerNorm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"LayerNorm_type must be one of {LAYER_NORM_TYPES}, got {LayerNorm_type!r}")
        self.body: nn.Module = BiasFreeLayerNorm(dim) if LayerNorm_type == "BiasFree" else WithBiasLayerNorm(dim)
        self.eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight: torch.Tensor = self.body.weight
        bias: torch.Tensor | None = getattr(self.body, "bias", None)
        if bias is not None:
            # F.layer_norm over a channels-last view: fused, and it accumulates half inputs in float32 itself
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, self.eps)
            return y.permute(0, 3, 1, 2)
        dtype = x.dtype
        xf = x.float() if dtype in LOW_PRECISION else x
        var = xf.var(dim=1, keepdim=True, unbiased=False)
        y = xf / torch.sqrt(var + self.eps) * weight.to(xf.dtype).view(1, -1, 1, 1)
        return y.to(dtype)


class RMSNorm2d(nn.Module):
    """x / (||x||_2 over channels / sqrt(C) + eps) * scale + offset, statistics in float32 (umzi's `RMSNorm`)."""

    def __init__(self, dim: int = 64, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim, 1, 1))
        self.offset = nn.Parameter(torch.zeros(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        rms = xf.norm(2, dim=1, keepdim=True) * (x.shape[1] ** -0.5)
        return (self.scale.float() * (xf / (rms + self.eps)) + self.offset.float()).to(x.dtype)
