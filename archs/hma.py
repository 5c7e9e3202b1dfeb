"""HMA: Hybrid Multi-axis Aggregation network for image super-resolution (Chu et al., CVPRW 2024), as the
neosr port ships it (class `hma`, with `hma_medium` / `hma_large` configurations).

Semantics follow korvin2000/arch_research@5108929 `neosr/hma_arch.py`; keyword names, defaults and state-dict keys
match, so its checkpoints load strictly (the relative position index is a persistent buffer there, and here).

Each residual hybrid transformer block (RHTB) runs, per depth step, a fused conv block (FusedConv: LN, 3x3 conv
to 6x width, LN, GELU, squeeze-excite, 1x1 back; every second step) and a fused attention block (FAB: shifted
window attention + MLP); then a grid attention block (GAB) mixes four branches of one qkv projection of x: window
attention on a quarter of the channels, "shifted" window attention on another quarter, and on the remaining half an
interval-strided grid attention (two chained attentions through a projected grid, each with a dynamic position bias
MLP); x + scale * GAB(x). Upstream quirk kept: the shifted GAB branch views the rolled map as consecutive raster
chunks of window * window tokens (not window partitions) and merges them back as if they were windows.

Size rule (upstream): no padding inside, H and W must be multiples of both `window_size` and `interval_size` (the
descriptor's multiple_of; the engine pads). The squeeze-excite means and the grid attention span the whole map:
tiling "global". The input mean is 0.5 per channel (not DIV2K's). Differences from upstream, none changing float32
outputs: attention through scaled_dot_product_attention; `upsampler` other than "pixelshuffle" (upstream: no head,
the input comes back) and `resi_connection` other than "1conv"/"identity" are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, ratio_for, same_keys_and_shapes
from .layers.drop import DropPath
from .layers.swin import Mlp, PatchEmbed, WindowAttention, block_window, patch_unembed, shifted_window_attention
from .layers.upsample import Upsample
from .layers.window import relative_position_index, shifted_window_mask, window_partition, window_reverse
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "FAB", "GAB", "FusedConv", "hma"]

_LICENSE = "unspecified (neosr port; the HMA repository states none)"
_NUM_FEAT = 64


class FAB(nn.Module):
    """Fused attention block: x + W-MSA(LN x) (qkv projected in the block), then x + MLP(LN x)."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop: float,
                 drop_path: float) -> None:
        super().__init__()
        self.window_size, self.shift_size = block_window(input_resolution, window_size, shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qk_scale=qk_scale, qkv=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], rpi_sa: torch.Tensor,
                attn_mask: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        y = self.qkv(self.norm1(x)).reshape(b, *x_size, 3 * c)
        y = shifted_window_attention(y, self.attn, self.window_size, self.shift_size, rpi=rpi_sa, mask=attn_mask)
        x = x + self.drop_path(y.reshape(b, -1, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SEModule(nn.Module):
    """Squeeze-excite: x * sigmoid(fc2(silu(fc1(mean(x)))))."""

    def __init__(self, channels: int, rd_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


class FusedConv(nn.Module):
    """x + 1x1(SE(GELU(LN(3x3 conv(LN x))))) at expand_size x width."""

    def __init__(self, num_feat: int, expand_size: int = 4, attn_ratio: int = 4) -> None:
        super().__init__()
        mid = num_feat * expand_size
        self.pre_norm = nn.LayerNorm(num_feat)
        self.fused_conv = nn.Conv2d(num_feat, mid, 3, 1, 1)
        self.norm1 = nn.LayerNorm(mid)
        self.act1 = nn.GELU()
        self.se = SEModule(mid, int(mid / attn_ratio))
        self.conv3_1x1 = nn.Conv2d(mid, num_feat, 1, 1)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], rpi: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        b, _, c = x.shape
        y = self.pre_norm(x.reshape(b, *x_size, c)).permute(0, 3, 1, 2)
        y = self.fused_conv(y).permute(0, 2, 3, 1)
        y = self.se(self.act1(self.norm1(y).permute(0, 3, 1, 2)))
        return self.conv3_1x1(y).flatten(2).transpose(1, 2) + x


class DynamicPosBias(nn.Module):
    """MLP from a (dy, dx) offset to one bias per head."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.pos_dim = dim // 4
        self.pos_proj = nn.Linear(2, self.pos_dim)

        def stage(out: int) -> nn.Sequential:
            return nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(inplace=True), nn.Linear(self.pos_dim, out))

        self.pos1 = stage(self.pos_dim)
        self.pos2 = stage(self.pos_dim)
        self.pos3 = stage(num_heads)

    def forward(self, biases: torch.Tensor) -> torch.Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(biases))))


class AffineTransform(nn.Module):
    """softmax(q k^T * scale + dynamic position bias over a (gh, gw) grid) v."""

    def __init__(self, dim: int, num_heads: int, qk_scale: float | None = None) -> None:
        super().__init__()
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.pos = DynamicPosBias(dim // 4, num_heads)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        dev = q.device
        dy, dx = torch.meshgrid(torch.arange(1 - gh, gh, device=dev), torch.arange(1 - gw, gw, device=dev),
                                indexing="ij")
        offsets = torch.stack([dy.flatten(), dx.flatten()], 1).float()  # ((2gh - 1)(2gw - 1), 2)
        table = self.pos(offsets.to(self.pos.pos_proj.weight.dtype))
        index = relative_position_index((gh, gw)).to(dev)
        bias = table[index.reshape(-1)].view(gh * gw, gh * gw, -1).permute(2, 0, 1).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)


class GridAttention(nn.Module):
    """Two chained attentions through the projected grid tokens: x = A(grid, k, v); out = A(q, grid, x)."""

    def __init__(self, dim: int, num_heads: int, qk_scale: float | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_transform1 = AffineTransform(dim, num_heads, qk_scale)
        self.attn_transform2 = AffineTransform(dim, num_heads, qk_scale)

    def forward(self, qkv: torch.Tensor, grid: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        b_, n, c = grid.shape
        heads = self.num_heads
        q, k, v = qkv.reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        g = grid.reshape(b_, n, heads, -1).transpose(1, 2)
        x = self.attn_transform1(g, k, v, gh, gw)
        x = self.attn_transform2(q, g, x, gh, gw)
        return x.transpose(1, 2).reshape(b_, n, c)


def grid_shuffle(x: torch.Tensor, interval: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * interval^2, H / interval, W / interval, C): one grid of strided pixels per offset."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // interval, interval, w // interval, interval, c).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, h // interval, w // interval, c)


def grid_unshuffle(x: torch.Tensor, b: int, h: int, w: int, interval: int) -> torch.Tensor:
    """Inverse of grid_shuffle."""
    x = x.reshape(b, interval, interval, h // interval, w // interval, -1).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, h, w, -1)


class GAB(nn.Module):
    """Grid attention block (see the module docstring); returns x + LN(fc(branches)), then + LN(MLP)."""

    def __init__(self, *, window_size: int, interval_size: int, dim: int, num_heads: int, qkv_bias: bool,
                 qk_scale: float | None, drop: float, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.interval_size = interval_size
        self.shift_size = window_size // 2
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.grid_proj = nn.Linear(dim, dim // 2)
        self.grid_attn = GridAttention(dim // 2, num_heads // 2, qk_scale)
        self.window_attn = WindowAttention(dim // 4, window_size, num_heads // 2, qk_scale=qk_scale, qkv=False)
        self.window_attn_s = WindowAttention(dim // 4, window_size, num_heads // 2, qk_scale=qk_scale, qkv=False)
        self.fc = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], rpi_sa: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        ws, it = self.window_size, self.interval_size
        gh, gw = h // it, w // it
        x_window, x_qkv = self.qkv(x).split(c * 3 // 2, dim=-1)
        # grid attention on the strided grids
        x_grid = self.grid_proj(grid_shuffle(x.reshape(b, h, w, c), it).reshape(-1, gh * gw, c))
        x_qkv = grid_shuffle(x_qkv.reshape(b, h, w, -1), it).reshape(-1, gh * gw, c * 3 // 2)
        grid = self.grid_attn(x_qkv, x_grid, gh, gw).reshape(-1, gh, gw, c // 2)
        grid = grid_unshuffle(grid, b, h, w, it).reshape(b, h * w, c // 2)
        # window attention, unshifted and "shifted"
        xw, xs = x_window.reshape(b, h, w, c * 3 // 2).split(c * 3 // 4, dim=-1)
        win = self.window_attn(window_partition(xw, ws).reshape(-1, ws * ws, c * 3 // 4), rpi=rpi_sa)
        win = window_reverse(win.reshape(-1, ws, ws, c // 4), ws, h, w).reshape(b, h * w, c // 4)
        # upstream: raster chunks of ws * ws tokens of the rolled map, merged back as windows
        xs = torch.roll(xs, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2)).reshape(-1, ws * ws, c * 3 // 4)
        win_s = self.window_attn_s(xs, rpi=rpi_sa, mask=mask)
        win_s = window_reverse(win_s.reshape(-1, ws, ws, c // 4), ws, h, w).reshape(b, h * w, c // 4)
        win_s = torch.roll(win_s, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        y = self.norm1(self.fc(torch.cat([win, win_s, grid], dim=-1)))
        x = x + y
        return x + self.norm2(self.mlp(x))


class AttenBlocks(nn.Module):
    """Per depth step: (FusedConv on even steps) + FAB (shifted on odd steps); then x + scale * GAB(x)."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 interval_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop: float,
                 drop_path: Sequence[float]) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(depth):
            if i % 2 == 0:
                blocks.append(FusedConv(dim, expand_size=6, attn_ratio=2))
            blocks.append(FAB(dim=dim, input_resolution=input_resolution, num_heads=num_heads,
                              window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                              mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                              drop_path=drop_path[i]))
        self.blocks = nn.ModuleList(blocks)
        self.gab = GAB(window_size=window_size, interval_size=interval_size, dim=dim, num_heads=num_heads,
                       qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, mlp_ratio=mlp_ratio)
        self.scale = nn.Parameter(nn.init.trunc_normal_(torch.empty(dim), std=0.02))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], params: dict[str, Any]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, x_size, params["rpi_sa"], params["attn_mask"])
        return x + self.gab(x, x_size, params["rpi_sa"], params["attn_mask"]) * self.scale


