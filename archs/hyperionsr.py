"""HyperionSR: GroupNorm blocks with a spatial gate, SE channel attention and a gated FFN (Philip Hofmann,
traiNNer-redux; the predecessor of ParagonSR; the file states no licence; the seed collection is GPL-3.0).

Semantics follow the seed's `arches/hyperionsr_arch.py`: the registered size classes HyperionSR_S/M/L/XL (only
`scale` is configurable; the network is their attribute `model`, so their keys start with `model.`) and the
unregistered base class `HyperionSR` (full configuration, keys without the prefix). Both are registered here: the
size classes for checkpoints saved with the prefix, the base class for the same weights once a loader has
stripped it (restore's loader strips a `model.` prefix common to all keys).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, same_keys_and_shapes, scale_and_out_channels
from .spec import ArchEntry, ArchSpec, StateDict

_LICENSE = "unspecified (none stated in hyperionsr_arch.py; the seed collection is GPL-3.0)"

# size class -> (num_feat, num_groups, num_blocks)
SIZES: dict[str, tuple[int, int, int]] = {
    "S": (48, 3, 3),
    "M": (64, 4, 4),
    "L": (128, 5, 5),
    "XL": (160, 6, 6),
}


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(1x1(gelu(1x1(mean(x))))), reduction 16."""

    def __init__(self, num_feat: int, reduction: int = 16) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(num_feat, num_feat // reduction, 1), nn.GELU(),
                                     nn.Conv2d(num_feat // reduction, num_feat, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class SpatialAttentionGate(nn.Module):
    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.spatial_gate = nn.Conv2d(num_feat, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.spatial_gate(x))


class GatedFFN(nn.Module):
    def __init__(self, num_feat: int, ffn_expansion: int = 2) -> None:
        super().__init__()
        hidden = num_feat * ffn_expansion
        self.project_in = nn.Conv2d(num_feat, hidden * 2, 1)
        self.project_out = nn.Conv2d(hidden, num_feat, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.project_in(x).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class HyperionBlock(nn.Module):
    """x + ca(sag(norm1(x))), then + ffn(norm2(.)); GroupNorm(1) = whole-map statistics."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, num_feat)
        self.attn = SpatialAttentionGate(num_feat)
        self.ca = ChannelAttention(num_feat)
        self.norm2 = nn.GroupNorm(1, num_feat)
        self.ffn = GatedFFN(num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ca(self.attn(self.norm1(x))) + x
        return self.ffn(self.norm2(x)) + x


class ResidualGroup(nn.Module):
    def __init__(self, num_feat: int, num_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[HyperionBlock(num_feat) for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blocks(x)


class HyperionSR(nn.Module):
    """conv_in -> residual groups -> fusion conv (+ skip) -> pixel shuffle -> conv_out. No image-level skip."""

    def __init__(self, *, scale: int = 4, in_chans: int = 3, num_feat: int = 64, num_groups: int = 4,
                 num_blocks: int = 4) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_chans, num_feat, 3, padding=1)
        self.body = nn.Sequential(*[ResidualGroup(num_feat, num_blocks) for _ in range(num_groups)])
        self.fusion = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_feat * scale * scale, 3, padding=1),
                                       nn.PixelShuffle(scale))
        self.conv_out = nn.Conv2d(num_feat, in_chans, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.conv_in(x)
        return self.conv_out(self.upsampler(self.fusion(self.body(shallow)) + shallow))


class _Sized(nn.Module):
    """A fixed-size HyperionSR as the attribute `model` (upstream's size classes)."""

    SIZE = ""

    def __init__(self, *, scale: int = 4) -> None:
        super().__init__()
        feat, groups, blocks = SIZES[self.SIZE]
        self.model = HyperionSR(scale=scale, num_feat=feat, num_groups=groups, num_blocks=blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class HyperionSR_S(_Sized):  # noqa: N801 (upstream class name)
    SIZE = "S"


class HyperionSR_M(_Sized):  # noqa: N801
    SIZE = "M"


class HyperionSR_L(_Sized):  # noqa: N801
    SIZE = "L"


class HyperionSR_XL(_Sized):  # noqa: N801
    SIZE = "XL"


_SIZED: dict[str, type[_Sized]] = {"S": HyperionSR_S, "M": HyperionSR_M, "L": HyperionSR_L, "XL": HyperionSR_XL}


# ---------------------------------------------------------------------------------------------------------------------
# Descriptor. Tiling "global": GroupNorm(1) and the SE pool see the whole map. Context: the blocks are pointwise
# (1x1 convs only), so the radius is conv_in (1) + fusion (1) + the pixel-shuffle conv (1) + conv_out at high
# resolution (ceil(1 / scale)).


def _base_describe(kw: dict[str, Any], *, id_: str, cls: str) -> ArchSpec:
    scale = int(kw["scale"])
    return ArchSpec(
        id=id_,
        family="HyperionSR",
        upstream_class=cls,
        tasks=("upscale",) if scale > 1 else ("restore",),
        scale=scale,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        # GroupNorm statistics are float32 inside torch's half kernels; upstream targets fp16 ONNX export.
        fp16=True,
        bf16=True,
        tiling="global",
        context=3 + math.ceil(1 / scale),
        code_license=_LICENSE,
    )


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return _base_describe(kw, id_="hyperionsr", cls="HyperionSR")


def _sized_describe(size: str) -> Any:
    def describe(kw: dict[str, Any]) -> ArchSpec:
        return _base_describe({"scale": kw["scale"], "in_chans": 3}, id_=f"hyperionsr_{size.lower()}",
                              cls=f"HyperionSR_{size}")
    return describe


# ---------------------------------------------------------------------------------------------------------------------
# Detectors. Base: width from conv_in, groups / blocks by counting, scale from the pixel-shuffle conv; then a meta
# rebuild. Size classes: the same on the keys without `model.`, then the size whose width and depth match.


def _detect(sd: StateDict) -> dict[str, Any] | None:
    need = ("conv_in.weight", "body.0.blocks.0.attn.spatial_gate.weight", "fusion.weight", "upsampler.0.weight",
            "conv_out.weight")
    if any(k not in sd for k in need):
        return None
    feat, in_chans = (int(n) for n in sd["conv_in.weight"].shape[:2])
    found = scale_and_out_channels(int(sd["upsampler.0.weight"].shape[0]), (feat,))
    if found is None:
        return None
    kwargs: dict[str, Any] = {"scale": found[0], "in_chans": in_chans, "num_feat": feat,
                              "num_groups": count_indexed(sd, "body.{}.blocks.0."),
                              "num_blocks": count_indexed(sd, "body.0.blocks.{}.")}
    return kwargs if same_keys_and_shapes(lambda: HyperionSR(**kwargs), sd) else None


def _sized_detect(size: str) -> Any:
    def detect(sd: StateDict) -> dict[str, Any] | None:
        if not sd or not all(k.startswith("model.") for k in sd):
            return None
        base = _detect({k[len("model."):]: v for k, v in sd.items()})
        if base is None:
            return None
        if (base["in_chans"], base["num_feat"], base["num_groups"], base["num_blocks"]) != (3, *SIZES[size]):
            return None
        return {"scale": base["scale"]}
    return detect


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="hyperionsr", family="HyperionSR", cls=HyperionSR, describe=_describe, detect=_detect),
    *(ArchEntry(id=f"hyperionsr_{s.lower()}", family="HyperionSR", cls=c, describe=_sized_describe(s),
                detect=_sized_detect(s)) for s, c in _SIZED.items()),
)
