"""MoSRv2: MambaOut-style gated CNN for super-resolution (umzi2/MoSRV2, as bundled for spandrel/traiNNer-redux).

Keyword names, defaults and state-dict keys follow the `MoSRv2` class of the seed's mosrv2/arch.py, so its
checkpoints load strictly. Upstream's load_state_dict replaces the checkpoint's `to_img.MetaUpsample` by the model's
own (and supplies it when absent); UniUpsample(keep_own_meta=True) does the same.

* For x1/x2 with `unshuffle_mod`, the input is reflect-padded to a multiple of 4 // scale, pixel-unshuffled by it,
  and the head upsamples x4; the bilinear shortcut is taken from the padded input; the output is cropped.
* RMSNorm adds eps to the rms (outside the square root); LayerNorm is the channel LayerNorm2d (eps 1e-6).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, ratio_for, same_keys_and_shapes
from .layers.mambaout import GatedCNNBlock
from .layers.padding import pad_to_multiple
from .layers.uniupsample import SAMPLE_MODS, UniUpsample, dysample_groups_ok, read_uniupsample, uniupsample_radius
from .spec import ArchEntry, ArchSpec, StateDict

_GROUP = 4  # UniUpsample's DySample groups (upstream's default, never passed)


class MoSRv2(nn.Module):
    """[unshuffle] conv -> n_block GatedCNNBlocks -> conv 2x, Mish, conv, Mish, 1x1 -> UniUpsample, plus the
    bilinear-upsampled input."""

    def __init__(self, *, in_ch: int = 3, scale: int = 4, n_block: int = 24, dim: int = 64,
                 upsampler: str = "pixelshuffledirect", expansion_ratio: float = 1.5, mid_dim: int = 32,
                 unshuffle_mod: bool = True, rms_norm: bool = False) -> None:
        super().__init__()
        if upsampler not in SAMPLE_MODS:
            raise ValueError(f"unknown upsampler {upsampler!r}; choose one of {SAMPLE_MODS}")
        self.scale = scale
        self.pad = 1
        inner = scale
        head: list[nn.Module]
        if unshuffle_mod and scale < 3:
            u = 4 // scale
            head = [nn.PixelUnshuffle(u), nn.Conv2d(in_ch * u * u, dim, 3, 1, 1)]
            self.pad = u
            inner = 4
        else:
            head = [nn.Conv2d(in_ch, dim, 3, 1, 1)]
        if upsampler == "dysample" and inner > 1 and not dysample_groups_ok(mid_dim, _GROUP):
            raise ValueError(f"DySample needs more than {_GROUP} channels in a multiple of {_GROUP}, got {mid_dim}")
        self.gblocks = nn.Sequential(
            *head,
            *[GatedCNNBlock(dim, expansion_ratio, rms_norm) for _ in range(n_block)],
            nn.Conv2d(dim, dim * 2, 3, 1, 1),
            nn.Mish(True),
            nn.Conv2d(dim * 2, dim, 3, 1, 1),
            nn.Mish(True),
            nn.Conv2d(dim, dim, 1, 1),
        )
        self.to_img = UniUpsample(upsampler, inner, dim, in_ch, mid_dim, _GROUP, keep_own_meta=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad, mode="reflect_or_replicate")
        short = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        x = self.to_img(self.gblocks(x)) + short
        return x[:, :, : h * self.scale, : w * self.scale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _context(kw: dict[str, Any]) -> int:
    """Receptive-field radius in input pixels: head 3x3 (1), per block fc1 3x3 + 11-tap band + fc2 3x3 (7), the
    tail's two 3x3 (2) and the upsampler; in unshuffled pixels (u of the input's) for x1/x2 with unshuffle_mod."""
    scale = int(kw["scale"])
    u = 4 // scale if kw["unshuffle_mod"] and scale < 3 else 1
    up = uniupsample_radius(str(kw["upsampler"]), 4 if u > 1 else scale)
    return (1 + 7 * int(kw["n_block"]) + 2 + up) * u + u


def _describe(kw: dict[str, Any]) -> ArchSpec:
    scale = int(kw["scale"])
    u = 4 // scale if kw["unshuffle_mod"] and scale < 3 else 1
    return ArchSpec(
        id="mosrv2",
        family="MoSRv2",
        upstream_class="MoSRv2",
        tasks=("upscale",) if scale > 1 else ("restore",),
        scale=scale,
        in_channels=int(kw["in_ch"]),
        out_channels=int(kw["in_ch"]),
        # The unshuffle samples the input in u x u cells from the top-left: tiles start on that grid.
        multiple_of=u,
        # Norm statistics are taken in float32 (layers.norm); traiNNer-redux trains MoSR in bf16/fp16 AMP.
        fp16=True,
        bf16=True,
        channels_last=False,  # not measured
        # Per-pixel norms and convolutions only: tiles with the receptive radius as margin are exact (DySample's
        # 2 px are a heuristic bound on its learned offsets).
        tiling="safe",
        context=_context(kw),
        code_license="unspecified (no licence in the seed file; seed repository GPL-3.0)",
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _detect(sd: StateDict) -> dict[str, Any] | None:
    unshuffled = "gblocks.1.weight" in sd and "gblocks.2.gamma" in sd
    if not unshuffled and not ("gblocks.0.weight" in sd and "gblocks.1.gamma" in sd):
        return None
    first = 2 if unshuffled else 1
    head = sd["gblocks.1.weight" if unshuffled else "gblocks.0.weight"]
    if head.ndim != 4 or f"gblocks.{first}.fc1.weight" not in sd:
        return None
    dim = int(head.shape[0])
    n_block = count_indexed(sd, "gblocks.{}.gamma", first)
    hidden = int(sd[f"gblocks.{first}.fc1.weight"].shape[0]) // 2
    base = {"dim": dim, "n_block": n_block, "expansion_ratio": ratio_for(hidden, dim),
            "rms_norm": f"gblocks.{first}.norm.scale" in sd}
    for cand in read_uniupsample(sd, "to_img.", dim):
        in_ch = int(cand["out_dim"])
        if unshuffled:
            u = math.isqrt(int(head.shape[1]) // in_ch) if int(head.shape[1]) % in_ch == 0 else 0
            if u not in (2, 4) or u * u * in_ch != int(head.shape[1]):
                continue
            scale, unshuffle_mod = 4 // u, True
        else:
            scale = int(cand["scale"])
            unshuffle_mod = scale >= 3  # below 3 the (default) flag would have unshuffled
        kw = {**base, "in_ch": in_ch, "scale": scale, "upsampler": cand["upsample"],
              "mid_dim": int(cand.get("mid_dim", 32)), "unshuffle_mod": unshuffle_mod}
        if same_keys_and_shapes(lambda k=kw: MoSRv2(**k), sd):  # type: ignore[misc]
            return kw
    return None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="mosrv2", family="MoSRv2", cls=MoSRv2, describe=_describe, detect=_detect),
)
