"""ESRGAN+ / nESRGAN+ generator (`RRDB_Net`; Rakotonirina & Rasoanaivo, "ESRGAN+: Further improving enhanced
super-resolution generative adversarial network", ICASSP 2020; ncarraz/ESRGANplus).

Semantics and state-dict keys follow the seed korvin2000/arch_research `ESRGANplus/ESRGANplus_arch.py` with its
`block.py` (the old BasicSR/mmsr block library): everything is one flattened nn.Sequential `model`, so keys read
`model.0` (first conv), `model.1.sub.<i>.RDB<j>.conv<k>.<n>` (the RRDB trunk inside a shortcut), `model.1.sub.<nb>`
(the trunk's last conv), then the upsampler, HR_conv0 and HR_conv1 at indices shifted by the parameter-free
modules (nn.Upsample, activations, PixelShuffle), exactly as upstream numbers them.

ESRGAN+ changes ESRGAN's dense block ("residual of residual"): x2 = conv2(cat(x, x1)) + conv1x1(x) with a bias-free
1x1, x4 = conv4(...) + x2, out = conv5(...) * 0.2 + x; an RRDB returns RDB3(RDB2(RDB1(x))) * 0.2 + x. Each dense block
and each RRDB ends in Gaussian noise injection that acts only while training (nESRGAN+); eval is deterministic.

Upstream quirks kept: `gc` is accepted and ignored (every RRDB uses 32 growth channels); `res_scale` is unused; the
RRDBs always use mode "CNA" while `mode` applies to the trunk's last conv only. Upstream's GaussianNoise moves a
tensor to CUDA in its constructor (fails without a GPU): ours draws its noise on the input's device. Scales other
than 2^n and 3 are refused (upstream builds int(log2(scale)) x2 steps and returns the wrong size).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .layers.detect import count_indexed, rebuilds
from .layers.upsample import is_pow2, unsupported_scale
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "RRDB", "RRDB_Net", "ResidualDenseBlock_5C"]

_LICENSE = "unspecified (ncarraz/ESRGANplus states no licence; seed collection GPL-3.0)"
_GC = 32  # upstream hard-codes the growth channels of every RRDB


def _act(act_type: str) -> nn.Module:
    kind = act_type.lower()
    if kind == "relu":
        return nn.ReLU()
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.2)
    if kind == "prelu":
        return nn.PReLU(num_parameters=1, init=0.2)
    raise ValueError(f"activation {act_type!r} is not supported (relu, leakyrelu, prelu)")


def _norm(norm_type: str, channels: int) -> nn.Module:
    kind = norm_type.lower()
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    raise ValueError(f"normalisation {norm_type!r} is not supported (batch, instance)")


def conv_block(in_nc: int, out_nc: int, kernel_size: int = 3, *, norm_type: str | None = None,
               act_type: str | None = "relu", mode: str = "CNA", bias: bool = True) -> list[nn.Module]:
    """Upstream's conv_block as a flat module list: conv, norm, act ("CNA"/"CNAC") or norm, act, conv ("NAC")."""
    if mode not in ("CNA", "NAC", "CNAC"):
        raise ValueError(f"conv mode {mode!r} is not one of CNA, NAC, CNAC")
    conv = nn.Conv2d(in_nc, out_nc, kernel_size, 1, (kernel_size - 1) // 2, bias=bias)
    act = _act(act_type) if act_type else None
    if mode == "NAC":
        norm = _norm(norm_type, in_nc) if norm_type else None
        return [m for m in (norm, act, conv) if m is not None]
    norm = _norm(norm_type, out_nc) if norm_type else None
    return [m for m in (conv, norm, act) if m is not None]


class GaussianNoise(nn.Module):
    """nESRGAN+ noise injection: x + N(0, 1) * sigma * x while training; the identity in eval."""

    def __init__(self, sigma: float = 0.1, is_relative_detach: bool = False) -> None:
        super().__init__()
        self.sigma = sigma
        self.is_relative_detach = is_relative_detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.sigma == 0:
            return x
        scale = self.sigma * (x.detach() if self.is_relative_detach else x)
        return x + torch.randn_like(x) * scale


class ResidualDenseBlock_5C(nn.Module):  # noqa: N801 (upstream name)
    """Five densely connected convs with ESRGAN+'s inner residuals (conv1x1 skip into x2, x2 into x4)."""

    def __init__(self, nc: int, *, gc: int = _GC, norm_type: str | None = None, act_type: str = "leakyrelu",
                 mode: str = "CNA", noise_input: bool = True) -> None:
        super().__init__()
        self.noise = GaussianNoise() if noise_input else nn.Identity()
        self.conv1x1 = nn.Conv2d(nc, gc, 1, bias=False)
        kw: dict[str, Any] = {"norm_type": norm_type, "mode": mode}
        self.conv1 = nn.Sequential(*conv_block(nc, gc, act_type=act_type, **kw))
        self.conv2 = nn.Sequential(*conv_block(nc + gc, gc, act_type=act_type, **kw))
        self.conv3 = nn.Sequential(*conv_block(nc + 2 * gc, gc, act_type=act_type, **kw))
        self.conv4 = nn.Sequential(*conv_block(nc + 3 * gc, gc, act_type=act_type, **kw))
        self.conv5 = nn.Sequential(*conv_block(nc + 4 * gc, nc, act_type=None if mode == "CNA" else act_type, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.conv2(torch.cat((x, x1), 1)) + self.conv1x1(x)
        x3 = self.conv3(torch.cat((x, x1, x2), 1))
        x4 = self.conv4(torch.cat((x, x1, x2, x3), 1)) + x2
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return self.noise(x5 * 0.2 + x)


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, scaled by 0.2, plus the input."""

    def __init__(self, nc: int, *, gc: int = _GC, norm_type: str | None = None, act_type: str = "leakyrelu",
                 mode: str = "CNA") -> None:
        super().__init__()
        kw: dict[str, Any] = {"gc": gc, "norm_type": norm_type, "act_type": act_type, "mode": mode}
        self.RDB1 = ResidualDenseBlock_5C(nc, **kw)
        self.RDB2 = ResidualDenseBlock_5C(nc, **kw)
        self.RDB3 = ResidualDenseBlock_5C(nc, **kw)
        self.noise = GaussianNoise()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x)


class ShortcutBlock(nn.Module):
    """x + sub(x) (upstream's ShortcutBlock; `sub` keeps the key prefix)."""

    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


def _upsampler(nf: int, upscale: int, upsample_mode: str, act_type: str) -> list[nn.Module]:
    """Nearest x2 (or x3) + conv + act per step ("upconv"), or conv to 4 nf (9 nf) + pixel shuffle + act."""
    if upscale == 3:
        steps = [3]
    elif is_pow2(upscale):
        steps = [2] * int(math.log2(upscale))
    else:
        raise unsupported_scale(upscale, "1, 2, 3, 4, 8, ... (2^n and 3)")
    out: list[nn.Module] = []
    for s in steps:
        if upsample_mode == "upconv":
            out += [nn.Upsample(scale_factor=s, mode="nearest"), *conv_block(nf, nf, act_type=act_type)]
        elif upsample_mode == "pixelshuffle":
            out += [*conv_block(nf, nf * s * s, act_type=None), nn.PixelShuffle(s), _act(act_type)]
        else:
            raise ValueError(f"upsample mode {upsample_mode!r} is not supported (upconv, pixelshuffle)")
    return out


class RRDB_Net(nn.Module):  # noqa: N801 (upstream name)
    """ESRGAN+ generator: conv, nb RRDBs + conv inside a global shortcut, upsampler, two HR convs."""

    def __init__(self, *, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32,
                 upscale: int = 4, norm_type: str | None = None, act_type: str = "leakyrelu", mode: str = "CNA",
                 res_scale: float = 1, upsample_mode: str = "upconv") -> None:
        super().__init__()
        del gc, res_scale  # accepted and ignored, as upstream
        trunk: list[nn.Module] = [RRDB(nf, norm_type=norm_type, act_type=act_type, mode="CNA") for _ in range(nb)]
        trunk += conv_block(nf, nf, norm_type=norm_type, act_type=None, mode=mode)
        self.model = nn.Sequential(
            *conv_block(in_nc, nf, act_type=None),
            ShortcutBlock(nn.Sequential(*trunk)),
            *_upsampler(nf, upscale, upsample_mode, act_type),
            *conv_block(nf, nf, act_type=act_type),
            *conv_block(nf, out_nc, act_type=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _describe(kw: dict[str, Any]) -> ArchSpec:
    upscale, nb = int(kw["upscale"]), int(kw["nb"])
    steps = 1 if upscale == 3 else max(0, int(math.log2(max(1, upscale))))
    return ArchSpec(
        id="esrganplus",
        family="ESRGANplus",
        upstream_class="RRDB_Net",
        tasks=("upscale",),
        scale=upscale,
        in_channels=int(kw["in_nc"]),
        out_channels=int(kw["out_nc"]),
        # ESRGAN-style RRDB generators run in half precision in the usual upscaling tools; the lead measures it
        fp16=True,
        bf16=True,
        channels_last=True,
        # convolutions only (no norm in the published models): a margin of the receptive radius is exact. Radius in
        # input pixels: first conv, 15 convs per RRDB, the trunk's last conv, then one conv per upsampling step and
        # the two HR convs (each reaching at most one input pixel).
        tiling="safe",
        context=2 + 15 * nb + steps + 2,
        code_license=_LICENSE,
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """ESRGAN+'s dense blocks have `conv1x1` (plain ESRGAN's do not); the rest is read off the flat Sequential."""
    first = sd.get("model.0.weight")
    if first is None or first.ndim != 4 or "model.1.sub.0.RDB1.conv1x1.weight" not in sd:
        return None
    nf, in_nc = int(first.shape[0]), int(first.shape[1])
    nb = count_indexed(sd, "model.1.sub.{}.RDB1.")
    rdb = "model.1.sub.0.RDB1.conv1"
    batch = f"{rdb}.1.running_mean" in sd
    prelu = f"{rdb}.{2 if batch else 1}.weight" in sd
    # the trunk's last conv: conv then BN ("CNA") or BN then conv ("NAC")
    lr = sd.get(f"model.1.sub.{nb}.weight")
    mode = "NAC" if batch and lr is not None and lr.ndim == 1 else "CNA"
    # after the trunk: convs with 4-D weights, in Sequential order
    convs = sorted((int(k.split(".")[1]), v) for k, v in sd.items()
                   if k.startswith("model.") and k.endswith(".weight") and v.ndim == 4 and k.count(".") == 2
                   and int(k.split(".")[1]) >= 2)
    if len(convs) < 2:
        return None
    ups = convs[:-2]
    out_nc = int(convs[-1][1].shape[0])
    if ups and int(ups[0][1].shape[0]) != nf:  # pixel shuffle: the conv widens to nf * s * s
        mode_up, s2 = "pixelshuffle", int(ups[0][1].shape[0]) // nf
        upscale = 3 if s2 == 9 and len(ups) == 1 else 2 ** len(ups)
    else:
        # upconv: the nearest x3 step sits alone; tell it from one x2 step by nothing in the weights: x2 (the
        # common case); a x3 checkpoint needs upscale=3 given by hand
        mode_up, upscale = "upconv", 2 ** len(ups)
    kw: dict[str, Any] = {
        "in_nc": in_nc, "out_nc": out_nc, "nf": nf, "nb": nb, "gc": _GC, "upscale": upscale,
        "norm_type": "batch" if batch else None, "act_type": "prelu" if prelu else "leakyrelu", "mode": mode,
        "res_scale": 1, "upsample_mode": mode_up,
    }
    return rebuilds(RRDB_Net, kw, sd)


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="esrganplus", family="ESRGANplus", cls=RRDB_Net, describe=_describe, detect=_detect,
              aliases=("ESRGANplus", "nESRGANplus", "ESRGAN+")),
)
