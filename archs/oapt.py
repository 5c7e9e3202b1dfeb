"""OAPT_gt, the Offset-Aware Partition Transformer with a given JPEG grid offset (Mo et al., "OAPT: Offset-Aware
Partition Transformer for Double JPEG Artifacts Removal", ECCV 2024; QMoQ/OAPT), grayscale double-JPEG restoration.

Semantics, keyword names, defaults and state-dict keys follow the seed korvin2000/arch_research `OAPT/oapt_gt_arch.py`
(a SwinIR frame: residual Swin groups, a 1x1-channel residual head `x + conv_last(...)`).

`forward(x, offset)`: offset is a float tensor (B, 2) of the second compression's grid offset (oh, ow) in 0..7
relative to the first; only row 0 is used, rounded (upstream). Blocks alternate between plain (shifted) window
attention and "offset" blocks: with oh + ow > 0 every 8x8 JPEG block is cut at (8 - oh, 8 - ow) into up to four
parts; like parts of all blocks are packed into one map each (upstream's raw reshape of the (blocks, a, b, C) tensor
to (B, a * H / 8, b * W / 8, C), kept), window attention runs on each map, and the parts go back. Which blocks are
offset blocks and which shift: mode "interval" (shift on blocks 2, 3 of every 4; offset on odd blocks) or
"non-interval" (shift on odd blocks; offset on blocks 2, 3 of every 4), swapped by DenseFirstPositions=False.
With offset (0, 0) every block is a plain Swin block. Without an offset argument, `self.offset` is used ((0, 0);
set it, or pass one, for double-compressed images with a known grid shift).

Padding as upstream: every window partition pads its map bottom/right to the window multiple (reflect, zeros when
the map is too small), and the 8x8 split pads to a multiple of 8 the same way; results are cropped back. Shift masks
are computed for each padded map (the `attn_mask` buffer of the nominal img_size is used when the input has exactly
that size, as upstream). The packed part maps reach across whole rows of blocks: tiling "global".

Only upstream's `upsampler=''` (the published one) is built; other heads are refused. Dropout (0) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .layers.detect import count_indexed, list_length, rebuilds
from .layers.drop import DropPath
from .layers.padding import pad_to_multiple
from .layers.window import window_partition, window_reverse
from .layers.window_attention import Mlp, PatchEmbed, WindowAttention
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "OAPT_gt"]

_LICENSE = "unspecified (QMoQ/OAPT states no licence; seed collection GPL-3.0)"
_GRID = 8  # JPEG block size


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, H, W, C) padded bottom/right to `multiple`: reflect, or zeros where reflect cannot (upstream's
    `check_image_size_`)."""
    h, w = x.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "zeros"
    return pad_to_multiple(x.permute(0, 3, 1, 2), multiple, mode=mode).permute(0, 2, 3, 1)


def shift_mask(size: tuple[int, int], window: int, shift: int, fill: float = -100.0) -> torch.Tensor:
    """Upstream's `calculate_mask`: region labels by the slices [0, -ws), [-ws, -s), [-s, end), the label map padded
    like any map (reflect) when `size` is not a window multiple, then -100 between different labels per window."""
    h, w = size

    def labels(n: int) -> torch.Tensor:
        lab = torch.zeros(n)
        for i, sl in enumerate((slice(0, -window), slice(-window, -shift), slice(-shift, None))):
            lab[sl] = i
        return lab

    lab = (labels(h)[:, None] * 3 + labels(w)[None, :]).view(1, h, w, 1)
    win = window_partition(_pad(lab, window), window).reshape(-1, window * window)
    differ = win[:, None, :] != win[:, :, None]
    return torch.zeros(differ.shape).masked_fill(differ, fill)


