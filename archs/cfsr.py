"""CFSR: "Transforming Image Super-Resolution: A ConvFormer-based Efficient Approach" (Wu et al.), lightweight
SR with large-kernel depthwise convolutional modulation blocks.

Semantics follow neosr's `cfsr_arch.py` as the seed carries it (class `cfsr`; the file states no licence; the
seed collection is GPL-3.0). Keyword names, defaults and state-dict keys match; `upscale` defaults to 4 (neosr
reads it from its options, `net_opt()`; its default is 4).

Re-parameterisation happens at construction upstream: `__init__` folds each MLP's Sobel-x, Sobel-y and Laplacian
branches into the depthwise `MLP.pos` conv and deletes them, so only the merged layout exists and loads (a training
checkpoint that still has the edge-branch keys cannot be loaded strictly upstream either). We build the merged
layout directly.

`upsampler="pixelshuffledirect"` (the default) upscales with one conv + pixel shuffle; any other value gives
upstream's same-size variant (`x + conv_last(features)`, `upscale` ignored). `mean_norm` subtracts the DIV2K RGB
mean (not stored in checkpoints); upstream supports it for 3 and 1 input channels only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers.detect import count_indexed, pixel_shuffle_scale, same_keys_and_shapes
from .layers.norm import LayerNorm2d
from .layers.upsample import UpsampleOneStep
from .spec import ArchEntry, ArchSpec, StateDict

_LICENSE = "unspecified (none stated in neosr's cfsr_arch.py; the seed collection is GPL-3.0)"

_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class LargeKernelConv(nn.Module):
    """The depthwise dw_size x dw_size conv, named as upstream (`lkb_reparam`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> None:
        super().__init__()
        self.lkb_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, 1,
                                     groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lkb_reparam(x)


class MLP(nn.Module):
    """LN -> fc1 -> GELU -> x + GELU(pos(x)) -> fc2, `pos` the merged depthwise 3x3 (edge branches folded in)."""

    def __init__(self, dim: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.pos = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.norm(x)))
        return self.fc2(x + self.act(self.pos(x)))


class ConvMod(nn.Module):
    """proj(a(x) * v(x)) on the layer-normed input; a = 1x1 -> GELU -> large-kernel depthwise conv."""

    def __init__(self, dim: int, dw_size: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.a = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), LargeKernelConv(dim, dim, dw_size, 1, dim))
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.proj(self.a(x) * self.v(x))


class Block(nn.Module):
    def __init__(self, dim: int, dw_size: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attn = ConvMod(dim, dw_size)
        self.mlp = MLP(dim, int(mlp_ratio))
        self.layer_scale_1 = nn.Parameter(1e-6 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1.view(1, -1, 1, 1) * self.attn(x)
        return x + self.layer_scale_2.view(1, -1, 1, 1) * self.mlp(x)


class Layer(nn.Module):
    def __init__(self, dim: int, depth: int, dw_size: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, dw_size, mlp_ratio) for _ in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for blk in self.blocks:
            y = blk(y)
        return self.conv(y) + y


class cfsr(nn.Module):  # noqa: N801 (upstream class name)
    """conv_first -> layers -> LayerNorm -> conv_after_body (+ skip) -> one-step pixel-shuffle head."""

    def __init__(
        self,
        *,
        in_chans: int = 3,
        embed_dim: int = 48,
        depths: tuple[int, ...] | list[int] = (6, 6),
        dw_size: int = 9,
        mlp_ratio: float = 2.0,
        upscale: int = 4,
        img_range: float = 1.0,
        upsampler: str = "pixelshuffledirect",
        mean_norm: bool = False,
    ) -> None:
        super().__init__()
        self.img_range = img_range
        self.mean_norm = mean_norm
        if mean_norm and in_chans not in (1, 3):
            raise ValueError(f"mean_norm needs 1 or 3 input channels, got {in_chans}")
        mean = _RGB_MEAN if in_chans == 3 else (0.0,)
        # Not persistent: upstream keeps the mean as a plain attribute, out of the state dict.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.upscale = upscale
        self.upsampler = upsampler
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.layers = nn.ModuleList([Layer(embed_dim, int(d), dw_size, mlp_ratio) for d in depths])
        self.norm = LayerNorm2d(embed_dim, eps=1e-6)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        if upsampler == "pixelshuffledirect":
            self.upsample = UpsampleOneStep(upscale, embed_dim, in_chans)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean: torch.Tensor = self.mean  # type: ignore[assignment]
        if self.mean_norm:
            x = (x - mean.to(x.dtype)) * self.img_range
        if self.upsampler == "pixelshuffledirect":
            feat = self.conv_first(x)
            x = self.upsample(self.conv_after_body(self.forward_features(feat)) + feat)
        else:
            feat = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(feat)) + feat)
        if self.mean_norm:
            x = x / self.img_range + mean.to(x.dtype)
        return x


# ---------------------------------------------------------------------------------------------------------------------
# Descriptor. Only local operators (LayerNorm over channels, depthwise and 1x1 convs): tiles with the receptive
# radius as margin are exact. Radius: conv_first (1) + per block dw_size // 2 (ConvMod) + 1 (MLP.pos) +
# conv_after_body (1) + the head's 3x3 (1).


def _describe(kw: dict[str, Any]) -> ArchSpec:
    direct = kw["upsampler"] == "pixelshuffledirect"
    scale = int(kw["upscale"]) if direct else 1
    blocks = sum(int(d) for d in kw["depths"])
    return ArchSpec(
        id="cfsr",
        family="CFSR",
        upstream_class="cfsr",
        tasks=("upscale",) if scale > 1 else ("restore",),
        scale=scale,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        # LayerNorm statistics in float32 (layers.norm.LayerNorm2d); no other reductions.
        fp16=True,
        bf16=True,
        tiling="safe",
        context=1 + blocks * (int(kw["dw_size"]) // 2 + 1) + 1 + 1,
        code_license=_LICENSE,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Detector: widths from conv_first, depths by counting, dw_size and the MLP ratio from the first block, the head
# from its keys (scale from the pixel-shuffle conv). mean_norm / img_range are not stored (defaults). Meta rebuild.

_B0 = "layers.0.blocks.0."


def _detect(sd: StateDict) -> dict[str, Any] | None:
    need = ("conv_first.weight", _B0 + "attn.a.2.lkb_reparam.weight", _B0 + "mlp.fc1.weight", "norm.weight",
            "conv_after_body.weight")
    if any(k not in sd for k in need):
        return None
    dim, in_chans = (int(n) for n in sd["conv_first.weight"].shape[:2])
    hidden = int(sd[_B0 + "mlp.fc1.weight"].shape[0])
    if hidden % dim:
        return None
    kwargs: dict[str, Any] = {
        "in_chans": in_chans, "embed_dim": dim,
        "depths": [count_indexed(sd, f"layers.{i}.blocks.{{}}.") for i in range(count_indexed(sd, "layers.{}."))],
        "dw_size": int(sd[_B0 + "attn.a.2.lkb_reparam.weight"].shape[-1]), "mlp_ratio": float(hidden // dim),
    }
    if "upsample.0.weight" in sd:
        scale = pixel_shuffle_scale(int(sd["upsample.0.weight"].shape[0]), in_chans)
        if scale is None:
            return None
        kwargs["upscale"] = scale
    else:
        kwargs["upsampler"] = "none"  # any value but "pixelshuffledirect": the same-size variant
    return kwargs if same_keys_and_shapes(lambda: cfsr(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (ArchEntry(id="cfsr", family="CFSR", cls=cfsr, describe=_describe, detect=_detect),)
