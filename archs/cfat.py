"""CFAT, the Composite Fusion Attention Transformer (Ray, Kumar and Kolekar, "CFAT: Unleashing Triangular Windows
for Image Super-resolution", CVPR 2024; rayabhisek123/CFAT, MIT).

Semantics, keyword names, defaults and state-dict keys follow the seed korvin2000/arch_research `CFAT/cfat.py`. The
layout is HAT's (residual hybrid attention groups of window-attention blocks with a channel-attention conv branch,
plus one overlapping cross-attention block per group); CFAT changes what the blocks attend to:
* block i of a group uses rectangular windows (even i) or triangular windows (odd i): each 2ws x 2ws square is cut
  into four triangles of ws * ws tokens (upper, right, bottom, left; raster order inside), attended to separately with
  the ws x ws relative position bias;
* groups alternate dense (even index) and sparse (odd index) attention: a sparse group attends within the
  interval-strided sub-grids (pixel (y, x) belongs to sub-grid (y mod I, x mod I)).

Upstream quirks kept (they define what the checkpoints compute):
* block i shifts by shift_size[i] (a roll); the shift mask is upstream's `calculate_mask` for shift 8, 16 or 24
  (other non-zero shifts crash upstream and are refused here); for shift >= window the mask regions overlap as the
  slice assignments in upstream make them;
* triangular blocks reuse the rectangular shift mask: triangle window j gets rectangular window j's mask (both number
  (H / ws) * (W / ws) windows);
* sparse blocks roll by their shift but apply no shift mask (upstream adds it only together with its padding mask,
  which is never needed at the sizes below);
* `conv_before_upsample` uses LeakyReLU's default slope 0.01.

Size rules: H and W must be multiples of 2 * window_size * I for every group interval I (triangular windows on the
sub-grids). We pad bottom/right to that multiple (reflect, replicate when too small) and crop; valid sizes are
untouched. The channel attention of every block pools the whole map: tiling "global".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import list_length, rebuilds
from .layers.drop import DropPath
from .layers.padding import pad_to_multiple
from .layers.upsample import Upsample
from .layers.window import relative_position_index, window_partition, window_reverse
from .layers.window_attention import Mlp, PatchEmbed, WindowAttention, window_sdpa
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "CFAT"]

_LICENSE = "MIT"
_MASKED_SHIFTS = (8, 16, 24)  # upstream precomputes shift masks for these only


# ---------------------------------------------------------------------------------------------------------------------
# index tables and masks


def overlap_position_index(window: int, overlap_window: int) -> torch.Tensor:
    """(ws * ws, ows * ows) rows of OCAB's bias table (HAT's `calculate_rpi_oca`: key minus query offsets)."""
    def grid(n: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        return torch.stack([ys.flatten(), xs.flatten()])

    rel = grid(overlap_window)[:, None, :] - grid(window)[:, :, None]  # (2, ws*ws, ows*ows)
    rel = rel + (window - overlap_window + 1)
    return rel[0] * (window + overlap_window - 1) + rel[1]


def shift_mask(size: tuple[int, int], window: int, shift: int, fill: float = -100.0) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) mask of upstream's `calculate_mask`: rows labelled by the slices [0, -ws), [-ws, -shift),
    [-shift, end) assigned in that order (later ones win where they overlap, as for shift >= ws), columns alike."""
    h, w = size

    def labels(n: int) -> torch.Tensor:
        lab = torch.zeros(n, dtype=torch.int64)
        for i, sl in enumerate((slice(0, -window), slice(-window, -shift), slice(-shift, None))):
            lab[sl] = i
        return lab

    lab = (labels(h)[:, None] * 3 + labels(w)[None, :]).view(1, h, w, 1)
    win = window_partition(lab, window).reshape(-1, window * window)
    differ = win[:, None, :] != win[:, :, None]
    return torch.zeros(differ.shape).masked_fill(differ, fill)


@functools.cache
def triangle_order(window: int) -> torch.Tensor:
    """Positions (raster index in a 2ws x 2ws square) of the upper, right, bottom and left triangles, each in raster
    order: upstream's four boolean masks, concatenated. They partition the square (a permutation)."""
    s = 2 * window
    r = torch.arange(s, device="cpu").view(s, 1).expand(s, s)  # on the CPU even while building on "meta"
    c = torch.arange(s, device="cpu").view(1, s).expand(s, s)
    masks = ((c > r) & (r + c < s), (c >= r) & (r + c >= s), (c < r) & (r + c >= s - 1), (c <= r) & (r + c < s - 1))
    order = torch.cat([m.flatten().nonzero().flatten() for m in masks])
    if not torch.equal(order.sort().values, torch.arange(s * s, device="cpu")):
        raise AssertionError("triangles do not partition the square")
    return order


