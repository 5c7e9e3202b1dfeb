"""GRL: image restoration transformer with global, regional and local modelling (Li et al., CVPR 2023;
ofsoundof/GRL-Image-Restoration, MIT).

Semantics follow korvin2000/arch_research `grl/` (spandrel's copy of GRL: grl.py, mixed_attn_block_efficient.py,
ops.py, swin_v1_block.py, upsample.py, with config.py and mixed_attn_block.py from chaiNNer-org/spandrel@b0c3eb2d);
keyword names, defaults and state-dict keys match, so the official checkpoints load strictly.

Each block splits a shared qkv projection in two halves:
* window attention (Swin windows, shifted on even blocks) with cosine similarity, a learned per-head temperature and a
  continuous position bias (an MLP over log-spaced (dy, dx) offsets, 16 * sigmoid);
* anchored stripe attention: stripes (stripe_size rows, or H / stripe_groups) alternate horizontal ("H", even blocks)
  and vertical ("W", odd blocks); anchors (the input pooled by anchor_window_down_factor and projected to half the
  width) first attend to the stripe's keys/values, then the stripe's queries attend to the anchors;
then a projection, a post-norm residual (plus, with local_connection, a channel-attention conv block of the input),
and a post-norm MLP residual. The tables, indices and masks are not in the state dict; they are computed for the
padded input size (cached per size).

The official checkpoints also store these tables (persistent buffers upstream): loading drops them (TABLE_KEYS) and
the detector reads the window, stripe sizes and anchor factor off their shapes.

The input is reflect-padded (zeros when too small, as spandrel) to a multiple of max(window, stripe sizes,
stripe_groups * anchor_window_down_factor) and the output cropped. Upstream builds the vertical stripes' tables and
masks from the horizontal stripes' shape reversed, which only matches the blocks when the padded input is square
(elsewhere its forward fails); here they come from the vertical stripes' own shape, equal on square inputs.

Tiling "global": with stripe_groups the stripes span a fraction of the whole image.

Differences from upstream, none changing float32 outputs: attention through scaled_dot_product_attention (the
per-head temperature folded into q, the bias and mask as an additive term); `mean` is a non-persistent buffer;
`norm_layer` is not an argument; fairscale checkpointing is not available (training only).
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
from .layers.window import window_partition, window_reverse
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "GRL"]

_UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
# The official checkpoints (ofsoundof/GRL-Image-Restoration releases) store these tables as persistent buffers; they
# depend only on the configuration and the training size, so loading drops them and forward recomputes them.
TABLE_KEYS = ("table_w", "table_sh", "table_sv", "index_w", "index_sh_a2w", "index_sh_w2a", "index_sv_a2w",
              "index_sv_w2a", "mask_w", "mask_sh_a2w", "mask_sh_w2a", "mask_sv_a2w", "mask_sv_w2a")
_RGB_MEAN = (0.4488, 0.4371, 0.4040)
_Pair = tuple[int, int]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _image(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], -1, int(size[0]), int(size[1]))


# ---------------------------------------------------------------------------------------------------------------------
# tables, indices and masks (GRL's ops.py)


def stripe_info(sizes: Sequence[int | None], groups: Sequence[int | None], shift: bool,
                resolution: Sequence[int]) -> tuple[list[int], list[int]]:
    """(stripe size, shift) per axis: a fixed size (shift half of it when `shift`), or the axis split in `groups`
    (shift half a stripe unless one group)."""
    size, sh = [], []
    for s, g, d in zip(sizes, groups, resolution, strict=True):
        if g is None:
            size.append(int(s))  # type: ignore[arg-type]
            sh.append(int(s) // 2 if shift else 0)  # type: ignore[arg-type]
        else:
            size.append(int(d) // g)
            sh.append(0 if g == 1 else int(d) // (g * 2))
    return size, sh


def _window_labels(resolution: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """(nW, wh*ww) region labels of upstream's _fill_window: slices [0, -w), [-w, -s), [-s, None) per axis, filled in
    order (with s = 0 the last slice is the whole axis and overrides the others, as upstream)."""
    h, w = int(resolution[0]), int(resolution[1])
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    return window_partition(img, (int(window[0]), int(window[1]))).reshape(-1, int(window[0]) * int(window[1]))


def _mask_from(diff: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def window_mask(resolution: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    labels = _window_labels(resolution, window, shift)
    return _mask_from(labels.unsqueeze(1) - labels.unsqueeze(2))


def anchor_mask(resolution: Sequence[int], window: Sequence[int], shift: Sequence[int], df: int,
                window_to_anchor: bool) -> torch.Tensor:
    """(nW, Nw, Na) (window to anchor) or (nW, Na, Nw) mask between stripes and their anchor stripes."""
    win = _window_labels(resolution, window, shift)
    anc = _window_labels([s // df for s in resolution], [s // df for s in window], [s // df for s in shift])
    diff = win.unsqueeze(2) - anc.unsqueeze(1) if window_to_anchor else anc.unsqueeze(2) - win.unsqueeze(1)
    return _mask_from(diff)


def coords_table(window: Sequence[int], pretrained: Sequence[int] = (0, 0), df: int = 1) -> torch.Tensor:
    """(1, wh + awh - 1, ww + aww - 1, 2) log-spaced (dy, dx) offsets between a window and its anchor window."""
    ws, aws = [int(w) for w in window], [int(w) // df for w in window]
    pws, paws = [int(w) for w in pretrained], [int(w) // df for w in pretrained]
    ts_p = [w1 - 1 - (w1 - w2) // 2 for w1, w2 in zip(ws, aws, strict=True)]
    ts_n = [-(w2 - 1) - (w1 - w2) // 2 for w1, w2 in zip(ws, aws, strict=True)]
    pts = [w1 - 1 - (w1 - w2) // 2 for w1, w2 in zip(pws, paws, strict=True)]
    ch = torch.arange(ts_n[0], ts_p[0] + 1, dtype=torch.float32)
    cw = torch.arange(ts_n[1], ts_p[1] + 1, dtype=torch.float32)
    table = torch.stack(torch.meshgrid([ch, cw], indexing="ij")).permute(1, 2, 0).contiguous().unsqueeze(0)
    norm = pts if pts[0] > 0 else ts_p
    table[..., 0] /= norm[0]
    table[..., 1] /= norm[1]
    table = table * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def position_index(window: Sequence[int], df: int = 1, window_to_anchor: bool = True) -> torch.Tensor:
    """(Nw, Na) (or (Na, Nw)) rows of coords_table for every (window token, anchor token) pair."""
    ws, aws = [int(w) for w in window], [int(w) // df for w in window]

    def grid(size: Sequence[int]) -> torch.Tensor:
        return torch.stack(torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")).flatten(1)

    cw, ca = grid(ws), grid(aws)
    width = aws[1] + ws[1] - 1
    if window_to_anchor:
        diff, off = cw[:, :, None] - ca[:, None, :], [a - 1 for a in aws]
    else:
        diff, off = ca[:, :, None] - cw[:, None, :], [w - 1 for w in ws]
    return (diff[0] + off[0]) * width + (diff[1] + off[1])


# ---------------------------------------------------------------------------------------------------------------------
# blocks


class CPB_MLP(nn.Sequential):  # noqa: N801 (upstream class name)
    def __init__(self, in_channels: int, out_channels: int, channels: int = 512) -> None:
        super().__init__(nn.Linear(in_channels, channels), nn.ReLU(inplace=True),
                         nn.Linear(channels, out_channels, bias=False))


class AffineTransform(nn.Module):
    """Per-head temperature (exp of a clamped log scale) and the continuous position bias 16 * sigmoid(MLP)."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.cpb_mlp = CPB_MLP(2, num_heads)

    def scale(self) -> torch.Tensor:
        return torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()

    def bias(self, table: torch.Tensor, index: torch.Tensor, heads: int) -> torch.Tensor:
        n1, n2 = index.shape
        b = self.cpb_mlp(table.to(self.cpb_mlp[0].weight.dtype)).view(-1, heads)[index.reshape(-1)]
        return 16 * torch.sigmoid(b.view(n1, n2, heads).permute(2, 0, 1))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, transform: AffineTransform, table: torch.Tensor,
            index: torch.Tensor, mask: torch.Tensor | None, euclidean: bool) -> torch.Tensor:
    """GRL attention: (cosine similarity or Euclidean distance) * temperature + bias (+ mask), softmax, @ v."""
    b_, heads, n1, _ = q.shape
    bias = transform.bias(table, index, heads).to(q.dtype).unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        bias = (bias + mask.to(q.dtype).unsqueeze(1)).unsqueeze(0).expand(b_ // nw, nw, heads, n1, -1)
        bias = bias.reshape(b_, heads, n1, -1)
    scale = transform.scale().to(q.dtype)
    if euclidean:
        attn = torch.cdist(q, k) * scale + bias
        return attn.softmax(-1) @ v
    q, k = F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


class WindowAttention(nn.Module):
    def __init__(self, window_size: _Pair, num_heads: int, window_shift: bool, euclidean_dist: bool) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.shift_size = window_size[0] // 2 if window_shift else 0
        self.euclidean_dist = euclidean_dist
        self.attn_transform = AffineTransform(num_heads)

    def forward(self, qkv: torch.Tensor, x_size: _Pair, table: torch.Tensor, index: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        h, w = x_size
        b, n, c = qkv.shape
        s = self.shift_size
        qkv = qkv.view(b, h, w, c)
        if s:
            qkv = torch.roll(qkv, (-s, -s), (1, 2))
        win = window_partition(qkv, self.window_size).reshape(-1, self.window_size[0] * self.window_size[1], c)
        q, k, v = win.reshape(win.shape[0], win.shape[1], 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = _attend(q, k, v, self.attn_transform, table, index, mask, self.euclidean_dist)
        x = window_reverse(x.transpose(1, 2).reshape(-1, *self.window_size, c // 3), self.window_size, h, w)
        if s:
            x = torch.roll(x, (s, s), (1, 2))
        return x.reshape(b, n, c // 3)


class AnchorStripeAttention(nn.Module):
    def __init__(self, stripe_size: Sequence[int | None], stripe_groups: Sequence[int | None], stripe_shift: bool,
                 num_heads: int, anchor_window_down_factor: int, euclidean_dist: bool) -> None:
        super().__init__()
        self.stripe_size, self.stripe_groups = list(stripe_size), list(stripe_groups)
        self.stripe_shift = stripe_shift
        self.num_heads = num_heads
        self.anchor_window_down_factor = anchor_window_down_factor
        self.euclidean_dist = euclidean_dist
        self.attn_transform1 = AffineTransform(num_heads)
        self.attn_transform2 = AffineTransform(num_heads)

    def forward(self, qkv: torch.Tensor, anchor: torch.Tensor, x_size: _Pair, table: torch.Tensor,
                index_a2w: torch.Tensor, index_w2a: torch.Tensor, mask_a2w: torch.Tensor | None,
                mask_w2a: torch.Tensor | None) -> torch.Tensor:
        h, w = x_size
        b, n, c = qkv.shape
        df = self.anchor_window_down_factor
        size, shift = stripe_info(self.stripe_size, self.stripe_groups, self.stripe_shift, x_size)
        asize, ashift = [s // df for s in size], [s // df for s in shift]
        qkv = qkv.view(b, h, w, c)
        if self.stripe_shift:
            qkv = torch.roll(qkv, (-shift[0], -shift[1]), (1, 2))
            anchor = torch.roll(anchor, (-ashift[0], -ashift[1]), (1, 2))
        qkv = window_partition(qkv, (size[0], size[1])).reshape(-1, size[0] * size[1], c)
        anchor = window_partition(anchor, (asize[0], asize[1])).reshape(-1, asize[0] * asize[1], c // 3)
        b_, n1, _ = qkv.shape
        q, k, v = qkv.reshape(b_, n1, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        anchor = anchor.reshape(b_, anchor.shape[1], self.num_heads, -1).transpose(1, 2)
        x = _attend(anchor, k, v, self.attn_transform1, table, index_a2w, mask_a2w, self.euclidean_dist)
        x = _attend(q, anchor, x, self.attn_transform2, table, index_w2a, mask_w2a, self.euclidean_dist)
        x = window_reverse(x.transpose(1, 2).reshape(b_, size[0], size[1], c // 3), (size[0], size[1]), h, w)
        if self.stripe_shift:
            x = torch.roll(x, (shift[0], shift[1]), (1, 2))
        return x.reshape(b, n, c // 3)


class SeparableConv(nn.Sequential):
    """Depthwise kxk (stride) then 1x1 (separable_conv_act is off in GRL's config)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, stride, kernel_size // 2, groups=in_channels, bias=bias),
            nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=bias),
        )


class QKVProjection(nn.Module):
    def __init__(self, dim: int, qkv_bias: bool, proj_type: str) -> None:
        super().__init__()
        self.proj_type = proj_type
        if proj_type == "linear":
            self.body: nn.Module = nn.Linear(dim, dim * 3, bias=qkv_bias)
        elif proj_type == "separable_conv":
            self.body = SeparableConv(dim, dim * 3, 3, 1, qkv_bias)
        else:
            raise ValueError(f"qkv_proj_type must be 'linear' or 'separable_conv', not {proj_type!r}")

    def forward(self, x: torch.Tensor, x_size: _Pair) -> torch.Tensor:
        if self.proj_type == "linear":
            return self.body(x)
        return _tokens(self.body(_image(x, x_size)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated, then a linear map (tokens in, tokens out)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, x_size: Sequence[int]) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, int(x_size[0]), int(x_size[1]), c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(x.reshape(b, -1, 4 * c))


class AnchorLinear(nn.Module):
    """Pooling by the down factor, then a linear map; returns (B, H/df, W/df, C')."""

    def __init__(self, in_channels: int, out_channels: int, down_factor: int, pooling_mode: str) -> None:
        super().__init__()
        self.down_factor = down_factor
        self.pooling = nn.MaxPool2d(down_factor, down_factor) if pooling_mode == "maxpool" else \
            nn.AvgPool2d(down_factor, down_factor)
        self.reduction = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor, x_size: _Pair) -> torch.Tensor:
        y = self.reduction(_tokens(self.pooling(_image(x, x_size))))
        return y.view(y.shape[0], x_size[0] // self.down_factor, x_size[1] // self.down_factor, -1)


class AnchorProjection(nn.Module):
    def __init__(self, dim: int, proj_type: str, one_stage: bool, anchor_window_down_factor: int) -> None:
        super().__init__()
        self.proj_type = proj_type
        df = anchor_window_down_factor
        self.body = nn.ModuleList()
        if one_stage:
            if proj_type == "patchmerging":
                self.body.append(PatchMerging(dim, dim // 2))
            elif proj_type == "conv2d":
                self.body.append(nn.Conv2d(dim, dim // 2, df + 1, df, (df + 1) // 2))
            elif proj_type == "separable_conv":
                self.body.append(SeparableConv(dim, dim // 2, df + 1, df, True))
            elif proj_type in ("avgpool", "maxpool"):
                self.body.append(AnchorLinear(dim, dim // 2, df, proj_type))
            else:
                raise ValueError(f"unsupported anchor_proj_type {proj_type!r}")
        else:
            for i in range(int(math.log2(df))):
                cin = dim if i == 0 else dim // 2
                if proj_type == "patchmerging":
                    self.body.append(PatchMerging(cin, dim // 2))
                elif proj_type == "conv2d":
                    self.body.append(nn.Conv2d(cin, dim // 2, 3, 2, 1))
                elif proj_type == "separable_conv":
                    self.body.append(SeparableConv(cin, dim // 2, 3, 2, True))
                else:
                    raise ValueError(f"unsupported progressive anchor_proj_type {proj_type!r}")

    def forward(self, x: torch.Tensor, x_size: _Pair) -> torch.Tensor:
        if "conv" in self.proj_type:
            y = _image(x, x_size)
            for m in self.body:
                y = m(y)
            return y.permute(0, 2, 3, 1)
        if "pool" in self.proj_type:
            for m in self.body:
                x = m(x, x_size)
            return x
        for i, m in enumerate(self.body):
            x = m(x, [s // 2**i for s in x_size])
        n = len(self.body)
        return x.view(x.shape[0], x_size[0] // 2**n, x_size[1] // 2**n, -1)


class ChannelAttention(nn.Module):
    def __init__(self, num_feat: int, reduction: int = 16) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // reduction, num_feat, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Local modelling: two 3x3 convs (width / 4) and channel attention (reduction 18)."""

    def __init__(self, num_feat: int, compress_ratio: int = 4, reduction: int = 18) -> None:
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, reduction),
        )

    def forward(self, x: torch.Tensor, x_size: _Pair) -> torch.Tensor:
        return _tokens(self.cab(_image(x, x_size)))


class MixedAttention(nn.Module):
    def __init__(self, *, dim: int, num_heads_w: int, num_heads_s: int, window_size: _Pair, window_shift: bool,
                 stripe_size: Sequence[int | None], stripe_groups: Sequence[int | None], stripe_shift: bool,
                 qkv_bias: bool, qkv_proj_type: str, anchor_proj_type: str, anchor_one_stage: bool,
                 anchor_window_down_factor: int, euclidean_dist: bool) -> None:
        super().__init__()
        self.qkv = QKVProjection(dim, qkv_bias, qkv_proj_type)
        self.anchor = AnchorProjection(dim, anchor_proj_type, anchor_one_stage, anchor_window_down_factor)
        self.window_attn = WindowAttention(window_size, num_heads_w, window_shift, euclidean_dist)
        self.stripe_attn = AnchorStripeAttention(stripe_size, stripe_groups, stripe_shift, num_heads_s,
                                                 anchor_window_down_factor, euclidean_dist)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, x_size: _Pair, t: dict[str, Any]) -> torch.Tensor:
        c = x.shape[-1]
        qkv_window, qkv_stripe = torch.split(self.qkv(x, x_size), c * 3 // 2, dim=-1)
        anchor = self.anchor(x, x_size)
        xw = self.window_attn(qkv_window, x_size, t["table_w"], t["index_w"], t["mask_w"])
        xs = self.stripe_attn(qkv_stripe, anchor, x_size, t["table_s"], t["index_a2w"], t["index_w2a"],
                              t["mask_a2w"], t["mask_w2a"])
        return self.proj(torch.cat([xw, xs], -1))


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EfficientMixAttnTransformerBlock(nn.Module):
    """Post-norm block: x + s * LN(attn(x)) (+ CAB(x)), then x + s * LN(MLP(x)); s = 0.1 for init_method 'r'."""

    def __init__(self, *, dim: int, num_heads_w: int, num_heads_s: int, window_size: _Pair, window_shift: bool,
                 stripe_size: Sequence[int | None], stripe_groups: Sequence[int | None], stripe_shift: bool,
                 stripe_type: str, mlp_ratio: float, drop_path: float, res_scale: float, local_connection: bool,
                 **attn_kw: Any) -> None:
        super().__init__()
        self.stripe_type = stripe_type
        self.window_shift, self.stripe_shift = window_shift, stripe_shift
        if stripe_type == "W":
            stripe_size, stripe_groups = list(stripe_size)[::-1], list(stripe_groups)[::-1]
        self.attn = MixedAttention(dim=dim, num_heads_w=num_heads_w, num_heads_s=num_heads_s, window_size=window_size,
                                   window_shift=window_shift, stripe_size=stripe_size, stripe_groups=stripe_groups,
                                   stripe_shift=stripe_shift, **attn_kw)
        self.norm1 = nn.LayerNorm(dim)
        self.local_connection = local_connection
        if local_connection:
            self.conv = CAB(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor, x_size: _Pair, tables: dict[str, Any]) -> torch.Tensor:
        v = "v" if self.stripe_type == "W" else "h"
        t = {
            "table_w": tables["table_w"], "index_w": tables["index_w"],
            "mask_w": tables["mask_w"] if self.window_shift else None,
            "table_s": tables[f"table_s{v}"], "index_a2w": tables[f"index_s{v}_a2w"],
            "index_w2a": tables[f"index_s{v}_w2a"],
            "mask_a2w": tables[f"mask_s{v}_a2w"] if self.stripe_shift else None,
            "mask_w2a": tables[f"mask_s{v}_w2a"] if self.stripe_shift else None,
        }
        y = x + self.res_scale * self.drop_path(self.norm1(self.attn(x, x_size, t)))
        if self.local_connection:
            y = y + self.conv(x, x_size)
        return y + self.res_scale * self.drop_path(self.norm2(self.mlp(y)))


class _LinearConv(nn.Linear):
    """conv_type 'linear': a Linear over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _image(super().forward(_tokens(x)), x.shape[-2:])


def _last_conv(conv_type: str, dim: int) -> nn.Module:
    if conv_type == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if conv_type == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    if conv_type == "1conv1x1":
        return nn.Conv2d(dim, dim, 1, 1, 0)
    if conv_type == "linear":
        return _LinearConv(dim, dim)
    raise ValueError(f"unsupported conv_type {conv_type!r}")


class TransformerStage(nn.Module):
    def __init__(self, *, dim: int, depth: int, stripe_shift: bool, drop_path: Sequence[float], conv_type: str,
                 init_method: str, **block_kw: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            EfficientMixAttnTransformerBlock(
                dim=dim, window_shift=i % 2 == 0, stripe_type="H" if i % 2 == 0 else "W",
                stripe_shift=i % 4 in (2, 3) if stripe_shift else False, drop_path=drop_path[i],
                res_scale=0.1 if init_method == "r" else 1.0, **block_kw)
            for i in range(depth)
        )
        self.conv = _last_conv(conv_type, dim)

    def forward(self, x: torch.Tensor, x_size: _Pair, tables: dict[str, Any]) -> torch.Tensor:
        res = x
        for blk in self.blocks:
            res = blk(res, x_size, tables)
        return _tokens(self.conv(_image(res, x_size))) + x


class _Up(nn.Module):
    """GRL's upsamplers keep their convs in `up` (state-dict keys upsample.up.*)."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.up = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def _pixel_shuffle_convs(scale: int, num_feat: int) -> nn.Sequential:
    m: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            m += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    elif scale == 3:
        m += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"scale {scale} is not supported. Supported scales: 2^n and 3.")
    return nn.Sequential(*m)


class GRL(nn.Module):
    """GRL. `upsampler`: 'pixelshuffle', 'pixelshuffledirect' (GRL-tiny), 'nearest+conv' (x4, the bsr models) or ''
    (restoration at scale 1). `img_size` and the pretrained sizes change nothing at inference."""

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        embed_dim: int = 96,
        upscale: int = 1,
        img_range: float = 1.0,
        upsampler: str = "",
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        num_heads_window: Sequence[int] = (3, 3, 3, 3, 3, 3),
        num_heads_stripe: Sequence[int] = (3, 3, 3, 3, 3, 3),
        window_size: int = 8,
        stripe_size: Sequence[int | None] = (8, 8),
        stripe_groups: Sequence[int | None] = (None, None),
        stripe_shift: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qkv_proj_type: str = "linear",
        anchor_proj_type: str = "avgpool",
        anchor_one_stage: bool = True,
        anchor_window_down_factor: int = 1,
        out_proj_type: str = "linear",
        local_connection: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        pretrained_window_size: Sequence[int] = (0, 0),
        pretrained_stripe_size: Sequence[int] = (0, 0),
        conv_type: str = "1conv",
        init_method: str = "n",
        fairscale_checkpoint: bool = False,
        offload_to_cpu: bool = False,
        euclidean_dist: bool = False,
    ) -> None:
        super().__init__()
        if upsampler not in _UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, not {upsampler!r}")
        if out_proj_type not in ("linear", "conv2d"):
            raise ValueError(f"out_proj_type must be 'linear' or 'conv2d', not {out_proj_type!r}")
        if local_connection and embed_dim // 18 < 1:
            raise ValueError(f"local_connection needs embed_dim >= 18 (its channel attention squeezes by 18), "
                             f"got {embed_dim}")
        del drop_rate, attn_drop_rate, fairscale_checkpoint, offload_to_cpu, img_size  # nothing at inference
        num_feat = 64
        self.in_channels, self.out_channels = in_channels, out_channels
        self.upscale, self.upsampler = upscale, upsampler
        self.img_range = float(img_range)
        self.register_buffer("mean", torch.tensor(_RGB_MEAN if in_channels == 3 else (0.0,)).view(1, -1, 1, 1),
                             persistent=False)
        self.window_size = (window_size, window_size)
        self.stripe_size, self.stripe_groups = list(stripe_size), list(stripe_groups)
        self.pretrained_window_size = list(pretrained_window_size)
        self.pretrained_stripe_size = list(pretrained_stripe_size)
        self.anchor_window_down_factor = anchor_window_down_factor
        max_stripe = max(0 if s is None else int(s) for s in stripe_size)
        max_groups = max(0 if g is None else int(g) for g in stripe_groups) * anchor_window_down_factor
        self.pad_size = max(window_size, max_stripe, max_groups)
        self.conv_first = nn.Conv2d(in_channels, embed_dim, 3, 1, 1)
        self.norm_start = nn.LayerNorm(embed_dim)
        total = sum(depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]  # torch.linspace
        self.layers = nn.ModuleList(
            TransformerStage(
                dim=embed_dim, depth=depths[i], num_heads_w=num_heads_window[i], num_heads_s=num_heads_stripe[i],
                window_size=self.window_size, stripe_size=self.stripe_size, stripe_groups=self.stripe_groups,
                stripe_shift=stripe_shift, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qkv_proj_type=qkv_proj_type,
                anchor_proj_type=anchor_proj_type, anchor_one_stage=anchor_one_stage,
                anchor_window_down_factor=anchor_window_down_factor,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], conv_type=conv_type, init_method=init_method,
                local_connection=local_connection, euclidean_dist=euclidean_dist)
            for i in range(len(depths))
        )
        self.norm_end = nn.LayerNorm(embed_dim)
        self.conv_after_body = _last_conv(conv_type, embed_dim)
        if upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
        if upsampler == "pixelshuffle":
            self.upsample = _Up(_pixel_shuffle_convs(upscale, num_feat))
            self.conv_last = nn.Conv2d(num_feat, out_channels, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = _Up(nn.Sequential(nn.Conv2d(embed_dim, upscale**2 * out_channels, 3, 1, 1),
                                              nn.PixelShuffle(upscale)))
        elif upsampler == "nearest+conv":
            if upscale != 4:
                raise ValueError("upsampler 'nearest+conv' supports upscale 4 only")
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_channels, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, out_channels, 3, 1, 1)
        self._tables: tuple[tuple[int, int, str], dict[str, Any]] | None = None
        self._register_load_state_dict_pre_hook(_drop_tables)

    def table_index_mask(self, x_size: _Pair, device: torch.device) -> dict[str, Any]:
        """Tables, indices and masks for a padded size (cached for the last size and device)."""
        key = (x_size[0], x_size[1], str(device))
        if self._tables is not None and self._tables[0] == key:
            return self._tables[1]
        df = self.anchor_window_down_factor
        sh, sh_shift = stripe_info(self.stripe_size, self.stripe_groups, True, x_size)
        # vertical stripes from their own (reversed) sizes and groups: upstream uses sh[::-1], equal when H == W
        sv, sv_shift = stripe_info(self.stripe_size[::-1], self.stripe_groups[::-1], True, x_size)
        ws, shift = self.window_size, [w // 2 for w in self.window_size]
        t = {
            "table_w": coords_table(ws, self.pretrained_window_size),
            "table_sh": coords_table(sh, self.pretrained_stripe_size, df),
            "table_sv": coords_table(sv, self.pretrained_stripe_size, df),
            "index_w": position_index(ws),
            "index_sh_a2w": position_index(sh, df, False),
            "index_sh_w2a": position_index(sh, df, True),
            "index_sv_a2w": position_index(sv, df, False),
            "index_sv_w2a": position_index(sv, df, True),
            "mask_w": window_mask(x_size, ws, shift),
            "mask_sh_a2w": anchor_mask(x_size, sh, sh_shift, df, False),
            "mask_sh_w2a": anchor_mask(x_size, sh, sh_shift, df, True),
            "mask_sv_a2w": anchor_mask(x_size, sv, sv_shift, df, False),
            "mask_sv_w2a": anchor_mask(x_size, sv, sv_shift, df, True),
        }
        t = {k: v.to(device) for k, v in t.items()}
        self._tables = (key, t)
        return t

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.pad_size
        ph, pw = (m - h % m) % m, (m - w % m) % m
        if not (ph or pw):
            return x
        # spandrel: reflect, and zeros where reflect cannot (a pad not smaller than the side)
        return F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "constant")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[2]), int(x.shape[3]))
        t = self.norm_start(_tokens(x))
        tables = self.table_index_mask(size, x.device)
        for layer in self.layers:
            t = layer(t, size, tables)
        return _image(self.norm_end(t), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self._pad(x)
        mean = self.mean.to(x.dtype)  # type: ignore[operator]
        x = (x - mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            res = self.conv_after_body(self.forward_features(first)) + first
            x = x + self.conv_last(res) if self.in_channels == self.out_channels else self.conv_last(res)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(x)
            else:
                x = self.conv_before_upsample(x)
                x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
                x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
                x = self.conv_last(self.lrelu(self.conv_hr(x)))
        return (x / self.img_range + mean)[..., : h * self.upscale, : w * self.upscale]


def _drop_tables(state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    for k in TABLE_KEYS:
        state_dict.pop(prefix + k, None)


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    upscaled = bool(kw["upsampler"])
    return ArchSpec(
        id="grl",
        family="GRL",
        upstream_class="GRL",
        tasks=("upscale",) if upscaled else ("restore",),
        scale=int(kw["upscale"]) if upscaled else 1,
        in_channels=int(kw["in_channels"]),
        out_channels=int(kw["out_channels"]),
        min_size=1,
        multiple_of=1,  # padded inside
        fp16=True,
        bf16=True,
        channels_last=False,
        tiling="global",
        context=64,
        code_license="MIT",
    )


def _layout(sd: StateDict, upsampler: str, embed_dim: int) -> dict[str, Any]:
    """Window, stripes and anchor down factor. From the stored tables when the checkpoint has them (the official
    ones do): window = (table_w width + 1) / 2, down factor = sqrt of the anchor index's aspect, stripe s from the
    stripe table's s + s / df - 1. Otherwise the official training settings for the head: SR window 32, stripes
    64 x 64, factor 2 for GRL-base (width 180) and 4 else; blind SR (nearest+conv) window 16, stripes 32 x 64,
    factor 4; restoration models the model configs' window 8, stripes [8, None] / groups [None, 4], factor 4."""
    if "table_w" in sd and "table_sh" in sd and "index_sh_a2w" in sd:
        a, b = (int(n) for n in sd["index_sh_a2w"].shape)
        df = math.isqrt(max(a, b) // max(1, min(a, b)))
        th = sd["table_sh"].shape
        stripes = [round((int(th[1]) + 1) / (1 + 1 / df)), round((int(th[2]) + 1) / (1 + 1 / df))]
        return {"window_size": (int(sd["table_w"].shape[1]) + 1) // 2, "stripe_size": stripes,
                "stripe_groups": [None, None], "anchor_window_down_factor": df}
    if upsampler == "nearest+conv":
        return {"window_size": 16, "stripe_size": [32, 64], "stripe_groups": [None, None],
                "anchor_window_down_factor": 4}
    if upsampler:
        return {"window_size": 32, "stripe_size": [64, 64], "stripe_groups": [None, None],
                "anchor_window_down_factor": 2 if embed_dim == 180 else 4}
    return {"window_size": 8, "stripe_size": [8, None], "stripe_groups": [None, 4], "anchor_window_down_factor": 4}


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Widths, depths, heads (temperatures), qkv / anchor projection types, local connection, expansion, residual
    conv type and head from the weights; window, stripes and anchor factor from the stored tables or the official
    settings (_layout); stripe_shift True as every training config. The rebuilt model must match every key and
    shape (the stored tables aside)."""
    key = "layers.0.blocks.0.attn.window_attn.attn_transform.logit_scale"
    if "conv_first.weight" not in sd or key not in sd or "norm_start.weight" not in sd:
        return None
    weights = {k: v for k, v in sd.items() if k not in TABLE_KEYS}
    embed_dim, in_channels = (int(s) for s in sd["conv_first.weight"].shape[:2])
    n_layers = count_indexed(sd, "layers.{}.blocks.0.norm1.weight")
    depths = [count_indexed(sd, f"layers.{i}.blocks.{{}}.norm1.weight") for i in range(n_layers)]
    heads_w = [int(sd[f"layers.{i}.blocks.0.attn.window_attn.attn_transform.logit_scale"].shape[0])
               for i in range(n_layers)]
    heads_s = [int(sd[f"layers.{i}.blocks.0.attn.stripe_attn.attn_transform1.logit_scale"].shape[0])
               for i in range(n_layers)]
    hidden = int(sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0])
    anchor = "layers.0.blocks.0.attn.anchor.body."
    one_stage = count_indexed(sd, anchor + "{}.") <= 1
    if anchor + "0.reduction.bias" in sd:
        anchor_type = "avgpool"  # or maxpool: the same weights
    elif anchor + "0.reduction.weight" in sd:
        anchor_type = "patchmerging"
    elif anchor + "0.1.weight" in sd:
        anchor_type = "separable_conv"
    else:
        anchor_type = "conv2d"
    if "conv_after_body.0.weight" in sd:
        conv_type = "3conv"
    elif sd["conv_after_body.weight"].ndim == 2:
        conv_type = "linear"
    elif int(sd["conv_after_body.weight"].shape[-1]) == 1:
        conv_type = "1conv1x1"
    else:
        conv_type = "1conv"
    out = int(sd["conv_last.weight"].shape[0]) if "conv_last.weight" in sd else in_channels
    kw: dict[str, Any] = {
        "in_channels": in_channels,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads_window": heads_w,
        "num_heads_stripe": heads_s,
        "stripe_shift": True,
        "mlp_ratio": ratio_for(hidden, embed_dim),
        "qkv_bias": "layers.0.blocks.0.attn.qkv.body.bias" in sd or "layers.0.blocks.0.attn.qkv.body.0.bias" in sd,
        "qkv_proj_type": "linear" if "layers.0.blocks.0.attn.qkv.body.weight" in sd else "separable_conv",
        "anchor_proj_type": anchor_type,
        "anchor_one_stage": one_stage,
        "local_connection": "layers.0.blocks.0.conv.cab.0.weight" in sd,
        "conv_type": conv_type,
    }
    if "conv_up1.weight" in sd:
        kw.update(upsampler="nearest+conv", upscale=4, out_channels=out)
    elif "conv_before_upsample.0.weight" in sd:
        num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
        convs = [k for k in sd if k.startswith("upsample.up.") and k.endswith(".weight")]
        first = int(sd["upsample.up.0.weight"].shape[0]) if "upsample.up.0.weight" in sd else 0
        kw.update(upsampler="pixelshuffle", upscale=3 if first == 9 * num_feat else 2 ** len(convs), out_channels=out)
    elif "upsample.up.0.weight" in sd:
        found = next(((s, o) for o in (in_channels, 3, 1)
                      if (s := pixel_shuffle_scale(int(sd["upsample.up.0.weight"].shape[0]), o)) is not None), None)
        if found is None:
            return None
        kw.update(upsampler="pixelshuffledirect", upscale=found[0], out_channels=found[1])
    else:
        kw.update(upsampler="", upscale=1, out_channels=out)
    kw.update(_layout(sd, kw["upsampler"], embed_dim))
    if not one_stage:
        kw["anchor_window_down_factor"] = 2 ** count_indexed(sd, anchor + "{}.")
    elif anchor_type in ("conv2d", "separable_conv"):
        w = sd.get(anchor + "0.weight", sd.get(anchor + "0.0.weight"))
        if w is not None:
            kw["anchor_window_down_factor"] = int(w.shape[-1]) - 1
    return kw if same_keys_and_shapes(lambda: GRL(**kw), weights) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="grl", family="GRL", cls=GRL, describe=_describe, detect=_detect),
)
