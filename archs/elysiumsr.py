"""ElysiumSR: a plain EDSR-like residual CNN for super-resolution (Philip Hofmann, traiNNer-redux; the file states
no licence; the seed collection is GPL-3.0).

Semantics follow the seed's `arches/elysiumsr_arch.py`: the registered size classes ElysiumSR_S/M/L/XL (only
`scale` is configurable; the network is their attribute `model`, so their keys start with `model.`) and the
unregistered base class `ElysiumSR` (full configuration, keys without the prefix). Both are registered here: the
size classes for checkpoints saved with the prefix, the base class for the same weights once a loader has
stripped it (restore's loader strips a `model.` prefix common to all keys).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .layers.detect import count_indexed, same_keys_and_shapes, scale_and_out_channels
from .layers.drop import DropPath
from .spec import ArchEntry, ArchSpec, StateDict

_LICENSE = "unspecified (none stated in elysiumsr_arch.py; the seed collection is GPL-3.0)"

# size class -> (num_feat, num_blocks, drop_path_rate)
SIZES: dict[str, tuple[int, int, float]] = {
    "S": (64, 10, 0.0),
    "M": (80, 16, 0.05),
    "L": (128, 24, 0.1),
    "XL": (160, 32, 0.1),
}


class ResidualBlock(nn.Module):
    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x))) + x


class ElysiumSR(nn.Module):
    """conv_in -> residual blocks (each followed by stochastic depth) -> conv_fuse (+ skip) -> pixel shuffle ->
    conv_out. No image-level skip."""

    def __init__(self, *, scale: int = 4, in_chans: int = 3, num_feat: int = 80, num_blocks: int = 12,
                 drop_path_rate: float = 0.0, upsampler: str = "pixelshuffle") -> None:
        super().__init__()
        if upsampler != "pixelshuffle":
            raise ValueError(f"Upsampler '{upsampler}' not implemented.")
        self.scale = scale
        self.conv_in = nn.Conv2d(in_chans, num_feat, 3, padding=1)
        self.blocks = nn.ModuleList([ResidualBlock(num_feat) for _ in range(num_blocks)])
        # As upstream, stochastic depth drops a block's whole output (skip included) while training.
        rates = torch.linspace(0, drop_path_rate, num_blocks, device="cpu").tolist()
        self.drop_paths = nn.ModuleList([DropPath(r) for r in rates])
        self.conv_fuse = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_feat * scale * scale, 3, padding=1),
                                       nn.PixelShuffle(scale))
        self.conv_out = nn.Conv2d(num_feat, in_chans, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.conv_in(x)
        out = shallow
        for block, drop in zip(self.blocks, self.drop_paths, strict=True):
            out = drop(block(out))
        return self.conv_out(self.upsampler(self.conv_fuse(out) + shallow))


class _Sized(nn.Module):
    """A fixed-size ElysiumSR as the attribute `model` (upstream's size classes)."""

    SIZE = ""

    def __init__(self, *, scale: int = 4) -> None:
        super().__init__()
        feat, blocks, dpr = SIZES[self.SIZE]
        self.model = ElysiumSR(scale=scale, num_feat=feat, num_blocks=blocks, drop_path_rate=dpr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ElysiumSR_S(_Sized):  # noqa: N801 (upstream class name)
    SIZE = "S"


class ElysiumSR_M(_Sized):  # noqa: N801
    SIZE = "M"


class ElysiumSR_L(_Sized):  # noqa: N801
    SIZE = "L"


class ElysiumSR_XL(_Sized):  # noqa: N801
    SIZE = "XL"


_SIZED: dict[str, type[_Sized]] = {"S": ElysiumSR_S, "M": ElysiumSR_M, "L": ElysiumSR_L, "XL": ElysiumSR_XL}


# ---------------------------------------------------------------------------------------------------------------------
# Descriptor: only 3x3 convolutions, so tiles with the receptive radius as margin are exact: conv_in (1) + two per
# block + conv_fuse (1) + the pixel-shuffle conv (1) + conv_out at high resolution (ceil(1 / scale)).


def _base_describe(kw: dict[str, Any], *, id_: str, cls: str) -> ArchSpec:
    scale = int(kw["scale"])
    return ArchSpec(
        id=id_,
        family="ElysiumSR",
        upstream_class=cls,
        tasks=("upscale",) if scale > 1 else ("restore",),
        scale=scale,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        # No normalisation anywhere, so activations are unbounded; upstream targets fp16 ONNX export.
        fp16=True,
        bf16=True,
        tiling="safe",
        context=1 + 2 * int(kw["num_blocks"]) + 1 + 1 + math.ceil(1 / scale),
        code_license=_LICENSE,
    )


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return _base_describe(kw, id_="elysiumsr", cls="ElysiumSR")


def _sized_describe(size: str) -> Any:
    def describe(kw: dict[str, Any]) -> ArchSpec:
        feat, blocks, _ = SIZES[size]
        full = {"scale": kw["scale"], "in_chans": 3, "num_feat": feat, "num_blocks": blocks}
        return _base_describe(full, id_=f"elysiumsr_{size.lower()}", cls=f"ElysiumSR_{size}")
    return describe


# ---------------------------------------------------------------------------------------------------------------------
# Detectors. Base: width from conv_in, blocks by counting, scale from the pixel-shuffle conv; then a meta rebuild.
# Size classes: the same on the keys without `model.`, then the size whose width and depth match.


def _detect(sd: StateDict) -> dict[str, Any] | None:
    need = ("conv_in.weight", "blocks.0.conv1.weight", "conv_fuse.weight", "upsampler.0.weight", "conv_out.weight")
    if any(k not in sd for k in need):
        return None
    feat, in_chans = (int(n) for n in sd["conv_in.weight"].shape[:2])
    found = scale_and_out_channels(int(sd["upsampler.0.weight"].shape[0]), (feat,))
    if found is None:
        return None
    kwargs: dict[str, Any] = {"scale": found[0], "in_chans": in_chans, "num_feat": feat,
                              "num_blocks": count_indexed(sd, "blocks.{}.")}
    return kwargs if same_keys_and_shapes(lambda: ElysiumSR(**kwargs), sd) else None


def _sized_detect(size: str) -> Any:
    def detect(sd: StateDict) -> dict[str, Any] | None:
        if not sd or not all(k.startswith("model.") for k in sd):
            return None
        base = _detect({k[len("model."):]: v for k, v in sd.items()})
        feat, blocks, _ = SIZES[size]
        if base is None or (base["in_chans"], base["num_feat"], base["num_blocks"]) != (3, feat, blocks):
            return None
        return {"scale": base["scale"]}
    return detect


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="elysiumsr", family="ElysiumSR", cls=ElysiumSR, describe=_describe, detect=_detect),
    *(ArchEntry(id=f"elysiumsr_{s.lower()}", family="ElysiumSR", cls=c, describe=_sized_describe(s),
                detect=_sized_detect(s)) for s, c in _SIZED.items()),
)
