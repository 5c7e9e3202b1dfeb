"""DRCT: Dense-residual-connected Transformer for super-resolution (Hsu et al., "DRCT: Saving Image
Super-resolution away from Information Bottleneck", CVPRW 2024; ming053l/DRCT).

Semantics follow korvin2000/arch_research@5108929 `drct/arch.py` (the spandrel-style copy: keyword-only
constructor); keyword names, defaults and state-dict keys match, so official checkpoints load strictly (the
relative position indexes and the shifted blocks' attention masks are persistent buffers there, and here).

Each residual dense group (RDG) runs 5 Swin blocks on a growing concatenation: block k sees the input and the
`gc`-channel outputs of the blocks before it (width dim + k * gc, `num_heads - (width % num_heads)` heads; blocks
4 and 5 with MLP ratio 1), each followed by a 1x1 conv ("adjust") to gc channels (the last back to dim); the group
returns 0.2 * that + its input. The values in `depths` only count the groups (always 5 blocks each), as upstream.

The input is reflect-padded to a multiple of `window_size` and the output cropped (upstream `check_img_size`).
Everything is local (window attention, per-token LayerNorm, convs): tiles with a margin of the receptive radius
reproduce a whole-image run, tiling "safe".

`attn_scale_twice` (ours, default off): the seed's second copy `drct/DRCT_arch.py` multiplies q by head_dim**-0.5
and then calls scaled_dot_product_attention with its default scale, i.e. scores scaled by 1 / head_dim. Its state
dict is the same; checkpoints trained with that code need the flag. Differences from upstream, none changing
float32 outputs: attention through scaled_dot_product_attention; DropPath is absent as upstream's blocks hard-code
Identity; `upsampler` other than "pixelshuffle" (upstream: no reconstruction, the input comes back) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, ratio_for, same_keys_and_shapes
from .layers.swin import Mlp, PatchEmbed, WindowAttention, block_window, patch_unembed, shifted_window_attention
from .layers.upsample import Upsample
from .layers.window import shifted_window_mask
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "DRCT", "RDG", "SwinTransformerBlock"]

_LICENSE = "unspecified (ming053l/DRCT states none)"
_RGB_MEAN = (0.4488, 0.4371, 0.4040)
_NUM_FEAT = 64
_BLOCKS = 5


class SwinTransformerBlock(nn.Module):
    """x + W-MSA(LN x) (shifted every second block), then x + MLP(LN x); the mask of its build resolution is a
    persistent buffer (used when the map has that size, recomputed otherwise, as upstream)."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop: float) -> None:
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.window_size, self.shift_size = block_window(input_resolution, window_size, shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                    index_buffer=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        mask = (shifted_window_mask(self.input_resolution, self.window_size, self.shift_size)
                if self.shift_size else None)
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        mask = None
        if self.shift_size:
            stored: torch.Tensor | None = self.attn_mask
            mask = stored if tuple(x_size) == self.input_resolution and stored is not None else \
                shifted_window_mask(x_size, self.window_size, self.shift_size, device=x.device)
        y = shifted_window_attention(self.norm1(x).reshape(b, *x_size, c), self.attn, self.window_size,
                                     self.shift_size, mask=mask)
        x = x + y.reshape(b, -1, c)
        return x + self.mlp(self.norm2(x))


class RDG(nn.Module):
    """Residual dense group: 5 Swin blocks on the growing concatenation, 1x1 adjust convs, 0.2 * out + x."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop: float, gc: int) -> None:
        super().__init__()
        for k in range(_BLOCKS):
            width = dim + k * gc
            blk = SwinTransformerBlock(
                dim=width, input_resolution=input_resolution,
                num_heads=num_heads - (width % num_heads) if k else num_heads,
                window_size=window_size, shift_size=window_size // 2 if k % 2 else 0,
                mlp_ratio=mlp_ratio if k < 3 else 1.0, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop)
            self.add_module(f"swin{k + 1}", blk)
            self.add_module(f"adjust{k + 1}", nn.Conv2d(width, gc if k < _BLOCKS - 1 else dim, 1))
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        feats = [x]
        for k in range(_BLOCKS):
            swin, adjust = getattr(self, f"swin{k + 1}"), getattr(self, f"adjust{k + 1}")
            y = adjust(patch_unembed(swin(torch.cat(feats, -1), x_size), x_size))
            if k < _BLOCKS - 1:
                y = self.lrelu(y)
            feats.append(y.flatten(2).transpose(1, 2))
        return feats[-1] * 0.2 + x


class DRCT(nn.Module):
    """DRCT: conv_first, RDGs, LayerNorm, conv_after_body, pixel-shuffle head; reflect pad to the window, crop."""

    def __init__(self, *, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 1, in_chans: int = 3,
                 embed_dim: int = 180, depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6), window_size: int = 16, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, norm_layer: Any = None, ape: bool = False,
                 patch_norm: bool = True, upscale: int = 1, img_range: float = 1.0, upsampler: str = "",
                 resi_connection: str = "1conv", gc: int = 32, attn_scale_twice: bool = False) -> None:
        super().__init__()
        del attn_drop_rate, drop_path_rate  # training-only; upstream's blocks do not even apply drop path
        if norm_layer not in (None, nn.LayerNorm):
            raise ValueError("only nn.LayerNorm is supported as norm_layer")
        if upsampler != "pixelshuffle":
            raise ValueError(f"upsampler {upsampler!r}: only 'pixelshuffle' has a reconstruction head upstream")
        if resi_connection not in ("1conv", "identity"):
            raise ValueError(f"resi_connection must be '1conv' or 'identity', not {resi_connection!r}")
        if len(num_heads) < len(depths):
            raise ValueError(f"num_heads has {len(num_heads)} entries for {len(depths)} groups")
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        resolution = (int(img[0]) // int(patch[0]), int(img[1]) // int(patch[1]))
        self.window_size = window_size
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.register_buffer("mean", torch.tensor(_RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3
                             else torch.zeros(1, 1, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, resolution[0] * resolution[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.layers = nn.ModuleList(
            RDG(dim=embed_dim, input_resolution=resolution, num_heads=int(num_heads[i]), window_size=window_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, gc=gc)
            for i in range(len(depths))
        )
        if attn_scale_twice:  # DRCT_arch.py: q * scale, then SDPA's own head_dim**-0.5 on top
            for m in self.layers.modules():
                if isinstance(m, WindowAttention):
                    m.scale *= (m.dim // m.num_heads) ** -0.5
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" \
            else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, _NUM_FEAT, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(upscale, _NUM_FEAT)
        self.conv_last = nn.Conv2d(_NUM_FEAT, in_chans, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, x_size)
        return patch_unembed(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        ws = self.window_size
        x = F.pad(x, (0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws), mode="reflect")
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + mean
        return x[..., :h * self.upscale, :w * self.upscale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _context(kw: dict[str, Any]) -> int:
    """Receptive radius in input pixels: a (shifted) window block moves information at most window - 1 pixels,
    5 blocks per group; conv_first, conv_after_body and the head's 3x3 convs (the later ones at 2x and 4x) add 5."""
    return len(kw["depths"]) * _BLOCKS * (int(kw["window_size"]) - 1) + 5


def _describe(kw: dict[str, Any]) -> ArchSpec:
    ws = int(kw["window_size"])
    return ArchSpec(
        id="drct",
        family="DRCT",
        upstream_class="DRCT",
        tasks=("upscale",),
        scale=int(kw["upscale"]),
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=ws // 2 + 1,  # reflect padding needs the pad to be smaller than the side
        multiple_of=ws,
        # spandrel runs DRCT in bf16 only (fp16 activations overflow in the deep residual stream); measured later
        fp16=False,
        bf16=True,
        channels_last=False,
        tiling="safe",
        context=_context(kw),
        code_license=_LICENSE,
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Widths, group count, heads, window, gc, MLP ratio, head and upscale from the keys and shapes; img_size from
    the stored masks (or ape), else 64. Not stored: img_range, drop rates, qk_scale, attn_scale_twice (defaults)."""
    b1 = "layers.0.swin1."
    if f"{b1}attn.relative_position_index" not in sd or "layers.0.adjust5.weight" not in sd \
            or "conv_first.weight" not in sd or "conv_before_upsample.0.weight" not in sd:
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    n_groups = count_indexed(sd, "layers.{}.swin1.norm1.weight")
    gc = int(sd["layers.0.adjust1.weight"].shape[0])
    n = int(sd[f"{b1}attn.relative_position_index"].shape[0])
    ws = math.isqrt(n)
    heads = [int(sd[f"layers.{i}.swin1.attn.relative_position_bias_table"].shape[1]) for i in range(n_groups)]
    hidden = int(sd[f"{b1}mlp.fc1.weight"].shape[0])
    first = sd.get("upsample.0.weight")
    if first is None or ws * ws != n:
        return None
    upscale = 3 if int(first.shape[0]) == 9 * _NUM_FEAT else 2 ** len([k for k in sd if k.startswith("upsample.")
                                                                       and k.endswith(".weight")])
    pos = sd.get("absolute_pos_embed")
    mask = sd.get("layers.0.swin2.attn_mask")
    if pos is not None:
        side = math.isqrt(int(pos.shape[1]))
    elif mask is not None:
        side = math.isqrt(int(mask.shape[0])) * ws  # square build resolution
    else:
        side = ws  # no shifted block: the build resolution was at most the window
    kw: dict[str, Any] = {
        "img_size": side, "patch_size": 1, "in_chans": in_chans, "embed_dim": embed_dim, "depths": [6] * n_groups,
        "num_heads": heads, "window_size": ws, "mlp_ratio": ratio_for(hidden, embed_dim),
        "qkv_bias": f"{b1}attn.qkv.bias" in sd, "ape": pos is not None,
        "patch_norm": "patch_embed.norm.weight" in sd, "upscale": upscale, "img_range": 1.0,
        "upsampler": "pixelshuffle", "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
        "gc": gc,
    }
    return kw if same_keys_and_shapes(lambda: DRCT(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="drct", family="DRCT", cls=DRCT, describe=_describe, detect=_detect),
)
