"""FAT, the Frequency-Aware Transformer for remote-sensing x4 super-resolution ("Mitigating Texture Bias: A Remote
Sensing Super-Resolution Method Focusing on High-Frequency Texture Reconstruction", IEEE TGRS 2025; fengyanzi/FAT).

Semantics and state-dict keys follow the seed korvin2000/arch_research `FAT/FAT.py` and `FAT/FSSA.py`. `FAT()` takes
no arguments upstream (all hard-coded: 3 -> 128 channels, 6 SRT blocks of 3 Swin layers with window 6 and a fusion
layer with window 12, 8 heads, MLP ratio 4, x4 pixel-shuffle head); ours neither.

Forward: h0 = conv1(conv0(x)); UAFB (a down/up U-block with CBAM-style spatial and ECA channel attention); six SRT
blocks in a chain, each: 3 Swin layers (no shift), the fusion layer (window attention plus FSSA on the tokens), a 3x3
conv and an FSSA; then upsample(conv4(h) + h0). FSSA (Fourier sparse self-attention): ortho rFFT2 of the map, its
(Re, Im) channel pairs through a non-local sparse attention, inverse rFFT2.

Eval randomness made zero (as in the goldens): upstream's sparse attention hashes tokens with `torch.randn`
rotations drawn in every forward, eval included. With zero rotations every token gets hash code 0 in every round,
the (stable) bucket sort keeps raster order, and every hash round computes the same thing, so the rounds' softmax
average is that one result exactly: attention within consecutive chunks of 144 spectrum tokens plus the previous and
the next chunk (cyclic; the last chunk padded with the last tokens of the sequence), keys L2-normalised, queries not.
We compute that single round. Unused upstream modules (every Swin layer's conv/ca/sa/FSSA, FSSA's conv_layer, the
top-level ca and conv3, UAFB's ca2) are kept so checkpoints load strictly.

Quirk kept: the fusion layer feeds FSSA with the (B, HW, C) tokens reshaped to (B, C, H, W) without a permute, and
reads the result back the same way.

Size rules: upstream needs H and W multiples of 12 (fusion window) and at least 144 spectrum tokens
(H * (W // 2 + 1) >= 144). We pad bottom/right (reflect, replicate when too small) to a multiple of 12, and to 24 x 24
when the spectrum would be too short, and crop; valid sizes are not touched. The spectral and whole-map attention
(FFT, channel attention pooling) make FAT a whole-image model: tiling "global".
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import rebuilds
from .layers.fft import irfft2_interleaved, rfft2_interleaved
from .layers.padding import pad_to_multiple
from .layers.precision import conv32, float32_region
from .layers.window import window_partition, window_reverse
from .layers.window_attention import Mlp, WindowAttention
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "FAT", "FourierSparseSelfAttention"]

_LICENSE = "unspecified (fengyanzi/FAT states no licence; seed collection GPL-3.0)"
_MULTIPLE = 12
_CHUNK = 144  # FourierSparseSelfAttention builds its SparseAttention with chunk_size=144


class ChannelAttention(nn.Module):
    """ECA: global average pool, a 1-D conv across channels, sigmoid gate."""

    def __init__(self, channel: int, b: int = 1, gamma: int = 2) -> None:
        super().__init__()
        k = int(abs((math.log(channel, 2) + b) / gamma))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * y.sigmoid()


class SpatialAttention(nn.Module):
    """CBAM spatial gate: conv over (channel mean, channel max), sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * self.conv1(y).sigmoid()


