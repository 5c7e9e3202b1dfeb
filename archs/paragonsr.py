"""ParagonSR: a hybrid CNN for general-purpose super-resolution (Philip Hofmann, Phhofm/ParagonSR, MIT).

Semantics follow the seed's `arches/paragonsr_arch.py` (class `ParagonSR`, factories paragonsr_anime/nano/tiny/xs/
s/m/l/xl) with its missing `resampler.py` as traiNNer-redux carries it (MagicKernelSharp2021Upsample); keyword
names, defaults and state-dict keys match, so checkpoints load strictly.

Re-parameterisation: `ReparamConvV2` (3x3 + 1x1 + depthwise 3x3 branches) trains as branches and runs as one 3x3.
Upstream recomputes the fused kernel on every eval forward and keeps only the branch keys; we fuse on `.eval()`
and after every load into non-persistent buffers (same keys, same function). Upstream's `fuse_for_release()`
replaces each ReparamConvV2 with a plain conv (`spatial_mixer.weight/bias`); `fused=True` (ours) builds that
layout so released fused checkpoints load too, and the detector tells the two apart.

The author's own repository (Phhofm/ParagonSR, traiNNer/archs/paragonsr_arch.py, with its fuse_model.py release
script) has the same network with a pixel-shuffle head instead of the magic-kernel one: `upsampler="pixelshuffle"`
(ours; default "magic", the seed's) builds that head (`upsampler.0` = conv to num_feat * scale^2, PixelShuffle).

With the magic-kernel head the scale is not stored in a checkpoint (that upsampler has no scale-dependent
weights): detection returns upstream's default 4, which every factory uses; pass `scale` for other models. The
pixel-shuffle head stores it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.branch_fusion import sum_branches
from .layers.detect import count_indexed, ratio_for, same_keys_and_shapes, scale_and_out_channels
from .layers.magic_kernel import MAGIC_KERNEL, MAGIC_SHARP_2021, nearest_upscale, separable_convs
from .layers.reparam import Reparameterizable, set_fused
from .spec import ArchEntry, ArchSpec, StateDict


class ReparamConvV2(Reparameterizable):
    """conv3x3 + conv1x1 (+ depthwise 3x3 when in == out == groups) while training; one 3x3 conv in eval."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        self.conv3x3 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups)
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, groups=groups)
        self.dw_conv3x3: nn.Conv2d | None = None
        if in_channels == out_channels and groups == in_channels:
            self.dw_conv3x3 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=in_channels)
        # Fused kernel: derived, so not persistent (upstream's state dict has only the branches).
        self.register_buffer("fused_weight", torch.empty_like(self.conv3x3.weight), persistent=False)
        self.register_buffer("fused_bias", torch.empty(out_channels), persistent=False)
        self.fuse()

    def _branches(self) -> list[nn.Conv2d]:
        return [self.conv3x3, self.conv1x1] + ([self.dw_conv3x3] if self.dw_conv3x3 is not None else [])

    def fuse(self) -> None:
        branches = self._branches()
        with torch.inference_mode(False), torch.no_grad():
            w, b = sum_branches([c.weight for c in branches], [c.bias for c in branches], 3)
            self.fused_weight = w.to(self.conv3x3.weight.dtype)
            self.fused_bias = b.to(self.conv3x3.weight.dtype)

    def plain(self) -> nn.Module:
        conv = nn.Conv2d(self.conv3x3.in_channels, self.conv3x3.out_channels, 3, self.stride, 1, groups=self.groups)
        conv = conv.to(self.conv3x3.weight.device, self.conv3x3.weight.dtype)
        assert conv.bias is not None
        set_fused(conv.weight, self.fused_weight)
        set_fused(conv.bias, self.fused_bias)
        return conv

    def load_plain(self, plain: nn.Module) -> None:
        assert isinstance(plain, nn.Conv2d) and plain.bias is not None
        with torch.no_grad():
            self.conv3x3.weight.copy_(plain.weight)
            self.conv3x3.bias.copy_(plain.bias)  # type: ignore[union-attr]
            for c in self._branches()[1:]:
                c.weight.zero_()
                c.bias.zero_()  # type: ignore[union-attr]
        self.fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return sum(c(x) for c in self._branches())  # type: ignore[return-value]
        return F.conv2d(x, self.fused_weight, self.fused_bias, self.stride, 1, 1, self.groups)


