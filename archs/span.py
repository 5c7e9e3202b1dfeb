"""SPAN: Swift Parameter-free Attention Network for efficient super-resolution (CVPRW 2024, arXiv:2405.00971).

Semantics follow hongyuanyu/SPAN (Apache-2.0) `basicsr/archs/span_arch.py`; keyword names, defaults and
state-dict keys match its `SPAN` class so published checkpoints (spanx2_ch48.pth, spanx4_ch48.pth) load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import same_keys_and_shapes, scale_and_out_channels
from .layers.reparam import Conv3XC
from .spec import ArchEntry, ArchSpec, StateDict


class SPAB(nn.Module):
    """Swift parameter-free attention block: three Conv3XC with SiLU between, attention sigmoid(out3) - 0.5.

    Returns (out, out1, attention) like upstream. Upstream's SiLU is in place, so its `out1` is the activated
    first conv output; we return that same activated tensor without mutating anything.
    """

    def __init__(self, in_channels: int, mid_channels: int | None = None, out_channels: int | None = None):
        super().__init__()
        mid = in_channels if mid_channels is None else mid_channels
        out = in_channels if out_channels is None else out_channels
        self.c1_r = Conv3XC(in_channels, mid)
        self.c2_r = Conv3XC(mid, mid)
        self.c3_r = Conv3XC(mid, out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(out1)))
        att = torch.sigmoid(out3) - 0.5
        return (out3 + x) * att, out1, att


class SPAN(nn.Module):
    """SPAN: Conv3XC stem, six SPABs, Conv3XC, 1x1 fusion of four taps, 3x3 conv + pixel shuffle.

    The input is normalised as (x - rgb_mean) * img_range; the output is not de-normalised (upstream does not,
    and trained weights produce the [0, 1] image directly). `bias` is accepted for compatibility; upstream ignores
    it (every conv has a bias). num_in_ch/num_out_ch are required upstream; here they default to 3.
    """

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        feature_channels: int = 48,
        upscale: int = 4,
        bias: bool = True,
        img_range: float = 255.0,
        rgb_mean: Sequence[float] = (0.4488, 0.4371, 0.4040),
    ) -> None:
        super().__init__()
        if len(rgb_mean) not in (1, num_in_ch):
            raise ValueError(f"rgb_mean has {len(rgb_mean)} values for {num_in_ch} input channels")
        self.img_range = float(img_range)
        # A buffer so it follows .to(device); not persistent, as upstream keeps it out of the state dict.
        self.register_buffer("mean", torch.tensor(list(rgb_mean), dtype=torch.float32).view(1, -1, 1, 1), False)
        fc = feature_channels
        self.conv_1 = Conv3XC(num_in_ch, fc)
        self.block_1 = SPAB(fc)
        self.block_2 = SPAB(fc)
        self.block_3 = SPAB(fc)
        self.block_4 = SPAB(fc)
        self.block_5 = SPAB(fc)
        self.block_6 = SPAB(fc)
        self.conv_cat = nn.Conv2d(fc * 4, fc, 1)
        self.conv_2 = Conv3XC(fc, fc)
        self.upsampler = nn.Sequential(nn.Conv2d(fc, num_out_ch * upscale**2, 3, padding=1), nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean: torch.Tensor = self.mean  # type: ignore[assignment]
        x = (x - mean.to(x.dtype)) * self.img_range
        feat = self.conv_1(x)
        b1, _, _ = self.block_1(feat)
        b2, _, _ = self.block_2(b1)
        b3, _, _ = self.block_3(b2)
        b4, _, _ = self.block_4(b3)
        b5, _, _ = self.block_5(b4)
        b6, b6_first, _ = self.block_6(b5)
        b6 = self.conv_2(b6)
        return self.upsampler(self.conv_cat(torch.cat([feat, b6, b1, b6_first], dim=1)))


# Context = receptive-field radius in input pixels along the deepest path: conv_1 (1) + 6 SPABs x 3 Conv3XC (18)
# + conv_2 (1) + conv_cat 1x1 (0) + upsampler 3x3 (1) = 21. Every Conv3XC is an exact 3x3, so this is exact.
_SPAN_CONTEXT = 1 + 6 * 3 + 1 + 0 + 1


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="span",
        family="SPAN",
        upstream_class="SPAN",
        tasks=("upscale",),
        scale=int(kw["upscale"]),
        in_channels=int(kw["num_in_ch"]),
        out_channels=int(kw["num_out_ch"]),
        # spandrel: supports_half=True (tested on the official models); vs-mlrt ships SPAN as fp16 TensorRT.
        fp16=True,
        bf16=True,
        channels_last=True,  # 1.4-1.5x on an H200 (torch 2.11, fp16/bf16/fp32, 4x3x256x256)
        # launch-bound at 960x540: a CUDA graph alone gave 8.7 -> 6.4 ms (H200), torch.compile 6.6 -> 4.2 (H100)
        compile_mode="inductor-graph",
        tiling="safe",
        context=_SPAN_CONTEXT,
        code_license="Apache-2.0",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Channels and scale from conv_1.sk and the upsampler; img_range, rgb_mean and bias are not stored.

    The upsampler has num_out_ch * upscale^2 outputs; we take num_out_ch = 3 when that gives a square, else 1.
    Input channels other than 3 are refused: upstream's 3-value mean cannot normalise them.
    """
    keys = ("conv_1.sk.weight", "block_1.c1_r.eval_conv.weight", "conv_2.eval_conv.weight", "conv_cat.weight")
    if any(k not in sd for k in keys) or "upsampler.0.weight" not in sd:
        return None
    fc, in_ch = (int(n) for n in sd["conv_1.sk.weight"].shape[:2])
    if in_ch != 3:
        return None
    found = scale_and_out_channels(int(sd["upsampler.0.weight"].shape[0]))
    if found is None:
        return None
    scale, out_ch = found
    kwargs: dict[str, Any] = {
        "num_in_ch": in_ch,
        "num_out_ch": out_ch,
        "feature_channels": fc,
        "upscale": scale,
        "bias": True,
    }
    return kwargs if same_keys_and_shapes(lambda: SPAN(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (ArchEntry(id="span", family="SPAN", cls=SPAN, describe=_describe, detect=_detect),)