class SparseAttention(nn.Module):
    """Non-local sparse attention with zero hash rotations (see the module docstring), plus the input."""

    def __init__(self, channels: int, reduction: int = 4, chunk_size: int = _CHUNK) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.conv_match = nn.Sequential(nn.Conv2d(channels, channels // reduction, 3, padding=1))
        self.conv_assembly = nn.Sequential(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        length, chunk = h * w, self.chunk_size
        q = conv32(self.conv_match[0], x).flatten(2).transpose(1, 2)  # (N, L, C / r)
        v = conv32(self.conv_assembly[0], x).flatten(2).transpose(1, 2)  # (N, L, C)
        pad = -length % chunk
        if pad:  # upstream appends the sequence's last `pad` tokens
            q = torch.cat([q, q[:, length - pad:]], 1)
            v = torch.cat([v, v[:, length - pad:]], 1)
        q = q.reshape(n, -1, chunk, q.shape[-1])
        v = v.reshape(n, -1, chunk, c)
        keys = F.normalize(q, p=2, dim=-1, eps=5e-5)
        # each chunk attends to itself, the previous and the next chunk (cyclic)
        keys = torch.cat([keys, keys.roll(1, 1), keys.roll(-1, 1)], 2)
        vals = torch.cat([v, v.roll(1, 1), v.roll(-1, 1)], 2)
        out = torch.softmax(q @ keys.transpose(-1, -2), -1) @ vals  # (N, chunks, chunk, C)
        out = out.reshape(n, -1, c)[:, :length]
        return out.transpose(1, 2).reshape(n, c, h, w) + x


class FourierSparseSelfAttention(nn.Module):
    """Sparse attention over the ortho rFFT2 spectrum ((Re, Im) channel pairs), in float32."""

    def __init__(self, embed_dim: int = 128) -> None:
        super().__init__()
        self.conv_layer = nn.Conv2d(embed_dim * 2, embed_dim * 2, 1)  # unused upstream, kept for the weights
        self.sparse_attention = SparseAttention(embed_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with float32_region(x):
            y = self.sparse_attention(rfft2_interleaved(x))
            return irfft2_interleaved(y, (x.shape[-2], x.shape[-1])).to(x.dtype)


class SwinLayer(nn.Module):
    """Upstream's `SwinTransformer` layer (no shift in FAT): x + WMSA(LN(x)) [+ FSSA of the raw tokens], then
    x + MLP(LN(x)). conv/ca/sa/FSSA exist in every layer; only the fusion layer runs FSSA."""

    def __init__(self, dim: int, num_heads: int, window_size: int, fusion: bool = False) -> None:
        super().__init__()
        self.fusion = fusion
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.ca = ChannelAttention(dim)
        self.sa = SpatialAttention(kernel_size=3)
        self.FSSA = FourierSparseSelfAttention(embed_dim=dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        ws = self.window_size
        win = window_partition(self.norm1(x).reshape(b, h, w, c), ws).reshape(-1, ws * ws, c)
        y = window_reverse(self.attn(win), ws, h, w).reshape(b, h * w, c)
        if self.fusion:  # upstream reshapes the tokens to (B, C, H, W) without a permute, and back
            y = y + self.FSSA(x.reshape(b, c, h, w)).reshape(b, h * w, c)
        x = x + y
        return x + self.mlp(self.norm2(x))


class SRTBlock(nn.Module):
    """Three Swin layers, the fusion layer (window 2 x ws), a 3x3 conv and an FSSA (ca/sa unused upstream)."""

    def __init__(self, dim: int, st_num: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.STL = nn.ModuleList(SwinLayer(dim, num_heads, window_size) for _ in range(st_num))
        self.MAT = SwinLayer(dim, num_heads, window_size * 2, fusion=True)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.ca = ChannelAttention(dim)
        self.sa = SpatialAttention(kernel_size=3)
        self.fssa = FourierSparseSelfAttention(embed_dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        for layer in self.STL:
            t = layer(t, (h, w))
        t = self.MAT(t, (h, w))
        return self.fssa(self.conv(t.transpose(1, 2).reshape(b, c, h, w)))


class Upsample(nn.Module):
    """x4 head: two (conv to 4C, pixel shuffle 2), then conv_last to the output channels."""

    def __init__(self, num_feat: int, out_ch: int) -> None:
        super().__init__()
        self.upsample = nn.Sequential(nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2),
                                      nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2))
        self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.upsample(x))


class UAFB(nn.Module):
    """Down (conv, lrelu, max-pool 2), up (conv, lrelu, spatial gate, transposed conv), concatenated with the
    spatially gated full-resolution branch, ECA over the 2C channels, conv back to C, plus the input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.ca1 = ChannelAttention(in_channels)
        self.ca2 = ChannelAttention(in_channels)  # unused upstream
        self.sa1 = SpatialAttention(kernel_size=3)
        self.sa2 = SpatialAttention(kernel_size=3)
        self.down_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.up_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.up_transpose = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2)
        self.end_conv = nn.Conv2d(out_channels * 2, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.down_conv(x), 0.2)
        x2 = self.sa1(F.leaky_relu(self.up_conv(F.max_pool2d(x1, 2)), 0.2))
        y = self.ca1(torch.cat([self.up_transpose(x2), self.sa2(x1)], 1))
        return self.end_conv(y) + x


class FAT(nn.Module):
    """FAT x4 (no constructor arguments, as upstream)."""

    in_ch, out_ch, dim, scale = 3, 3, 128, 4

    def __init__(self) -> None:
        super().__init__()
        dim = self.dim
        self.ca = ChannelAttention(dim)  # unused upstream
        self.conv0 = nn.Conv2d(self.in_ch, self.in_ch, 3, 1, 1)
        self.conv1 = nn.Conv2d(self.in_ch, dim, 1)
        self.conv3 = nn.Conv2d(self.out_ch, self.out_ch, 3, 1, 1)  # unused upstream
        self.conv4 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.SRTB_list = nn.ModuleList(SRTBlock(dim, 3, 8, 6) for _ in range(6))
        self.upsample = Upsample(dim, self.out_ch)
        self.uafb = UAFB(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, _MULTIPLE, mode="reflect_or_replicate")
        if x.shape[-2] * (x.shape[-1] // 2 + 1) < _CHUNK:  # too few spectrum tokens for upstream's chunks
            x = pad_to_multiple(x, _MULTIPLE, mode="reflect_or_replicate", min_size=2 * _MULTIPLE)
        h0 = self.conv1(self.conv0(x))
        feat = self.uafb(h0)
        for block in self.SRTB_list:
            feat = block(feat)
        out = self.upsample(self.conv4(feat) + h0)
        return out[..., : h * self.scale, : w * self.scale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="fat",
        family="FAT",
        upstream_class="FAT",
        tasks=("upscale",),
        scale=FAT.scale,
        in_channels=FAT.in_ch,
        out_channels=FAT.out_ch,
        min_size=2 * _MULTIPLE,
        multiple_of=_MULTIPLE,
        # the spectral attention runs in float32 whatever the model's dtype; the rest is a plain Swin transformer
        fp16=True,
        bf16=True,
        channels_last=False,
        tiling="global",
        context=32,
        code_license=_LICENSE,
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """FAT has one layout (no arguments): its fusion-layer FSSA key, then an exact meta rebuild."""
    if "SRTB_list.0.MAT.FSSA.sparse_attention.conv_match.0.weight" not in sd or "uafb.up_transpose.weight" not in sd:
        return None
    return rebuilds(FAT, {}, sd)


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="fat", family="FAT", cls=FAT, describe=_describe, detect=_detect),
)
