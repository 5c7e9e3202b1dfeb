"""MoCE-IR: Mixture of Complexity Experts for all-in-one image restoration (Zamfir et al., CVPR 2025).

Semantics follow eduardzamfir/MoCE-IR@a1a6e74 `src/net/moce_ir.py` (Apache-2.0), as vendored in the seed
korvin2000/arch_research `MoCE-IR/moce_ir.py`. Keyword names, defaults and state-dict keys match upstream's `MoCEIR`
so its Lightning checkpoints load strictly once the `net.` prefix is stripped.

A Restormer-style U-Net: MDTA/GDFN encoder blocks; each decoder block splits its normalised input into a shared
MDTA branch and an adapter branch, a mixture of low-rank experts whose output queries a cross attention over the
shared branch. Every adapter routes each image to its top-k experts from the block's pooled features plus a
frequency embedding of the latent (a high-pass conv, pooled, MLP). Experts differ in rank and in the patch size of
their Fourier-domain attention (circular correlation of q and k inside 4, 8, 16, ... pixel patches).

Differences from upstream, none of which changes a batch-of-one eval result:
* Only the selected experts run, each on just the images routed to it. Upstream's eval branch indexes experts with
  `top_k_indices.squeeze(0)`, i.e. assumes a batch of one; here every image gets its own experts.
* Upstream adds Gaussian noise (std 1/num_experts) to the gate logits even in eval, so its expert choice is random
  at test time. We add it only in training; eval routes on the clean scores (the golden's convention), which makes
  inference deterministic. Scores are computed in float32 so half precision does not flip close choices.
* `ModExpert` loops `depth` times over its ORIGINAL input upstream, so depth never changes the result; we apply the
  expert once. `depth_type`/`stage_depth` are validated and kept for compatibility.
* `expert_layer` takes the layer's name; "FFTAttention" (upstream's default class) is the only one.
* `forward(x)` returns the image; upstream's unused `labels` argument is dropped. The load-balancing loss of
  training is `model.total_loss` (as upstream) after a training-mode forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import list_length, same_keys_and_shapes
from .layers.norm import RestormerLayerNorm
from .layers.padding import pad_to_multiple
from .layers.restormer import (
    GLOBAL_CONTEXT_CAP,
    Attention,
    Downsample,
    FeedForward,
    OverlapPatchEmbed,
    Upsample,
    channel_attention,
    ffn_factor,
    unet_radius,
)
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "AdapterLayer", "FFTAttention", "MoCEIR", "ModExpert", "RoutingFunction"]

_DEPTH_TYPES = ("lin", "double", "exp", "fact", "constant")
_RANK_TYPES = ("constant", "lin", "double", "exp", "fact", "spread")
_EXPERT_LAYERS = ("FFTAttention",)


class CrossAttention(nn.Module):
    """MDTA with q from `x` (1x1 + dw 3x3) and k, v from `y` (1x1 + dw 7x7)."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 7, padding=3, groups=dim * 2, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q = self.q_dwconv(self.q(x))
        k, v = self.kv_dwconv(self.kv(y)).chunk(2, dim=1)
        return self.project_out(channel_attention(q, k, v, self.temperature, self.num_heads))


