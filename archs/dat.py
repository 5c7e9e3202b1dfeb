"""The DAT family of the seed's team15_BBox entry: `DAT` (Dual Aggregation Transformer, Chen et al., ICCV 2023,
zhengchen1999/DAT) and `MSHAT` (HAT with two extra, unused upsampling heads).

Semantics follow korvin2000/arch_research `team15_BBox/model.py` (DAT) and `team15_BBox/MSHAT_model.py` (MSHAT);
keyword names, defaults and state-dict keys match upstream, so its checkpoints load strictly.

DAT: residual groups of blocks that alternate (block index even) adaptive spatial attention, i.e. rectangle windows
split_size[0] x split_size[1] on one half of the channels and the transposed rectangle on the other, shifted by half
a window in every other spatial block, and (block index odd) adaptive channel attention (XCiT-style, over all
tokens). Both mix in a depthwise-conv branch through the Adaptive Interaction Module (a pooled channel map and a
1x1 spatial map). The feed-forward is SGFN (spatial-gate FFN). Positional bias: DynamicPosBias, a small MLP over the
(dy, dx) table. The qkv maps are zero-padded inside the spatial attention to a multiple of the larger split size, so
any input size works. The shifted blocks' masks for img_size are persistent buffers upstream (in every checkpoint);
other sizes get masks computed on the fly.

Channel attention and the AIM's channel map see the whole feature map: tiling "global".

Differences from upstream, none changing float32 outputs: attention runs through scaled_dot_product_attention with
the bias and mask as additive terms; `mean` is a non-persistent buffer (upstream keeps a plain attribute);
`act_layer`/`norm_layer` are not arguments (always GELU / LayerNorm); unknown `upsampler`/`resi_connection` values
are errors (upstream returns the un-upsampled input or fails later).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, pixel_shuffle_scale, ratio_for, same_keys_and_shapes
from .layers.drop import DropPath
from .layers.posbias import DynamicPosBias, offset_table
from .layers.swin import RHAG, PatchEmbed, oca_relative_position_index, patch_unembed
from .layers.swin import resi_conv as swin_resi_conv
from .layers.upsample import Upsample, UpsampleOneStep
from .layers.window import relative_position_index, shifted_window_mask, window_partition, window_reverse
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "DAT", "MSHAT"]

_UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect")
_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _mean(in_chans: int) -> torch.Tensor:
    return torch.tensor(_RGB_MEAN if in_chans == 3 else (0.0,)).view(1, -1, 1, 1)


def resi_conv(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing a residual group / the body: one 3x3, or SwinIR's 3-conv bottleneck."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', not {resi_connection!r}")


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def _image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


# ---------------------------------------------------------------------------------------------------------------------
# DAT blocks


class SpatialGate(nn.Module):
    """x1 * dwconv(LN(x2)) for the two channel halves of x."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x1 * _tokens(self.conv(_image(self.norm(x2), h, w)))


class SGFN(nn.Module):
    """Spatial-gate feed-forward: fc1, GELU, spatial gate (halves the width), fc2."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.sg = SpatialGate(hidden_features // 2)
        self.fc2 = nn.Linear(hidden_features // 2, in_features)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.sg(self.act(self.fc1(x)), h, w))


class Spatial_Attention(nn.Module):  # noqa: N801 (upstream class name)
    """Window attention over (wh, ww) rectangles with a DynamicPosBias; idx 1 transposes the rectangle."""

    def __init__(self, dim: int, idx: int, split_size: Sequence[int], num_heads: int,
                 qk_scale: float | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        s0, s1 = int(split_size[0]), int(split_size[1])
        self.H_sp, self.W_sp = (s0, s1) if idx == 0 else (s1, s0)
        self.pos = DynamicPosBias(dim // 4, num_heads)  # DAT never uses the residual form
        self.register_buffer("rpe_biases", offset_table(self.H_sp, self.W_sp))
        self.register_buffer("relative_position_index", relative_position_index((self.H_sp, self.W_sp)))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q, k, v: (B, H, W, C) maps (H, W multiples of the window) -> (B, H, W, C)."""
        b, h, w, c = q.shape
        win = (self.H_sp, self.W_sp)
        n, heads = self.H_sp * self.W_sp, self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B*nW, heads, N, hd)
            return window_partition(t, win).reshape(-1, n, heads, c // heads).transpose(1, 2)

        index: torch.Tensor = self.relative_position_index  # type: ignore[assignment]
        pos = self.pos(self.rpe_biases)  # ((2wh-1)(2ww-1), heads)
        bias = pos[index.reshape(-1)].view(n, n, heads).permute(2, 0, 1).to(q.dtype)  # (heads, N, N)
        if mask is not None:
            nw = mask.shape[0]
            bias = bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)  # (nW, heads, N, N), per image
            bias = bias.expand(b, nw, heads, n, n).reshape(-1, heads, n, n)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias, scale=self.scale)
        return window_reverse(out.transpose(1, 2).reshape(-1, *win, c), win, h, w)