class SwinTransformerBlock(nn.Module):
    """Swin block with OAPT's offset-aware partition: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop_path: float) -> None:
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(input_resolution) <= window_size:
            shift_size, window_size = 0, min(input_resolution)
        if not 0 <= shift_size < window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shift_mask(self.input_resolution, window_size, shift_size)
                             if shift_size else None)

    def _attend(self, x: torch.Tensor, use_buffer: bool) -> torch.Tensor:
        """(Shifted) window attention over a map (B, h, w, C), padded to the window inside and cropped."""
        _, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        if s:
            x = torch.roll(x, (-s, -s), (1, 2))
        x = _pad(x, ws)
        hp, wp = x.shape[1:3]
        mask = None
        if s:
            mask = self.attn_mask if use_buffer else shift_mask((hp, wp), ws, s).to(x.device, x.dtype)
        y = window_reverse(self.attn(window_partition(x, ws).reshape(-1, ws * ws, c), mask), ws, hp, wp)[:, :h, :w]
        return torch.roll(y, (s, s), (1, 2)) if s else y

    def _attend_parts(self, x: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
        """Offset-aware partition: the four parts of every 8x8 block, each kind packed into one map."""
        b, h, w, c = x.shape
        xp = _pad(x, _GRID)
        hp, wp = xp.shape[1:3]
        blocks = window_partition(xp, _GRID)  # (B * nb, 8, 8, C), blocks in raster order
        out = torch.zeros_like(blocks)
        for rows in (slice(0, _GRID - oh), slice(_GRID - oh, _GRID)):
            for cols in (slice(0, _GRID - ow), slice(_GRID - ow, _GRID)):
                a, bw = rows.stop - rows.start, cols.stop - cols.start
                if not a or not bw:
                    continue
                part = blocks[:, rows, cols].reshape(b, a * (hp // _GRID), bw * (wp // _GRID), c)
                out[:, rows, cols] = self._attend(part, False).reshape(-1, a, bw, c)
        return window_reverse(out, _GRID, hp, wp)[:, :h, :w]

    def forward(self, x: torch.Tensor, size: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if offset[0] + offset[1] > 0:
            y = self._attend_parts(y, *offset)
        else:
            y = self._attend(y, tuple(size) == self.input_resolution)
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """The blocks of one group (`residual_group`); which use the offset is fixed by mode and DenseFirstPositions."""

    def __init__(self, *, depth: int, mode: str, DenseFirstPositions: bool, window_size: int,
                 drop_path: Sequence[float], **block: Any) -> None:
        super().__init__()
        if mode == "interval":
            self.interval, shifted = 1, [(i // 2) % 2 == 1 for i in range(depth)]
        else:
            self.interval, shifted = 2, [i % 2 == 1 for i in range(depth)]
        self.dense_first = bool(DenseFirstPositions)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(window_size=window_size, shift_size=window_size // 2 if shifted[i] else 0,
                                 drop_path=drop_path[i], **block)
            for i in range(depth))

    def uses_offset(self, i: int) -> bool:
        first_phase = (i // self.interval) % 2 == 0
        return first_phase != self.dense_first


class RSTB(nn.Module):
    """Residual Swin group: blocks, conv on the map, plus the group's input."""

    def __init__(self, *, dim: int, resi_connection: str, **layer: Any) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim=dim, **layer)
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, size: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
        y = x
        group = self.residual_group
        for i, blk in enumerate(group.blocks):
            y = blk(y, size, offset if group.uses_offset(i) else (0, 0))
        b, _, c = y.shape
        return self.conv(y.transpose(1, 2).reshape(b, c, *size)).flatten(2).transpose(1, 2) + x


def _resi_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(dim // 4, dim // 4, 1),
                             nn.LeakyReLU(0.2), nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"resi_connection {kind!r} is not supported (1conv, 3conv)")


def _offset_pair(offset: torch.Tensor | Sequence[float] | None) -> tuple[int, int]:
    """Row 0 of the offset, rounded to ints in 0..7 (upstream: `int(torch.round(offset[0][k]))`)."""
    if offset is None:
        return 0, 0
    t = torch.as_tensor(offset, dtype=torch.float64).reshape(-1, 2)[0]
    oh, ow = (int(torch.round(v)) for v in t)
    if not (0 <= oh < _GRID and 0 <= ow < _GRID):
        raise ValueError(f"JPEG grid offset must be in 0..7, got ({oh}, {ow})")
    return oh, ow


