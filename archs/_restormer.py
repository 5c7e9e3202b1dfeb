"""Restormer building blocks shared by Restormer, PromptIR, DFPIR and MoCE-IR (and later DSwinIR, Restore-RWKV).

Semantics follow swz30/Restormer (Academic Public License) as vendored in PromptIR, DFPIR and MoCE-IR: MDTA
(channel "transposed" attention), GDFN (gated depthwise feed-forward), the WithBias/BiasFree channel LayerNorm,
the 3x3 patch embedding and the pixel-(un)shuffle resamplers. Parameter names match upstream (`body.weight`,
`qkv_dwconv`, `project_in`, ...) so checkpoints load strictly. Written without einops.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_LOW_PRECISION = (torch.float16, torch.bfloat16)
LAYER_NORM_TYPES = ("WithBias", "BiasFree")


class WithBiasLayerNorm(nn.Module):
    """Holds the affine parameters of a mean-subtracting LayerNorm (upstream `WithBias_LayerNorm`)."""

    def __init__(self, normalized_shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))


class BiasFreeLayerNorm(nn.Module):
    """Upstream `BiasFree_LayerNorm`'s scale w: x / sqrt(var(x) + eps) * w, x itself is not centred."""

    def __init__(self, normalized_shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))


class LayerNorm(nn.Module):
    """Restormer's LayerNorm over the channels of an NCHW map (eps 1e-5, biased variance).

    Upstream moves channels last with einops and normalises the last axis; we normalise dim 1 directly, which is
    the same function. Statistics of half inputs are taken in float32 (eps 1e-5 is near float16's normal limit).
    """

    def __init__(self, dim: int, LayerNorm_type: str) -> None:
        super().__init__()
        if LayerNorm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"LayerNorm_type must be one of {LAYER_NORM_TYPES}, got {LayerNorm_type!r}")
        self.body: nn.Module = BiasFreeLayerNorm(dim) if LayerNorm_type == "BiasFree" else WithBiasLayerNorm(dim)
        self.eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight: torch.Tensor = self.body.weight
        bias: torch.Tensor | None = getattr(self.body, "bias", None)
        if bias is not None:
            # F.layer_norm over a channels-last view: fused, and it accumulates half inputs in float32 itself
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, self.eps)
            return y.permute(0, 3, 1, 2)
        dtype = x.dtype
        xf = x.float() if dtype in _LOW_PRECISION else x
        var = xf.var(dim=1, keepdim=True, unbiased=False)
        y = xf / torch.sqrt(var + self.eps) * weight.to(xf.dtype).view(1, -1, 1, 1)
        return y.to(dtype)


class FeedForward(nn.Module):
    """GDFN: 1x1 to 2 x hidden, depthwise 3x3, GELU(first half) * second half, 1x1 back."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


def channel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    temperature: torch.Tensor,
    num_heads: int,
    keep: int | None = None,
) -> torch.Tensor:
    """MDTA core: per head, a (C/h x C/h) attention between channels, each channel an L2-normalised H*W vector.

    Every output pixel depends on the whole map through the q.k products (a global statistic: tiles differ).
    `keep`: if set, only the `keep` largest logits of each row take part in the softmax (DFPIR's top-m mask).
    The small (C/h x C/h) attention matrix is computed in float32 whatever the input precision: the squared norms
    over H*W pixels overflow float16, and normalised entries ~1/sqrt(H*W) fall into its subnormal range.
    """
    b, _, h, w = q.shape
    dtype = q.dtype

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, num_heads, t.shape[1] // num_heads, h * w)

    qh = F.normalize(heads(q).float(), dim=-1)
    kh = F.normalize(heads(k).float(), dim=-1)
    attn = (qh @ kh.transpose(-2, -1)) * temperature.float()
    if keep is not None:
        idx = attn.topk(keep, dim=-1).indices
        mask = torch.zeros_like(attn, dtype=torch.bool).scatter_(-1, idx, True)
        attn = attn.masked_fill(~mask, float("-inf"))
    attn = attn.softmax(dim=-1).to(dtype)
    out = attn @ heads(v)
    return out.reshape(b, -1, h, w)


class Attention(nn.Module):
    """MDTA: 1x1 + depthwise 3x3 to q, k, v, channel attention with a learned per-head temperature, 1x1 out."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{dim} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        return self.project_out(channel_attention(q, k, v, self.temperature, self.num_heads))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, LayerNorm_type: str):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stage(
    n: int, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, LayerNorm_type: str
) -> nn.Sequential:
    return nn.Sequential(
        *[TransformerBlock(dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(n)]
    )


class OverlapPatchEmbed(nn.Module):
    """3x3 conv from image channels to the embedding width."""

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 conv to n/2 channels, then pixel-unshuffle: half the size, 2n channels."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv to 2n channels, then pixel-shuffle: double the size, n/2 channels."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple of `multiple`, reflecting like the upstream demos (replicate when too small)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


# Cap on the tile context of these global-attention U-Nets. Their local receptive field is large (the official
# Restormer's is 333 px, MoCE-IR's over 1000 px through its FFT patches), but MDTA couples every pixel with the whole
# tile anyway, so no margin makes tiles exact; past ~256 px a margin costs far more compute than it removes seams.
GLOBAL_CONTEXT_CAP = 256


def unet_radius(level_radius: Sequence[int], resamples: int, ends: int = 2) -> int:
    """Receptive-field radius, in input pixels, of the local (convolutional) part of a Restormer-style U-Net.

    `level_radius[l]`: summed radius of every conv a pixel passes through at level l (1/2**l of the input) on the
    way down and up, in that level's pixels; it counts 2**l input pixels each. Each of the `resamples` down/up
    pairs between level l and l+1 adds its 3x3 convs (2**l down, 2**(l+1) up) and the 2x2 pixel grouping of
    unshuffle and shuffle (2**l each). `ends`: the patch-embedding and output 3x3 convs at full size.
    Attention over channels adds whole-image coupling on top of this; it is not a bound for those models.
    """
    total = ends + sum(r * 2**level for level, r in enumerate(level_radius))
    total += sum(2**level + 2 ** (level + 1) + 2 * 2**level for level in range(resamples))
    return total


# ---------------------------------------------------------------------------------------------------------------------
# detector helpers

_NICE_FACTORS = (2.66, 2.0, 1.0, 3.0, 4.0, 1.5, 2.5)


def ffn_factor(pairs: Iterable[tuple[int, int]]) -> float | None:
    """An ffn_expansion_factor f with int(dim * f) == hidden for every (dim, hidden) pair, or None.

    Such f form an interval; we return a familiar value inside it when there is one (2.66 is Restormer's),
    else its lower end rounded up at the fewest decimals that stay inside.
    """
    pairs = list(pairs)
    if not pairs:
        return None
    lo, hi = 0.0, math.inf
    for dim, hidden in pairs:
        lo, hi = max(lo, hidden / dim), min(hi, (hidden + 1) / dim)
    if lo >= hi:
        return None

    def fits(f: float) -> bool:
        return all(int(d * f) == h for d, h in pairs)

    for f in _NICE_FACTORS:
        if fits(f):
            return f
    for digits in range(1, 10):
        f = math.ceil(lo * 10**digits) / 10**digits
        if fits(f):
            return f
    return None
