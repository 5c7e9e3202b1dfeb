"""MicroSR, the NTIRE team07 x4 entry (`team07_MicroSR/MicroSR_Model.py` in the seed korvin2000/arch_research):
DRCT's dense-residual Swin transformer under another name.

Semantics, keyword names, defaults and state-dict keys follow that file. Each residual dense group (RDG) holds five
Swin blocks with dense growth: block k (k = 0..4) sees the group input concatenated with the k previous 1x1
"adjust" outputs (gc channels each), uses num_heads - ((dim + k gc) % num_heads) heads, shifts by ws / 2 on odd k,
and MLP ratio 1 for the last two; the group returns adjust5(...) * 0.2 + x. Attention is plain window attention
(no double scaling). `depths` only sets the stochastic-depth schedule (always five blocks per group), and
`compress_ratio`, `squeeze_factor`, `conv_scale`, `overlap_ratio` are accepted and unused, as upstream.

The layout, the parameter counts and the maths equal DRCT's (ming053l/DRCT, `drct/arch.py`; this module reproduces
the DRCT golden too), so a checkpoint cannot say which of the two it is, and it does not matter: the registry leaves
detection to the DRCT family (no detector here) and `--arch MicroSR` / `archs.build("MicroSR")` name this class.

Upstream pads nothing (H and W must be multiples of window_size; the team's script mirror-pads by hand) and only
its "pixelshuffle" head runs: other `upsampler` values give a model whose forward returns the input, which we refuse.
We pad bottom/right to the window multiple (reflect, replicate when too small) and crop. Shift masks for
`img_size` are buffers (`attn_mask`, as upstream); other sizes compute theirs.
"""

from __future__ import annotations

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
from .layers.window import shifted_window_mask, window_partition, window_reverse
from .layers.window_attention import Mlp, PatchEmbed, WindowAttention
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "RDG", "MicroSR", "SwinTransformerBlock"]

_LICENSE = "unspecified (NTIRE team07 code in the seed collection, GPL-3.0; DRCT states no licence)"


class SwinTransformerBlock(nn.Module):
    """Swin block: x + (S)W-MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop_path: float) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        if min(input_resolution) <= window_size:  # upstream: the window covers the image, no shift
            shift_size, window_size = 0, min(input_resolution)
        if not 0 <= shift_size < window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(input_resolution, window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        mask = None
        if s:
            y = torch.roll(y, (-s, -s), (1, 2))
            mask = self.attn_mask if tuple(size) == tuple(self.input_resolution) else \
                shifted_window_mask(size, ws, s, device=x.device)
        y = window_reverse(self.attn(window_partition(y, ws).reshape(-1, ws * ws, c), mask), ws, h, w)
        if s:
            y = torch.roll(y, (s, s), (1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class RDG(nn.Module):
    """Residual dense group: five Swin blocks with dense growth gc, 1x1 adjusts, 0.2-scaled residual."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop_path: float, gc: int) -> None:
        super().__init__()
        for k in range(5):
            width = dim + k * gc
            blk = SwinTransformerBlock(
                dim=width, input_resolution=input_resolution, num_heads=num_heads - width % num_heads,
                window_size=window_size, shift_size=window_size // 2 if k % 2 else 0,
                mlp_ratio=mlp_ratio if k < 3 else 1, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_path=drop_path)
            self.add_module(f"swin{k + 1}", blk)
            self.add_module(f"adjust{k + 1}", nn.Conv2d(width, gc if k < 4 else dim, 1))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b = x.shape[0]
        feats = [x]
        for k in range(1, 6):
            y = getattr(self, f"swin{k}")(torch.cat(feats, -1), size)
            y = getattr(self, f"adjust{k}")(y.transpose(1, 2).reshape(b, -1, *size))
            if k < 5:
                y = F.leaky_relu(y, 0.2)
            feats.append(y.flatten(2).transpose(1, 2))
        return feats[-1] * 0.2 + x