class OAPT_gt(nn.Module):  # noqa: N801 (upstream name)
    """OAPT with a given grid offset; 1x restoration (upsampler '')."""

    def __init__(self, *, img_size: int = 64, patch_size: int = 1, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6), window_size: int = 7,
                 DenseFirstPositions: bool = True, mode: str = "interval", mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, ape: bool = False, patch_norm: bool = True,
                 use_checkpoint: bool = False, upscale: int = 2, img_range: float = 1.0, upsampler: str = "",
                 resi_connection: str = "1conv") -> None:
        super().__init__()
        del drop_rate, attn_drop_rate, use_checkpoint
        if upsampler != "":
            raise ValueError(f"upsampler {upsampler!r} is not supported: OAPT is published with upsampler '' (1x)")
        if mode not in ("interval", "non-interval"):
            raise ValueError(f"mode must be 'interval' or 'non-interval', got {mode!r}")
        self.upscale, self.img_range = 1, img_range  # upsampler '' is a 1x model whatever `upscale` says
        self.offset: tuple[int, int] | torch.Tensor = (0, 0)
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        res = (img_size // patch_size, img_size // patch_size)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim)) if ape else None
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            RSTB(dim=embed_dim, resi_connection=resi_connection, depth=depths[i], mode=mode,
                 DenseFirstPositions=DenseFirstPositions, window_size=window_size,
                 drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], input_resolution=res, num_heads=num_heads[i],
                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale)
            for i in range(len(depths)))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)
        self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)

    def forward_features(self, x: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            t = t + self.absolute_pos_embed
        for layer in self.layers:
            t = layer(t, (h, w), offset)
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor, offset: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
        pair = _offset_pair(self.offset if offset is None else offset)
        mean = self.mean.to(x.dtype)  # type: ignore[union-attr]
        x = (x - mean) * self.img_range
        first = self.conv_first(x)
        x = x + self.conv_last(self.conv_after_body(self.forward_features(first, pair)) + first)
        return x / self.img_range + mean


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="oapt_gt",
        family="OAPT",
        upstream_class="OAPT_gt",
        tasks=("restore",),
        scale=1,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        multiple_of=_GRID,  # keeps tiles on the JPEG grid
        fp16=True,
        bf16=True,
        channels_last=False,
        tiling="global",
        context=64,
        code_license=_LICENSE,
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """SwinIR's layout with the 1x head (conv_last straight from the features, no upsampler). Which blocks carry a
    shift mask tells the mode; DenseFirstPositions is not stored (upstream default True, the published model).
    SwinIR's own 1x checkpoints (grey JPEG, denoising) share this layout."""
    first, last = sd.get("conv_first.weight"), sd.get("conv_last.weight")
    index = sd.get("layers.0.residual_group.blocks.0.attn.relative_position_index")
    fc1 = sd.get("layers.0.residual_group.blocks.0.mlp.fc1.weight")
    if first is None or last is None or index is None or fc1 is None or first.ndim != 4 or last.ndim != 4:
        return None
    dim = int(first.shape[0])
    if last.shape[1] != dim or "conv_before_upsample.0.weight" in sd:
        return None
    ws = round(int(index.shape[0]) ** 0.5)
    n_layers = list_length(sd, "layers")
    depths = [count_indexed(sd, f"layers.{i}.residual_group.blocks.{{}}.") for i in range(n_layers)]
    masks = [i for i in range(depths[0]) if f"layers.0.residual_group.blocks.{i}.attn_mask" in sd]
    mode = "interval" if masks and masks[0] == 2 else "non-interval"
    ape = sd.get("absolute_pos_embed")
    mask = sd.get(f"layers.0.residual_group.blocks.{masks[0]}.attn_mask") if masks else None
    if ape is not None:
        img_size = round(int(ape.shape[1]) ** 0.5)
    elif mask is not None:
        img_size = ws * round(int(mask.shape[0]) ** 0.5)
    else:
        img_size = ws
    try:
        heads = [int(sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1])
                 for i in range(n_layers)]
    except KeyError:
        return None
    kw: dict[str, Any] = {
        "img_size": img_size, "in_chans": int(first.shape[1]), "embed_dim": dim, "depths": depths,
        "num_heads": heads, "window_size": ws, "DenseFirstPositions": True, "mode": mode,
        "mlp_ratio": int(fc1.shape[0]) / dim, "ape": ape is not None, "patch_norm": "patch_embed.norm.weight" in sd,
        "upscale": 1, "img_range": 255.0 if int(first.shape[1]) == 1 else 1.0, "upsampler": "",
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv",
    }
    return rebuilds(OAPT_gt, kw, sd)


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="oapt_gt", family="OAPT", cls=OAPT_gt, describe=_describe, detect=_detect, aliases=("OAPT",)),
)
