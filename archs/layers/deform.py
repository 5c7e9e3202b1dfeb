"""Deformable sampling: modulated deformable convolution (DCNv2, as torchvision.ops.deform_conv2d computes it),
BasicSR's `DCNv2Pack` (offsets and mask from a second feature map) and BasicSR's `flow_warp`.

`deform_conv2d` calls torchvision's kernel when torchvision is installed and its ops load; otherwise it runs
`deform_conv2d_reference`, a PyTorch statement of the same arithmetic (torchvision csrc/ops/cpu/
deform_conv2d_kernel.cpp): for output pixel (y, x) and kernel tap (i, j) of offset group g, the input is sampled
bilinearly at (y * stride - pad + i * dilation + dy, x * stride - pad + j * dilation + dx), where (dy, dx) are the
offset channels 2 (g K + k) and 2 (g K + k) + 1 (K = kh kw, k = i kw + j); a sample whose position lies outside
(-1, H) x (-1, W) is zero, and corners outside the map count as zero; the sample is multiplied by mask channel
g K + k; then a grouped matrix product with the weight, plus the bias.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_Pair = tuple[int, int]


def _pair(v: int | tuple[int, int]) -> _Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@functools.cache
def _torchvision_op() -> Callable[..., torch.Tensor] | None:
    """torchvision.ops.deform_conv2d when it is installed and its compiled ops load, else None."""
    try:
        from torchvision.ops import deform_conv2d as op  # type: ignore[import-not-found, import-untyped]

        op(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 1, 1))
    except Exception:  # a missing package, or a build whose ops do not load on this torch
        return None
    return op  # type: ignore[no-any-return]


def _sample(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of x (B, G, C, H, W) at positions py, px (B, G, P): (B, G, C, P), torchvision's rules."""
    b, g, c, h, w = x.shape
    flat = x.reshape(b, g, c, h * w)
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    y0i, x0i = y0.long(), x0.long()
    out = torch.zeros(b, g, c, py.shape[-1], dtype=x.dtype, device=x.device)
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yc, xc = y0i + dy, x0i + dx
            ok = inside & (yc >= 0) & (yc < h) & (xc >= 0) & (xc < w)
            idx = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).unsqueeze(2).expand(b, g, c, -1)
            weight = (wy * wx * ok).to(x.dtype).unsqueeze(2)
            out = out + weight * flat.gather(3, idx)
    return out


def deform_conv2d_reference(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, stride: int | _Pair = 1, padding: int | _Pair = 0,
                            dilation: int | _Pair = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated deformable convolution in PyTorch (torchvision.ops.deform_conv2d's arithmetic)."""
    b, c, h, w = x.shape
    out_c, c_per_group, kh, kw = weight.shape
    groups = c // c_per_group
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = kh * kw
    og = offset.shape[1] // (2 * k)
    off = offset.reshape(b, og, k, 2, ho, wo).to(x.dtype)
    dev = x.device
    ty = (torch.arange(kh, device=dev) * dh).repeat_interleave(kw).view(k, 1, 1)
    tx = (torch.arange(kw, device=dev) * dw).repeat(kh).view(k, 1, 1)
    oy = (torch.arange(ho, device=dev) * sh - ph).view(1, ho, 1)
    ox = (torch.arange(wo, device=dev) * sw - pw).view(1, 1, wo)
    py = ((ty + oy).to(x.dtype) + off[:, :, :, 0]).reshape(b, og, -1)  # (B, og, K*Ho*Wo)
    px = ((tx + ox).to(x.dtype) + off[:, :, :, 1]).reshape(b, og, -1)
    cols = _sample(x.reshape(b, og, c // og, h, w), py, px)  # (B, og, C/og, K*Ho*Wo)
    if mask is not None:
        cols = cols * mask.reshape(b, og, 1, -1).to(x.dtype)
    cols = cols.reshape(b, groups, c_per_group * k, ho * wo)  # channel-major, then tap: the weight's layout
    out = torch.einsum("bgkl,gok->bgol", cols, weight.reshape(groups, out_c // groups, c_per_group * k))
    out = out.reshape(b, out_c, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1).to(out.dtype)


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride: int | _Pair = 1, padding: int | _Pair = 0, dilation: int | _Pair = 1,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision.ops.deform_conv2d where available, else the PyTorch reference (same arithmetic)."""
    op = _torchvision_op()
    if op is not None:
        return op(x, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation), mask)
    return deform_conv2d_reference(x, offset, weight, bias, stride, padding, dilation, mask)


class DCNv2Pack(nn.Module):
    """BasicSR's DCNv2Pack (ModulatedDeformConvPack): offsets and mask come from a second map `feat` through
    `conv_offset` (o1, o2, mask = chunks of its output; offset = cat(o1, o2); mask = sigmoid). State-dict keys:
    weight, bias, conv_offset.weight, conv_offset.bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | _Pair, stride: int | _Pair = 1,
                 padding: int | _Pair = 0, dilation: int | _Pair = 1, groups: int = 1, deformable_groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.conv_offset = nn.Conv2d(in_channels, deformable_groups * 3 * kh * kw, (kh, kw), self.stride,
                                     self.padding, self.dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)  # upstream starts from the plain convolution
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        o1, o2, mask = torch.chunk(self.conv_offset(feat), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
                             torch.sigmoid(mask))


def flow_warp(x: torch.Tensor, flow: torch.Tensor, *, mode: str = "bilinear", padding_mode: str = "zeros",
              align_corners: bool = True) -> torch.Tensor:
    """BasicSR's flow_warp: x (B, C, H, W) sampled at pixel (col + flow[..., 0], row + flow[..., 1]); flow is
    (B, H, W, 2)."""
    _, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=flow.dtype),
                            torch.arange(w, device=x.device, dtype=flow.dtype), indexing="ij")
    gx = 2.0 * (xs + flow[..., 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[..., 1]) / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=3).to(x.dtype)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
