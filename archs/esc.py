"""ESC: Emulating Self-attention with Convolution for efficient super-resolution (Lee, Yun, Ro, ICCV 2025).

Semantics follow dslisleedh/ESC (MIT): `ESC` (esc_arch.py; ESC, ESC-light, ESC-XL), `ESCFP` (esc_fp_arch.py, the
fully-parameterised large kernel), `ESCReal` and `ESCRealM` (esc_real_arch.py, real-world SR; ESCRealM with umzi's
UniUpsample and the pixel-unshuffle input for x1/x2). Keyword names, defaults and state-dict keys are upstream's.

* Attention back-ends: 'Naive', 'SDPA' and 'Flex' compute the same softmax(q k^T / sqrt(d) + rpe) v over
  non-overlapping windows; all three run here as one scaled_dot_product_attention with the bias as a float mask.
  'FlashBias' replaces the position table by low-rank factors (keys `flashbias_q/k`); its bias is their product,
  applied the same way (upstream rounds q, k, v to bfloat16 for the flash kernel; we keep the input dtype).
* The shared large kernel `plk_filter` goes through an 8-fold flip/rotation average (IGConv's geometric
  re-parameterisation) on every forward, as upstream. The average is a projection, so a kernel baked by upstream's
  `convert()` is a fixed point and converted checkpoints give the same output through the same code.
* ConvolutionalAttention: upstream's eval path reshapes the dynamic kernel for batch 1 and writes into its input;
  we run the training path's per-sample grouped conv (the same function at batch 1) without writing in place.
  Upstream's ESCReal/ESCRealM eval path pads the large kernel by 13 // 2 and ESCFP pads its dynamic kernel to 13
  whatever `kernel_size` says, so only 13 ran there; we pad by kernel_size // 2 (identical at 13).
* ESCReal without DySample always upsamples x4 (two nearest x2 stages), whatever `upscaling_factor` says.
* Windows: features are reflect-padded at the bottom/right to a window multiple before each attention (replicate
  where a side is too short to reflect, which upstream refuses), and cropped after.
* Loading a checkpoint of another scale into ESC/ESCFP resizes `to_img` bilinearly over its sub-pixel grid, as
  upstream's load_state_dict does. Not carried over: upstream's conversion of a position table into FlashBias
  factors (SVD) on load; a checkpoint loads into the attention type it was trained with (the detector reads it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import list_length, pixel_shuffle_scale, ratio_for, same_keys_and_shapes
from .layers.norm import LayerNorm2d
from .layers.padding import pad_to_multiple
from .layers.uniupsample import UniUpsample, read_uniupsample
from .layers.upsample import DySample
from .layers.window import relative_position_index
from .spec import ArchEntry, ArchSpec, StateDict

ATTN_TYPES = ("Naive", "SDPA", "Flex", "FlashBias")


def geo_ensemble(k: torch.Tensor) -> torch.Tensor:
    """The mean of a (…, kh, kw) kernel over the 8 flips/rotations of the square (IGConv's geometric ensemble)."""
    r = torch.rot90(k, -1, [2, 3])
    total = k + k.flip(3) + k.flip(2) + k.flip([2, 3]) + r + r.flip(3) + r.flip(2) + r.flip([2, 3])
    return total / 8


class ConvFFN(nn.Module):
    """1x1 expand + GELU, depthwise k x k + GELU with a skip, 1x1 back."""

    def __init__(self, dim: int, kernel_size: int, exp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * exp_ratio)
        self.proj = nn.Conv2d(dim, hidden, 1, 1, 0)
        self.dwc = nn.Conv2d(hidden, hidden, kernel_size, 1, kernel_size // 2, groups=hidden)
        self.aggr = nn.Conv2d(hidden, dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.proj(x))
        x = F.gelu(self.dwc(x)) + x
        return self.aggr(x)


def _per_sample_depthwise(x: torch.Tensor, kernels: torch.Tensor, padding: int) -> torch.Tensor:
    """Depthwise conv of each sample with its own (B * C, 1, k, k) kernels (batch folded into the groups)."""
    b, c, h, w = x.shape
    y = F.conv2d(x.reshape(1, b * c, h, w), kernels, padding=padding, groups=b * c)
    return y.reshape(b, c, h, w)


class ConvolutionalAttention(nn.Module):
    """On the first `pdim` channels: the shared large kernel (a full pdim x pdim conv) plus a per-sample 3x3
    depthwise kernel predicted from the pooled channels; the other channels pass through."""

    def __init__(self, pdim: int, kernel_size: int = 13) -> None:
        super().__init__()
        self.pdim = pdim
        self.lk_size = kernel_size
        self.sk_size = 3
        self.dwc_proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(pdim, pdim // 2, 1, 1, 0),
            nn.GELU(),
            nn.Conv2d(pdim // 2, pdim * self.sk_size**2, 1, 1, 0),
        )
        nn.init.zeros_(self.dwc_proj[-1].weight)
        nn.init.zeros_(self.dwc_proj[-1].bias)

    def forward(self, x: torch.Tensor, lk_filter: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.pdim], x[:, self.pdim:]
        dynamic = self.dwc_proj(x1).reshape(-1, 1, self.sk_size, self.sk_size)
        y = F.conv2d(x1, lk_filter, padding=lk_filter.shape[-1] // 2)
        y = y + _per_sample_depthwise(x1, dynamic, self.sk_size // 2)
        return torch.cat([y, x2], dim=1)


class ConvAttnWrapper(nn.Module):
    def __init__(self, dim: int, pdim: int, kernel_size: int = 13) -> None:
        super().__init__()
        self.plk = ConvolutionalAttention(pdim, kernel_size)
        self.aggr = nn.Conv2d(dim, dim, 1, 1, 0)

    def forward(self, x: torch.Tensor, lk_filter: torch.Tensor) -> torch.Tensor:
        return self.aggr(self.plk(x, lk_filter))


class DecomposedConvolutionalAttention(nn.Module):
    """ESCFP's variant: a 1x1 channel mix `lk_channel`, then one depthwise k x k conv whose kernel is the shared
    `lk_spatial` plus the per-sample dynamic 3x3 kernel zero-padded to k x k."""

    def __init__(self, pdim: int) -> None:
        super().__init__()
        self.pdim = pdim
        self.dynamic_kernel_size = 3
        self.proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(pdim, pdim // 4, 1, 1, 0),
            nn.GELU(),
            nn.Conv2d(pdim // 4, pdim * self.dynamic_kernel_size**2, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor, lk_channel: torch.Tensor, lk_spatial: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.pdim], x[:, self.pdim:]
        b = x1.shape[0]
        k = self.dynamic_kernel_size
        kernel = self.proj(x1).reshape(b * self.pdim, 1, k, k)
        size = lk_spatial.shape[-1]
        n_pad = (size - k) // 2
        kernel = F.pad(kernel, (n_pad, n_pad, n_pad, n_pad)) + lk_spatial.repeat(b, 1, 1, 1)
        y = _per_sample_depthwise(F.conv2d(x1, lk_channel), kernel, size // 2)
        return torch.cat([y, x2], dim=1)


class DecomposedConvolutionalAttentionWrapper(nn.Module):
    def __init__(self, dim: int, pdim: int) -> None:
        super().__init__()
        self.pdim = pdim
        self.plk = DecomposedConvolutionalAttention(pdim)
        self.aggr = nn.Conv2d(dim, dim, 1, 1, 0)

    def forward(self, x: torch.Tensor, lk_channel: torch.Tensor, lk_spatial: torch.Tensor) -> torch.Tensor:
        return self.aggr(self.plk(x, lk_channel, lk_spatial))


class WindowAttention(nn.Module):
    """Multi-head self-attention in non-overlapping square windows with a relative position bias.

    Upstream indexes its table by key minus query ((kh - qh + w - 1) * (2w - 1) + kw - qw + w - 1): the transpose
    of Swin's query-minus-key index.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, attn_type: str = "Flex",
                 flashbias_rank: int | None = None) -> None:
        super().__init__()
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.attn_type = attn_type
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1, 1, 0)
        self.to_out = nn.Conv2d(dim, dim, 1, 1, 0)
        n = window_size * window_size
        self.flashbias_rank = 256 - dim // num_heads if flashbias_rank is None else flashbias_rank
        if attn_type == "FlashBias":
            self.flashbias_q = nn.Parameter(torch.zeros(num_heads, n, self.flashbias_rank))
            self.flashbias_k = nn.Parameter(torch.zeros(num_heads, n, self.flashbias_rank))
        else:
            self.relative_position_bias = nn.Parameter(torch.randn(num_heads, (2 * window_size - 1) ** 2) * 0.001)
            self.register_buffer("rpe_index", relative_position_index(window_size).T.contiguous(), persistent=False)

    def _bias(self) -> torch.Tensor:
        if self.attn_type == "FlashBias":
            return torch.einsum("hnr,hmr->hnm", self.flashbias_q, self.flashbias_k)
        n = self.window_size**2
        index: torch.Tensor = self.rpe_index  # type: ignore[assignment]
        return self.relative_position_bias[:, index.reshape(-1)].view(self.num_heads, n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws, heads = self.window_size, self.num_heads
        x = pad_to_multiple(x, ws, mode="reflect_or_replicate")
        hp, wp = x.shape[-2:]
        nh, nw = hp // ws, wp // ws
        qkv = self.to_qkv(x).reshape(b, 3, heads, c // heads, nh, ws, nw, ws)
        # -> (3, b * nh * nw, heads, ws * ws, head_dim): windows in raster order, tokens row-major inside
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, b * nh * nw, heads, ws * ws, c // heads)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._bias().unsqueeze(0).to(q.dtype))
        out = out.reshape(b, nh, nw, heads, ws, ws, c // heads).permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        return self.to_out(out[:, :, :h, :w])


class Block(nn.Module):
    """LN -> ConvFFN, + window attention, + conv_blocks x (LN -> ConvFFN -> conv attention), LN -> 3x3, + skip.

    `decomposed` picks ESCFP's conv attention; `proj_ratio` is 2 (ESC, ESCReal) or 1.5 (ESCFP).
    """

    def __init__(self, dim: int, pdim: int, conv_blocks: int, kernel_size: int, window_size: int, num_heads: int,
                 exp_ratio: float, attn_type: str, use_ln: bool, flashbias_rank: int | None = None, *,
                 decomposed: bool = False, proj_ratio: float = 2) -> None:
        super().__init__()
        self.ln_proj = LayerNorm2d(dim)
        self.proj = ConvFFN(dim, 3, proj_ratio)
        self.ln_attn = LayerNorm2d(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, attn_type, flashbias_rank)
        self.lns = nn.ModuleList([LayerNorm2d(dim) if use_ln else nn.Identity() for _ in range(conv_blocks)])
        pconv = (lambda: DecomposedConvolutionalAttentionWrapper(dim, pdim)) if decomposed else \
            (lambda: ConvAttnWrapper(dim, pdim, kernel_size))
        self.pconvs = nn.ModuleList([pconv() for _ in range(conv_blocks)])
        self.convffns = nn.ModuleList([ConvFFN(dim, 3, exp_ratio) for _ in range(conv_blocks)])
        self.ln_out = LayerNorm2d(dim)
        self.conv_out = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, *lk: torch.Tensor) -> torch.Tensor:
        skip = x
        x = self.proj(self.ln_proj(x))
        x = x + self.attn(self.ln_attn(x))
        for ln, pconv, convffn in zip(self.lns, self.pconvs, self.convffns, strict=True):
            x = x + pconv(convffn(ln(x)), *lk)
        return self.conv_out(self.ln_out(x)) + skip


def _check(dim: int, pdim: int, kernel_size: int, attn_type: str) -> None:
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
    if not 0 < pdim <= dim:
        raise ValueError(f"pdim must be in 1..dim ({dim}), got {pdim}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")


def _blocks(n_blocks: int, **kw: Any) -> nn.ModuleList:
    return nn.ModuleList([Block(**kw) for _ in range(n_blocks)])


def _real_skip(in_ch: int, dim: int, unshuffle: int = 0) -> nn.Sequential:
    """ESC-Real's image skip: 1x1 to 2 dim, depthwise 7x7 (reflect padding), LeakyReLU, 1x1 to dim."""
    head: list[nn.Module] = [nn.PixelUnshuffle(unshuffle)] if unshuffle else []
    return nn.Sequential(
        *head,
        nn.Conv2d(in_ch, dim * 2, 1, 1, 0),
        nn.Conv2d(dim * 2, dim * 2, 7, 1, 3, groups=dim * 2, padding_mode="reflect"),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim * 2, dim, 1, 1, 0),
    )


def _resize_subpixel(state_dict: dict[str, Any], prefix: str, scale: int) -> None:
    """Upstream's "SubPixel interpolation": a `to_img` conv trained for another scale, its 3 x s x s outputs per
    input channel and tap resized bilinearly (align_corners=False) to 3 x scale x scale."""
    w, b = state_dict.get(prefix + "to_img.weight"), state_dict.get(prefix + "to_img.bias")
    if w is None or b is None or w.ndim != 4:
        return
    s_in = math.isqrt(int(w.shape[0]) // 3)
    if s_in == scale or 3 * s_in * s_in != w.shape[0]:
        return
    c_in, kh, kw = (int(v) for v in w.shape[1:])
    grid = w.reshape(3, s_in, s_in, c_in * kh * kw).permute(3, 0, 1, 2)
    grid = F.interpolate(grid, size=(scale, scale), mode="bilinear", align_corners=False)
    state_dict[prefix + "to_img.weight"] = grid.permute(1, 2, 3, 0).reshape(3 * scale * scale, c_in, kh, kw)
    bias = F.interpolate(b.reshape(1, 3, s_in, s_in), size=(scale, scale), mode="bilinear", align_corners=False)
    state_dict[prefix + "to_img.bias"] = bias.reshape(-1)


class _SubPixelLoad(nn.Module):
    """ESC/ESCFP: loading resizes a `to_img` of another scale (see `_resize_subpixel`)."""

    upscaling_factor: int

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        _resize_subpixel(state_dict, prefix, self.upscaling_factor)  # the caller's dict is a private copy
        super()._load_from_state_dict(state_dict, prefix, *args)


class ESC(_SubPixelLoad):
    """ESC: 3x3 embed, n_blocks Blocks sharing one geometric-ensembled large kernel, 3x3 + skip, conv to
    3 * s^2 channels plus the input repeated s^2 times, pixel shuffle."""

    def __init__(self, *, dim: int = 64, pdim: int = 16, kernel_size: int = 13, n_blocks: int = 5,
                 conv_blocks: int = 5, window_size: int = 32, num_heads: int = 4, upscaling_factor: int = 4,
                 exp_ratio: float = 2, attn_type: str = "Flex", use_ln: bool = False,
                 flashbias_rank: int | None = None) -> None:
        super().__init__()
        _check(dim, pdim, kernel_size, attn_type)
        self.plk_filter = nn.Parameter(torch.empty(pdim, pdim, kernel_size, kernel_size))
        nn.init.orthogonal_(self.plk_filter)
        self.proj = nn.Conv2d(3, dim, 3, 1, 1)
        self.blocks = _blocks(n_blocks, dim=dim, pdim=pdim, conv_blocks=conv_blocks, kernel_size=kernel_size,
                              window_size=window_size, num_heads=num_heads, exp_ratio=exp_ratio,
                              attn_type=attn_type, use_ln=use_ln, flashbias_rank=flashbias_rank)
        self.last = nn.Conv2d(dim, dim, 3, 1, 1)
        self.to_img = nn.Conv2d(dim, 3 * upscaling_factor**2, 3, 1, 1)
        self.upscaling_factor = upscaling_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.proj(x)
        skip = feat
        lk = geo_ensemble(self.plk_filter)
        for block in self.blocks:
            feat = block(feat, lk)
        feat = self.last(feat) + skip
        s = self.upscaling_factor
        return F.pixel_shuffle(self.to_img(feat) + torch.repeat_interleave(x, s * s, dim=1), s)


class ESCFP(_SubPixelLoad):
    """ESC-FP: the large kernel factorised into a shared 1x1 channel mix and a shared depthwise k x k; LayerNorm
    before `last`; bicubic image skip after the pixel shuffle."""

    def __init__(self, *, dim: int = 48, pdim: int = 16, kernel_size: int = 13, n_blocks: int = 5,
                 conv_blocks: int = 5, window_size: int = 32, num_heads: int = 3, upscaling_factor: int = 4,
                 exp_ratio: float = 2, attn_type: str = "Flex") -> None:
        super().__init__()
        _check(dim, pdim, kernel_size, attn_type)
        if attn_type == "FlashBias":
            raise ValueError("ESCFP has no FlashBias variant (attn_type: Naive, SDPA or Flex)")
        self.lk_channel = nn.Parameter(torch.randn(pdim, pdim, 1, 1))
        self.lk_spatial = nn.Parameter(torch.empty(pdim, 1, kernel_size, kernel_size))
        nn.init.orthogonal_(self.lk_spatial)
        self.dim = dim
        self.proj = nn.Conv2d(3, dim, 3, 1, 1)
        self.blocks = _blocks(n_blocks, dim=dim, pdim=pdim, conv_blocks=conv_blocks, kernel_size=kernel_size,
                              window_size=window_size, num_heads=num_heads, exp_ratio=exp_ratio,
                              attn_type=attn_type, use_ln=True, decomposed=True, proj_ratio=1.5)
        self.ln_last = LayerNorm2d(dim)
        self.last = nn.Conv2d(dim, dim, 3, 1, 1)
        self.to_img = nn.Conv2d(dim, 3 * upscaling_factor**2, 3, 1, 1)
        self.upscaling_factor = upscaling_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.proj(x)
        skip = feat
        for block in self.blocks:
            feat = block(feat, self.lk_channel, self.lk_spatial)
        feat = self.last(self.ln_last(feat)) + skip
        s = self.upscaling_factor
        return F.pixel_shuffle(self.to_img(feat), s) + F.interpolate(x, scale_factor=s, mode="bicubic")


class ESCReal(nn.Module):
    """ESC-Real: ESC blocks (LayerNorm before every conv attention), an extra image skip, and a RealESRGAN-style
    nearest x2, x2 + conv head (always x4) or a DySample head (at `upscaling_factor`)."""

    def __init__(self, *, dim: int = 64, pdim: int = 16, kernel_size: int = 13, n_blocks: int = 10,
                 conv_blocks: int = 5, window_size: int = 32, num_heads: int = 4, upscaling_factor: int = 4,
                 exp_ratio: float = 2, attn_type: str = "Flex", use_dysample: bool = False,
                 flashbias_rank: int | None = None) -> None:
        super().__init__()
        _check(dim, pdim, kernel_size, attn_type)
        self.plk_filter = nn.Parameter(torch.empty(pdim, pdim, kernel_size, kernel_size))
        nn.init.orthogonal_(self.plk_filter)
        self.proj = nn.Conv2d(3, dim, 3, 1, 1)
        self.blocks = _blocks(n_blocks, dim=dim, pdim=pdim, conv_blocks=conv_blocks, kernel_size=kernel_size,
                              window_size=window_size, num_heads=num_heads, exp_ratio=exp_ratio,
                              attn_type=attn_type, use_ln=True, flashbias_rank=flashbias_rank)
        self.last = nn.Conv2d(dim, dim, 3, 1, 1)
        self.to_img: nn.Module
        if use_dysample:
            self.to_img = DySample(dim, 3, upscaling_factor, groups=4)
        else:
            self.to_img = nn.Sequential(
                nn.UpsamplingNearest2d(scale_factor=2),
                nn.Conv2d(dim, dim, 3, 1, 1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.UpsamplingNearest2d(scale_factor=2),
                nn.Conv2d(dim, dim, 3, 1, 1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(dim, dim, 3, 1, 1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(dim, 3, 3, 1, 1),
            )
        self.upscaling_factor = upscaling_factor
        self.skip = _real_skip(3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.proj(x)
        skip = feat
        lk = geo_ensemble(self.plk_filter)
        for block in self.blocks:
            feat = block(feat, lk)
        return self.to_img(self.last(feat) + skip + self.skip(x))


class ESCRealM(nn.Module):
    """ESC-Real-M: ESC-Real with umzi's UniUpsample head; for x1/x2 with `unshuffle_mod` the input is
    pixel-unshuffled (by 4 // scale, after reflect padding to that multiple) and the head upsamples x4."""

    def __init__(self, *, dim: int = 64, pdim: int = 16, kernel_size: int = 13, n_blocks: int = 10,
                 conv_blocks: int = 5, window_size: int = 32, num_heads: int = 4, upscaling_factor: int = 4,
                 exp_ratio: float = 2, attn_type: str = "Flex", mid_dim: int = 48, upsampler: str = "nearest+conv",
                 unshuffle_mod: bool = True, flashbias_rank: int | None = None) -> None:
        super().__init__()
        _check(dim, pdim, kernel_size, attn_type)
        self.upscaling_factor = upscaling_factor
        self.plk_filter = nn.Parameter(torch.empty(pdim, pdim, kernel_size, kernel_size))
        nn.init.orthogonal_(self.plk_filter)
        inner_scale = upscaling_factor
        self.proj: nn.Module
        if unshuffle_mod and upscaling_factor < 3:
            u = 4 // upscaling_factor
            inner_scale = 4
            self.proj = nn.Sequential(nn.PixelUnshuffle(u), nn.Conv2d(3 * u * u, dim, 3, 1, 1))
            self.skip = _real_skip(3 * u * u, dim, unshuffle=u)
            self.padding = u
        else:
            self.proj = nn.Conv2d(3, dim, 3, 1, 1)
            self.skip = _real_skip(3, dim)
            self.padding = 0
        self.blocks = _blocks(n_blocks, dim=dim, pdim=pdim, conv_blocks=conv_blocks, kernel_size=kernel_size,
                              window_size=window_size, num_heads=num_heads, exp_ratio=exp_ratio,
                              attn_type=attn_type, use_ln=True, flashbias_rank=flashbias_rank)
        self.last = nn.Conv2d(dim, dim, 3, 1, 1)
        self.to_img = UniUpsample(upsampler, inner_scale, dim, 3, mid_dim, 4, keep_own_meta=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.padding:
            x = pad_to_multiple(x, self.padding, mode="reflect_or_replicate")
        feat = self.proj(x)
        skip = feat
        lk = geo_ensemble(self.plk_filter)
        for block in self.blocks:
            feat = block(feat, lk)
        out = self.to_img(self.last(feat) + skip + self.skip(x))
        s = self.upscaling_factor
        return out[:, :, : h * s, : w * s]


# ---------------------------------------------------------------------------------------------------------------------
# descriptors


def _scale(arch_id: str, kw: dict[str, Any]) -> int:
    if arch_id == "escreal" and not kw["use_dysample"]:
        return 4
    return int(kw["upscaling_factor"])


def _describer(arch_id: str, upstream_class: str) -> Callable[[dict[str, Any]], ArchSpec]:
    def describe(kw: dict[str, Any]) -> ArchSpec:
        unshuffle = 1
        if arch_id == "escrealm" and kw["unshuffle_mod"] and int(kw["upscaling_factor"]) < 3:
            unshuffle = 4 // int(kw["upscaling_factor"])
        grid = int(kw["window_size"]) * unshuffle
        return ArchSpec(
            id=arch_id,
            family="ESC",
            upstream_class=upstream_class,
            tasks=("upscale",),
            scale=_scale(arch_id, kw),
            in_channels=3,
            out_channels=3,
            # Windows sit on a grid of window_size (unshuffled) pixels from the top-left: tiles start on it.
            multiple_of=grid,
            # LayerNorm statistics and softmax run through fused kernels that accumulate in float32; the
            # FlashBias checkpoints were made for bfloat16. Not yet measured on a GPU.
            fp16=True,
            bf16=True,
            channels_last=False,  # not measured
            # Every block attends over whole windows (32 px) and chains 13x13 kernels; the receptive field of a
            # 5-10 block model spans hundreds of pixels, so tiles are not exact: two windows of margin.
            tiling="global",
            context=2 * grid,
            code_license="MIT",
        )

    return describe


# ---------------------------------------------------------------------------------------------------------------------
# detectors: read the layout off the shapes, confirm by a meta-device rebuild


def _attention_kwargs(sd: StateDict, dim: int) -> dict[str, Any] | None:
    table = sd.get("blocks.0.attn.relative_position_bias")
    fb = sd.get("blocks.0.attn.flashbias_q")
    if table is not None and table.ndim == 2:
        heads, n = (int(v) for v in table.shape)
        side = math.isqrt(n)
        if side * side != n or side % 2 == 0:
            return None
        return {"num_heads": heads, "window_size": (side + 1) // 2, "attn_type": "Flex"}
    if fb is not None and fb.ndim == 3:
        heads, n, rank = (int(v) for v in fb.shape)
        ws = math.isqrt(n)
        if ws * ws != n or heads <= 0 or dim % heads:
            return None
        return {"num_heads": heads, "window_size": ws, "attn_type": "FlashBias",
                "flashbias_rank": None if rank == 256 - dim // heads else rank}
    return None


def _common(sd: StateDict, proj_key: str) -> dict[str, Any] | None:
    proj = sd.get(proj_key)
    if proj is None or proj.ndim != 4 or "blocks.0.convffns.0.proj.weight" not in sd:
        return None
    dim = int(proj.shape[0])
    attn = _attention_kwargs(sd, dim)
    if attn is None:
        return None
    hidden = int(sd["blocks.0.convffns.0.proj.weight"].shape[0])
    return {"dim": dim, "n_blocks": list_length(sd, "blocks"), "conv_blocks": list_length(sd, "blocks.0.pconvs"),
            "exp_ratio": ratio_for(hidden, dim), **attn}


def _detect_esc(sd: StateDict) -> dict[str, Any] | None:
    plk, to_img = sd.get("plk_filter"), sd.get("to_img.weight")
    if plk is None or to_img is None or "skip.0.weight" in sd or "ln_last.weight" in sd or plk.ndim != 4:
        return None
    kw = _common(sd, "proj.weight")
    scale = pixel_shuffle_scale(int(to_img.shape[0]), 3)
    if kw is None or scale is None:
        return None
    kw.update(pdim=int(plk.shape[0]), kernel_size=int(plk.shape[-1]), upscaling_factor=scale,
              use_ln="blocks.0.lns.0.weight" in sd)
    return kw if same_keys_and_shapes(lambda: ESC(**kw), sd) else None


def _detect_escfp(sd: StateDict) -> dict[str, Any] | None:
    spatial, to_img = sd.get("lk_spatial"), sd.get("to_img.weight")
    if spatial is None or to_img is None or "lk_channel" not in sd or spatial.ndim != 4:
        return None
    kw = _common(sd, "proj.weight")
    scale = pixel_shuffle_scale(int(to_img.shape[0]), 3)
    if kw is None or scale is None or kw["attn_type"] == "FlashBias":
        return None
    kw.update(pdim=int(spatial.shape[0]), kernel_size=int(spatial.shape[-1]), upscaling_factor=scale)
    return kw if same_keys_and_shapes(lambda: ESCFP(**kw), sd) else None


def _detect_escreal(sd: StateDict) -> dict[str, Any] | None:
    plk = sd.get("plk_filter")
    if plk is None or "skip.0.weight" not in sd or "to_img.MetaUpsample" in sd:
        return None
    kw = _common(sd, "proj.weight")
    if kw is None:
        return None
    kw.update(pdim=int(plk.shape[0]), kernel_size=int(plk.shape[-1]))
    offset = sd.get("to_img.offset.weight")
    if offset is not None:
        s = math.isqrt(int(offset.shape[0]) // 8)
        kw.update(use_dysample=True, upscaling_factor=s)
    else:
        kw.update(use_dysample=False, upscaling_factor=4)  # not stored (the nearest head is x4 anyway)
    return kw if same_keys_and_shapes(lambda: ESCReal(**kw), sd) else None


def _detect_escrealm(sd: StateDict) -> dict[str, Any] | None:
    plk = sd.get("plk_filter")
    if plk is None or "to_img.MetaUpsample" not in sd:
        return None
    unshuffled = "proj.1.weight" in sd
    kw = _common(sd, "proj.1.weight" if unshuffled else "proj.weight")
    if kw is None:
        return None
    kw.update(pdim=int(plk.shape[0]), kernel_size=int(plk.shape[-1]))
    u = math.isqrt(int(sd["proj.1.weight"].shape[1]) // 3) if unshuffled else 1
    for cand in read_uniupsample(sd, "to_img.", kw["dim"]):
        if unshuffled:
            if u not in (2, 4):
                return None
            scale, unshuffle_mod = 4 // u, True
        else:
            scale = int(cand["scale"])
            unshuffle_mod = scale >= 3  # below 3 the flag would have unshuffled: it was off
        trial = {**kw, "upscaling_factor": scale, "upsampler": cand["upsample"], "unshuffle_mod": unshuffle_mod,
                 "mid_dim": int(cand.get("mid_dim", 48))}
        if same_keys_and_shapes(lambda t=trial: ESCRealM(**t), sd):  # type: ignore[misc]
            return trial
    return None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="esc", family="ESC", cls=ESC, describe=_describer("esc", "ESC"), detect=_detect_esc),
    ArchEntry(id="escfp", family="ESC", cls=ESCFP, describe=_describer("escfp", "ESCFP"), detect=_detect_escfp),
    ArchEntry(id="escreal", family="ESC", cls=ESCReal, describe=_describer("escreal", "ESCReal"),
              detect=_detect_escreal),
    ArchEntry(id="escrealm", family="ESC", cls=ESCRealM, describe=_describer("escrealm", "ESCRealM"),
              detect=_detect_escrealm),
)
