"""HiT-SRF: hierarchical transformer for efficient image super-resolution (Zhang et al., ECCV 2024; XiangZ-0/HiT-SR),
as neosr carries it (`hit_srf`, with the presets hit_srf_medium / hit_srf_large as keyword sets).

Semantics follow korvin2000/arch_research `neosr/hitsrf_arch.py`; keyword names, defaults (neosr's default upscale 4)
and state-dict keys match. A SwinIR-style body of residual hierarchical transformer blocks: block i of every layer
works on windows base_win_size * hier_win_ratios[i] (so from half to eight times the base window). Each block is
post-norm: x + LN(SCC(x)), then x + LN(ConvFFN(x)). SCC (spatial-channel correlation): a dual feature extraction
(1x1 / 3x3 / 1x1 convs gated by a 1x1) gives q and v; in each window, half of the channels do spatial
self-correlation against v pooled to the base window by a learned linear map (plus a DynamicPosBias averaged over the
pooled cells), the other half channel self-correlation (C x C, divided by the window's token count).

Every block reflect-pads its input to its own window multiple (upstream's two-step reflect when the pad exceeds the
side, repeated here until done, where upstream fails on inputs under about a third of the largest window) and crops
back, so any input size runs. Windows are anchored at the image origin and reach up to 8 base
windows: tiles are not exact, tiling "global" with the largest window as context.

Differences from upstream, none changing float32 outputs: the position-bias index and the averaging over pooled
cells are computed once per window shape and cached; `mean` is a non-persistent buffer (upstream: a plain
attribute, (0.5, 0.5, 0.5) for RGB); `norm_layer`/`act_layer` are not arguments; unknown `upsampler` /
`resi_connection` values are errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, ratio_for, read_swinir_head, same_keys_and_shapes
from .layers.drop import DropPath
from .layers.posbias import DynamicPosBias, offset_table
from .layers.upsample import add_swinir_head, swinir_head
from .layers.window import relative_position_index, window_partition, window_reverse
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "hit_srf"]

_UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
_RATIOS = (0.5, 1, 2, 4, 6, 8)


def _resi_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', not {resi_connection!r}")


def reflect_pad_to(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) reflect-padded at the bottom/right to window multiples, as HiT-SRF's check_image_size, which
    reflects by (H - 1, W - 1) first when a pad is not smaller than its side and then pads the rest. Here the steps
    repeat (each at most the current side - 1) until the pad is done, so sizes upstream refuses also run (a side of
    1 repeats its pixel); where upstream runs, the result is the same."""
    h, w = x.shape[-2:]
    ph, pw = (window[0] - h % window[0]) % window[0], (window[1] - w % window[1]) % window[1]
    while ph or pw:
        h, w = x.shape[-2:]
        if h == 1 or w == 1:
            return F.pad(x, (0, pw, 0, ph), mode="replicate")
        sh, sw = min(ph, h - 1), min(pw, w - 1)
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x


