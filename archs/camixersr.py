"""CAMixerSR: content-aware mixing for efficient super-resolution (CVPR 2024, arXiv:2402.19289).

Semantics follow icandle/CAMixerSR (Apache-2.0) `codes/basicsr/archs/CAMixerSR_arch.py` (`CAMixerSR`); keyword
names, defaults and state-dict keys match it so the published checkpoints (`params_ema`) load strictly.

Each block routes its 16x16 windows: the windows a predictor ranks as complex get window self-attention, the others
only the cheap convolutional branch. The share of attention windows is steered by `ratio`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import pixel_shuffle_scale, same_keys_and_shapes
from .layers.norm import LayerNorm2d
from .layers.padding import pad_to_multiple
from .layers.precision import upcast
from .layers.restormer import FeedForward
from .layers.window import window_partition, window_reverse
from .spec import ArchEntry, ArchSpec, StateDict

_WINDOW = 16  # hard-coded upstream (CAMixerSR.window_sizes)
_MAX_OFFSET = 8.0  # deformable offsets are tanh(.) * 8 pixels

# (kept attention windows, windows) per block of one forward, for last_info.
_Stats = list[tuple[int, int]]


def _to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, ws*ws, C), windows in raster order, pixels in raster order inside a window."""
    b, c, h, w = x.shape
    return window_partition(x.permute(0, 2, 3, 1), ws).reshape(b, (h // ws) * (w // ws), ws * ws, c)


def _from_windows(x: torch.Tensor, h: int, w: int, ws: int) -> torch.Tensor:
    return window_reverse(x.flatten(0, 1), ws, h, w).permute(0, 3, 1, 2).contiguous()


def _flow_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """BasicSR `flow_warp` (bilinear, border padding, align_corners=True): sample x at pixel + flow (B, H, W, 2).

    Computed in float32: in half precision the normalised sampling grid is off by up to half a pixel (bf16) or more
    on images a few hundred pixels wide.
    """
    _, _, h, w = x.shape
    dtype = x.dtype
    xf = upcast(x)
    flow = flow.to(xf.dtype)
    gy, gx = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=xf.dtype), torch.arange(w, device=x.device, dtype=xf.dtype),
        indexing="ij",
    )
    grid = torch.stack((gx, gy), dim=2) + flow
    # Same operation order as BasicSR so float32 results agree bit for bit.
    vx = 2.0 * grid[..., 0] / max(w - 1, 1) - 1.0
    vy = 2.0 * grid[..., 1] / max(h - 1, 1) - 1.0
    out = F.grid_sample(xf, torch.stack((vx, vy), dim=3), mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(dtype)


def _keep_count(pred_score: torch.Tensor, ratio: float) -> int:
    """Number of windows that get attention, from one image's (1, N, 2) scores.

    Upstream draws a hard Gumbel-softmax mask even in eval and keeps N * mean(mask) * 2 * ratio windows, so the
    count is random. We use the same formula with the Gumbel noise at zero (torch's own hard-softmax arithmetic, in
    the same float32 order as the golden files): the mask is 1 where pred_score[..., 0] is the larger score.
    """
    n = pred_score.shape[1]
    if ratio == 1:
        return n
    y_soft = pred_score.softmax(dim=2)
    y_hard = torch.zeros_like(y_soft).scatter_(2, y_soft.argmax(dim=2, keepdim=True), 1.0)
    mask = (y_hard - y_soft + y_soft)[:, :, 0:1]
    r = torch.mean(mask, dim=(0, 1)) * 1.0
    return min(int(n * r * 2 * ratio), n)


class PredictorLG(nn.Module):
    """Importance predictor: per-pixel offsets (deformable keys), channel and spatial attention, window scores."""

    def __init__(self, dim: int, window_size: int = 8, k: int = 4, ratio: float = 0.5) -> None:
        super().__init__()
        self.ratio = ratio
        self.window_size = window_size
        cdim = dim + k
        self.in_conv = nn.Sequential(nn.Conv2d(cdim, cdim // 4, 1), LayerNorm2d(cdim // 4), nn.LeakyReLU(0.1))
        self.out_offsets = nn.Sequential(
            nn.Conv2d(cdim // 4, cdim // 8, 1), nn.LeakyReLU(0.1), nn.Conv2d(cdim // 8, 2, 1)
        )
        self.out_mask = nn.Sequential(
            nn.Linear(window_size**2, window_size), nn.LeakyReLU(0.1), nn.Linear(window_size, 2), nn.Softmax(dim=-1)
        )
        self.out_CA = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cdim // 4, dim, 1), nn.Sigmoid())
        self.out_SA = nn.Sequential(nn.Conv2d(cdim // 4, 1, 3, 1, 1), nn.Sigmoid())

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) window scores (softmax) from the channel-mean map. Float32 even for half models: the scores
        decide which windows get attention, and half-precision rounding would flip close calls."""
        win = _to_windows(x.float().mean(dim=1, keepdim=True), self.window_size).flatten(2)  # (B, N, ws*ws)
        l0, l2 = self.out_mask[0], self.out_mask[2]
        assert isinstance(l0, nn.Linear) and isinstance(l2, nn.Linear)
        h = F.leaky_relu(F.linear(win, l0.weight.float(), l0.bias.float()), 0.1)
        return F.linear(h, l2.weight.float(), l2.bias.float()).softmax(dim=-1)

    def forward(self, input_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(window scores (B, N, 2), offsets (B, 2, H, W) in pixels, ca (B, dim, 1, 1), sa (B, 1, H, W)).

        Upstream also turns the scores into a routing decision here; CAMixer does that (see _keep_count)."""
        x = self.in_conv(input_x)
        offsets = self.out_offsets(x).tanh().mul(_MAX_OFFSET)
        return self.scores(x), offsets, self.out_CA(x), self.out_SA(x)


class CAMixer(nn.Module):
    """Content-aware mixer: window attention (deformable keys) on the top-ranked windows, v * sa elsewhere, then a
    depthwise conv branch gated by channel attention, and a 1x1 projection."""

    def __init__(self, dim: int, window_size: int = 8, bias: bool = True, ratio: float = 0.5) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.ratio = ratio
        self.project_v = nn.Conv2d(dim, dim, 1, 1, 0, bias=bias)
        self.project_q = nn.Linear(dim, dim, bias=bias)
        self.project_k = nn.Linear(dim, dim, bias=bias)
        self.conv_sptial = nn.Sequential(  # upstream spelling
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.Conv2d(dim, dim, 3, stride=1, padding=2, groups=dim, dilation=2),
        )
        self.project_out = nn.Conv2d(dim, dim, 1, 1, 0, bias=bias)
        self.act = nn.GELU()
        self.route = PredictorLG(dim, window_size, ratio=ratio)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention inside each window: (n, L, C) each; no 1/sqrt(d) scaling, as upstream."""
        attn = self.project_q(q) @ self.project_k(k).transpose(-2, -1)
        return attn.softmax(dim=-1) @ v

    def forward(
        self,
        x: torch.Tensor,
        condition_global: torch.Tensor | None = None,
        ratio: float | None = None,
        stats: _Stats | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(out, decision): decision is the mean training mask per image (B, 1), None in eval."""
        ratio = self.ratio if ratio is None else ratio
        b, _, h, w = x.shape
        ws = self.window_size
        v = self.project_v(x)
        # Each pixel's (row, col) position inside its window, in [-1, 1].
        lin = torch.linspace(-1, 1, ws, device=x.device, dtype=x.dtype)
        cond_wind = torch.stack(torch.meshgrid(lin, lin, indexing="ij")).unsqueeze(0).repeat(b, 1, h // ws, w // ws)
        parts = [v, cond_wind] if condition_global is None else [v, condition_global.to(v.dtype), cond_wind]
        pred_score, offsets, ca, sa = self.route(torch.cat(parts, dim=1))

        k = x + _flow_warp(x, offsets.permute(0, 2, 3, 1))
        vs = v * sa
        v_w, vs_w = _to_windows(v, ws), _to_windows(vs, ws)
        q_w, k_w = _to_windows(x, ws), _to_windows(k, ws)
        n = v_w.shape[1]

        decision: torch.Tensor | None = None
        if self.training:
            # Upstream: soft routing with a straight-through hard Gumbel mask (random, training only).
            mask = F.gumbel_softmax(pred_score, hard=True, dim=2)[:, :, 0:1].to(v.dtype)
            m = mask.unsqueeze(-1)  # (B, N, 1, 1)
            f = self._attend((q_w * m).flatten(0, 1), (k_w * m).flatten(0, 1), (v_w * m).flatten(0, 1))
            out_w = f.view_as(v_w) + vs_w * (1 - m)
            decision = mask.mean(dim=1)
            if stats is not None:
                stats.append((int(mask.sum().item()), b * n))
        else:
            # Per image (upstream pools the keep count over the batch; per image, a result does not depend on what
            # else is in the batch, and B = 1 is identical).
            order = torch.argsort(pred_score[:, :, 0], dim=1, descending=True)
            out_w = vs_w.clone()
            for i in range(b):
                keep = _keep_count(pred_score[i : i + 1], ratio)
                if stats is not None:
                    stats.append((keep, n))
                if keep == 0:
                    continue
                idx = order[i, :keep]
                out_w[i, idx] = self._attend(q_w[i, idx], k_w[i, idx], v_w[i, idx]).to(out_w.dtype)

        out = _from_windows(out_w, h, w, ws)
        out = self.act(self.conv_sptial(out)) * ca + out
        return self.project_out(out), decision


class GatedFeedForward(FeedForward):
    """Restormer's GDFN at hidden width dim: 1x1 (x2 channels) -> depthwise 3x3 -> GELU(a) * b -> 1x1, no biases.

    `mult`/`dropout` unused, as upstream.
    """

    def __init__(self, dim: int, mult: int = 1, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__(dim, 1, bias)


class Block(nn.Module):
    """Post-norm block: x = norm1(x + mixer(x)); x = norm2(x + ffn(x))."""

    def __init__(self, n_feats: int, window_size: int = 8, ratio: float = 0.5) -> None:
        super().__init__()
        self.n_feats = n_feats
        self.norm1 = LayerNorm2d(n_feats)
        self.mixer = CAMixer(n_feats, window_size=window_size, ratio=ratio)
        self.norm2 = LayerNorm2d(n_feats)
        self.ffn = GatedFeedForward(n_feats)

    def forward(
        self, x: torch.Tensor, condition_global: torch.Tensor | None = None, ratio: float | None = None,
        stats: _Stats | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        res, decision = self.mixer(x, condition_global, ratio, stats)
        x = self.norm1(x + res)
        x = self.norm2(x + self.ffn(x))
        return x, decision


class Group(nn.Module):
    def __init__(self, n_feats: int, n_block: int, window_size: int = 8, ratio: float = 0.5) -> None:
        super().__init__()
        self.n_feats = n_feats
        self.body = nn.ModuleList([Block(n_feats, window_size=window_size, ratio=ratio) for _ in range(n_block)])
        self.body_tail = nn.Conv2d(n_feats, n_feats, 1, 1, 0)

    def forward(
        self, x: torch.Tensor, condition_global: torch.Tensor | None = None, ratio: float | None = None,
        stats: _Stats | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        shortcut = x
        decisions: list[torch.Tensor] = []
        for blk in self.body:
            x, d = blk(x, condition_global, ratio, stats)
            if d is not None:
                decisions.append(d)
        return self.body_tail(x) + shortcut, decisions


class CAMixerSR(nn.Module):
    """CAMixerSR: 3x3 head, global predictor, groups of CAMixer blocks, 3x3 conv, 3x3 conv + pixel shuffle.

    Runtime attributes (plain, change them after construction):
      ratio: share of attention windows (upstream kwarg; the user's --ratio). Each block keeps
        min(int(N * m * 2 * ratio), N) of its N windows for attention, m = share of windows its predictor rates
        complex; ratio = 1 keeps all. In eval the routing is deterministic (see _keep_count).
      tile: upstream's own tiling (None: whole image). With a tile size the model runs overlapping square tiles of
        that size (overlap tile // 16) and averages them, as upstream's large-image protocol (tile 64).
    After each forward, `last_info` = {"ratio": ratio, "kept": share of windows that got attention over all blocks
    and images}. In training, `ratio_loss` holds upstream's auxiliary loss 2 * ratio * (mean mask - 0.5)^2, which
    upstream returns as a second output; forward always returns only the image.

    The input is reflect-padded to a multiple of 16 and the output cropped back, as upstream.
    """

    def __init__(
        self,
        *,
        n_block: Sequence[int] = (4, 4, 6, 6),
        n_group: int = 4,
        n_colors: int = 3,
        n_feats: int = 60,
        scale: int = 4,
        ratio: float = 0.5,
        tile: int | None = None,
    ) -> None:
        super().__init__()
        if len(n_block) < n_group:
            raise ValueError(f"n_block has {len(n_block)} entries for {n_group} groups")
        self.n_feats = n_feats
        self.window_sizes = _WINDOW
        self.tile = tile
        self.scale = scale
        self.ratio = ratio
        self.last_info: dict[str, Any] = {}
        self.ratio_loss: torch.Tensor | None = None
        self.head = nn.Conv2d(n_colors, n_feats, 3, 1, 1)
        self.global_predictor = nn.Sequential(
            nn.Conv2d(n_feats, 8, 1, 1, 0), nn.LeakyReLU(0.1), nn.Conv2d(8, 2, 3, 1, 1), nn.LeakyReLU(0.1)
        )
        self.body = nn.ModuleList(
            [Group(n_feats, n_block=n_block[i], window_size=_WINDOW, ratio=ratio) for i in range(n_group)]
        )
        self.body_tail = nn.Conv2d(n_feats, n_feats, 3, 1, 1)
        self.tail = nn.Sequential(nn.Conv2d(n_feats, n_colors * scale**2, 3, 1, 1), nn.PixelShuffle(scale))

    def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(x, self.window_sizes, mode="reflect")

    def forward_origin(self, x: torch.Tensor, stats: _Stats | None = None) -> torch.Tensor:
        h, w = x.shape[2:]
        x = self.head(self.check_image_size(x))
        condition_global = self.global_predictor(x)
        shortcut = x
        decisions: list[torch.Tensor] = []
        for group in self.body:
            x, d = group(x, condition_global, self.ratio, stats)
            decisions.extend(d)
        x = self.tail(self.body_tail(x) + shortcut)
        if self.training and decisions:
            self.ratio_loss = 2 * self.ratio * (torch.mean(torch.cat(decisions, dim=1), dim=(0, 1)) - 0.5) ** 2
        return x[:, :, : h * self.scale, : w * self.scale]

    def forward(self, img_lq: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """`tile` overrides `self.tile` for this call (upstream accepts the argument but ignores it)."""
        tile = self.tile if tile is None else tile
        stats: _Stats = []
        if tile is None or self.training:
            output = self.forward_origin(img_lq, stats)
        else:
            output = self._forward_tiled(img_lq, int(tile), stats)
        kept, total = sum(k for k, _ in stats), sum(n for _, n in stats)
        self.last_info = {"ratio": self.ratio, "kept": round(kept / total, 4) if total else 1.0}
        return output

    def _forward_tiled(self, img: torch.Tensor, tile: int, stats: _Stats) -> torch.Tensor:
        """Upstream's tiling: square tiles, overlap tile // 16, the last one flush with the edge, plain averaging."""
        b, c, h, w = img.shape
        tile = min(tile, h, w)
        stride = tile - tile // 16
        sf = self.scale
        ys = [*range(0, h - tile, stride), h - tile]
        xs = [*range(0, w - tile, stride), w - tile]
        acc = img.new_zeros(b, c, h * sf, w * sf)
        hits = torch.zeros_like(acc)
        for y in ys:
            for x in xs:
                out = self.forward_origin(img[..., y : y + tile, x : x + tile], stats)
                acc[..., y * sf : (y + tile) * sf, x * sf : (x + tile) * sf] += out
                hits[..., y * sf : (y + tile) * sf, x * sf : (x + tile) * sf] += 1
        return acc / hits


# ---------------------------------------------------------------------------------------------------------------
# Descriptor.
#
# Context: the receptive-field radius (input pixels) of the local operators, ignoring the whole-image ones: head 3x3
# (1) + global predictor 3x3 (1, a side input of every block) + per block [deformable key warp (offsets < 8 px, 8)
# + 16x16 window attention (15) + depthwise 3x3 and dilated 3x3 (1 + 2) + FFN depthwise 3x3 (1) = 27] + body tail
# 3x3 (1) + upsampler 3x3 (1). Default (20 blocks): 4 + 540 = 544. The whole-image parts (channel attention's global
# pool, and the keep count and ranking of windows over the image) make tiles differ from the whole image anyway.


def _context(kw: dict[str, Any]) -> int:
    return 4 + 27 * sum(int(n) for n in list(kw["n_block"])[: int(kw["n_group"])])


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="camixersr",
        family="CAMixerSR",
        upstream_class="CAMixerSR",
        tasks=("upscale",),
        scale=int(kw["scale"]),
        in_channels=int(kw["n_colors"]),
        out_channels=int(kw["n_colors"]),
        # Upstream reflect-pads to the 16-px window grid itself; giving the engine the same grid keeps tile windows
        # aligned with the attention windows, and its bottom/right reflect padding is the same as upstream's.
        min_size=_WINDOW,
        multiple_of=_WINDOW,
        # Routing scores, the warp grid and LayerNorm statistics run in float32 inside the model.
        fp16=True,
        bf16=True,
        channels_last=False,  # window partitions, grid_sample and channel LayerNorms: no NHWC gain expected
        # tile set: the model tiles itself (upstream's large-image protocol). Otherwise "global": channel attention
        # pools the whole image and each block ranks and counts its attention windows over the whole image.
        tiling="internal" if kw["tile"] else "global",
        context=_context(kw),
        code_license="Apache-2.0",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """n_colors/n_feats from the head, scale from the tail, groups and blocks from the body keys.
    ratio and tile are not stored: upstream defaults (0.5, None)."""
    if "head.weight" not in sd or "tail.0.weight" not in sd or "body.0.body.0.mixer.route.out_mask.0.weight" not in sd:
        return None
    head, tail = sd["head.weight"], sd["tail.0.weight"]
    if head.ndim != 4 or tail.ndim != 4:
        return None
    n_feats, n_colors = int(head.shape[0]), int(head.shape[1])
    scale = pixel_shuffle_scale(int(tail.shape[0]), n_colors)
    if scale is None:
        return None
    blocks: list[int] = []
    while f"body.{len(blocks)}.body_tail.weight" in sd:
        g = len(blocks)
        n = 0
        while f"body.{g}.body.{n}.norm1.weight" in sd:
            n += 1
        blocks.append(n)
    if not blocks:
        return None
    kwargs: dict[str, Any] = {
        "n_block": blocks,
        "n_group": len(blocks),
        "n_colors": n_colors,
        "n_feats": n_feats,
        "scale": scale,
        "ratio": 0.5,
        "tile": None,
    }
    return kwargs if same_keys_and_shapes(lambda: CAMixerSR(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="camixersr", family="CAMixerSR", cls=CAMixerSR, describe=_describe, detect=_detect),
)
