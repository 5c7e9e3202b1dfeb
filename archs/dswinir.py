"""DSwinIR (`MSDeformableNAIR`): a Restormer-style U-Net whose blocks use deformable multi-scale neighbourhood
attention (Wu et al., "Content-Aware Transformer for All-in-one Image Restoration", TPAMI 2025; Aitical/DSwinIR).

Semantics follow the seed korvin2000/arch_research `DSwinIR/MSDeformableNAIR.py` and `deformable_self_attention.py`
(identical to Aitical/DSwinIR@f1036e3 `basicsr/archs/`). Keyword names, defaults and state-dict keys match upstream.

Each block: x + MSDNA(LN(x)), then x + GDFN(LN(x)). MSDNA (`MSDeformableNeighborhoodAttention`), with one group per
head: q = 1x1(x); per group a small offset net on q (depthwise kxk, LayerNorm2d, GELU, 1x1 to 2) gives a tanh-bounded
offset; x is resampled bilinearly at the shifted points; k, v = 1x1 of the resampled map. The heads are split in
thirds: NATTEN neighbourhood attention with (kernel k, dilation d, rpb_h1), (k, 2, rpb_h2), (k + 2, d, rpb_h3)
(archs.ops.neighborhood_attn, NATTEN 0.17 semantics: border windows shift inwards). A depthwise 3x3 of q is added
("lepe") and a 1x1 projects out.

Deformable sampling: upstream samples with F.grid_sample(align_corners=True, zero padding) at reference points
linspace(0.5, H - 0.5, H) / (H - 1) * 2 - 1 plus tanh(offset) / (H - 1). In pixels that is i + 0.5 + tanh(o) / 2,
whatever H: a bilinear mix of pixel i and i + 1 with weight 0.5 + 0.5 tanh(o) on i + 1, and zero past the bottom and
right edges. We compute exactly that mix (same function, no normalised coordinates): it is exact in half precision,
where grid_sample's normalised grid cannot hold half-pixel positions, and translation-invariant, so tiles match.

Everything is local (LayerNorm over channels, convolutions, windowed attention): no whole-image statistic. So tiles
with a margin of the receptive-field radius reproduce a whole-image run: tiling "safe".

Upstream quirks kept: with global_residual=True the input is added twice (output(x) + x, then + x again).
Upstream constructor defaults (dim=32, heads=[2, 4, 8, 8]) build but cannot run (the heads are split into three
groups with heads // 3 rpb heads each); we refuse heads that are not multiples of 3, or that do not divide the level's
width, at construction. rel_pos_bias=False has no rpb parameters upstream and its forward fails (AttributeError); we
run it as attention without a positional bias. Dropout (0 upstream) and the unused single-scale
`DeformableNeighborhoodAttention`, MDTA `Attention` and options of the attention module that MSDeformableNAIR never
sets (offset_range_factor=1, stride=1, no_off, is_causal, ...) are left out.

H and W must be multiples of 8 (three pixel-unshuffles) and each level at least kernel x dilation (NATTEN); we pad
bottom/right inside (reflect, replicate when too small) and crop, which changes nothing on valid sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import list_length, same_keys_and_shapes
from .layers.norm import LayerNorm2d, RestormerLayerNorm
from .layers.padding import pad_to_multiple
from .layers.precision import upcast
from .layers.restormer import FeedForward, RestormerUNet, ffn_factor, unet_radius
from .ops.neighborhood_attn import na2d
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "MSDeformableNAIR", "MSDeformableNeighborhoodAttention", "TransformerBlock"]

_MULTIPLE = RestormerUNet.UNET_MULTIPLE
_LICENSE = "unspecified (Aitical/DSwinIR has no licence file)"
_RPB_NAMES = ("rpb_h1", "rpb_h2", "rpb_h3")


def _group_windows(kernel_size: int, dilation: int) -> tuple[tuple[int, int], ...]:
    """(kernel, dilation) of the three head groups of MSDNA."""
    return ((kernel_size, dilation), (kernel_size, 2), (kernel_size + 2, dilation))


def _level_min_size(kernel_size: int, dilation: int) -> int:
    """Smallest map side the three NATTEN calls of one level accept (kernel x dilation on both axes)."""
    return max(k * d for k, d in _group_windows(kernel_size, dilation))


class MSDeformableNeighborhoodAttention(nn.Module):
    """Deformable multi-scale neighbourhood attention (one group per head, heads split in thirds by window)."""

    def __init__(self, *, dim: int, num_heads: int, kernel_size: int, dilation: int = 1,
                 rel_pos_bias: bool = True) -> None:
        super().__init__()
        if num_heads % 3 or dim % num_heads:
            raise ValueError(f"MSDeformableNeighborhoodAttention needs heads that are a multiple of 3 and divide the "
                             f"width; got {num_heads} heads for {dim} channels")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3 (NATTEN with rpb), got {kernel_size}")
        self.n_groups = num_heads
        self.n_group_channels = dim // num_heads
        self.scale = self.n_group_channels**-0.5
        self.ksize = kernel_size
        self.dilation = dilation
        cg = self.n_group_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cg, cg, kernel_size, 1, kernel_size // 2, groups=cg),
            LayerNorm2d(cg),  # basicsr LayerNorm2d, default eps 1e-6
            nn.GELU(),
            nn.Conv2d(cg, 2, 1, bias=False),
        )
        self.proj_q = nn.Conv2d(dim, dim, 1)
        self.proj_k = nn.Conv2d(dim, dim, 1)
        self.proj_v = nn.Conv2d(dim, dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        for name, (k, _) in zip(_RPB_NAMES, _group_windows(kernel_size, dilation), strict=True):
            # upstream initialises with trunc_normal_(std=0.02); checkpoints overwrite it
            rpb = torch.empty(num_heads // 3, 2 * k - 1, 2 * k - 1)
            self.register_parameter(name, nn.Parameter(nn.init.trunc_normal_(rpb, std=0.02)) if rel_pos_bias else None)
        self.rpe_table = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def _deform(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """x resampled per group at pixel (i + 0.5 + tanh(oy) / 2, j + 0.5 + tanh(ox) / 2), zeros past the edge."""
        b, c, h, w = x.shape
        g, cg = self.n_groups, self.n_group_channels
        offset = self.conv_offset(q.reshape(b * g, cg, h, w))  # (B*g, 2, H, W): y, x
        offset = upcast(offset).tanh()
        wy, wx = (0.5 + 0.5 * offset).unsqueeze(2).unbind(1)  # weight of the next row / column, (B*g, 1, H, W)
        xp = F.pad(x.reshape(b * g, cg, h, w), (0, 1, 0, 1))
        top = xp[..., :h, :w] + wx.to(x.dtype) * (xp[..., :h, 1:] - xp[..., :h, :w])
        bottom = xp[..., 1:, :w] + wx.to(x.dtype) * (xp[..., 1:, 1:] - xp[..., 1:, :w])
        return (top + wy.to(x.dtype) * (bottom - top)).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g, cg = self.n_groups, self.n_group_channels
        q = self.proj_q(x)
        sampled = self._deform(x, q)
        lepe = self.rpe_table(q)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, g, H, W, cg), a view
            return t.reshape(b, g, cg, h, w).permute(0, 1, 3, 4, 2)

        qh, kh, vh = heads(q), heads(self.proj_k(sampled)), heads(self.proj_v(sampled))
        third = g // 3
        rpbs: list[torch.Tensor | None] = [getattr(self, name) for name in _RPB_NAMES]
        outs = []
        for n, (kernel, dil) in enumerate(_group_windows(self.ksize, self.dilation)):
            sl = slice(n * third, (n + 1) * third)
            # upstream: softmax(na2d_qk(q * scale, k, rpb)) then na2d_av, i.e. the fused op
            outs.append(na2d(qh[:, sl], kh[:, sl], vh[:, sl], kernel, dil, rpb=rpbs[n], scale=self.scale))
        out = torch.cat(outs, 1).permute(0, 1, 4, 2, 3).reshape(b, c, h, w)
        return self.proj_out(out + lepe)


class TransformerBlock(nn.Module):
    """x + MSDNA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, *, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, LayerNorm_type: str,
                 rel_pos_bias: bool, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        # upstream: basicsr LayerNorm2d(dim, eps=1e-5) for "WithBias" (= Restormer's WithBias LayerNorm), else BiasFree
        self.norm1 = RestormerLayerNorm(dim, LayerNorm_type)
        self.attn = MSDeformableNeighborhoodAttention(dim=dim, num_heads=num_heads, kernel_size=kernel_size,
                                                      dilation=dilation, rel_pos_bias=rel_pos_bias)
        self.norm2 = RestormerLayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MSDeformableNAIR(RestormerUNet):
    """DSwinIR: 4-level U-Net of MSDNA/GDFN blocks (widths dim, 2, 4, 8 x dim; level 1 decoder and refinement at
    2 x dim), per-level kernel_size and dilation, global residual (added twice, as upstream)."""

    def __init__(
        self,
        *,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 32,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        kernel_size: Sequence[int] = (3, 3, 3, 3),
        dilation: Sequence[int] = (1, 1, 1, 1),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (2, 4, 8, 8),
        ffn_expansion_factor: float = 2,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",
        rel_pos_bias: bool = True,
        dual_pixel_task: bool = False,
        global_residual: bool = True,
    ) -> None:
        super().__init__()
        if any(len(s) != 4 for s in (num_blocks, kernel_size, dilation, heads)):
            raise ValueError("num_blocks, kernel_size, dilation and heads need 4 entries (3 encoder levels + latent)")
        self.min_size = _min_size(kernel_size, dilation)

        def stage(n: int, level: int, width: int) -> nn.Sequential:
            return nn.Sequential(*[
                TransformerBlock(dim=width, num_heads=heads[level], ffn_expansion_factor=ffn_expansion_factor,
                                 bias=bias, LayerNorm_type=LayerNorm_type, rel_pos_bias=rel_pos_bias,
                                 kernel_size=kernel_size[level], dilation=dilation[level])
                for _ in range(n)
            ])

        self._build_unet(inp_channels=inp_channels, dim=dim, num_blocks=num_blocks,
                         num_refinement_blocks=num_refinement_blocks, stage=stage, bias=bias)
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)
        self.global_residual = global_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        inp = pad_to_multiple(x, _MULTIPLE, mode="reflect_or_replicate", min_size=self.min_size)
        emb = self.patch_embed(inp)
        dec1 = self._run_unet(emb)
        # the dual-pixel path has no residual here; the global one below still applies
        out = self.output(dec1 + self.skip_conv(emb)) if self.dual_pixel_task else self.output(dec1) + inp
        if self.global_residual:
            out = out + inp
        return out[..., :h, :w]


