"""NAFNet and its Baseline (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022), with TLC variants.

Reimplemented from the semantics of megvii-research/NAFNet@2b4af71 (MIT); parameter names match upstream, so
official checkpoints (GoPro/REDS deblur, SIDD denoise) load with strict=True.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .layers.detect import same_keys_and_shapes
from .layers.naf import NAFBlock, dropout_or_identity, unet_context, unet_layout, unet_levels
from .layers.norm import LayerNorm2d
from .layers.padding import pad_to_multiple
from .layers.tlc import default_base_size, localize
from .spec import ArchEntry, ArchSpec, StateDict, Task, TilingHint

__all__ = [
    "ARCHS",
    "Baseline",
    "BaselineBlock",
    "BaselineLocal",
    "NAFBlock",
    "NAFNet",
    "NAFNetLocal",
]

_TRAIN_SIZE = (1, 3, 256, 256)  # upstream default of the *Local classes


class BaselineBlock(nn.Module):
    """The paper's "Baseline" block: like NAFBlock but GELU instead of SimpleGate and a full SE channel attention.

    `se[0]` is the global pooling that TLC swaps for a local box filter.
    """

    def __init__(self, c: int, DW_Expand: int = 1, FFN_Expand: int = 2, drop_out_rate: float = 0.0) -> None:
        super().__init__()
        dw = c * DW_Expand
        ffn = c * FFN_Expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw, c, 1)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dw, dw // 2, 1),
            nn.ReLU(),
            nn.Conv2d(dw // 2, dw, 1),
            nn.Sigmoid(),
        )
        self.gelu = nn.GELU()
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = dropout_or_identity(drop_out_rate)
        self.dropout2 = dropout_or_identity(drop_out_rate)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.conv2(self.conv1(self.norm1(inp))))
        x = self.dropout1(self.conv3(x * self.se(x)))
        y = inp + x * self.beta
        x = self.dropout2(self.conv5(self.gelu(self.conv4(self.norm2(y)))))
        return y + x * self.gamma


class _UNet(nn.Module):
    """The NAFNet U-Net shared by NAFNet and Baseline: intro conv, encoder levels with stride-2 downs, middle blocks,
    PixelShuffle ups with additive skips, ending conv, global residual. Block type is the only difference.
    """

    def __init__(
        self,
        *,
        img_channel: int,
        width: int,
        middle_blk_num: int,
        enc_blk_nums: Sequence[int],
        dec_blk_nums: Sequence[int],
        block: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        # registration order follows upstream, so state_dict() lists keys in the same order
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.middle_blks = nn.Sequential()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[block(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[block(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[block(chan) for _ in range(num)]))
        # every level halves the size, so inputs are zero-padded to a multiple of 2**levels and cropped back
        self.padder_size = 2 ** len(self.encoders)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        H, W = inp.shape[-2:]
        inp = pad_to_multiple(inp, self.padder_size, mode="zeros")
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        # strict: only configs with as many decoder as encoder levels give a full-size output
        for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1], strict=True):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return x[..., :H, :W]

    def _to_local(self, train_size: Sequence[int], fast_imp: bool, base_size: int | Sequence[int] | None) -> None:
        localize(
            unet_levels(self.encoders, self.middle_blks, self.decoders),
            train_size=train_size,
            base_size=default_base_size(train_size, base_size),
            fast_imp=fast_imp,
            multiple_of=self.padder_size,
        )


class NAFNet(_UNet):
    """NAFNet: U-Net of NAFBlocks (SimpleGate, simplified channel attention, no nonlinear activations)."""

    def __init__(
        self,
        *,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
    ) -> None:
        super().__init__(
            img_channel=img_channel,
            width=width,
            middle_blk_num=middle_blk_num,
            enc_blk_nums=enc_blk_nums,
            dec_blk_nums=dec_blk_nums,
            block=NAFBlock,
        )


class Baseline(_UNet):
    """The paper's Baseline: the same U-Net with BaselineBlocks (GELU + SE attention)."""

    def __init__(
        self,
        *,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        dw_expand: int = 1,
        ffn_expand: int = 2,
    ) -> None:
        super().__init__(
            img_channel=img_channel,
            width=width,
            middle_blk_num=middle_blk_num,
            enc_blk_nums=enc_blk_nums,
            dec_blk_nums=dec_blk_nums,
            block=lambda c: BaselineBlock(c, dw_expand, ffn_expand),
        )


