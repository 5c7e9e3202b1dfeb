"""EQRSRGAN (`eqrsrgan`, neosr `eqrsrgan_arch.py`): an ESRGAN RRDB generator meant to take a second "dist" guidance
map, fused into every dense block by a Conv3d over the stacked (features, dist) pair. x4; x2 and x1 checkpoints
pixel-unshuffle the input first (conv_first takes 4x / 16x the channels).

Only the state-dict layout is re-implemented: checkpoints load strictly and are detected, so they can be inspected
and converted. Restoring with it is NOT supported, because upstream's forward pass cannot run (the file ends with
"### need to change everything"): `repeat_dist` calls `d.unqueeze` (AttributeError; spelled right, its `repeat`
has fewer dims than the tensor), `RRDB.forward` multiplies a (feat, dist) tuple by a parameter (TypeError), and
`stack_conv = nn.Conv3d(nf, nf, (3, 3, 2), 1, 1, (1, 1, nf))` passes (1, 1, nf) as the dilation, so its output
width is W + 2 - nf and cannot be added to x. The dist-guided math it intended cannot be recovered without
guessing, so `forward` raises and the descriptor says `input_kind="unsupported"` (the CLI refuses in one line).

Keys (upstream names): conv_first, body.<i>.scale_res (0-d), body.<i>.rdb<j>.{conv1..conv5, stack_conv (Conv3d),
scale_res}, conv_body, conv_up1, conv_up2, conv_hr, conv_last.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers.detect import count_indexed, rebuilds
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "NOT_RUNNABLE", "eqrsrgan"]

_LICENSE = "unspecified (neosr eqrsrgan_arch.py states none; seed collection GPL-3.0)"
NOT_RUNNABLE = ("EQRSRGAN's upstream forward pass cannot run (neosr eqrsrgan_arch.py is unfinished), so restoring "
                "with it is not supported; its checkpoints load and are detected only")
# conv_first's input channels per scale: x1 and x2 pixel-unshuffle the image by 4 and 2
_UNSHUFFLE = {1: 16, 2: 4, 4: 1}


class ResidualDenseBlock(nn.Module):
    """ESRGAN's five dense convs plus EQRSRGAN's (features, dist) Conv3d and a learned residual scale."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        # upstream's positional arguments, kept for the weight shape: (1, 1, num_feat) is the dilation
        self.stack_conv = nn.Conv3d(num_feat, num_feat, (3, 3, 2), (1, 1, 1), (1, 1, 1), (1, 1, num_feat))
        self.scale_res = nn.Parameter(torch.tensor(0.2))


class RRDB(nn.Module):
    """Three dense blocks and a learned residual scale (upstream registers scale_res after the blocks)."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.scale_res = nn.Parameter(torch.tensor(0.2))


class eqrsrgan(nn.Module):  # noqa: N801 (upstream name)
    """The EQRSRGAN state-dict layout; `forward` refuses (see the module docstring)."""

    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32) -> None:
        super().__init__()
        if scale not in _UNSHUFFLE:
            raise ValueError(f"scale {scale} is not supported. Supported scales: 1, 2, 4.")
        self.scale = scale
        self.conv_first = nn.Conv2d(num_in_ch * _UNSHUFFLE[scale], num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(NOT_RUNNABLE)


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="eqrsrgan",
        family="EQRSRGAN",
        upstream_class="eqrsrgan",
        tasks=("upscale",),
        scale=int(kw["scale"]),
        in_channels=int(kw["num_in_ch"]),
        out_channels=int(kw["num_out_ch"]),
        multiple_of={1: 4, 2: 2, 4: 1}.get(int(kw["scale"]), 1),
        fp16=False,
        bf16=False,
        tiling="safe",
        context=0,
        code_license=_LICENSE,
        input_kind="unsupported",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """The per-dense-block Conv3d `stack_conv` marks EQRSRGAN; the scale comes from conv_first's input channels
    over conv_last's output channels (input and output channel counts are assumed equal, as in every config)."""
    first, last = sd.get("conv_first.weight"), sd.get("conv_last.weight")
    stack = sd.get("body.0.rdb1.stack_conv.weight")
    if first is None or last is None or stack is None or first.ndim != 4 or last.ndim != 4:
        return None
    out_ch = int(last.shape[0])
    ratio, rest = divmod(int(first.shape[1]), out_ch)
    scale = {v: k for k, v in _UNSHUFFLE.items()}.get(ratio)
    if rest or scale is None:
        return None
    grow = sd.get("body.0.rdb1.conv1.weight")
    kw: dict[str, Any] = {
        "num_in_ch": out_ch, "num_out_ch": out_ch, "scale": scale, "num_feat": int(first.shape[0]),
        "num_block": count_indexed(sd, "body.{}.rdb1."), "num_grow_ch": int(grow.shape[0]) if grow is not None else 32,
    }
    return rebuilds(eqrsrgan, kw, sd)


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="eqrsrgan", family="EQRSRGAN", cls=eqrsrgan, describe=_describe, detect=_detect),
)
