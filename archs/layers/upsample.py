"""Upsampling heads shared by the super-resolution families.

* `Upsample` / `UpsampleOneStep`: SwinIR's pixel-shuffle heads (conv to 4C + PixelShuffle(2) per factor of two,
  or conv to 9C + PixelShuffle(3); and one conv to out * s**2 + PixelShuffle(s)), used by ConvMambaSR and the
  Swin-style transformers (HAT, DAT, DRCT, ATD, ...). Children are numbered as upstream's nn.Sequential.
* `DySample` ("Learning to Upsample by Learning to Sample", arXiv:2308.15085) as neosr/resselt/umzi carry it
  (RealPLKSR, RHA, GFISRV2, and the lightweight families of wave 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def unsupported_scale(scale: int, allowed: str = "2^n and 3") -> ValueError:
    return ValueError(f"scale {scale} is not supported. Supported scales: {allowed}.")


class Upsample(nn.Sequential):
    """(conv to 4C, pixel shuffle 2) per factor of two, or one (conv to 9C, shuffle 3)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        m: list[nn.Module] = []
        if is_pow2(scale):
            for _ in range(int(math.log2(scale))):
                m += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            m += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise unsupported_scale(scale)
        super().__init__(*m)


class UpsampleOneStep(nn.Sequential):
    """One conv to scale**2 * out channels and a pixel shuffle (the light-SR head)."""

    def __init__(self, scale: int, num_feat: int, num_out_ch: int) -> None:
        self.num_feat = num_feat
        super().__init__(nn.Conv2d(num_feat, scale**2 * num_out_ch, 3, 1, 1), nn.PixelShuffle(scale))


def add_swinir_head(m: nn.Module, *, upsampler: str, upscale: int, embed_dim: int, num_feat: int,
                    out_chans: int) -> None:
    """SwinIR's reconstruction modules, set on `m` under upstream's attribute names (so the state-dict keys stay):
    "pixelshuffle" (classical SR), "pixelshuffledirect" (lightweight), "nearest+conv" (real-world, x4 only), or ""
    (same-size restoration: one conv). `swinir_head(m, x)` runs them."""
    if upsampler in ("pixelshuffle", "nearest+conv"):
        m.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
    if upsampler == "pixelshuffle":
        m.upsample = Upsample(upscale, num_feat)
        m.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
    elif upsampler == "pixelshuffledirect":
        m.upsample = UpsampleOneStep(upscale, embed_dim, out_chans)
    elif upsampler == "nearest+conv":
        if upscale != 4:
            raise ValueError("upsampler 'nearest+conv' supports upscale 4 only")
        m.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        m.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        m.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        m.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
        m.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
    else:
        m.conv_last = nn.Conv2d(embed_dim, out_chans, 3, 1, 1)


def swinir_head(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The image from SwinIR-style deep features (after `conv_after_body` and the long skip), for the three
    upsampling heads `add_swinir_head` builds (the same-size head's global residual is the caller's)."""
    if m.upsampler == "pixelshuffle":
        return m.conv_last(m.upsample(m.conv_before_upsample(x)))
    if m.upsampler == "pixelshuffledirect":
        return m.upsample(x)
    x = m.conv_before_upsample(x)
    x = m.lrelu(m.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
    x = m.lrelu(m.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
    return m.conv_last(m.lrelu(m.conv_hr(x)))


class DySample(nn.Module):
    """Every one of `groups` channel groups is resampled bilinearly (border padding) at scale x scale learned
    positions per input pixel: the sub-pixel centres plus offset * sigmoid(scope) / 2; then an `end_kernel` conv
    maps to out_ch (when `end_convolution`).

    neosr asserts in_channels >= groups; resselt/umzi's copies refuse in_channels == groups as well: those
    families check that themselves.
    """

    def __init__(self, in_channels: int, out_ch: int, scale: int = 2, groups: int = 4, end_convolution: bool = True,
                 end_kernel: int = 1) -> None:
        super().__init__()
        if in_channels < groups or in_channels % groups != 0:
            raise ValueError(f"DySample: in_channels={in_channels} must be a multiple of groups={groups}")
        self.scale = scale
        self.groups = groups
        self.end_convolution = end_convolution
        if end_convolution:
            self.end_conv = nn.Conv2d(in_channels, out_ch, end_kernel, 1, end_kernel // 2)
        n_offsets = 2 * groups * scale**2
        self.offset = nn.Conv2d(in_channels, n_offsets, 1)
        self.scope = nn.Conv2d(in_channels, n_offsets, 1, bias=False)
        nn.init.trunc_normal_(self.offset.weight, std=0.02)
        nn.init.zeros_(self.scope.weight)
        self.register_buffer("init_pos", self._initial_positions())

    def _initial_positions(self) -> torch.Tensor:
        # Sub-pixel centres of the s x s output cell, in input-pixel units, laid out (xy, group, row, col).
        s = self.scale
        h = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / s
        x_off = h.view(1, s).expand(s, s)  # varies along the cell's columns
        y_off = h.view(s, 1).expand(s, s)  # varies along the cell's rows
        pos = torch.stack([x_off, y_off]).unsqueeze(1).expand(2, self.groups, s, s)
        return pos.reshape(1, -1, 1, 1).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s, g = self.scale, self.groups
        init_pos: torch.Tensor = self.init_pos  # type: ignore[assignment]
        offset = self.offset(x) * self.scope(x).sigmoid() * 0.5 + init_pos.to(x.dtype)
        # Sampling positions in input pixels (pixel centres at +0.5), then normalised to [-1, 1] for grid_sample.
        xs = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
        ys = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5
        base = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)]).view(1, 2, 1, h, w)
        size = torch.tensor([w, h], device=x.device, dtype=x.dtype).view(1, 2, 1, 1, 1)
        grid = 2 * (base + offset.view(b, 2, -1, h, w)) / size - 1
        # (b, 2*g*s*s, h, w) -> shuffle -> (b*g, s*h, s*w, 2) with (x, y) last.
        grid = F.pixel_shuffle(grid.reshape(b, -1, h, w), s).view(b, 2, g, s * h, s * w)
        grid = grid.permute(0, 2, 3, 4, 1).reshape(b * g, s * h, s * w, 2)
        out = F.grid_sample(
            x.reshape(b * g, c // g, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).view(b, c, s * h, s * w)
        return self.end_conv(out) if self.end_convolution else out