class NAFNetLocal(NAFNet):
    """NAFNet with TLC: global pools become `train_size`-sized local means (upstream `NAFNetLocal`).

    `base_size` (default 1.5 x train H/W, as upstream) is the window at input resolution; an addition to upstream's
    keywords so the window can be set without changing `train_size`.
    """

    def __init__(
        self,
        *,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        train_size: Sequence[int] = _TRAIN_SIZE,
        fast_imp: bool = False,
        base_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            img_channel=img_channel,
            width=width,
            middle_blk_num=middle_blk_num,
            enc_blk_nums=enc_blk_nums,
            dec_blk_nums=dec_blk_nums,
        )
        self._to_local(train_size, fast_imp, base_size)


class BaselineLocal(Baseline):
    """Baseline with TLC (upstream `BaselineLocal`); see NAFNetLocal for `base_size`."""

    def __init__(
        self,
        *,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        dw_expand: int = 1,
        ffn_expand: int = 2,
        train_size: Sequence[int] = _TRAIN_SIZE,
        fast_imp: bool = False,
        base_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            img_channel=img_channel,
            width=width,
            middle_blk_num=middle_blk_num,
            enc_blk_nums=enc_blk_nums,
            dec_blk_nums=dec_blk_nums,
            dw_expand=dw_expand,
            ffn_expand=ffn_expand,
        )
        self._to_local(train_size, fast_imp, base_size)


# ---------------------------------------------------------------------------------------------------------------------
# descriptors


def _describer(arch_id: str, upstream_class: str, tiling: TilingHint) -> Callable[[dict[str, Any]], ArchSpec]:
    tasks: tuple[Task, ...] = ("deblur", "denoise")

    def describe(kw: dict[str, Any]) -> ArchSpec:
        levels = len(kw["enc_blk_nums"])
        window = max(default_base_size(kw["train_size"], kw["base_size"])) if tiling == "tlc" else 0
        return ArchSpec(
            id=arch_id,
            family="NAFNet",
            upstream_class=upstream_class,
            tasks=tasks,
            scale=1,
            in_channels=kw["img_channel"],
            out_channels=kw["img_channel"],
            multiple_of=2**levels,
            # LayerNorm2d statistics and TLC integral images run in fp32 internally, the rest is fp16-safe
            fp16=True,
            bf16=True,
            tiling=tiling,
            context=unet_context(levels, window),
            compile_mode="inductor",  # NAFNet-64 GoPro, 1080p on an H100: 148 -> 45 ms
            code_license="MIT",
        )

    return describe


# ---------------------------------------------------------------------------------------------------------------------
# detectors


def _has_suffix(sd: StateDict, suffix: str) -> bool:
    return any(k.endswith(suffix) for k in sd)


def _detect_nafnet(sd: StateDict) -> dict[str, Any] | None:
    if not _has_suffix(sd, ".sca.1.weight"):
        return None
    kw = unet_layout(sd)
    if kw is None or not same_keys_and_shapes(lambda: NAFNet(**kw), sd):
        return None
    return kw


def _block_prefixes(sd: StateDict) -> Iterator[str]:
    for k in sd:
        if k.endswith(".conv1.weight") and k.startswith(("encoders.", "middle_blks.", "decoders.")):
            yield k[: -len("conv1.weight")]


def _detect_baseline(sd: StateDict) -> dict[str, Any] | None:
    if not _has_suffix(sd, ".se.1.weight"):
        return None
    kw = unet_layout(sd)
    if kw is None:
        return None
    prefix = next(_block_prefixes(sd), None)
    if prefix is None:
        return None
    c = int(sd[prefix + "conv1.weight"].shape[1])
    kw["dw_expand"] = int(sd[prefix + "conv1.weight"].shape[0]) // c
    kw["ffn_expand"] = int(sd[prefix + "conv4.weight"].shape[0]) // c
    if not same_keys_and_shapes(lambda: Baseline(**kw), sd):
        return None
    return kw


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(
        id="nafnet",
        family="NAFNet",
        cls=NAFNet,
        describe=_describer("nafnet", "NAFNet", "global"),
        detect=_detect_nafnet,
        local_variant="nafnet_local",
    ),
    ArchEntry(
        id="baseline",
        family="NAFNet",
        cls=Baseline,
        describe=_describer("baseline", "Baseline", "global"),
        detect=_detect_baseline,
        aliases=("nafnet_baseline",),
        local_variant="baseline_local",
    ),
    # Local variants have the same state dict as their plain class, so they detect nothing themselves
    ArchEntry(
        id="nafnet_local",
        family="NAFNet",
        cls=NAFNetLocal,
        describe=_describer("nafnet_local", "NAFNetLocal", "tlc"),
    ),
    ArchEntry(
        id="baseline_local",
        family="NAFNet",
        cls=BaselineLocal,
        describe=_describer("baseline_local", "BaselineLocal", "tlc"),
        aliases=("nafnet_baseline_local",),
    ),
)
