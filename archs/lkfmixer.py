"""LKFMixer: large-kernel feature mixer for efficient super-resolution (traiNNer-redux `LKFMixer`, factories
`lkfmixer_t/b/l`). Keyword names and state-dict keys are upstream's; upstream's constructor has no defaults, ours
default to `lkfmixer_b` at x4.

* The input is reflect-padded to a multiple of 8 (SFMB max-pools 8 x 8 cells) and the output cropped; inputs too
  small to reflect (upstream raises) are edge-replicated.
* SFMB modulates by the global average of its input (a whole-image statistic) and by an 8x-pooled branch
  upsampled bilinearly (align_corners=False).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import list_length, ratio_for, same_keys_and_shapes, scale_and_out_channels
from .layers.padding import pad_to_multiple
from .layers.upsample import UpsampleOneStep
from .spec import ArchEntry, ArchSpec, StateDict


def _dw(channels: int, kernel: int | tuple[int, int], padding: int | tuple[int, int]) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel, 1, padding, groups=channels)


class PLKB(nn.Module):
    """Partial large kernel: a 1xK then a Kx1 depthwise conv on the first split channels, 1x1 over all, GELU."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float) -> None:
        super().__init__()
        self.channels = channels
        self.split_channels = int(channels * split_factor)
        self.DWConv_Kx1 = _dw(self.split_channels, (large_kernel, 1), (large_kernel // 2, 0))
        self.DWConv_1xK = _dw(self.split_channels, (1, large_kernel), (0, large_kernel // 2))
        self.conv1 = nn.Conv2d(channels, channels, 1, 1, 0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, (self.split_channels, self.channels - self.split_channels), dim=1)
        x1 = self.DWConv_Kx1(self.DWConv_1xK(x1))
        return self.act(self.conv1(torch.cat((x1, x2), dim=1)))


class FFB(nn.Module):
    """Feature fusion: GELU(1x1(depthwise 3x3(x) + PLKB(x)))."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float) -> None:
        super().__init__()
        self.PLKB = PLKB(channels, large_kernel, split_factor)
        self.DWConv3 = _dw(channels, 3, 1)
        self.conv1 = nn.Conv2d(channels, channels, 1, 1, 0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(self.DWConv3(x) + self.PLKB(x)))


class FDB(nn.Module):
    """Feature distillation: three FFB steps, each distilled to C/2 by a 1x1, concatenated and fused by a 1x1."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float) -> None:
        super().__init__()
        half = channels // 2
        self.c1_d = nn.Conv2d(channels, half, 1)
        self.c1_r = FFB(channels, large_kernel, split_factor)
        self.c2_d = nn.Conv2d(channels, half, 1)
        self.c2_r = FFB(channels, large_kernel, split_factor)
        self.c3_d = nn.Conv2d(channels, half, 1)
        self.c3_r = FFB(channels, large_kernel, split_factor)
        self.c4 = nn.Conv2d(channels, half, 1)
        self.act = nn.GELU()
        self.c5 = nn.Conv2d(half * 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.act(self.c1_d(x))
        r1 = self.c1_r(x)
        d2 = self.act(self.c2_d(r1))
        r2 = self.c2_r(r1)
        d3 = self.act(self.c3_d(r2))
        r4 = self.act(self.c4(self.c3_r(r2)))
        return self.c5(torch.cat([d1, d2, d3, r4], dim=1))


class SFMB(nn.Module):
    """Spatial modulation: PLKB(x) + sigmoid(mean(x)) * upsampled GELU(1x1(dw3x3(maxpool8(x)))), 1x1, GELU."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float) -> None:
        super().__init__()
        self.PLKB = PLKB(channels, large_kernel, split_factor)
        self.DWConv_3 = _dw(channels, 3, 1)
        self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv1_1 = nn.Conv2d(channels, channels, 1, 1, 0)
        self.conv1_2 = nn.Conv2d(channels, channels, 1, 1, 0)
        self.sigmoid = nn.Sigmoid()
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.PLKB(x)
        gate = self.sigmoid(self.AdaptiveAvgPool(x))
        pooled = self.act(self.conv1_1(self.DWConv_3(F.max_pool2d(x, kernel_size=8, stride=8))))
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.act(self.conv1_2(x1 + gate * pooled))


class FSB(nn.Module):
    """Feature selection: a sigmoid gate from [PLKB(x), dw3x3(x)] blends the two."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float) -> None:
        super().__init__()
        self.PLKB = PLKB(channels, large_kernel, split_factor)
        self.DWConv_3 = _dw(channels, 3, 1)
        self.conv1_1 = nn.Conv2d(channels * 2, channels, 1, 1, 0)
        self.sigmoid = nn.Sigmoid()
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.PLKB(x)
        x2 = self.DWConv_3(x)
        weight = self.sigmoid(self.act(self.conv1_1(torch.cat((x1, x2), dim=1))))
        return x1 * weight + x2 * (1 - weight)


class FMB(nn.Module):
    def __init__(self, channels: int, large_kernel: int, split_factor: float) -> None:
        super().__init__()
        self.FDB = FDB(channels, large_kernel, split_factor)
        self.SFMB = SFMB(channels, large_kernel, split_factor)
        self.FSB = FSB(channels, large_kernel, split_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.FSB(self.SFMB(self.FDB(x))) + x


class PixelShuffleDirect(nn.Module):
    def __init__(self, scale: int, num_feat: int, num_out_ch: int) -> None:
        super().__init__()
        self.upsampleOneStep = UpsampleOneStep(scale, num_feat, num_out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampleOneStep(x)


class Layers(nn.Module):
    def __init__(self, channels: int, num_block: int, large_kernel: int, split_factor: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[FMB(channels, large_kernel, split_factor) for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LKFMixer(nn.Module):
    """3x3 embed -> num_block FMBs -> GELU(depthwise 3x3) + embed -> conv + pixel shuffle."""

    def __init__(self, *, in_channels: int = 3, channels: int = 48, out_channels: int = 3, upscale: int = 4,
                 num_block: int = 8, large_kernel: int = 31, split_factor: float = 0.25) -> None:
        super().__init__()
        if large_kernel % 2 == 0:
            raise ValueError(f"large_kernel must be odd, got {large_kernel}")
        self.conv_first = nn.Conv2d(in_channels, channels, 3, 1, 1)
        self.layers = Layers(channels, num_block, large_kernel, split_factor)
        self.conv = _dw(channels, 3, 1)
        self.upsampler = PixelShuffleDirect(upscale, channels, out_channels)
        self.act = nn.GELU()
        self.scale = upscale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feat = self.conv_first(pad_to_multiple(x, 8, mode="reflect_or_replicate"))
        out = self.act(self.conv(self.layers(feat)))
        return self.upsampler(out + feat)[:, :, : h * self.scale, : w * self.scale]


def _describe(kw: dict[str, Any]) -> ArchSpec:
    scale = int(kw["upscale"])
    return ArchSpec(
        id="lkfmixer",
        family="LKFMixer",
        upstream_class="LKFMixer",
        tasks=("upscale",) if scale > 1 else ("restore",),
        scale=scale,
        in_channels=int(kw["in_channels"]),
        out_channels=int(kw["out_channels"]),
        multiple_of=8,  # SFMB's 8 x 8 max-pool cells start at the top-left: tiles start on that grid
        fp16=True,  # GELU/sigmoid convs only; not yet measured
        bf16=True,
        channels_last=False,
        # SFMB gates every block by the image-wide channel mean: tiles see other means than the whole frame.
        tiling="global",
        context=2 * int(kw["large_kernel"]),
        code_license="unspecified (no licence in the traiNNer-redux file; seed repository GPL-3.0)",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    first, up = sd.get("conv_first.weight"), sd.get("upsampler.upsampleOneStep.0.weight")
    lk = sd.get("layers.layers.0.FDB.c1_r.PLKB.DWConv_Kx1.weight")
    if first is None or up is None or lk is None or first.ndim != 4:
        return None
    channels, in_ch = int(first.shape[0]), int(first.shape[1])
    found = scale_and_out_channels(int(up.shape[0]), (in_ch, 3, 1))
    if found is None:
        return None
    kw = {"in_channels": in_ch, "channels": channels, "out_channels": found[1], "upscale": found[0],
          "num_block": list_length(sd, "layers.layers"), "large_kernel": int(lk.shape[2]),
          "split_factor": ratio_for(int(lk.shape[0]), channels)}
    return kw if same_keys_and_shapes(lambda: LKFMixer(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="lkfmixer", family="LKFMixer", cls=LKFMixer, describe=_describe, detect=_detect),
)
