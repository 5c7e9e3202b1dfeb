"""Restormer building blocks and its 4-level U-Net skeleton, shared by Restormer, PromptIR, DFPIR, MoCE-IR, DSwinIR,
Restore-RWKV, CAMixerSR's GDFN and AdaRevD's fusion norms.

Semantics follow swz30/Restormer (Academic Public License) as vendored in PromptIR, DFPIR and MoCE-IR: MDTA
(channel "transposed" attention), GDFN (gated depthwise feed-forward), the 3x3 patch embedding, the
pixel-(un)shuffle resamplers and the U-Net that wires them. Its channel LayerNorm is `norm.RestormerLayerNorm`.
Parameter names match upstream (`qkv_dwconv`, `project_in`, `encoder_level1`, ...) so checkpoints load strictly.
Written without einops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .norm import RestormerLayerNorm


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
        self.norm1 = RestormerLayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = RestormerLayerNorm(dim, LayerNorm_type)
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


# (blocks, level, width) -> the stage of `blocks` blocks at U-Net level `level` (0 = full size) and `width` channels
StageFactory = Callable[[int, int, int], nn.Module]
Hook = Callable[[int, torch.Tensor], torch.Tensor]

class RestormerUNet(nn.Module):
    """Restormer's 4-level U-Net skeleton, which PromptIR, DFPIR, DSwinIR and Restore-RWKV reuse with other blocks.

    Levels 1-3 (dim, 2 dim, 4 dim channels) each have an encoder and a decoder stage; the latent runs at 8 dim at
    1/8 size. Skips are concatenated and reduced by 1x1 convs at levels 3 and 2; level 1 decodes and refines at
    2 dim (no reduction after `up2_1`). Subclasses call `_build_unet` in `__init__` (then register their heads,
    e.g. `output`) and `_run_unet` in `forward`; inputs must be multiples of `UNET_MULTIPLE`.
    """

    UNET_MULTIPLE = 8  # three 2x pixel-unshuffle downsamplings

    def _build_unet(
        self,
        *,
        inp_channels: int,
        dim: int,
        num_blocks: Sequence[int],
        num_refinement_blocks: int,
        stage: StageFactory,
        bias: bool,
        replace: Mapping[str, Callable[[], nn.Module]] | None = None,
        after: Mapping[str, Mapping[str, Callable[[], nn.Module]]] | None = None,
    ) -> None:
        """Register the skeleton. `replace[name]` builds a family's own module in place of the skeleton's one
        (`patch_embed`: a 3x3 OverlapPatchEmbed by default); `after[name]` builds and registers further modules
        right after `name`, so the state dict keeps upstream's key order."""
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs 4 entries (three levels and the latent), got {list(num_blocks)}")
        nb = [int(n) for n in num_blocks]
        plan: list[tuple[str, Callable[[], nn.Module]]] = [
            ("patch_embed", lambda: OverlapPatchEmbed(inp_channels, dim)),
            ("encoder_level1", lambda: stage(nb[0], 0, dim)),
            ("down1_2", lambda: Downsample(dim)),
            ("encoder_level2", lambda: stage(nb[1], 1, dim * 2)),
            ("down2_3", lambda: Downsample(dim * 2)),
            ("encoder_level3", lambda: stage(nb[2], 2, dim * 4)),
            ("down3_4", lambda: Downsample(dim * 4)),
            ("latent", lambda: stage(nb[3], 3, dim * 8)),
            ("up4_3", lambda: Upsample(dim * 8)),
            ("reduce_chan_level3", lambda: nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)),
            ("decoder_level3", lambda: stage(nb[2], 2, dim * 4)),
            ("up3_2", lambda: Upsample(dim * 4)),
            ("reduce_chan_level2", lambda: nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)),
            ("decoder_level2", lambda: stage(nb[1], 1, dim * 2)),
            ("up2_1", lambda: Upsample(dim * 2)),  # no channel reduction: level 1 decodes at 2 dim
            ("decoder_level1", lambda: stage(nb[0], 0, dim * 2)),
            ("refinement", lambda: stage(num_refinement_blocks, 0, dim * 2)),
        ]
        replace, after = replace or {}, after or {}
        unknown = (set(replace) | set(after)) - {name for name, _ in plan}
        if unknown:
            raise ValueError(f"not modules of the U-Net skeleton: {sorted(unknown)}")
        for name, make in plan:
            self.add_module(name, replace[name]() if name in replace else make())
            for extra, build in after.get(name, {}).items():
                self.add_module(extra, build())

    def _run_unet(
        self,
        emb: torch.Tensor,
        *,
        on_latent: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_skip: Hook | None = None,
        on_decoded: Hook | None = None,
    ) -> torch.Tensor:
        """Refined level-1 features (2 dim channels) of the embedded input. Hooks: `on_latent(latent)` after the
        latent stage; `on_skip(level, enc)` on the skip of level 3, 2, 1 before it is concatenated;
        `on_decoded(level, dec)` after the decoder stage of level 3 and 2."""
        enc1 = self.encoder_level1(emb)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))
        if on_latent is not None:
            latent = on_latent(latent)

        def skip(level: int, t: torch.Tensor) -> torch.Tensor:
            return t if on_skip is None else on_skip(level, t)

        def decoded(level: int, t: torch.Tensor) -> torch.Tensor:
            return t if on_decoded is None else on_decoded(level, t)

        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), skip(3, enc3)], 1)))
        dec3 = decoded(3, dec3)
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), skip(2, enc2)], 1)))
        dec2 = decoded(2, dec2)
        return self.refinement(self.decoder_level1(torch.cat([self.up2_1(dec2), skip(1, enc1)], 1)))


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