class RHTB(nn.Module):
    """Residual hybrid transformer block: x + conv(AttenBlocks(x))."""

    def __init__(self, *, resi_connection: str, **kwargs: Any) -> None:
        super().__init__()
        dim = kwargs["dim"]
        self.residual_group = AttenBlocks(**kwargs)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], params: dict[str, Any]) -> torch.Tensor:
        y = patch_unembed(self.residual_group(x, x_size, params), x_size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


class hma(nn.Module):  # noqa: N801 (upstream class name)
    """HMA: conv_first, RHTBs, LayerNorm, conv_after_body, pixel-shuffle head."""

    def __init__(self, *, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 1, in_chans: int = 3,
                 embed_dim: int = 60, depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 8, interval_size: int = 4, mlp_ratio: float = 2.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, norm_layer: Any = None, ape: bool = False, patch_norm: bool = True,
                 use_checkpoint: bool = False, upscale: int = 4, img_range: float = 1.0,
                 upsampler: str = "pixelshuffle", resi_connection: str = "1conv") -> None:
        super().__init__()
        del attn_drop_rate  # attention dropout is inactive in eval
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
        self.shift_size = window_size // 2
        self.interval_size = interval_size
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.use_checkpoint = use_checkpoint
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5) if in_chans == 3 else torch.zeros(1, 1, 1, 1),
                             persistent=False)
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(
                nn.init.trunc_normal_(torch.zeros(1, resolution[0] * resolution[1], embed_dim), std=0.02))
        self.pos_drop = nn.Dropout(drop_rate)
        n = sum(depths)
        dpr = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList(
            RHTB(dim=embed_dim, input_resolution=resolution, depth=int(depths[i]), num_heads=int(num_heads[i]),
                 window_size=window_size, interval_size=interval_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                 qk_scale=qk_scale, drop=drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                 resi_connection=resi_connection)
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" \
            else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, _NUM_FEAT, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(upscale, _NUM_FEAT)
        self.conv_last = nn.Conv2d(_NUM_FEAT, in_chans, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        params = {"attn_mask": shifted_window_mask(x_size, self.window_size, self.shift_size, device=x.device),
                  "rpi_sa": self.relative_position_index_SA}
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, x_size, params, use_reentrant=False)
            else:
                x = layer(x, x_size, params)
        return patch_unembed(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = _multiple(self.window_size, self.interval_size)
        if h % m or w % m:
            raise ValueError(f"hma: input {h}x{w} is not a multiple of {m} (window {self.window_size}, interval "
                             f"{self.interval_size}); pad first")
        mean = self.mean.to(x.dtype)
        x = self.conv_first((x - mean) * self.img_range)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x / self.img_range + mean


def _multiple(window_size: int, interval_size: int) -> int:
    return window_size * interval_size // math.gcd(window_size, interval_size)


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _context(kw: dict[str, Any]) -> int:
    """Local receptive radius (the grid attention and squeeze-excite reach everything regardless), capped."""
    ws = int(kw["window_size"])
    return min(128, sum(int(d) * (ws + 2) + ws for d in kw["depths"]) + 4)


def _describe(kw: dict[str, Any]) -> ArchSpec:
    m = _multiple(int(kw["window_size"]), int(kw["interval_size"]))
    return ArchSpec(
        id="hma",
        family="HMA",
        upstream_class="hma",
        tasks=("upscale",),
        scale=int(kw["upscale"]),
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=m,
        multiple_of=m,
        # like HAT: bf16, not fp16, until measured on the GPU
        fp16=False,
        bf16=True,
        channels_last=False,
        tiling="global",
        context=_context(kw),
        code_license=_LICENSE,
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Widths, depths, heads, window, MLP ratio, head and upscale from the keys and shapes. Not stored:
    interval_size (the published 4), img_size (64 unless ape), img_range 1, drop rates."""
    if "layers.0.residual_group.gab.grid_proj.weight" not in sd or "relative_position_index_SA" not in sd \
            or "conv_first.weight" not in sd or "upsample.0.weight" not in sd:
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    n_layers = count_indexed(sd, "layers.{}.residual_group.scale")
    depths, heads = [], []
    for i in range(n_layers):
        pat = re.compile(rf"^layers\.{i}\.residual_group\.blocks\.(\d+)\.attn\.relative_position_bias_table$")
        fabs = sorted(int(m.group(1)) for k in sd if (m := pat.match(k)))
        if not fabs:
            return None
        depths.append(len(fabs))
        heads.append(int(sd[f"layers.{i}.residual_group.blocks.{fabs[0]}.attn.relative_position_bias_table"].shape[1]))
    ws = math.isqrt(int(sd["relative_position_index_SA"].shape[0]))
    hidden = int(sd["layers.0.residual_group.blocks.1.mlp.fc1.weight"].shape[0])
    first = sd["upsample.0.weight"]
    convs = sum(1 for k in sd if k.startswith("upsample.") and k.endswith(".weight"))
    pos = sd.get("absolute_pos_embed")
    kw: dict[str, Any] = {
        "img_size": math.isqrt(int(pos.shape[1])) if pos is not None else 64, "patch_size": 1,
        "in_chans": in_chans, "embed_dim": embed_dim, "depths": depths, "num_heads": heads, "window_size": ws,
        "interval_size": 4, "mlp_ratio": ratio_for(hidden, embed_dim),
        "qkv_bias": "layers.0.residual_group.blocks.1.qkv.bias" in sd, "ape": pos is not None,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "upscale": 3 if int(first.shape[0]) == 9 * _NUM_FEAT else 2**convs, "img_range": 1.0,
        "upsampler": "pixelshuffle", "resi_connection": "1conv" if "layers.0.conv.weight" in sd else "identity",
    }
    return kw if same_keys_and_shapes(lambda: hma(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="hma", family="HMA", cls=hma, describe=_describe, detect=_detect),
)