class InceptionDWConv2d(nn.Module):
    """Identity / square / horizontal band / vertical band depthwise convs on four channel slices."""

    def __init__(self, in_channels: int, square_kernel_size: int = 3, band_kernel_size: int = 11,
                 branch_ratio: float = 0.125) -> None:
        super().__init__()
        gc = int(in_channels * branch_ratio)
        sq, band = square_kernel_size, band_kernel_size
        self.dwconv_hw = nn.Conv2d(gc, gc, sq, padding=sq // 2, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band), padding=(0, band // 2), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band, 1), padding=(band // 2, 0), groups=gc)
        self.split_indexes = (in_channels - 3 * gc, gc, gc, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_indexes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)


class GatedFFN(nn.Module):
    """project_out(mish(spatial_mixer(g)) * i) with g, i two 1x1 projections; spatial mixer depthwise."""

    def __init__(self, dim: int, expansion_ratio: float = 2.0, fused: bool = False) -> None:
        super().__init__()
        hidden = int(dim * expansion_ratio)
        self.project_in_g = nn.Conv2d(dim, hidden, 1)
        self.project_in_i = nn.Conv2d(dim, hidden, 1)
        self.spatial_mixer: nn.Module = (nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden) if fused
                                         else ReparamConvV2(hidden, hidden, groups=hidden))
        self.project_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.spatial_mixer(self.project_in_g(x))
        return self.project_out(F.mish(g) * self.project_in_i(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class ParagonBlock(nn.Module):
    """x + ls1(context(norm1(x))), then + ls2(ffn(norm2(x))); GroupNorm(1) = whole-map statistics."""

    def __init__(self, dim: int, ffn_expansion: float = 2.0, fused: bool = False, **block_kwargs: Any) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.context = InceptionDWConv2d(dim, **block_kwargs)
        self.norm2 = nn.GroupNorm(1, dim)
        self.transformer = GatedFFN(dim, ffn_expansion, fused)
        self.ls1 = LayerScale(dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.context(self.norm1(x)))
        return x + self.ls2(self.transformer(self.norm2(x)))


class ResidualGroup(nn.Module):
    def __init__(self, dim: int, num_blocks: int, ffn_expansion: float, fused: bool, **block_kwargs: Any) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ParagonBlock(dim, ffn_expansion, fused, **block_kwargs)
                                      for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + x


class SeparableConv(nn.Module):
    """A fixed separable filter: conv_v(conv_h(x)) (keys conv_h / conv_v, as traiNNer's resampler)."""

    def __init__(self, channels: int, taps: tuple[float, ...]) -> None:
        super().__init__()
        self.conv_h, self.conv_v = separable_convs(channels, taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_v(self.conv_h(x))


class MagicKernelSharp2021Upsample(nn.Module):
    """Sharpen (7 taps) at low resolution, nearest upscale, reconstruct with the magic kernel (5 taps)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.sharpen = SeparableConv(in_channels, MAGIC_SHARP_2021)
        self.resample_conv = SeparableConv(in_channels, MAGIC_KERNEL)

    def forward(self, x: torch.Tensor, scale_factor: int) -> torch.Tensor:
        return self.resample_conv(nearest_upscale(self.sharpen(x), scale_factor))


class ParagonSR(nn.Module):
    """conv_in -> residual groups of ParagonBlocks -> conv_fuse (+ skip) -> magic upsampler -> conv -> conv_out."""

    def __init__(
        self,
        *,
        scale: int = 4,
        in_chans: int = 3,
        num_feat: int = 64,
        num_groups: int = 6,
        num_blocks: int = 6,
        ffn_expansion: float = 2.0,
        block_kwargs: dict[str, Any] | None = None,
        fused: bool = False,
        upsampler: str = "magic",
    ) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if upsampler not in ("magic", "pixelshuffle"):
            raise ValueError(f"upsampler must be 'magic' or 'pixelshuffle', got {upsampler!r}")
        bk = dict(block_kwargs or {})
        self.scale = scale
        self.conv_in = nn.Conv2d(in_chans, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualGroup(num_feat, num_blocks, ffn_expansion, fused, **bk)
                                    for _ in range(num_groups)])
        self.conv_fuse = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.magic_upsampler: MagicKernelSharp2021Upsample | None = None
        if upsampler == "magic":
            self.magic_upsampler = MagicKernelSharp2021Upsample(num_feat)
            self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        else:
            self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_feat * scale * scale, 3, 1, 1),
                                           nn.PixelShuffle(scale))
        self.conv_out = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.conv_in(x)
        x = self.conv_fuse(self.body(shallow)) + shallow
        if self.magic_upsampler is not None:
            x = self.magic_upsampler(x, self.scale)
        return self.conv_out(self.upsampler(x))


# ---------------------------------------------------------------------------------------------------------------------
# Descriptor. Tiling "global": every block's GroupNorm(1) normalises over the whole feature map. Context: receptive
# radius in input pixels: conv_in (1) + per block max(square, band) // 2 of the context convs + 1 (the 3x3 spatial
# mixer) + conv_fuse (1) + the head: magic kernel = sharpen (3) + the high-resolution 5-tap filter and two 3x3 convs
# (2 + 2 output pixels, ceil(4 / scale) input pixels); pixel shuffle = its 3x3 (1) + conv_out (ceil(1 / scale)).
# Capped like the other global families: no margin makes GroupNorm tiles exact.
_CONTEXT_CAP = 128


def _context(kw: dict[str, Any]) -> int:
    bk = kw.get("block_kwargs") or {}
    per_block = max(int(bk.get("square_kernel_size", 3)), int(bk.get("band_kernel_size", 11))) // 2 + 1
    scale = int(kw["scale"])
    head = 3 + math.ceil(4 / scale) if kw["upsampler"] == "magic" else 1 + math.ceil(1 / scale)
    radius = 1 + int(kw["num_groups"]) * int(kw["num_blocks"]) * per_block + 1 + head
    return min(_CONTEXT_CAP, radius)


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="paragonsr",
        family="ParagonSR",
        upstream_class="ParagonSR",
        tasks=("upscale",) if int(kw["scale"]) > 1 else ("restore",),
        scale=int(kw["scale"]),
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        # Upstream targets fp16 ONNX/TensorRT deployment; GroupNorm statistics are computed in float32 by torch.
        fp16=True,
        bf16=True,
        tiling="global",
        context=_context(kw),
        code_license="MIT",
    )


# ---------------------------------------------------------------------------------------------------------------------
# Detector: widths from conv_in, groups / blocks by counting, expansion from the FFN width, the context kernel
# sizes and branch ratio from the inception convs, fused or not from the spatial mixer keys, the head from the
# magic-kernel keys (pixel shuffle: scale from its conv); then a meta rebuild.

_FFN = "body.0.blocks.0.transformer."
_CTX = "body.0.blocks.0.context."


def _detect(sd: StateDict) -> dict[str, Any] | None:
    need = ("conv_in.weight", "conv_fuse.weight", "upsampler.0.weight", "conv_out.weight",
            _FFN + "project_in_g.weight", _CTX + "dwconv_hw.weight")
    if any(k not in sd for k in need):
        return None
    num_feat, in_chans = (int(n) for n in sd["conv_in.weight"].shape[:2])
    groups = count_indexed(sd, "body.{}.")
    blocks = count_indexed(sd, "body.0.blocks.{}.")
    hidden = int(sd[_FFN + "project_in_g.weight"].shape[0])
    expansion = next((r for r in (2.0, 1.5) if int(num_feat * r) == hidden), None) or ratio_for(hidden, num_feat)
    gc, _, sq, _ = (int(n) for n in sd[_CTX + "dwconv_hw.weight"].shape)
    band = int(sd[_CTX + "dwconv_w.weight"].shape[-1]) if _CTX + "dwconv_w.weight" in sd else 11
    bk: dict[str, Any] = {}
    if sq != 3:
        bk["square_kernel_size"] = sq
    if band != 11:
        bk["band_kernel_size"] = band
    if int(num_feat * 0.125) != gc:
        bk["branch_ratio"] = ratio_for(gc, num_feat)
    fused = _FFN + "spatial_mixer.weight" in sd
    kwargs: dict[str, Any] = {"scale": 4, "in_chans": in_chans, "num_feat": num_feat, "num_groups": groups,
                              "num_blocks": blocks, "ffn_expansion": expansion, "block_kwargs": bk or None}
    if fused:
        kwargs["fused"] = True
    if "magic_upsampler.sharpen.conv_h.weight" not in sd:
        found = scale_and_out_channels(int(sd["upsampler.0.weight"].shape[0]), (num_feat,))
        if found is None:
            return None
        kwargs.update(scale=found[0], upsampler="pixelshuffle")
    return kwargs if same_keys_and_shapes(lambda: ParagonSR(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="paragonsr", family="ParagonSR", cls=ParagonSR, describe=_describe, detect=_detect),
)
