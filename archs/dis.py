"""DIS: Direct Image Supersampling (traiNNer-redux `DIS`, Philip Hofmann et al.; factories `dis_balanced` with 12
blocks and `dis_fast` with 8). Keyword names, defaults and state-dict keys are upstream's.

Convolutions (bias-free in the body) and PReLU only, a pixel-shuffle head per factor (two x2 stages for x4), and a
bilinear global skip; nothing image-wide, so tiles with the receptive radius as margin are exact.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import list_length, same_keys_and_shapes
from .spec import ArchEntry, ArchSpec, StateDict


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class FastResBlock(nn.Module):
    """x + conv(PReLU(conv(x))), bias-free 3x3s."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x))) + x


class LightBlock(nn.Module):
    """x + PReLU(pointwise(depthwise 3x3(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw_conv = DepthwiseSeparableConv(channels, channels, 3)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.dw_conv(x))


class PixelShuffleUpsampler(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels * scale**2, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(scale)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pixel_shuffle(self.conv(x)))


class DIS(nn.Module):
    """head conv + PReLU -> blocks -> fusion conv + head -> pixel-shuffle stages -> tail conv, + bilinear input."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 3, num_features: int = 32, num_blocks: int = 4,
                 scale: int = 4, use_depthwise: bool = False) -> None:
        super().__init__()
        if scale not in (1, 2, 3, 4):
            raise ValueError(f"Unsupported scale factor: {scale}")
        if out_channels != in_channels:
            raise ValueError(f"out_channels ({out_channels}) must equal in_channels ({in_channels}): the input is "
                             "added to the output")
        self.scale = scale
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.head = nn.Conv2d(in_channels, num_features, 3, padding=1)
        self.head_act = nn.PReLU(num_features)
        block = LightBlock if use_depthwise else FastResBlock
        self.body = nn.Sequential(*[block(num_features) for _ in range(num_blocks)])
        self.fusion = nn.Conv2d(num_features, num_features, 3, padding=1)
        self.upsampler: nn.Module
        if scale == 4:
            self.upsampler = nn.Sequential(PixelShuffleUpsampler(num_features, num_features, 2),
                                           PixelShuffleUpsampler(num_features, num_features, 2))
        elif scale in (2, 3):
            self.upsampler = PixelShuffleUpsampler(num_features, num_features, scale)
        else:
            self.upsampler = nn.Identity()
        self.tail = nn.Conv2d(num_features, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = x if self.scale == 1 else F.interpolate(x, scale_factor=self.scale, mode="bilinear",
                                                       align_corners=False)
        feat = self.head_act(self.head(x))
        feat = self.fusion(self.body(feat)) + feat
        return self.tail(self.upsampler(feat)) + base


def _context(kw: dict[str, Any]) -> int:
    """Head 3x3 (1), per block 2 (FastResBlock) or 1 (LightBlock), fusion (1), the head's 3x3 before each
    shuffle and the tail at the output resolution (2 in all), the bilinear skip (1, inside the rest)."""
    per = 1 if kw["use_depthwise"] else 2
    return 1 + per * int(kw["num_blocks"]) + 1 + 2


def _describe(kw: dict[str, Any]) -> ArchSpec:
    scale = int(kw["scale"])
    return ArchSpec(
        id="dis",
        family="DIS",
        upstream_class="DIS",
        tasks=("upscale",) if scale > 1 else ("restore",),
        scale=scale,
        in_channels=int(kw["in_channels"]),
        out_channels=int(kw["out_channels"]),
        fp16=True,  # upstream's design notes: no normalisation, PReLU, "FP16 safe"
        bf16=True,
        channels_last=False,  # not measured
        tiling="safe",
        context=_context(kw),
        code_license="unspecified (no licence in the traiNNer-redux file; seed repository GPL-3.0)",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    head = sd.get("head.weight")
    if head is None or head.ndim != 4 or any(k not in sd for k in ("head_act.weight", "fusion.weight", "tail.weight")):
        return None
    nf, in_ch = int(head.shape[0]), int(head.shape[1])
    if "upsampler.0.conv.weight" in sd:
        scale = 4
    elif "upsampler.conv.weight" in sd:
        scale = {4 * nf: 2, 9 * nf: 3}.get(int(sd["upsampler.conv.weight"].shape[0]), 0)
    else:
        scale = 1
    kw = {"in_channels": in_ch, "out_channels": int(sd["tail.weight"].shape[0]), "num_features": nf,
          "num_blocks": list_length(sd, "body"), "scale": scale,
          "use_depthwise": "body.0.dw_conv.depthwise.weight" in sd}
    return kw if scale and same_keys_and_shapes(lambda: DIS(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (ArchEntry(id="dis", family="DIS", cls=DIS, describe=_describe, detect=_detect),)