def _min_size(kernel_size: Sequence[int], dilation: Sequence[int]) -> int:
    """Smallest input side: level l runs at side / 2**l and must hold every NATTEN window of that level."""
    need = max(_level_min_size(int(k), int(d)) * 2**level
               for level, (k, d) in enumerate(zip(kernel_size, dilation, strict=True)))
    return -(-need // _MULTIPLE) * _MULTIPLE


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _block_radius(kernel_size: int, dilation: int) -> int:
    """Receptive-field radius of one block in its level's pixels: the widest attention window half-width, plus what
    each key/value reaches (the bilinear sample's next pixel, or the offset net's kxk conv on q), plus the GDFN's
    depthwise 3x3. The lepe 3x3 on q runs in parallel with the attention and is covered."""
    window = max((k // 2) * d for k, d in _group_windows(kernel_size, dilation))
    return window + max(1, kernel_size // 2) + 1


def _receptive_radius(kw: dict[str, Any]) -> int:
    nb, nr = list(kw["num_blocks"]), int(kw["num_refinement_blocks"])
    ks, ds = list(kw["kernel_size"]), list(kw["dilation"])
    blocks = (2 * nb[0] + nr, 2 * nb[1], 2 * nb[2], nb[3])
    per_level = [n * _block_radius(int(k), int(d)) for n, k, d in zip(blocks, ks, ds, strict=True)]
    return unet_radius(per_level, resamples=3)


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="dswinir",
        family="MSDeformableNAIR",
        upstream_class="MSDeformableNAIR",
        # all-in-one (noise, rain, haze), adverse weather (rain, raindrop, snow) and single-task deraining checkpoints
        tasks=("restore",),
        scale=1,
        in_channels=int(kw["inp_channels"]),
        out_channels=int(kw["out_channels"]),
        min_size=_min_size(list(kw["kernel_size"]), list(kw["dilation"])),
        multiple_of=_MULTIPLE,
        # LayerNorms run in float32 for half inputs (layers/norm.py), attention accumulates in float32 (softmax
        # included) and the deformable weights are float32; checked in bf16/fp16 against float32 on the golden only.
        fp16=True,
        bf16=True,
        channels_last=False,
        # Only local operators (no pooling, no channel attention over the map): a margin of the receptive-field
        # radius makes tiles exact. That radius is large for the deep configs (about 600 px for num_blocks
        # [4, 6, 6, 8] with 4 refinement blocks), which is the honest margin; the effective field is much smaller.
        tiling="safe",
        context=_receptive_radius(kw),
        code_license=_LICENSE,
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector

_LEVELS = (
    (("encoder_level1", 1), ("decoder_level1", 2), ("refinement", 2)),
    (("encoder_level2", 2), ("decoder_level2", 2)),
    (("encoder_level3", 4), ("decoder_level3", 4)),
    (("latent", 8),),
)


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Widths, depths, heads (width / offset-net channels), kernel sizes (offset-net conv), ffn factor, norm type,
    rpb and dual-pixel skip from the state dict. Not stored, so upstream defaults: dilation [1, 1, 1, 1] and
    global_residual=True (every published setting uses these)."""
    embed, out = sd.get("patch_embed.proj.weight"), sd.get("output.weight")
    if embed is None or out is None or embed.ndim != 4 or out.ndim != 4:
        return None
    if not any(k.endswith(".attn.conv_offset.0.weight") for k in sd):
        return None
    dim = int(embed.shape[0])
    heads, kernels, pairs = [], [], []
    for level in _LEVELS:
        nh, ks = 3, 3  # a level without blocks: any valid values
        for prefix, mult in level:
            off = sd.get(f"{prefix}.0.attn.conv_offset.0.weight")
            ffn = sd.get(f"{prefix}.0.ffn.project_out.weight")
            if off is None or ffn is None or off.ndim != 4 or ffn.ndim != 4 or off.shape[0] == 0:
                continue
            nh, ks = dim * mult // int(off.shape[0]), int(off.shape[-1])
            pairs.append((dim * mult, int(ffn.shape[1])))
            break
        heads.append(nh)
        kernels.append(ks)
    factor = ffn_factor(pairs) if pairs else 2.0
    if factor is None:
        return None
    first = next((k for k in sd if k.endswith(".0.norm1.body.weight")), None)
    kw: dict[str, Any] = {
        "inp_channels": int(embed.shape[1]),
        "out_channels": int(out.shape[0]),
        "dim": dim,
        "num_blocks": [list_length(sd, p) for p in ("encoder_level1", "encoder_level2", "encoder_level3", "latent")],
        "kernel_size": kernels,
        "dilation": [1, 1, 1, 1],
        "num_refinement_blocks": list_length(sd, "refinement"),
        "heads": heads,
        "ffn_expansion_factor": factor,
        "bias": "output.bias" in sd,
        "LayerNorm_type": "WithBias" if first is None or first.replace(".weight", ".bias") in sd else "BiasFree",
        "rel_pos_bias": any(k.endswith(".attn.rpb_h1") for k in sd),
        "dual_pixel_task": "skip_conv.weight" in sd,
        "global_residual": True,
    }
    return kw if same_keys_and_shapes(lambda: MSDeformableNAIR(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="dswinir", family="MSDeformableNAIR", cls=MSDeformableNAIR, describe=_describe, detect=_detect,
              aliases=("DSwinIR",)),
)