def _aim(dim: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """The depthwise-conv branch and the AIM's channel and spatial interaction maps (upstream child numbering)."""
    dwconv = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim), nn.GELU())
    channel = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim // 8, 1), nn.BatchNorm2d(dim // 8), nn.GELU(),
        nn.Conv2d(dim // 8, dim, 1),
    )
    spatial = nn.Sequential(nn.Conv2d(dim, dim // 16, 1), nn.BatchNorm2d(dim // 16), nn.GELU(),
                            nn.Conv2d(dim // 16, 1, 1))
    return dwconv, channel, spatial


def _shifted(rg_idx: int, b_idx: int) -> bool:
    """Which spatial blocks shift: blocks 2, 6, 10, ... of even groups and 0, 4, 8, ... of odd groups."""
    return (rg_idx % 2 == 0 and b_idx > 0 and (b_idx - 2) % 4 == 0) or (rg_idx % 2 != 0 and b_idx % 4 == 0)


class Adaptive_Spatial_Attention(nn.Module):  # noqa: N801 (upstream class name)
    """Two rectangle-window attentions on the channel halves (window and its transpose), plus the conv branch of v,
    combined by the AIM: attention * sigmoid(channel map of the conv branch) + conv * sigmoid(spatial map of the
    attention)."""

    def __init__(self, dim: int, num_heads: int, reso: int, split_size: Sequence[int], shift_size: Sequence[int],
                 qkv_bias: bool, qk_scale: float | None, rg_idx: int, b_idx: int) -> None:
        super().__init__()
        self.split_size = (int(split_size[0]), int(split_size[1]))
        self.shift_size = (int(shift_size[0]), int(shift_size[1]))
        for s, t in zip(self.split_size, self.shift_size, strict=True):
            if not 0 <= t < s:
                raise ValueError(f"DAT: shift {self.shift_size} must be in [0, split_size {self.split_size})")
        self.patches_resolution = reso
        self.shifted = _shifted(rg_idx, b_idx)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attns = nn.ModuleList(
            Spatial_Attention(dim // 2, i, self.split_size, num_heads // 2, qk_scale) for i in range(2)
        )
        self._masks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        if self.shifted:
            m0, m1 = self._compute_masks(reso, reso)
            self.register_buffer("attn_mask_0", m0)
            self.register_buffer("attn_mask_1", m1)
        else:
            self.attn_mask_0 = self.attn_mask_1 = None
        self.dwconv, self.channel_interaction, self.spatial_interaction = _aim(dim)

    def _compute_masks(self, h: int, w: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        (s0, s1), (t0, t1) = self.split_size, self.shift_size
        return (shifted_window_mask((h, w), (s0, s1), (t0, t1), device=device),
                shifted_window_mask((h, w), (s1, s0), (t1, t0), device=device))

    def _masks_for(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if h == w == self.patches_resolution and self.attn_mask_0 is not None:
            return self.attn_mask_0, self.attn_mask_1  # type: ignore[return-value]
        key = (h, w)
        if key not in self._masks or self._masks[key][0].device != device:
            self._masks = {key: self._compute_masks(h, w, device)}
        return self._masks[key]

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x)
        v = _image(qkv[..., 2 * c:], h, w)
        m = max(self.split_size)
        ph, pw = (m - h % m) % m, (m - w % m) % m
        # zero padding after the qkv projection, as upstream
        maps = F.pad(qkv.view(b, h, w, 3 * c), (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        q, k, vv = maps.view(b, hp, wp, 3, c).unbind(3)
        half = c // 2
        outs = []
        masks = self._masks_for(hp, wp, x.device) if self.shifted else (None, None)
        for i, attn in enumerate(self.attns):
            sl = slice(i * half, (i + 1) * half)
            qi, ki, vi = q[..., sl], k[..., sl], vv[..., sl]
            if self.shifted:
                t = self.shift_size if i == 0 else self.shift_size[::-1]
                qi, ki, vi = (torch.roll(z, (-t[0], -t[1]), (1, 2)) for z in (qi, ki, vi))
                out = torch.roll(attn(qi, ki, vi, masks[i]), (t[0], t[1]), (1, 2))
            else:
                out = attn(qi, ki, vi, None)
            outs.append(out[:, :h, :w].reshape(b, n, half))
        attened = torch.cat(outs, 2)
        conv_x = self.dwconv(v)
        channel_map = self.channel_interaction(conv_x).view(b, 1, c)
        spatial_map = self.spatial_interaction(_image(attened, h, w))
        x = attened * torch.sigmoid(channel_map) + _tokens(torch.sigmoid(spatial_map) * conv_x)
        return self.proj(x)


class Adaptive_Channel_Attention(nn.Module):  # noqa: N801 (upstream class name)
    """Channel (transposed) attention with L2-normalised q, k and a learned temperature per head, plus the conv
    branch of v; AIM: attention * sigmoid(spatial map of the conv branch) + conv * sigmoid(channel map of the
    attention)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dwconv, self.channel_interaction, self.spatial_interaction = _aim(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 4, 1).unbind(0)  # (B, h, d, N)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        attened = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        conv_x = self.dwconv(v.reshape(b, c, h, w))
        channel_map = self.channel_interaction(_image(attened, h, w))
        spatial_map = self.spatial_interaction(conv_x).permute(0, 2, 3, 1).reshape(b, n, 1)
        x = attened * torch.sigmoid(spatial_map) + _tokens(conv_x * torch.sigmoid(channel_map))
        return self.proj(x)


class DATB(nn.Module):
    """Dual aggregation block: x + attn(LN(x)), x + SGFN(LN(x)); spatial attention on even blocks, channel on odd."""

    def __init__(self, *, dim: int, num_heads: int, reso: int, split_size: Sequence[int], shift_size: Sequence[int],
                 expansion_factor: float, qkv_bias: bool, qk_scale: float | None, drop_path: float, rg_idx: int,
                 b_idx: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn: nn.Module
        if b_idx % 2 == 0:
            self.attn = Adaptive_Spatial_Attention(dim, num_heads, reso, split_size, shift_size, qkv_bias, qk_scale,
                                                   rg_idx, b_idx)
        else:
            self.attn = Adaptive_Channel_Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ffn = SGFN(dim, int(dim * expansion_factor))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class ResidualGroup(nn.Module):
    """DATBs and a closing conv, with the group's input added back."""

    def __init__(self, *, dim: int, reso: int, num_heads: int, split_size: Sequence[int], expansion_factor: float,
                 qkv_bias: bool, qk_scale: float | None, drop_paths: Sequence[float], depth: int, use_chk: bool,
                 resi_connection: str, rg_idx: int) -> None:
        super().__init__()
        self.use_chk = use_chk
        shift = [int(split_size[0]) // 2, int(split_size[1]) // 2]
        self.blocks = nn.ModuleList(
            DATB(dim=dim, num_heads=num_heads, reso=reso, split_size=split_size, shift_size=shift,
                 expansion_factor=expansion_factor, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_path=drop_paths[i],
                 rg_idx=rg_idx, b_idx=i)
            for i in range(depth)
        )
        self.conv = resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        res = x
        for blk in self.blocks:
            if self.use_chk and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, h, w, use_reentrant=False)
            else:
                x = blk(x, h, w)
        return res + _tokens(self.conv(_image(x, h, w)))


class DAT(nn.Module):
    """Dual Aggregation Transformer. `upsampler` 'pixelshuffle' (classical SR) or 'pixelshuffledirect' (DAT-light).
    `img_size` sets the size of the stored shift masks (any input size runs); drop rates act only while training."""

    def __init__(
        self,
        *,
        img_size: int = 64,
        in_chans: int = 3,
        embed_dim: int = 180,
        split_size: Sequence[int] = (8, 16),
        depth: Sequence[int] = (6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        expansion_factor: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        use_chk: bool = False,
        upscale: int = 4,
        img_range: float = 1.0,
        resi_connection: str = "1conv",
        upsampler: str = "pixelshuffle",
    ) -> None:
        super().__init__()
        if upsampler not in _UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, not {upsampler!r}")
        if embed_dim < 16:
            raise ValueError(f"DAT needs embed_dim >= 16 (the AIM squeezes to embed_dim // 16), got {embed_dim}")
        del drop_rate, attn_drop_rate  # dropout: identity in eval, no parameters
        num_feat = 64
        self.img_range = float(img_range)
        self.register_buffer("mean", _mean(in_chans), persistent=False)
        self.upscale = upscale
        self.upsampler = upsampler
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.num_layers = len(depth)
        self.embed_dim = embed_dim
        # upstream: nn.Sequential(Rearrange('b c h w -> b (h w) c'), LayerNorm); the rearrange has no parameters
        self.before_RG = nn.Sequential(nn.Identity(), nn.LayerNorm(embed_dim))
        total = sum(depth)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]  # torch.linspace
        self.layers = nn.ModuleList(
            ResidualGroup(dim=embed_dim, reso=img_size, num_heads=num_heads[i], split_size=split_size,
                          expansion_factor=expansion_factor, qkv_bias=qkv_bias, qk_scale=qk_scale,
                          drop_paths=dpr[sum(depth[:i]):sum(depth[:i + 1])], depth=depth[i], use_chk=use_chk,
                          resi_connection=resi_connection, rg_idx=i)
            for i in range(self.num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = resi_conv(embed_dim, resi_connection)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
            self.upsample: nn.Module = Upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        else:
            self.upsample = UpsampleOneStep(upscale, embed_dim, in_chans)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.before_RG[1](_tokens(x))
        for layer in self.layers:
            x = layer(x, h, w)
        return _image(self.norm(x), h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)  # type: ignore[operator]
        x = self.conv_first((x - mean) * self.img_range)
        x = self.conv_after_body(self.forward_features(x)) + x
        if self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        return x / self.img_range + mean


# ---------------------------------------------------------------------------------------------------------------------
# MSHAT


class MSHAT(nn.Module):
    """HAT (residual hybrid attention groups: shifted-window attention + scaled channel-attention conv blocks, then
    an overlapping cross-attention block) with upstream's two extra heads `upsample_1x` (no layers) and
    `upsample_2x`, whose outputs upstream computes and discards: their weights load, nothing runs them. Only the
    'pixelshuffle' head exists upstream. No padding inside: H and W must be multiples of window_size."""

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 7,
        compress_ratio: int = 3,
        squeeze_factor: int = 30,
        conv_scale: float = 0.01,
        overlap_ratio: float = 0.5,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
    ) -> None:
        super().__init__()
        if upsampler != "pixelshuffle":
            raise ValueError(f"upsampler {upsampler!r}: MSHAT's forward only has the 'pixelshuffle' head")
        if patch_size != 1:
            raise ValueError("MSHAT runs with patch_size 1 only (its patch embedding does not patch)")
        del attn_drop_rate, use_checkpoint  # nothing at inference
        res = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        if min(res) < window_size:
            raise ValueError(f"img_size {res} is smaller than the window {window_size} (upstream's tables do not fit)")
        num_feat = 64
        self.window_size, self.shift_size = window_size, window_size // 2
        self.img_range = float(img_range)
        self.upscale, self.upsampler = upscale, upsampler
        self.register_buffer("mean", _mean(in_chans), persistent=False)
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        overlap_win = window_size + int(overlap_ratio * window_size)
        self.register_buffer("relative_position_index_OCA", oca_relative_position_index(window_size, overlap_win))
        self.shifts = min(res) > window_size  # Swin's rule: no shifted block when the map fits one window
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]  # torch.linspace
        self.layers = nn.ModuleList(
            RHAG(dim=embed_dim, input_resolution=res, depth=depths[i], num_heads=num_heads[i],
                 window_size=window_size, compress_ratio=compress_ratio, squeeze_factor=squeeze_factor,
                 conv_scale=conv_scale, overlap_ratio=overlap_ratio, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                 qk_scale=qk_scale, drop=drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                 mamba=False, resi_connection=resi_connection)
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = swin_resi_conv(embed_dim, resi_connection)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(upscale, num_feat)
        self.upsample_1x = Upsample(1, num_feat)  # empty: scale 1 is 2**0
        self.upsample_2x = Upsample(2, num_feat)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.window_size or w % self.window_size:
            raise ValueError(f"MSHAT: input {h}x{w} is not a multiple of the window {self.window_size} (pad first)")
        mask = shifted_window_mask((h, w), self.window_size, self.shift_size, device=x.device) \
            if self.shifts else None
        params = {"attn_mask": mask, "rpi_sa": self.relative_position_index_SA,
                  "rpi_oca": self.relative_position_index_OCA}
        t = self.patch_embed(x)
        if self.ape:
            t = t + self.absolute_pos_embed
        t = self.pos_drop(t)
        for layer in self.layers:
            t = layer(t, (h, w), params)
        return patch_unembed(self.norm(t), (h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)  # type: ignore[operator]
        x = self.conv_first((x - mean) * self.img_range)
        x = self.conv_before_upsample(self.conv_after_body(self.forward_features(x)) + x)
        # upstream also computes conv_last(upsample_1x(x)) and conv_last(upsample_2x(x)) and throws them away
        return self.conv_last(self.upsample(x)) / self.img_range + mean


# ---------------------------------------------------------------------------------------------------------------------
# descriptors


def _describe_dat(kw: dict[str, Any]) -> ArchSpec:
    s0, s1 = (int(s) for s in kw["split_size"])
    return ArchSpec(
        id="dat",
        family="DAT",
        upstream_class="DAT",
        tasks=("upscale",),
        scale=int(kw["upscale"]),
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=1,
        multiple_of=1,  # the spatial attention pads qkv to the split size itself
        # spandrel marks DAT fp16-unsafe (activations overflow in the channel attention); bf16 is fine
        fp16=False,
        bf16=True,
        channels_last=False,
        # channel attention and the AIM's pooled channel map see the whole map
        tiling="global",
        context=4 * max(s0, s1),
        code_license="Apache-2.0 (zhengchen1999/DAT); seed copy team15_BBox: not stated",
    )


# ---------------------------------------------------------------------------------------------------------------------
# detectors


def _split_from_shapes(n: int, m: int) -> tuple[int, int] | None:
    """(a, b), a <= b, with a * b == n and (2a - 1)(2b - 1) == m."""
    total = 4 * n + 1 - m  # = 2 (a + b)
    if total <= 0 or total % 2:
        return None
    ssum = total // 2
    for a in range(1, ssum // 2 + 1):
        if a * (ssum - a) == n:
            return a, ssum - a
    return None


def _detect_dat(sd: StateDict) -> dict[str, Any] | None:
    """Widths, depths, heads, split size (index and offset-table shapes; the order from the table's values when
    they are there, else the smaller first, as every published config), img_size (from a stored shift mask),
    expansion, head and residual connection; the rebuilt model must match every key and shape."""
    key = "layers.0.blocks.0.attn.attns.0.relative_position_index"
    if "conv_first.weight" not in sd or key not in sd or "before_RG.1.weight" not in sd:
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    split = _split_from_shapes(int(sd[key].shape[0]), int(sd["layers.0.blocks.0.attn.attns.0.rpe_biases"].shape[0]))
    if split is None:
        return None
    table = sd["layers.0.blocks.0.attn.attns.0.rpe_biases"]
    if not table.is_meta and table.numel():
        split = (1 - int(table[0, 0].item()), 1 - int(table[0, 1].item()))
    n_layers = count_indexed(sd, "layers.{}.blocks.0.norm1.weight")
    depth = [count_indexed(sd, f"layers.{i}.blocks.{{}}.norm1.weight") for i in range(n_layers)]
    heads = []
    for i in range(n_layers):
        temp = sd.get(f"layers.{i}.blocks.1.attn.temperature")
        pos = sd.get(f"layers.{i}.blocks.0.attn.attns.0.pos.pos3.2.weight")
        heads.append(int(temp.shape[0]) if temp is not None else 2 * int(pos.shape[0]) if pos is not None else 2)
    img_size = 64
    for k, t in sd.items():
        if k.endswith(".attn.attn_mask_0"):
            side2 = int(t.shape[0]) * split[0] * split[1]
            img_size = round(side2**0.5)
            break
    hidden = int(sd["layers.0.blocks.0.ffn.fc1.weight"].shape[0])
    kw: dict[str, Any] = {
        "img_size": img_size,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "split_size": list(split),
        "depth": depth,
        "num_heads": heads,
        "expansion_factor": ratio_for(hidden, embed_dim),
        "qkv_bias": "layers.0.blocks.0.attn.qkv.bias" in sd,
        "resi_connection": "3conv" if "conv_after_body.0.weight" in sd else "1conv",
    }
    if "conv_before_upsample.0.weight" in sd:
        num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
        convs = [k for k in sd if k.startswith("upsample.") and k.endswith(".weight")]
        first = int(sd["upsample.0.weight"].shape[0]) if "upsample.0.weight" in sd else 0
        kw.update(upsampler="pixelshuffle", upscale=3 if first == 9 * num_feat else 2 ** len(convs))
    elif "upsample.0.weight" in sd:
        scale = pixel_shuffle_scale(int(sd["upsample.0.weight"].shape[0]), in_chans)
        if scale is None:
            return None
        kw.update(upsampler="pixelshuffledirect", upscale=scale)
    else:
        return None
    return kw if same_keys_and_shapes(lambda: DAT(**kw), sd) else None


def _describe_mshat(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="mshat",
        family="DAT",
        upstream_class="MSHAT",
        tasks=("upscale",),
        scale=int(kw["upscale"]),
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=int(kw["window_size"]),
        multiple_of=int(kw["window_size"]),  # no padding inside (upstream): the engine pads
        fp16=True,
        bf16=True,
        channels_last=False,
        tiling="global",  # the channel attention of every CAB pools the whole map
        context=4 * int(kw["window_size"]),
        code_license="unspecified (NTIRE team15_BBox code in korvin2000/arch_research, GPL-3.0 collection)",
    )


def _detect_mshat(sd: StateDict) -> dict[str, Any] | None:
    """HAT's layout plus the `upsample_2x` head that only MSHAT has: widths, depths, heads, window (index buffer),
    overlap (OCA index), CAB compression and squeeze (conv shapes), expansion, residual connection, scale. Not
    stored: img_size (64, as the published config), conv_scale (0.01)."""
    if "upsample_2x.0.weight" not in sd or "relative_position_index_OCA" not in sd or "conv_first.weight" not in sd:
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    window = math.isqrt(int(sd["relative_position_index_SA"].shape[0]))
    overlap_win = math.isqrt(int(sd["relative_position_index_OCA"].shape[1]))
    n_layers = count_indexed(sd, "layers.{}.residual_group.blocks.0.norm1.weight")
    blk = "layers.0.residual_group.blocks.0."
    cab_mid = int(sd[blk + "conv_block.cab.0.weight"].shape[0])
    squeeze_mid = int(sd[blk + "conv_block.cab.3.attention.1.weight"].shape[0])
    hidden = int(sd[blk + "mlp.fc1.weight"].shape[0])
    num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
    convs = [k for k in sd if k.startswith("upsample.") and k.endswith(".weight")]
    first = int(sd["upsample.0.weight"].shape[0]) if "upsample.0.weight" in sd else 0
    kw: dict[str, Any] = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": [count_indexed(sd, f"layers.{i}.residual_group.blocks.{{}}.norm1.weight") for i in range(n_layers)],
        "num_heads": [int(sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1])
                      for i in range(n_layers)],
        "window_size": window,
        "compress_ratio": embed_dim // cab_mid if cab_mid else 3,
        "squeeze_factor": embed_dim // squeeze_mid if squeeze_mid else 30,
        "overlap_ratio": (overlap_win - window) / window,
        "mlp_ratio": ratio_for(hidden, embed_dim),
        "qkv_bias": blk + "attn.qkv.bias" in sd,
        "ape": "absolute_pos_embed" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "upscale": 3 if first == 9 * num_feat else 2 ** len(convs),
        "upsampler": "pixelshuffle",
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
    }
    if kw["ape"]:
        kw["img_size"] = math.isqrt(int(sd["absolute_pos_embed"].shape[1]))
    return kw if same_keys_and_shapes(lambda: MSHAT(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="dat", family="DAT", cls=DAT, describe=_describe_dat, detect=_detect_dat),
    ArchEntry(id="mshat", family="DAT", cls=MSHAT, describe=_describe_mshat, detect=_detect_mshat),
)
