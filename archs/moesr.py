"""MoESR: Mamba-out Excitation Super-Resolution (umzi2; traiNNer-redux MoESR2; spandrel's bundled MoESR, MIT).

Keyword names, defaults and state-dict keys follow the seed's moesr/arch.py `MoESR`, so its checkpoints load
strictly. The head is UniUpsample version 1: DySample reads the body width directly (`upsample_dim` only sizes
the pixelshuffle head) and the checkpoint's own `upscale.MetaUpsample` is loaded as it is (upstream has no
load_state_dict override), so it must be present.

* The input is reflect-padded to even H and W (the MSG branch runs at half resolution) and the output cropped.
* `upsampler="conv"` forces scale 1, as upstream.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers.detect import list_length, ratio_for, same_keys_and_shapes
from .layers.mambaout import GatedCNNBlock
from .layers.padding import pad_to_multiple
from .layers.uniupsample import SAMPLE_MODS, UniUpsample, dysample_groups_ok, read_uniupsample, uniupsample_radius
from .spec import ArchEntry, ArchSpec, StateDict

_GROUP = 4


class MSG(nn.Module):
    """Half-resolution excitation: conv to dim / 4, unshuffle 2, three gated blocks, conv + shuffle back, + x."""

    def __init__(self, dim: int, expansion_msg: float = 1.5) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.PixelUnshuffle(2), nn.LeakyReLU(0.1, True))
        self.gated = nn.Sequential(*[GatedCNNBlock(dim, expansion_ratio=expansion_msg) for _ in range(3)])
        self.up = nn.Sequential(nn.Conv2d(dim, dim * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.gated(self.down(x))) + x


class Blocks(nn.Module):
    def __init__(self, dim: int = 64, blocks: int = 4, expansion_factor: float = 1.5,
                 expansion_msg: float = 1.5) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[GatedCNNBlock(dim, expansion_factor) for _ in range(blocks)])
        self.msg = MSG(dim, expansion_msg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.msg(self.blocks(x))


class MoESR(nn.Module):
    """conv -> n_blocks x (n_block gated blocks + MSG), + features -> UniUpsample (v1); no image skip."""

    def __init__(self, *, in_ch: int = 3, out_ch: int = 3, scale: int = 4, dim: int = 64, n_blocks: int = 9,
                 n_block: int = 4, expansion_factor: float = 8 / 3, expansion_msg: float = 1.5,
                 upsampler: str = "pixelshuffledirect", upsample_dim: int = 64) -> None:
        super().__init__()
        if upsampler not in SAMPLE_MODS:
            raise ValueError(f"unknown upsampler {upsampler!r}; choose one of {SAMPLE_MODS}")
        if dim % 4:
            raise ValueError(f"dim must be a multiple of 4 (MSG unshuffles dim / 4 channels), got {dim}")
        if upsampler == "conv":
            scale = 1
        if upsampler == "dysample" and scale > 1 and not dysample_groups_ok(dim, _GROUP):
            raise ValueError(f"DySample needs more than {_GROUP} channels in a multiple of {_GROUP}, got {dim}")
        self.scale = scale
        self.in_to_dim = nn.Conv2d(in_ch, dim, 3, 1, 1)
        self.blocks = nn.Sequential(*[Blocks(dim, n_block, expansion_factor, expansion_msg) for _ in range(n_blocks)])
        self.upscale = UniUpsample(upsampler, scale, dim, out_ch, upsample_dim, _GROUP, version=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.in_to_dim(pad_to_multiple(x, 2, mode="reflect_or_replicate"))
        x = self.blocks(x) + x
        return self.upscale(x)[:, :, : h * self.scale, : w * self.scale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _context(kw: dict[str, Any]) -> int:
    """Receptive-field radius in input pixels: head 3x3 (1); per Blocks, n_block gated blocks of 7 px (3x3, 11-tap
    band, 3x3) and the MSG (3x3 down 1, unshuffle 1, three gated blocks at half resolution 42, 3x3 up 2); the
    head (layers.uniupsample.uniupsample_radius)."""
    per = 7 * int(kw["n_block"]) + 1 + 1 + 2 * 7 * 3 + 2
    scale = 1 if kw["upsampler"] == "conv" else int(kw["scale"])
    return 1 + int(kw["n_blocks"]) * per + uniupsample_radius(str(kw["upsampler"]), scale)


def _describe(kw: dict[str, Any]) -> ArchSpec:
    scale = 1 if kw["upsampler"] == "conv" else int(kw["scale"])
    return ArchSpec(
        id="moesr",
        family="MoESR",
        upstream_class="MoESR",
        tasks=("upscale",) if scale > 1 else ("restore",),
        scale=scale,
        in_channels=int(kw["in_ch"]),
        out_channels=int(kw["out_ch"]),
        multiple_of=2,  # the MSG branches unshuffle by 2 from the top-left: tiles start on even pixels
        fp16=True,  # LayerNorm statistics in float32 (layers.norm); spandrel marks MoESR half-capable
        bf16=True,
        channels_last=False,  # not measured
        tiling="safe",  # per-pixel norms and convolutions only
        context=_context(kw),
        code_license="MIT",
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _detect(sd: StateDict) -> dict[str, Any] | None:
    head = sd.get("in_to_dim.weight")
    if head is None or head.ndim != 4 or "upscale.MetaUpsample" not in sd:
        return None
    need = ("blocks.0.blocks.0.fc1.weight", "blocks.0.msg.gated.0.fc1.weight")
    if any(k not in sd for k in need):
        return None
    dim, in_ch = int(head.shape[0]), int(head.shape[1])
    base = {
        "in_ch": in_ch,
        "dim": dim,
        "n_blocks": list_length(sd, "blocks"),
        "n_block": list_length(sd, "blocks.0.blocks"),
        "expansion_factor": ratio_for(int(sd[need[0]].shape[0]) // 2, dim),
        "expansion_msg": ratio_for(int(sd[need[1]].shape[0]) // 2, dim),
    }
    for cand in read_uniupsample(sd, "upscale.", dim):
        kw = {**base, "out_ch": int(cand["out_dim"]), "scale": int(cand["scale"]), "upsampler": cand["upsample"],
              "upsample_dim": int(cand.get("mid_dim", 64))}
        if cand["upsample"] == "dysample" and not cand.get("record"):
            kw["upsample_dim"] = 64  # not in the layers (v1 DySample reads dim): upstream's default
        if same_keys_and_shapes(lambda k=kw: MoESR(**k), sd):  # type: ignore[misc]
            return kw
    return None


ARCHS: tuple[ArchEntry, ...] = (ArchEntry(id="moesr", family="MoESR", cls=MoESR, describe=_describe, detect=_detect),)