class DFE(nn.Module):
    """Dual feature extraction: a 1x1 -> 3x3 -> 1x1 bottleneck (width // 5) times a 1x1 projection."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        mid = in_features // 5
        self.conv = nn.Sequential(
            nn.Conv2d(in_features, mid, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(mid, mid, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(mid, out_features, 1),
        )
        self.linear = nn.Conv2d(in_features, out_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.linear(x)


class SCC(nn.Module):
    """Spatial-channel correlation in (wh, ww) windows; input and output (B, C, H, W) maps (H, W window multiples)."""

    def __init__(self, dim: int, base_win_size: Sequence[int], window_size: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.qv = DFE(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.base_win_size = (min(window_size[0], int(base_win_size[0])), min(window_size[1], int(base_win_size[1])))
        self.scale = dim // (2 * num_heads)  # upstream divides by the head width itself
        bh, bw = self.base_win_size
        self.spatial_linear = nn.Linear(window_size[0] * window_size[1] // (bh * bw), 1)
        self.pos = DynamicPosBias(dim // 4, num_heads)
        self._index: torch.Tensor | None = None

    def _bias(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(heads, L, bh*bw): the window's DynamicPosBias, averaged over the keys each pooled cell merges."""
        (wh, ww), (bh, bw) = self.window_size, self.base_win_size
        n = wh * ww
        if self._index is None or self._index.device != device:
            self._index = relative_position_index((wh, ww)).to(device)
        table = offset_table(wh, ww).to(device, self.pos.pos3[2].weight.dtype)
        pos = self.pos(table)  # ((2wh-1)(2ww-1), heads)
        rpb = pos[self._index.reshape(-1)].view(n, bh, wh // bh, bw, ww // bw, -1)
        rpb = rpb.permute(0, 1, 3, 5, 2, 4).reshape(n, bh * bw, self.num_heads, -1).mean(-1)
        return rpb.permute(2, 0, 1).to(dtype)

    def _pool(self, v: torch.Tensor) -> torch.Tensor:
        """v (B', heads, L, c) pooled to the base window: (B', heads, bh*bw, c) by the learned linear map over each
        cell's wh/bh x ww/bw tokens."""
        b, heads, _, c = v.shape
        (wh, ww), (bh, bw) = self.window_size, self.base_win_size
        v = v.view(b, heads, bh, wh // bh, bw, ww // bw, c).permute(0, 1, 2, 4, 6, 3, 5)
        lin = self.spatial_linear
        bias = None if lin.bias is None else lin.bias.to(v.dtype)
        pooled = F.linear(v.reshape(b, heads, bh * bw, c, -1), lin.weight.to(v.dtype), bias)
        return pooled.view(b, heads, bh * bw, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        win = self.window_size
        qv = window_partition(self.qv(x).permute(0, 2, 3, 1), win).reshape(-1, win[0] * win[1], c)
        bw_, n, _ = qv.shape
        heads = self.num_heads
        q, v = qv.view(bw_, n, 2, heads, c // (2 * heads)).permute(2, 0, 3, 1, 4).unbind(0)  # (B', heads, L, c')
        # Both correlations are unnormalised sums (no softmax): in float32 (and so is the returned map), so
        # half-precision models neither overflow (fp16) nor lose the result to rounding (bf16).
        q, v = q.float(), v.float()
        # spatial self-correlation against v pooled to the base window
        pooled = self._pool(v)
        corr = (q @ pooled.transpose(-2, -1)) / self.scale + self._bias(x.device, torch.float32).unsqueeze(0)
        spatial = (corr @ pooled).transpose(1, 2).reshape(bw_, n, c // 2)
        # channel self-correlation over the window's tokens
        qc, vc = q.transpose(1, 2).reshape(bw_, n, c // 2), v.transpose(1, 2).reshape(bw_, n, c // 2)
        channel = ((qc.transpose(-2, -1) @ vc) / n @ vc.transpose(-2, -1)).transpose(1, 2)
        out = torch.cat([window_reverse(spatial.view(-1, *win, c // 2), win, h, w),
                         window_reverse(channel.reshape(-1, *win, c // 2), win, h, w)], -1)
        # the projection stays in float32 too: its output is unnormalised (the block's post-norm follows) and can
        # leave the half range
        proj = self.proj
        return F.linear(out, proj.weight.float(), None if proj.bias is None else proj.bias.float())  # (B, H, W, C)


class ConvFFN(nn.Module):
    """fc1, GELU, + depthwise 5x5 (GELU) of itself, fc2."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.dwconv = nn.Module()
        self.dwconv.depthwise_conv = nn.Sequential(
            nn.Conv2d(hidden_features, hidden_features, 5, 1, 2, groups=hidden_features), nn.GELU()
        )
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        x = self.act(self.fc1(x))
        b, _, c = x.shape
        conv = self.dwconv.depthwise_conv(x.transpose(1, 2).reshape(b, c, *x_size))
        return self.fc2(x + conv.flatten(2).transpose(1, 2))


class HierarchicalTransformerBlock(nn.Module):
    """Post-norm block: x + LN(SCC(pad(x)) cropped), then x + LN(ConvFFN(x))."""

    def __init__(self, *, dim: int, num_heads: int, base_win_size: Sequence[int], window_size: tuple[int, int],
                 mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        if window_size[0] > base_win_size[0] and window_size[1] > base_win_size[1] and (
                window_size[0] % base_win_size[0] or window_size[1] % base_win_size[1]):
            raise ValueError(f"window {window_size} must be smaller than or a multiple of the base {base_win_size}")
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.correlation = SCC(dim, base_win_size, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        h, w = x_size
        b, n, c = x.shape
        padded = reflect_pad_to(x.transpose(1, 2).reshape(b, c, h, w), self.window_size)
        y = self.correlation(padded)[:, :h, :w].reshape(b, n, c)  # float32
        n1 = self.norm1
        y = F.layer_norm(y, n1.normalized_shape, n1.weight.float(), n1.bias.float(), n1.eps).to(x.dtype)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.norm2(self.mlp(x, x_size)))


class BasicLayer(nn.Module):
    def __init__(self, *, dim: int, depth: int, num_heads: int, base_win_size: Sequence[int], mlp_ratio: float,
                 drop_path: Sequence[float], hier_win_ratios: Sequence[float]) -> None:
        super().__init__()
        if depth > len(hier_win_ratios):
            raise ValueError(f"a layer of {depth} blocks needs as many hier_win_ratios, got {len(hier_win_ratios)}")
        wins = [(int(base_win_size[0] * r), int(base_win_size[1] * r)) for r in hier_win_ratios]
        self.blocks = nn.ModuleList(
            HierarchicalTransformerBlock(dim=dim, num_heads=num_heads, base_win_size=base_win_size,
                                         window_size=wins[i], mlp_ratio=mlp_ratio, drop_path=drop_path[i])
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


class RHTB(nn.Module):
    """Residual hierarchical transformer block: a layer, its closing conv, plus the input."""

    def __init__(self, *, dim: int, resi_connection: str, **layer_kw: Any) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim=dim, **layer_kw)
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        y = self.residual_group(x, x_size).transpose(1, 2).reshape(b, c, *x_size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


class hit_srf(nn.Module):  # noqa: N801 (upstream class name)
    """HiT-SRF. `upsampler`: 'pixelshuffledirect' (hit_srf), 'pixelshuffle' (medium/large), 'nearest+conv' (x4) or
    '' (same size). `img_size` only sizes the unused absolute position embedding (ape)."""

    def __init__(
        self,
        *,
        img_size: int = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 60,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        base_win_size: Sequence[int] = (8, 8),
        mlp_ratio: float = 2.0,
        drop_rate: float = 0.0,
        value_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 4,
        img_range: float = 1.0,
        upsampler: str = "pixelshuffledirect",
        resi_connection: str = "1conv",
        hier_win_ratios: Sequence[float] = _RATIOS,
    ) -> None:
        super().__init__()
        if upsampler not in _UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, not {upsampler!r}")
        if patch_size != 1:
            raise ValueError("hit_srf runs with patch_size 1 only (its patch embedding does not patch)")
        del drop_rate, value_drop_rate, use_checkpoint  # dropout / checkpointing: nothing in eval
        num_feat = 64
        self.img_range = float(img_range)
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5) if in_chans == 3 else torch.zeros(1, 1, 1, 1),
                             persistent=False)
        self.upscale, self.upsampler = upscale, upsampler
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, img_size * img_size, embed_dim))
        self.patch_norm = patch_norm
        if patch_norm:
            self.patch_embed = nn.Module()
            self.patch_embed.norm = nn.LayerNorm(embed_dim)
        total = sum(depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]  # torch.linspace
        self.layers = nn.ModuleList(
            RHTB(dim=embed_dim, resi_connection=resi_connection, depth=depths[i], num_heads=num_heads[i],
                 base_win_size=base_win_size, mlp_ratio=mlp_ratio, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                 hier_win_ratios=hier_win_ratios)
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)
        add_swinir_head(self, upsampler=upsampler, upscale=upscale, embed_dim=embed_dim, num_feat=num_feat,
                        out_chans=in_chans)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        if self.patch_norm:
            t = self.patch_embed.norm(t)
        if self.ape:
            t = t + self.absolute_pos_embed
        for layer in self.layers:
            t = layer(t, (h, w))
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)  # type: ignore[operator]
        x = (x - mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            return (x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)) / self.img_range \
                + mean
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = swinir_head(self, x)
        return x / self.img_range + mean


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    upscaled = bool(kw["upsampler"])
    base = [int(s) for s in kw["base_win_size"]]
    depth = max(kw["depths"]) if kw["depths"] else 0
    widest = max((int(base[0] * r) for r in list(kw["hier_win_ratios"])[:depth]), default=base[0])
    return ArchSpec(
        id="hit_srf",
        family="HiT-SRF",
        upstream_class="hit_srf",
        tasks=("upscale",) if upscaled else ("restore",),
        scale=int(kw["upscale"]) if upscaled else 1,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=1,
        multiple_of=1,  # every block pads to its own window
        fp16=True,
        bf16=True,
        channels_last=False,
        # windows up to 8 base windows, anchored at the origin; channel correlation sums over each window
        tiling="global",
        context=widest,
        code_license="unspecified (neosr: GPL-3.0 seed copy; licence of HiT-SR not stated there)",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Widths, depths, heads (position-bias output), expansion, head and residual connection; the rebuilt model
    must match every key and shape. hier_win_ratios (not stored): the default; base_win_size: see below."""
    key = "layers.0.residual_group.blocks.0.correlation.spatial_linear.weight"
    if "conv_first.weight" not in sd or key not in sd:
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    n_layers = count_indexed(sd, "layers.{}.residual_group.blocks.0.norm1.weight")
    depths = [count_indexed(sd, f"layers.{i}.residual_group.blocks.{{}}.norm1.weight") for i in range(n_layers)]
    heads = [int(sd[f"layers.{i}.residual_group.blocks.0.correlation.pos.pos3.2.weight"].shape[0])
             for i in range(n_layers)]
    hidden = int(sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0])
    kw: dict[str, Any] = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "mlp_ratio": ratio_for(hidden, embed_dim),
        "ape": "absolute_pos_embed" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "resi_connection": "3conv" if "conv_after_body.0.weight" in sd else "1conv",
    }
    if "absolute_pos_embed" in sd:
        side = int(sd["absolute_pos_embed"].shape[1]) ** 0.5
        kw["img_size"] = round(side)
    head = read_swinir_head(sd, in_chans)
    if head is None:
        return None
    kw.update(upsampler=head[0], upscale=head[1])
    # The base window leaves no trace in the state dict (the pooling widths are (ratio)^2 whatever the base), so it
    # comes from the published config with this layout: hit_srf (light, one-step head) 8, hit_srf_medium (6 layers)
    # 16, hit_srf_large (12 layers) 24; anything else gets the default 8.
    base = 8
    if kw["upsampler"] == "pixelshuffle" and embed_dim == 180:
        base = {6: 16, 12: 24}.get(n_layers, 8)
    kw["base_win_size"] = [base, base]
    if base != 8:
        kw["img_size"] = 48  # as the presets (only sizes the unused ape table)
    return kw if same_keys_and_shapes(lambda: hit_srf(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="hit_srf", family="HiT-SRF", cls=hit_srf, describe=_describe, detect=_detect, aliases=("HiT-SRF",)),
)