class FFTAttention(nn.Module):
    """Fourier-domain attention: q and k are split into non-overlapping `patch_size` patches (zero-padded at the
    bottom/right edge, grid anchored at the top-left), multiplied in the 2-D spectrum of each patch (a circular
    correlation within the patch), normalised, gated by v, projected. The FFTs run in float32 (as upstream casts)."""

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 7, padding=3, groups=dim * 2)
        self.norm = RestormerLayerNorm(dim, "WithBias")
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch_size
        q = pad_to_multiple(self.q_dwconv(self.q(x)), p, mode="zeros")
        k, v = self.kv_dwconv(self.kv(x)).chunk(2, dim=1)
        kp = pad_to_multiple(k, p, mode="zeros")
        hp, wp = q.shape[-2:]
        # (b, c, rows, p, cols, p): transform over the two in-patch axes, no permute needed
        dims = (3, 5)
        qf = torch.fft.rfft2(q.float().reshape(b, c, hp // p, p, wp // p, p), dim=dims)
        kf = torch.fft.rfft2(kp.float().reshape(b, c, hp // p, p, wp // p, p), dim=dims)
        out = torch.fft.irfft2(qf * kf, s=(p, p), dim=dims).reshape(b, c, hp, wp)[..., :h, :w]
        out = self.norm(out.to(x.dtype))
        return self.proj_out(out * v)


class ModExpert(nn.Module):
    """Low-rank expert: project to `rank`, expert layer gated by SiLU of the projected shared branch, project back,
    residual. `depth` is kept for the record only (see the module notes)."""

    def __init__(self, dim: int, rank: int, depth: int, patch_size: int) -> None:
        super().__init__()
        self.depth = depth
        self.proj = nn.ModuleList([
            nn.Conv2d(dim, rank, 1, bias=False),
            nn.Conv2d(dim, rank, 1, bias=False),
            nn.Conv2d(rank, dim, 1, bias=False),
        ])
        self.body = FFTAttention(rank, patch_size=patch_size)

    def forward(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        y = self.body(self.proj[0](x)) * F.silu(self.proj[1](shared))
        return self.proj[2](y) + x


def _expert_depths(depth_type: str | int, stage_depth: int, n: int) -> list[int]:
    if isinstance(depth_type, int) and not isinstance(depth_type, bool):
        depths = [depth_type] * n
    elif depth_type == "lin":
        depths = [stage_depth + i for i in range(n)]
    elif depth_type == "double":
        depths = [stage_depth + 2 * i for i in range(n)]
    elif depth_type == "exp":
        depths = [2**i for i in range(n)]
    elif depth_type == "fact":
        depths = [math.factorial(i + 1) for i in range(n)]
    elif depth_type == "constant":
        depths = [stage_depth] * n
    else:
        raise ValueError(f"depth_type must be an int or one of {_DEPTH_TYPES}, got {depth_type!r}")
    if min(depths) < 1:
        raise ValueError(f"expert depths must be >= 1 (upstream fails on 0), got {depths}")
    return depths


def expert_ranks(rank_type: str, rank: int, dim: int, n: int) -> list[int]:
    """Each expert's rank; "spread" ignores `rank`: dim/2**(n-1), ..., dim/2, dim."""
    if rank_type == "constant":
        return [rank] * n
    if rank_type == "lin":
        return [rank + i for i in range(n)]
    if rank_type == "double":
        return [rank + 2 * i for i in range(n)]
    if rank_type == "exp":
        return [rank ** (i + 1) for i in range(n)]
    if rank_type == "fact":
        return [math.factorial(rank + i) for i in range(n)]
    if rank_type == "spread":
        return [dim // 2**i for i in range(n)][::-1]
    raise ValueError(f"rank_type must be one of {_RANK_TYPES}, got {rank_type!r}")


class RoutingFunction(nn.Module):
    """Gate logits = Linear(GAP(x)) + Linear(frequency embedding); softmax scores; top-k.

    `complexity` (a buffer, in the state dict) holds the experts' parameter counts scaled by their max or min;
    upstream uses it only to weight the training loss.
    """

    def __init__(
        self,
        dim: int,
        freq_dim: int,
        num_experts: int,
        k: int,
        complexity: torch.Tensor,
        use_complexity_bias: bool = True,
        complexity_scale: str = "max",
    ) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(dim, num_experts, bias=False))
        self.freq_gate = nn.Linear(freq_dim, num_experts, bias=False)
        if complexity_scale == "min":
            complexity = complexity / complexity.min()
        elif complexity_scale == "max":
            complexity = complexity / complexity.max()
        self.register_buffer("complexity", complexity)
        self.k = k
        self.num_experts = num_experts
        self.noise_std = 1.0 / num_experts
        self.use_complexity_bias = use_complexity_bias

    def logits(self, x: torch.Tensor, freq_emb: torch.Tensor) -> torch.Tensor:
        # float32 whatever the model precision: the choice of expert is discrete and margins can be small
        lin: nn.Linear = self.gate[2]  # type: ignore[assignment]
        pooled = x.float().mean(dim=(-2, -1))
        return F.linear(pooled, lin.weight.float()) + F.linear(freq_emb.float(), self.freq_gate.weight.float())

    def forward(
        self, x: torch.Tensor, freq_emb: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-k scores, top-k expert indices, auxiliary loss); both (B, k)."""
        logits = self.logits(x, freq_emb)
        if not self.training:
            scores = logits.softmax(dim=-1)
            values, indices = scores.topk(k, dim=-1)
            return values, indices, logits.new_zeros(())
        noisy = logits + torch.randn_like(logits) * self.noise_std
        values, indices = noisy.softmax(dim=-1).topk(k, dim=-1)
        aux = 0.5 * self._importance_loss(logits.softmax(dim=-1)) + 0.5 * self._load_loss(logits, noisy, k)
        return values, indices, aux

    def _importance_loss(self, scores: torch.Tensor) -> torch.Tensor:
        importance = scores.sum(dim=0)
        if self.use_complexity_bias:
            complexity: torch.Tensor = self.complexity  # type: ignore[assignment]
            importance = importance * complexity
        return (importance.std() / (importance.mean() + 1e-8)) ** 2

    def _load_loss(self, logits: torch.Tensor, noisy: torch.Tensor, k: int) -> torch.Tensor:
        # probability that each expert stays in the top k under fresh noise, averaged over the batch
        threshold = noisy.gather(1, noisy.topk(k, dim=-1).indices[:, -1:])
        p = 1.0 - torch.special.ndtr((threshold - logits) / self.noise_std)
        load = p.mean(dim=0)
        return (load.std() / (load.mean() + 1e-8)) ** 2


class AdapterLayer(nn.Module):
    """Mixture of low-rank experts: expert i has rank ranks[i] and FFT patch 2**(i+2); routed top-k per image.

    Only the chosen experts run, on the images that chose them; their outputs are summed weighted by their
    (un-renormalised) softmax scores, then projected. `last_experts` holds the (B, k) choice of the last forward.
    """

    def __init__(
        self,
        dim: int,
        rank: int,
        num_experts: int = 4,
        top_k: int = 2,
        expert_layer: str = "FFTAttention",
        stage_depth: int = 1,
        depth_type: str | int = "lin",
        rank_type: str = "constant",
        freq_dim: int = 128,
        with_complexity: bool = False,
        complexity_scale: str = "min",
    ) -> None:
        super().__init__()
        if expert_layer not in _EXPERT_LAYERS:
            raise ValueError(f"expert_layer must be one of {_EXPERT_LAYERS}, got {expert_layer!r}")
        self.top_k = top_k
        self.num_experts = num_experts
        depths = _expert_depths(depth_type, stage_depth, num_experts)
        ranks = expert_ranks(rank_type, rank, dim, num_experts)
        if min(ranks) < 1:
            raise ValueError(f"expert ranks must be >= 1, got {ranks}")
        # nn.Sequential wrapper: upstream wraps each expert in a one-element MySequential (keys experts.<i>.0.*)
        self.experts = nn.ModuleList([
            nn.Sequential(ModExpert(dim, rank=r, depth=d, patch_size=2 ** (i + 2)))
            for i, (d, r) in enumerate(zip(depths, ranks, strict=True))
        ])
        self.proj_out = nn.Conv2d(dim, dim, 1, bias=False)
        complexity = torch.tensor([sum(p.numel() for p in e.parameters()) for e in self.experts])
        self.routing = RoutingFunction(dim, freq_dim, num_experts=num_experts, k=top_k, complexity=complexity,
                                       use_complexity_bias=with_complexity, complexity_scale=complexity_scale)
        self.loss: torch.Tensor | None = None
        self.last_experts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, freq_emb: torch.Tensor, shared: torch.Tensor, k: int) -> torch.Tensor:
        values, indices, self.loss = self.routing(x, freq_emb, k)
        self.last_experts = indices
        out: torch.Tensor | None = None
        for e in torch.unique(indices).tolist():
            rows, slots = (indices == e).nonzero(as_tuple=True)
            expert: ModExpert = self.experts[e][0]  # type: ignore[index,assignment]
            if rows.numel() == x.shape[0]:  # every image chose it: no gather/scatter copies
                y = expert(x, shared)
                y = y * values[rows, slots].to(y.dtype).view(-1, 1, 1, 1)
                out = y if out is None else out + y
                continue
            y = expert(x[rows], shared[rows]) * values[rows, slots].to(x.dtype).view(-1, 1, 1, 1)
            out = (torch.zeros_like(x) if out is None else out).index_add(0, rows, y)
        assert out is not None
        return self.proj_out(out)


class EncoderBlock(nn.Module):
    """Restormer block with upstream MoCE-IR's key names: norms.0/1, mixer (MDTA), ffn (GDFN)."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, LayerNorm_type: str):
        super().__init__()
        self.norms = nn.ModuleList([RestormerLayerNorm(dim, LayerNorm_type), RestormerLayerNorm(dim, LayerNorm_type)])
        self.mixer = Attention(dim, num_heads, bias)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norms[0](x))
        return x + self.ffn(self.norms[1](x))


class DecoderBlock(nn.Module):
    """LN, then 1x1 into a shared MDTA branch and an adapter branch; cross attention (q: adapter, kv: shared)
    + residual; GDFN + residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        LayerNorm_type: str,
        *,
        rank: int,
        num_experts: int,
        top_k: int,
        expert_layer: str,
        stage_depth: int,
        depth_type: str | int,
        rank_type: str,
        freq_dim: int,
        with_complexity: bool,
        complexity_scale: str,
    ) -> None:
        super().__init__()
        self.norms = nn.ModuleList([RestormerLayerNorm(dim, LayerNorm_type), RestormerLayerNorm(dim, LayerNorm_type)])
        self.proj = nn.ModuleList([nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)])
        self.shared = Attention(dim, num_heads, bias)
        self.mixer = CrossAttention(dim, num_heads, bias)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)
        self.adapter = AdapterLayer(
            dim, rank, top_k=top_k, num_experts=num_experts, expert_layer=expert_layer, freq_dim=freq_dim,
            depth_type=depth_type, rank_type=rank_type, stage_depth=stage_depth, with_complexity=with_complexity,
            complexity_scale=complexity_scale,
        )

    def forward(self, x: torch.Tensor, freq_emb: torch.Tensor, k: int) -> torch.Tensor:
        y = self.norms[0](x)
        shared = self.shared(self.proj[0](y))
        adapted = self.adapter(self.proj[1](y), freq_emb, shared, k)
        x = x + self.mixer(adapted, shared)
        return x + self.ffn(self.norms[1](x))


class EncoderResidualGroup(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_blocks: int, ffn_expansion: float, LayerNorm_type: str,
                 bias: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [EncoderBlock(dim, num_heads, ffn_expansion, bias, LayerNorm_type) for _ in range(num_blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class DecoderResidualGroup(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_blocks: int, ffn_expansion: float, LayerNorm_type: str,
                 bias: bool, **adapter: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [DecoderBlock(dim, num_heads, ffn_expansion, bias, LayerNorm_type, **adapter) for _ in range(num_blocks)]
        )

    def forward(self, x: torch.Tensor, freq_emb: torch.Tensor, k: int) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, freq_emb, k)
        return x


class HighPassConv2d(nn.Module):
    """Depthwise 3x3 initialised to the 8-neighbour Laplacian. Upstream means to freeze it but assigns
    `requires_grad_ = False` as an attribute, so it stays a trainable parameter; we keep that behaviour."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        kernel = torch.full((3, 3), -1.0)
        kernel[1, 1] = 8.0
        with torch.no_grad():
            self.conv.weight.copy_(kernel.expand(c, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FrequencyEmbedding(nn.Module):
    """High-pass conv, GELU, spatial mean, MLP: one vector per image that every router sees."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.high_conv = nn.Sequential(HighPassConv2d(dim), nn.GELU())
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.high_conv(x).mean(dim=(-2, -1)))


class MoCEIR(nn.Module):
    """MoCE-IR U-Net with `levels` levels (levels - 1 downsamplings).

    Runtime options and report:
    * `model.topk`: experts per image in every adapter (1 in the official configs); may be changed after
      construction, 1 <= topk <= num_experts.
    * `model.last_info = {"experts": [[[e, ...] per decoder block] per image], "blocks": [block names]}` after each
      forward: the experts each image was routed to, in the order of `blocks` (e.g. "dec.0.2.layers.0").

    Eval routing is deterministic (no gate noise at inference; see the module notes).
    """

    def __init__(
        self,
        *,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 32,
        levels: int = 4,
        heads: Sequence[int] = (1, 1, 1, 1),
        num_blocks: Sequence[int] = (1, 1, 1, 3),
        num_dec_blocks: Sequence[int] = (1, 1, 1),
        ffn_expansion_factor: float = 2,
        num_refinement_blocks: int = 1,
        LayerNorm_type: str = "WithBias",
        bias: bool = False,
        rank: int = 2,
        num_experts: int = 4,
        depth_type: str | int = "lin",
        stage_depth: Sequence[int] = (3, 2, 1),
        rank_type: str = "constant",
        topk: int = 1,
        expert_layer: str = "FFTAttention",
        with_complexity: bool = False,
        complexity_scale: str = "max",
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        if len(heads) < levels or len(num_blocks) < levels or len(num_dec_blocks) < levels - 1 \
                or len(stage_depth) < levels - 1:
            raise ValueError("heads and num_blocks need `levels` entries, num_dec_blocks and stage_depth levels - 1")
        if not 1 <= topk <= num_experts:
            raise ValueError(f"topk must be in 1..num_experts={num_experts}, got {topk}")
        self.levels = levels
        self.topk = topk
        self.num_experts = num_experts
        self.total_loss: torch.Tensor | None = None
        self.last_info: dict[str, Any] = {}
        # Indexing as upstream: the latent takes the LAST entry of heads/num_blocks, the decoder walks the reversed
        # lists from the second entry (heads) or the first (num_dec_blocks), the refinement takes heads[0].
        dims = [dim * 2**i for i in range(levels)]
        heads = list(heads)
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim, bias=False)
        self.freq_embed = FrequencyEmbedding(dims[-1])
        # upstream builds every encoder group with bias=True whatever `bias` says
        self.enc = nn.ModuleList([
            nn.ModuleList([
                EncoderResidualGroup(dims[i], heads[i], num_blocks[i], ffn_expansion_factor, LayerNorm_type, True),
                Downsample(dims[i]),
            ])
            for i in range(levels - 1)
        ])
        self.latent = EncoderResidualGroup(dims[-1], heads[-1], num_blocks[-1], ffn_expansion_factor,
                                           LayerNorm_type, True)
        rdims, rheads, rdec = dims[::-1], heads[::-1], list(num_dec_blocks)[::-1]
        self.dec = nn.ModuleList([
            nn.ModuleList([
                Upsample(rdims[i]),
                nn.Conv2d(rdims[i], rdims[i + 1], 1, bias=bias),
                DecoderResidualGroup(
                    rdims[i + 1], rheads[i + 1], rdec[i], ffn_expansion_factor, LayerNorm_type, bias,
                    rank=rank, num_experts=num_experts, top_k=topk, expert_layer=expert_layer,
                    stage_depth=stage_depth[i], depth_type=depth_type, rank_type=rank_type, freq_dim=dims[-1],
                    with_complexity=with_complexity, complexity_scale=complexity_scale,
                ),
            ])
            for i in range(levels - 1)
        ])
        self.refinement = EncoderResidualGroup(dim, heads[0], num_refinement_blocks, ffn_expansion_factor,
                                               LayerNorm_type, True)
        self.output = nn.Conv2d(dim, out_channels, 3, padding=1, bias=bias)
        self._adapters = [(name.removesuffix(".adapter"), m) for name, m in self.named_modules()
                          if isinstance(m, AdapterLayer)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(self.topk)
        if not 1 <= k <= self.num_experts:
            raise ValueError(f"topk must be in 1..{self.num_experts}, got {k}")
        h, w = x.shape[-2:]
        inp = pad_to_multiple(x, 2 ** (self.levels - 1), mode="reflect_or_replicate")
        feats = self.patch_embed(inp)
        skips = []
        for group, down in self.enc:  # type: ignore[misc]
            feats = group(feats)
            skips.append(feats)
            feats = down(feats)
        feats = self.latent(feats)
        freq_emb = self.freq_embed(feats)
        for up, fusion, group in self.dec:  # type: ignore[misc]
            feats = fusion(torch.cat([up(feats), skips.pop()], dim=1))
            feats = group(feats, freq_emb, k)
        out = self.output(self.refinement(feats)) + inp
        self._record()
        return out[..., :h, :w]

    def _record(self) -> None:
        choices = [m.last_experts for _, m in self._adapters]
        losses = [m.loss for _, m in self._adapters if m.loss is not None] if self.training else []
        # mean over decoder blocks, as upstream; None after an eval forward (upstream: 0)
        self.total_loss = torch.stack(losses).sum() / len(losses) if losses else None
        if not choices or any(c is None for c in choices):
            return
        per_block = [c.tolist() for c in choices if c is not None]  # [block][image][k]
        self.last_info = {
            "experts": [[blk[i] for blk in per_block] for i in range(len(per_block[0]))],
            "blocks": [name for name, _ in self._adapters],
        }


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _context(kw: dict[str, Any]) -> int:
    """Local receptive-field radius (see `unet_radius`), in each level's pixels:
    encoder block: dw 3x3 (qkv) + dw 3x3 (GDFN) = 2;
    decoder block: the adapter path is the longest: expert q dw 3x3 / kv dw 7x7 (3), then the in-patch circular
    correlation, which reaches up to patch-1 = 2**(E+1)-1 pixels for the largest expert, then the cross
    attention's q dw 3x3 (1) and the GDFN (1): 2**(E+1) + 4.
    The FFT patches make this large (1189 px for MoCE_IR_S); with the channel attention already global, the
    margin only hides seams, so it is capped at GLOBAL_CONTEXT_CAP.
    """
    levels, e = int(kw["levels"]), int(kw["num_experts"])
    nb, rdec, nr = list(kw["num_blocks"]), list(kw["num_dec_blocks"])[::-1], int(kw["num_refinement_blocks"])
    dec_block = 2 ** (e + 1) + 4
    radius = [2 * nb[level] for level in range(levels - 1)] + [2 * nb[-1]]
    radius[0] += 2 * nr
    for i in range(levels - 1):  # decoder group i runs at level levels - 2 - i
        radius[levels - 2 - i] += dec_block * rdec[i]
    return min(unet_radius(radius, resamples=levels - 1), GLOBAL_CONTEXT_CAP)


def _describe(kw: dict[str, Any]) -> ArchSpec:
    multiple = 2 ** (int(kw["levels"]) - 1)
    return ArchSpec(
        id="moceir",
        family="MoCEIR",
        upstream_class="MoCEIR",
        tasks=("restore",),
        scale=1,
        in_channels=int(kw["inp_channels"]),
        out_channels=int(kw["out_channels"]),
        min_size=multiple,
        multiple_of=multiple,
        # FFTs run in float32 inside (cuFFT half needs power-of-two sizes and loses range); norm statistics,
        # attention matrices and routing scores are float32 too.
        fp16=True,
        bf16=True,
        channels_last=False,
        # MDTA channel attention and the routers' global pooling see the whole image: expert choice and attention
        # statistics change with the tile.
        tiling="global",
        context=_context(kw),
        code_license="Apache-2.0",
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _heads(sd: StateDict, prefix: str) -> int | None:
    for key in (f"{prefix}.layers.0.mixer.temperature", f"{prefix}.layers.0.shared.temperature"):
        t = sd.get(key)
        if t is not None:
            return int(t.shape[0])
    return None


def _rank_type(ranks: list[int], dim: int) -> tuple[str, int] | None:
    """(rank_type, rank) reproducing the expert ranks of a block of width `dim`; "spread" takes upstream's rank=2."""
    n = len(ranks)
    candidates = [("spread", 2)] + [(kind, ranks[0]) for kind in ("constant", "lin", "double")]
    candidates += [(kind, r) for kind in ("exp", "fact") for r in range(1, 9)]
    return next(((kind, r) for kind, r in candidates if expert_ranks(kind, r, dim, n) == ranks), None)


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Depths, widths, heads, experts and ranks from shapes. Not stored, so set to the official values: topk 1,
    with_complexity False (training-only), complexity_scale "max" (scales a buffer's values, not its shape),
    depth_type "constant" with stage_depth 1 (expert depth never changes the result, see the module notes)."""
    embed, out = sd.get("patch_embed.proj.weight"), sd.get("output.weight")
    if embed is None or out is None or "freq_embed.high_conv.0.conv.weight" not in sd:
        return None
    dim = int(embed.shape[0])
    levels = list_length(sd, "enc") + 1
    if levels < 2 or list_length(sd, "dec") != levels - 1:
        return None
    num_blocks = [list_length(sd, f"enc.{i}.0.layers") for i in range(levels - 1)] + [list_length(sd, "latent.layers")]
    dec_counts = [list_length(sd, f"dec.{i}.2.layers") for i in range(levels - 1)]
    heads: list[int] = []
    for i in range(levels):
        found = _heads(sd, f"enc.{i}.0") if i < levels - 1 else _heads(sd, "latent")
        if found is None and i < levels - 1:
            found = _heads(sd, f"dec.{levels - 2 - i}.2")
        if found is None and i == 0:
            found = _heads(sd, "refinement")
        heads.append(found if found is not None else 1)
    first = "dec.0.2.layers.0"
    num_experts = list_length(sd, f"{first}.adapter.experts")
    if num_experts < 1:
        return None
    width = dim * 2 ** (levels - 2)
    ranks = [int(sd[f"{first}.adapter.experts.{e}.0.proj.0.weight"].shape[0]) for e in range(num_experts)]
    rt = _rank_type(ranks, width)
    if rt is None:
        return None
    pairs = []
    for key, w in (("enc.0.0.layers.0", dim), ("latent.layers.0", dim * 2 ** (levels - 1)), (first, width)):
        t = sd.get(f"{key}.ffn.project_out.weight")
        if t is not None:
            pairs.append((w, int(t.shape[1])))
    factor = ffn_factor(pairs) if pairs else 2.0
    if factor is None:
        return None
    kwargs: dict[str, Any] = {
        "inp_channels": int(embed.shape[1]),
        "out_channels": int(out.shape[0]),
        "dim": dim,
        "levels": levels,
        "heads": heads,
        "num_blocks": num_blocks,
        "num_dec_blocks": dec_counts[::-1],
        "ffn_expansion_factor": factor,
        "num_refinement_blocks": list_length(sd, "refinement.layers"),
        "LayerNorm_type": "WithBias" if f"{first}.norms.0.body.bias" in sd else "BiasFree",
        "bias": "output.bias" in sd,
        "rank": rt[1],
        "num_experts": num_experts,
        "depth_type": "constant",
        "stage_depth": [1] * (levels - 1),
        "rank_type": rt[0],
        "topk": 1,
        "with_complexity": False,
        "complexity_scale": "max",
    }
    return kwargs if same_keys_and_shapes(lambda: MoCEIR(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="moceir", family="MoCEIR", cls=MoCEIR, describe=_describe, detect=_detect, aliases=("MoCE-IR",)),
)
