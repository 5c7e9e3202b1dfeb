"""CATANet: Content-Aware Token Aggregation for lightweight image super-resolution (CVPR 2025,
EquationWalker/CATANet), as neosr carries it (`catanet`). Keyword names, defaults and state-dict keys are neosr's.

Each block is a Token-Aggregation Block (TAB: tokens are assigned to learned centres, sorted by centre, attended in
groups of neighbours in that order plus to all centres) followed by local attention in overlapping square patches
(LRSA) and a 3x3 conv.

* Determinism: upstream sorts tokens by centre id with an unstable argsort over an index full of ties, and the order
  inside a centre decides which tokens share an attention group (torch 2.13's CPU sort changes the output by ~8%).
  We sort stably: ties keep raster order, on every device.
* Eval uses the stored `means` buffer when `initted` is set, else chunk means of the current tokens, as upstream.
  Training refines the centres by k-means and updates `means` by EMA, as upstream.
* Inputs must be at least max(patch_size) on each side (LRSA's patches); upstream fails below that as well.
* neosr reads the default `upscale` from its options file at import; here it is 4. Scales 1-4 are built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import list_length, same_keys_and_shapes
from .spec import ArchEntry, ArchSpec, StateDict

_PATCH = (16, 20, 24, 28)
_GROUP = (256, 128, 64, 32)
_TOKENS = (16, 32, 64, 128)


def _center_iter(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """One k-means step on unit vectors: each centre becomes the normalised sum of its tokens (kept if empty)."""
    b, _, d = x.shape
    n_tok = means.shape[0]
    buckets = torch.einsum("bld,cd->blc", x, means).argmax(dim=-1)
    bins = torch.zeros(b, n_tok, dtype=torch.long, device=x.device).scatter_add_(
        1, buckets, torch.ones_like(buckets)).sum(0)
    sums = torch.zeros(b, n_tok, d, dtype=x.dtype, device=x.device)
    sums.scatter_add_(1, buckets.unsqueeze(-1).expand(-1, -1, d), x)
    new = F.normalize(sums.sum(0), dim=-1)
    return torch.where((bins == 0).unsqueeze(-1), means, new)


class IASA(nn.Module):
    """Intra-group self-attention over the centre-sorted tokens: each group of `group_size` queries attends to its
    own and the next group's keys (mirrored at the end), plus to the global centres; then the order is undone."""

    def __init__(self, dim: int, qk_dim: int, heads: int, group_size: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, qk_dim, bias=False)
        self.to_k = nn.Linear(dim, qk_dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.group_size = group_size

    def forward(self, x: torch.Tensor, order: torch.Tensor, k_global: torch.Tensor,
                v_global: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads = self.heads
        q, k, v = (torch.gather(t, 1, order.expand(-1, -1, t.shape[-1])) for t in (self.to_q(x), self.to_k(x),
                                                                                   self.to_v(x)))
        gs = min(n, self.group_size)
        ng = (n + gs - 1) // gs
        pad = ng * gs - n
        # Upstream's slices, Python semantics included (a negative start counts from the end).
        q = torch.cat((q, q[:, n - pad:n].flip(-2)), dim=-2)
        q = q.reshape(b, ng, gs, heads, -1).transpose(2, 3)

        def windows(t: torch.Tensor) -> torch.Tensor:
            t = torch.cat((t, t[:, n - pad - gs:n].flip(-2)), dim=-2).unfold(-2, 2 * gs, gs)  # (b, ng, c, 2 gs)
            return t.reshape(b, ng, heads, -1, 2 * gs).transpose(-1, -2)

        out = F.scaled_dot_product_attention(q, windows(k), windows(v))
        kg = k_global.reshape(1, 1, *k_global.shape).expand(b, ng, -1, -1, -1)
        vg = v_global.reshape(1, 1, *v_global.shape).expand(b, ng, -1, -1, -1)
        out = out + F.scaled_dot_product_attention(q, kg, vg)
        out = out.transpose(2, 3).reshape(b, ng * gs, -1)[:, :n]
        out = out.scatter(1, order.expand(-1, -1, out.shape[-1]), out)  # back to raster order
        return self.proj(out)


class IRCA(nn.Module):
    """Keys and values of the token centres, per head (the centres are refined by k-means when training)."""

    def __init__(self, dim: int, qk_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_k = nn.Linear(dim, qk_dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, x_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_global = x_means
        if self.training:
            x_global = _center_iter(F.normalize(x, dim=-1), F.normalize(x_means, dim=-1))
        n = x_global.shape[0]
        k = self.to_k(x_global).reshape(n, self.heads, -1).transpose(0, 1)
        v = self.to_v(x_global).reshape(n, self.heads, -1).transpose(0, 1)
        return k, v, x_global.detach()


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class DWConv(nn.Module):
    """Depthwise k x k conv + GELU on a token sequence laid back out as its (h, w) map."""

    def __init__(self, hidden_features: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.depthwise_conv = nn.Sequential(
            nn.Conv2d(hidden_features, hidden_features, kernel_size, 1, (kernel_size - 1) // 2,
                      groups=hidden_features),
            nn.GELU(),
        )
        self.hidden_features = hidden_features

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        b = x.shape[0]
        y = self.depthwise_conv(x.transpose(1, 2).reshape(b, self.hidden_features, *x_size))
        return y.flatten(2).transpose(1, 2)


class ConvFFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 kernel_size: int = 5) -> None:
        super().__init__()
        hidden = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.dwconv = DWConv(hidden, kernel_size)
        self.fc2 = nn.Linear(hidden, out_features or in_features)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x, x_size))


class TAB(nn.Module):
    def __init__(self, dim: int, qk_dim: int, mlp_dim: int, heads: int, n_iter: int = 3, num_tokens: int = 8,
                 group_size: int = 128, ema_decay: float = 0.999) -> None:
        super().__init__()
        self.n_iter = n_iter
        self.ema_decay = ema_decay
        self.num_tokens = num_tokens
        self.norm = nn.LayerNorm(dim)
        self.mlp = PreNorm(dim, ConvFFN(dim, mlp_dim))
        self.irca_attn = IRCA(dim, qk_dim, heads)
        self.iasa_attn = IASA(dim, qk_dim, heads, group_size)
        self.register_buffer("means", torch.randn(num_tokens, dim))
        self.register_buffer("initted", torch.tensor(False))
        self.conv1x1 = nn.Conv2d(dim, dim, 1, bias=False)

    def _initial_means(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.initted):
            means: torch.Tensor = self.means  # type: ignore[assignment]
            return means.detach().to(x.dtype)
        # Chunk means of the tokens, padded by mirroring the last ones up to a multiple of num_tokens (upstream
        # pads a full extra chunk when N is already a multiple).
        b, n, c = x.shape
        pad = self.num_tokens - n % self.num_tokens
        padded = torch.cat((x, x[:, n - pad:n].flip(-2)), dim=-2)
        return padded.reshape(b, self.num_tokens, -1, c).transpose(0, 1).reshape(self.num_tokens, -1, c).mean(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        residual = x
        x = self.norm(x)
        x_means = self._initial_means(x)
        if self.training:
            with torch.no_grad():
                for _ in range(self.n_iter - 1):
                    x_means = _center_iter(F.normalize(x, dim=-1), F.normalize(x_means, dim=-1))
        k_global, v_global, x_means = self.irca_attn(x, x_means)
        with torch.no_grad():
            scores = torch.einsum("bic,jc->bij", F.normalize(x, dim=-1), F.normalize(x_means, dim=-1))
            order = torch.argsort(scores.argmax(dim=-1), dim=-1, stable=True).unsqueeze(-1)
        y = self.iasa_attn(x, order, k_global, v_global)
        y = self.conv1x1(y.transpose(1, 2).reshape(b, c, h, w))
        x = residual + y.flatten(2).transpose(1, 2)
        x = self.mlp(x, x_size=(h, w)) + x
        if self.training:
            with torch.no_grad():
                means: torch.Tensor = self.means  # type: ignore[assignment]
                if not bool(self.initted):
                    means.copy_(x_means)
                    self.initted.fill_(True)  # type: ignore[operator]
                else:
                    means.mul_(self.ema_decay).add_(x_means, alpha=1 - self.ema_decay)
        return x.transpose(1, 2).reshape(b, c, h, w)


def _patch_starts(size: int, step: int, ps: int) -> list[int]:
    """Patch origins along one axis: every `step`, the last one flush with the end (upstream's loop)."""
    return [min(i, size - ps) for i in range(0, size + step - ps, step)]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.dim = dim
        self.qk_dim = qk_dim
        self.to_q = nn.Linear(dim, qk_dim, bias=False)
        self.to_k = nn.Linear(dim, qk_dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (self.to_q(x), self.to_k(x),
                                                                             self.to_v(x)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class LRSA(nn.Module):
    """Self-attention inside overlapping ps x ps patches (stride ps - 2), then a ConvFFN over the whole map."""

    def __init__(self, dim: int, qk_dim: int, mlp_dim: int, heads: int = 1) -> None:
        super().__init__()
        self.layer = nn.ModuleList([PreNorm(dim, Attention(dim, heads, qk_dim)), PreNorm(dim, ConvFFN(dim, mlp_dim))])

    def forward(self, x: torch.Tensor, ps: int) -> torch.Tensor:
        b, c, h, w = x.shape
        if h < ps or w < ps:
            raise ValueError(f"catanet needs inputs of at least {ps}x{ps} pixels (patch size), got {h}x{w}")
        step = ps - 2
        tops = _patch_starts(h, ps if (h == ps and w == ps) else step, ps)
        lefts = _patch_starts(w, ps if (h == ps and w == ps) else step, ps)
        crops = torch.stack([x[:, :, t:t + ps, s:s + ps] for t in tops for s in lefts], dim=1)  # (b, n, c, ps, ps)
        n = crops.shape[1]
        tokens = crops.flatten(3).transpose(2, 3).reshape(b * n, ps * ps, c)
        attn, ff = self.layer
        tokens = attn(tokens) + tokens
        crops = tokens.reshape(b, n, ps * ps, c).transpose(2, 3).reshape(b, n, c, ps, ps)
        x = self._reverse(crops, x, tops, lefts, step, ps)
        y = x.flatten(2).transpose(1, 2)
        y = ff(y, x_size=(h, w)) + y
        return y.transpose(1, 2).reshape(b, c, h, w)

    @staticmethod
    def _reverse(crops: torch.Tensor, x: torch.Tensor, tops: list[int], lefts: list[int], step: int,
                 ps: int) -> torch.Tensor:
        """Sum the patches back, then halve each overlap strip as upstream does (corners where four patches meet
        are halved twice)."""
        h, w = x.shape[-2:]
        out = torch.zeros_like(x)
        idx = 0
        for t in tops:
            for s in lefts:
                out[:, :, t:t + ps, s:s + ps] += crops[:, idx]
                idx += 1
        for i in range(step, h + step - ps, step):
            top = h - ps if i + ps > h else i
            out[:, :, top:i + ps - step, :] /= 2
        for j in range(step, w + step - ps, step):
            left = w - ps if j + ps > w else j
            out[:, :, :, left:j + ps - step] /= 2
        return out


def _per_block(value: Sequence[int] | None, default: Sequence[int], n: int) -> list[int]:
    if value is None:
        return [default[i % len(default)] for i in range(n)]
    if len(value) < n:
        raise ValueError(f"{len(value)} per-block values for {n} blocks")
    return [int(v) for v in value]


class catanet(nn.Module):  # noqa: N801 (upstream name)
    """conv -> block_num x (TAB, LRSA, 3x3 conv, + skip), + features -> pixel-shuffle head -> conv, + bilinear."""

    def __init__(self, *, in_chans: int = 3, dim: int = 40, block_num: int = 8, qk_dim: int = 36, mlp_dim: int = 96,
                 heads: int = 4, patch_size: Sequence[int] | None = None, n_iters: Sequence[int] | None = None,
                 num_tokens: Sequence[int] | None = None, group_size: Sequence[int] | None = None,
                 upscale: int = 4) -> None:
        super().__init__()
        if upscale not in (1, 2, 3, 4):
            raise ValueError(f"catanet supports upscale 1, 2, 3 or 4, got {upscale}")
        if qk_dim % heads or dim % heads:
            raise ValueError(f"qk_dim ({qk_dim}) and dim ({dim}) must be multiples of heads ({heads})")
        self.dim = dim
        self.block_num = block_num
        self.patch_size = _per_block(patch_size, _PATCH, block_num)
        self.n_iters = _per_block(n_iters, (5,), block_num)
        self.num_tokens = _per_block(num_tokens, _TOKENS, block_num)
        self.group_size = _per_block(group_size, _GROUP, block_num)
        self.qk_dim = qk_dim
        self.mlp_dim = mlp_dim
        self.upscale = upscale
        self.heads = heads
        self.first_conv = nn.Conv2d(in_chans, dim, 3, 1, 1)
        self.blocks = nn.ModuleList()
        self.mid_convs = nn.ModuleList()
        for i in range(block_num):
            self.blocks.append(nn.ModuleList([
                TAB(dim, qk_dim, mlp_dim, heads, self.n_iters[i], self.num_tokens[i], self.group_size[i]),
                LRSA(dim, qk_dim, mlp_dim, heads),
            ]))
            self.mid_convs.append(nn.Conv2d(dim, dim, 3, 1, 1))
        if upscale == 4:
            self.upconv1 = nn.Conv2d(dim, dim * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(dim, dim * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        elif upscale in (2, 3):
            self.upconv = nn.Conv2d(dim, dim * upscale**2, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        self.last_conv = nn.Conv2d(dim, in_chans, 3, 1, 1)
        if upscale != 1:
            self.lrelu = nn.LeakyReLU(0.1, inplace=True)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.block_num):
            global_attn, local_attn = self.blocks[i]  # type: ignore[misc]
            y = local_attn(global_attn(x), self.patch_size[i])
            x = x + self.mid_convs[i](y)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.upscale
        base = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        feat = self.first_conv(x)
        feat = self.forward_features(feat) + feat
        if s == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv1(feat)))
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        elif s == 1:
            out = feat
        else:
            out = self.lrelu(self.pixel_shuffle(self.upconv(feat)))
        return self.last_conv(out) + base


CATANet = catanet


# ---------------------------------------------------------------------------------------------------------------------
# descriptor, detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    n = int(kw["block_num"])
    patches = _per_block(kw["patch_size"], _PATCH, n)
    return ArchSpec(
        id="catanet",
        family="catanet",
        upstream_class="catanet",
        tasks=("upscale",) if int(kw["upscale"]) > 1 else ("restore",),
        scale=int(kw["upscale"]),
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=max(patches),  # LRSA's patches must fit
        fp16=True,  # LayerNorm and SDPA accumulate in float32; not yet measured
        bf16=True,
        channels_last=False,
        # TAB groups tokens from anywhere in the image by their nearest centre and attends within those groups:
        # a tile groups differently than the whole frame. Two of the largest patches as margin.
        tiling="global",
        context=2 * max(patches),
        code_license="unspecified (no licence in the neosr port; seed repository GPL-3.0)",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    first = sd.get("first_conv.weight")
    if first is None or first.ndim != 4 or "blocks.0.0.iasa_attn.to_q.weight" not in sd:
        return None
    dim, in_chans = int(first.shape[0]), int(first.shape[1])
    n = list_length(sd, "blocks")
    qk_dim = int(sd["blocks.0.0.iasa_attn.to_q.weight"].shape[0])
    mlp_dim = int(sd["blocks.0.0.mlp.fn.fc1.weight"].shape[0])
    tokens = [int(sd[f"blocks.{i}.0.means"].shape[0]) for i in range(n) if f"blocks.{i}.0.means" in sd]
    if len(tokens) != n:
        return None
    if "upconv1.weight" in sd:
        scale = 4
    elif "upconv.weight" in sd:
        scale = {4 * dim: 2, 9 * dim: 3}.get(int(sd["upconv.weight"].shape[0]), 0)
    else:
        scale = 1
    # heads, patch sizes, group sizes and k-means iterations are not stored: upstream's defaults (per-block lists
    # cycled to the block count); heads 4 where it divides the widths, else the largest divisor that does.
    heads = next(hd for hd in (4, 2, 1) if qk_dim % hd == 0 and dim % hd == 0)
    kw: dict[str, Any] = {"in_chans": in_chans, "dim": dim, "block_num": n, "qk_dim": qk_dim, "mlp_dim": mlp_dim,
                          "heads": heads, "num_tokens": tokens, "upscale": scale}
    if tokens == _per_block(None, _TOKENS, n):
        kw["num_tokens"] = None if n == 8 else tokens
    return kw if scale and same_keys_and_shapes(lambda: catanet(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="catanet", family="catanet", cls=catanet, describe=_describe, detect=_detect, aliases=("CATANet",)),
)