class MicroSR(nn.Module):
    """MicroSR / DRCT x2/x3/x4 with the pixel-shuffle head."""

    def __init__(self, *, img_size: int = 64, patch_size: int = 1, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6), window_size: int = 7,
                 compress_ratio: int = 3, squeeze_factor: int = 30, conv_scale: float = 0.01,
                 overlap_ratio: float = 0.5, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, ape: bool = False, patch_norm: bool = True,
                 use_checkpoint: bool = False, upscale: int = 2, img_range: float = 1.0, upsampler: str = "",
                 resi_connection: str = "1conv", gc: int = 32) -> None:
        super().__init__()
        del compress_ratio, squeeze_factor, conv_scale, overlap_ratio, drop_rate, attn_drop_rate, use_checkpoint
        if upsampler != "pixelshuffle":
            raise ValueError(f"upsampler {upsampler!r} is not supported: upstream's forward runs only 'pixelshuffle' "
                             "(anything else returns the input)")
        if resi_connection not in ("1conv", "identity"):
            raise ValueError(f"resi_connection {resi_connection!r} is not supported (1conv, identity)")
        self.window_size, self.upscale, self.img_range = window_size, upscale, img_range
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        res = (img_size // patch_size, img_size // patch_size)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim)) if ape else None
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            RDG(dim=embed_dim, input_resolution=res, num_heads=num_heads[i], window_size=window_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_path=dpr[sum(depths[:i])], gc=gc)
            for i in range(len(depths)))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" \
            else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, 64, 3, 1, 1), nn.LeakyReLU())
        self.upsample = Upsample(upscale, 64)
        self.conv_last = nn.Conv2d(64, in_chans, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            t = t + self.absolute_pos_embed
        for layer in self.layers:
            t = layer(t, (h, w))
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.window_size, mode="reflect_or_replicate")
        mean = self.mean.to(x.dtype)  # type: ignore[union-attr]
        x = self.conv_first((x - mean) * self.img_range)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + mean
        return x[..., : h * self.upscale, : w * self.upscale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    ws = int(kw["window_size"])
    return ArchSpec(
        id="microsr",
        family="MicroSR",
        upstream_class="MicroSR",
        tasks=("upscale",),
        scale=int(kw["upscale"]),
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        multiple_of=ws,
        fp16=True,
        bf16=True,
        channels_last=False,
        # no whole-image statistic, but window attention on a grid fixed to the image origin: tiles agree with the
        # whole image only approximately (large tiles, overlap)
        tiling="global",
        context=4 * ws,
        code_license=_LICENSE,
    )


def _heads(sd: StateDict, i: int, dim: int, gc: int) -> int | None:
    """num_heads n of group i: block k has n - (dim + k gc) % n heads (the bias tables' widths)."""
    got = [int(sd[f"layers.{i}.swin{k + 1}.attn.relative_position_bias_table"].shape[1]) for k in range(5)]
    for n in range(got[0], got[0] + dim + 4 * gc + 1):
        if all(n - (dim + k * gc) % n == got[k] for k in range(5)):
            return n
    return None


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """The DRCT layout (RDGs of swin1..5 and adjust1..5); see the module docstring on DRCT checkpoints."""
    first, adjust = sd.get("conv_first.weight"), sd.get("layers.0.adjust1.weight")
    index = sd.get("layers.0.swin1.attn.relative_position_index")
    fc1 = sd.get("layers.0.swin1.mlp.fc1.weight")
    if first is None or adjust is None or index is None or fc1 is None or "layers.0.adjust5.weight" not in sd:
        return None
    dim, gc = int(first.shape[0]), int(adjust.shape[0])
    ws = math.isqrt(int(index.shape[0]))
    n_layers = list_length(sd, "layers")
    try:
        heads = [_heads(sd, i, dim, gc) for i in range(n_layers)]
    except KeyError:
        return None
    if None in heads or ws < 1:
        return None
    ape, mask = sd.get("absolute_pos_embed"), sd.get("layers.0.swin2.attn_mask")
    if ape is not None:
        img_size = math.isqrt(int(ape.shape[1]))
    elif mask is not None:
        img_size = ws * math.isqrt(int(mask.shape[0]))
    else:
        img_size = ws
    ups = [v for k, v in sd.items() if k.startswith("upsample.") and k.endswith(".weight")]
    upscale = 3 if len(ups) == 1 and ups[0].shape[0] == 9 * ups[0].shape[1] else 2 ** len(ups)
    kw: dict[str, Any] = {
        "img_size": img_size, "in_chans": int(first.shape[1]), "embed_dim": dim, "depths": [6] * n_layers,
        "num_heads": heads, "window_size": ws, "mlp_ratio": int(fc1.shape[0]) / dim, "ape": ape is not None,
        "patch_norm": "patch_embed.norm.weight" in sd, "upscale": upscale, "upsampler": "pixelshuffle",
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity", "gc": gc,
    }
    return rebuilds(MicroSR, kw, sd)


# No detector in the registry: MicroSR checkpoints are DRCT checkpoints, detected (and computed identically) by the
# DRCT family; claiming them here too would make every DRCT file ambiguous. `_detect` reads the layout for callers
# that know a file is MicroSR (and for the tests).
ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="microsr", family="MicroSR", cls=MicroSR, describe=_describe, detect=None),
)