def _partition(x: torch.Tensor, window: int, triangular: bool, order: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (windows, ws*ws, C): ws x ws squares, or the four triangles of each 2ws x 2ws square."""
    c = x.shape[-1]
    if not triangular:
        return window_partition(x, window).reshape(-1, window * window, c)
    sq = window_partition(x, 2 * window).reshape(-1, 4 * window * window, c)
    return sq[:, order.to(x.device)].reshape(-1, window * window, c)


def _reverse(win: torch.Tensor, window: int, triangular: bool, order: torch.Tensor, h: int, w: int) -> torch.Tensor:
    c = win.shape[-1]
    if not triangular:
        return window_reverse(win.reshape(-1, window, window, c), window, h, w)
    inverse = torch.argsort(order.to(win.device))
    sq = win.reshape(-1, 4 * window * window, c)[:, inverse]
    return window_reverse(sq.reshape(-1, 2 * window, 2 * window, c), 2 * window, h, w)


# ---------------------------------------------------------------------------------------------------------------------
# blocks


class ChannelAttention(nn.Module):
    """RCAN channel attention: pool, 1x1 squeeze, ReLU, 1x1 expand, sigmoid gate."""

    def __init__(self, num_feat: int, squeeze_factor: int = 16) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1), nn.ReLU(),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block: conv (C -> C / compress), GELU, conv back, channel attention."""

    def __init__(self, num_feat: int, compress_ratio: int = 3, squeeze_factor: int = 30) -> None:
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class HAB(nn.Module):
    """Hybrid attention block (upstream HAB_D when interval is 0, HAB_S otherwise): x + (S)W-MSA(LN(x)) +
    conv_scale * CAB(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, interval: int, triangular: bool, compress_ratio: int, squeeze_factor: int,
                 conv_scale: float, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 drop_path: float) -> None:
        super().__init__()
        if min(input_resolution) <= window_size:  # upstream: no partition when the window covers the image
            shift_size, window_size = 0, min(input_resolution)
        if shift_size and shift_size not in _MASKED_SHIFTS:
            raise ValueError(f"shift_size entries must be 0, 8, 16 or 24 (upstream has masks for those only), "
                             f"got {shift_size}")
        self.window_size, self.shift_size, self.interval = window_size, shift_size, interval
        self.triangular = triangular
        self.conv_scale = conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, own_index=False)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, size: tuple[int, int], rpi: torch.Tensor,
                masks: dict[int, torch.Tensor]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        conv = self.conv_block(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        s = self.shift_size
        if s:
            y = torch.roll(y, (-s, -s), (1, 2))
        ws, i = self.window_size, self.interval
        if i:  # sparse: the I x I strided sub-grids, each (H / I, W / I); no shift mask (see module docstring)
            gh, gw = h // i, w // i
            y = y.reshape(b, gh, i, gw, i, c).permute(0, 2, 4, 1, 3, 5).reshape(b * i * i, gh, gw, c)
            mask = None
        else:
            gh, gw = h, w
            mask = masks[s] if s else None
        order = triangle_order(ws)
        win = self.attn(_partition(y, ws, self.triangular, order), mask, rpi)
        y = _reverse(win, ws, self.triangular, order, gh, gw)
        if i:
            y = y.reshape(b, i, i, gh, gw, c).permute(0, 3, 1, 4, 2, 5).reshape(b, h, w, c)
        if s:
            y = torch.roll(y, (s, s), (1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c)) + conv * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention (HAT): queries in ws x ws windows, keys/values in the overlapping ows x ows
    windows around them (zero padded), relative position bias; then an MLP."""

    def __init__(self, *, dim: int, window_size: int, overlap_ratio: float, num_heads: int, qkv_bias: bool,
                 qk_scale: float | None, mlp_ratio: float) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        ows = self.overlap_win_size
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((window_size + ows - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, size: tuple[int, int], rpi: torch.Tensor) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        ws, ows, nh = self.window_size, self.overlap_win_size, self.num_heads
        qkv = self.qkv(self.norm1(x)).view(b, h, w, 3, c)
        q = window_partition(qkv[..., 0, :], ws).reshape(-1, ws * ws, nh, c // nh).transpose(1, 2)
        kv = qkv[..., 1:, :].permute(0, 3, 4, 1, 2).reshape(b, 2 * c, h, w)
        kv = F.unfold(kv, (ows, ows), stride=ws, padding=(ows - ws) // 2)  # (B, 2C * ows * ows, nW)
        kv = kv.view(b, 2, nh, c // nh, ows * ows, -1).permute(1, 0, 5, 2, 4, 3).reshape(2, -1, nh, ows * ows, c // nh)
        bias = self.relative_position_bias_table[rpi.reshape(-1)].view(ws * ws, ows * ows, -1).permute(2, 0, 1)
        out = window_sdpa(q, kv[0], kv[1], bias, None, self.scale)  # (B * nW, heads, ws*ws, d)
        out = window_reverse(out.transpose(1, 2).reshape(-1, ws, ws, c), ws, h, w).reshape(b, h * w, c)
        x = self.proj(out) + x
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    """The blocks of one group and its OCAB."""

    def __init__(self, *, depth: int, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: Sequence[int], interval: int, overlap_ratio: float, drop_path: Sequence[float],
                 **block: Any) -> None:
        super().__init__()
        if len(shift_size) < depth:
            raise ValueError(f"shift_size needs one entry per block ({depth}), got {len(shift_size)}")
        self.blocks = nn.ModuleList(
            HAB(dim=dim, input_resolution=input_resolution, num_heads=num_heads, window_size=window_size,
                shift_size=int(shift_size[i]), interval=interval, triangular=bool(i % 2), drop_path=drop_path[i],
                **block)
            for i in range(depth))
        self.overlap_attn = OCAB(dim=dim, window_size=window_size, overlap_ratio=overlap_ratio, num_heads=num_heads,
                                 qkv_bias=block["qkv_bias"], qk_scale=block["qk_scale"], mlp_ratio=block["mlp_ratio"])


class RHAG(nn.Module):
    """Residual hybrid attention group: blocks, OCAB, conv (1conv) on the map, plus the group's input."""

    def __init__(self, *, resi_connection: str, dim: int, **kw: Any) -> None:
        super().__init__()
        self.residual_group = AttenBlocks(dim=dim, **kw)
        if resi_connection == "1conv":
            self.conv: nn.Module = nn.Conv2d(dim, dim, 3, 1, 1)
        elif resi_connection == "identity":
            self.conv = nn.Identity()
        else:
            raise ValueError(f"resi_connection {resi_connection!r} is not supported (1conv, identity)")

    def forward(self, x: torch.Tensor, size: tuple[int, int], params: dict[str, Any]) -> torch.Tensor:
        y = x
        for blk in self.residual_group.blocks:
            y = blk(y, size, params["rpi_sa"], params["masks"])
        y = self.residual_group.overlap_attn(y, size, params["rpi_oca"])
        b, _, c = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, *size))
        return y.flatten(2).transpose(1, 2) + x


class CFAT(nn.Module):
    """CFAT x2/x3/x4 (pixel-shuffle head)."""

    def __init__(self, *, img_size: int = 64, patch_size: int = 1, in_chans: int = 3, embed_dim: int = 180,
                 depths: Sequence[int] = (8, 8, 8, 8, 8), num_heads: Sequence[int] = (6, 6, 6, 6, 6),
                 window_size: int = 16, shift_size: Sequence[int] = (0, 0, 8, 8, 16, 16, 24, 24),
                 interval: Sequence[int] = (0, 2, 0, 2, 0), compress_ratio: int = 3, squeeze_factor: int = 30,
                 conv_scale: float = 0.01, overlap_ratio: float = 0.5, mlp_ratio: float = 2, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, ape: bool = False, patch_norm: bool = True, use_checkpoint: bool = False,
                 upscale: int = 4, img_range: float = 1.0, upsampler: str = "pixelshuffle",
                 resi_connection: str = "1conv") -> None:
        super().__init__()
        del drop_rate, attn_drop_rate, use_checkpoint  # dropout 0 in every config; checkpointing is training-only
        if upsampler != "pixelshuffle":
            raise ValueError(f"upsampler {upsampler!r} is not supported: upstream's forward handles 'pixelshuffle' "
                             "only")
        if len(interval) < len(depths) or any(interval[i] <= 0 for i in range(1, len(depths), 2)):
            raise ValueError("interval needs one entry per group, > 0 for the sparse (odd) groups")
        self.window_size, self.upscale, self.img_range = window_size, upscale, img_range
        self.intervals = [int(interval[i]) if i % 2 else 0 for i in range(len(depths))]
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        ows = window_size + int(overlap_ratio * window_size)
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        self.register_buffer("relative_position_index_OCA", overlap_position_index(window_size, ows))
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        res = (img_size // patch_size, img_size // patch_size)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim)) if ape else None
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(RHAG(
                resi_connection=resi_connection, dim=embed_dim, depth=depth, input_resolution=res,
                num_heads=num_heads[i], window_size=window_size, shift_size=shift_size, interval=self.intervals[i],
                overlap_ratio=overlap_ratio, drop_path=dpr[start:start + depth], compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor, conv_scale=conv_scale, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                qk_scale=qk_scale))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" \
            else nn.Identity()
        num_feat = 64
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

    @property
    def size_multiple(self) -> int:
        return math.lcm(*(2 * self.window_size * max(1, i) for i in self.intervals))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window_size
        # only dense blocks apply a shift mask (see the module docstring); build the ones they use
        used = {blk.shift_size for layer in self.layers for blk in layer.residual_group.blocks
                if blk.shift_size and not blk.interval}
        masks = {s: shift_mask((h, w), ws, s).to(x.device, x.dtype) for s in sorted(used)}
        params = {"rpi_sa": self.relative_position_index_SA, "rpi_oca": self.relative_position_index_OCA,
                  "masks": masks}
        t = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            t = t + self.absolute_pos_embed
        for layer in self.layers:
            t = layer(t, (h, w), params)
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.size_multiple, mode="reflect_or_replicate")
        mean = self.mean.to(x.dtype)  # type: ignore[union-attr]
        x = self.conv_first((x - mean) * self.img_range)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + mean
        return x[..., : h * self.upscale, : w * self.upscale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    ws, depths = int(kw["window_size"]), list(kw["depths"])
    intervals = [int(kw["interval"][i]) if i % 2 else 0 for i in range(len(depths))]
    multiple = math.lcm(*(2 * ws * max(1, i) for i in intervals)) if depths else 2 * ws
    return ArchSpec(
        id="cfat",
        family="CFAT",
        upstream_class="CFAT",
        tasks=("upscale",),
        scale=int(kw["upscale"]),
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        multiple_of=multiple,
        # HAT-style transformer; attention via SDPA, LayerNorm in the model dtype (the lead measures half precision)
        fp16=True,
        bf16=True,
        channels_last=False,
        tiling="global",
        context=2 * multiple,
        code_license=_LICENSE,
    )


_DEPTH = 8  # CFAT's published groups have 8 blocks (its shift tuple has 8 entries); HAT's have 6


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """CFAT checkpoints have HAT's layout exactly (CFAT adds no parameters), so the keys cannot tell the two apart.
    We claim the layout only with CFAT's published structure, every group of 8 blocks, and read window, overlap,
    widths and heads off the tables; the shift tuple and intervals are CFAT's defaults (alternating dense / sparse
    groups with interval 2). A HAT checkpoint with 8-block groups would be ambiguous (pass the architecture)."""
    sa, oca = sd.get("relative_position_index_SA"), sd.get("relative_position_index_OCA")
    first = sd.get("conv_first.weight")
    if sa is None or oca is None or first is None or sa.ndim != 2 or oca.ndim != 2 or first.ndim != 4:
        return None
    n_layers = list_length(sd, "layers")
    depths = [list_length(sd, f"layers.{i}.residual_group.blocks") for i in range(n_layers)]
    if not depths or any(d != _DEPTH for d in depths):
        return None
    ws = math.isqrt(int(sa.shape[0]))
    ows = math.isqrt(int(oca.shape[1]))
    dim = int(first.shape[0])
    blk = "layers.0.residual_group.blocks.0"
    cab0, sq, fc1 = (sd.get(f"{blk}.{k}") for k in ("conv_block.cab.0.weight", "conv_block.cab.3.attention.1.weight",
                                                    "mlp.fc1.weight"))
    if cab0 is None or sq is None or fc1 is None or ws * ws != sa.shape[0] or ows * ows != oca.shape[1] \
            or 0 in (cab0.shape[0], sq.shape[0], ws):
        return None
    ups = [v for k, v in sd.items() if k.startswith("upsample.") and k.endswith(".weight")]
    upscale = 3 if len(ups) == 1 and ups[0].shape[0] == 9 * ups[0].shape[1] else 2 ** len(ups)
    ape = sd.get("absolute_pos_embed")
    kw: dict[str, Any] = {
        "img_size": math.isqrt(int(ape.shape[1])) if ape is not None else 64,
        "in_chans": int(first.shape[1]),
        "embed_dim": dim,
        "depths": depths,
        "num_heads": [int(sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1])
                      for i in range(n_layers)],
        "window_size": ws,
        "interval": [0 if i % 2 == 0 else 2 for i in range(n_layers)],
        "compress_ratio": dim // int(cab0.shape[0]),
        "squeeze_factor": dim // int(sq.shape[0]),
        "overlap_ratio": (ows - ws) / ws,
        "mlp_ratio": int(fc1.shape[0]) / dim,
        "ape": ape is not None,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "upscale": upscale,
        "resi_connection": "1conv" if "layers.0.conv.weight" in sd else "identity",
    }
    return rebuilds(CFAT, kw, sd)


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="cfat", family="CFAT", cls=CFAT, describe=_describe, detect=_detect),
)
