"""Building blocks shared by the NAFNet-style U-Nets (NAFNet, Baseline, UFPNet) and helpers for their detectors.

Semantics follow megvii-research/NAFNet (MIT); parameter names match upstream so checkpoints load strictly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (upstream `arch_util.LayerNorm2d`, eps 1e-6).

    Upstream uses a hand-written autograd Function of six elementwise passes; `F.layer_norm` on a channels-last
    view is the same function in one fused kernel that takes the statistics of half inputs in float32 (the squared
    deviations overflow float16 for activations above ~256, and eps=1e-6 is below float16's normal range). The
    output keeps the input's memory format.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_layer_norm(x, self.weight, self.bias, self.eps)


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over dim 1 of an NCHW map in one fused pass, float32 statistics for half inputs.

    A channels-last input is normalised in place of layout; an NCHW one is permuted (one copy in `F.layer_norm`)
    and the result copied back to NCHW, so the layers after it see the layout they were given.
    """
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


class SimpleGate(nn.Module):
    """Split channels in two halves and multiply them (NAFNet's activation replacement)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


def dropout_or_identity(rate: float) -> nn.Module:
    return nn.Dropout(rate) if rate > 0.0 else nn.Identity()


class NAFBlock(nn.Module):
    """NAFNet block: LN -> 1x1 -> dw3x3 -> SimpleGate -> SCA -> 1x1, then LN -> FFN with SimpleGate.

    `sca[0]` is the global pooling that TLC (`_tlc.localize`) swaps for a local box filter.
    """

    def __init__(self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2, drop_out_rate: float = 0.0) -> None:
        super().__init__()
        dw = c * DW_Expand
        ffn = c * FFN_Expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = dropout_or_identity(drop_out_rate)
        self.dropout2 = dropout_or_identity(drop_out_rate)
        # zero-initialised residual scales: a fresh block is the identity
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def mix(self, inp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Both residual branches; `x` is what enters norm1 (the input itself, or a kernel-gated version of it)."""
        x = self.sg(self.conv2(self.conv1(self.norm1(x))))
        x = self.dropout1(self.conv3(x * self.sca(x)))
        y = inp + x * self.beta
        x = self.dropout2(self.conv5(self.sg(self.conv4(self.norm2(y)))))
        return y + x * self.gamma

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.mix(inp, inp)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad bottom/right so H and W are multiples of `multiple` (upstream `check_image_size`)."""
    h, w = x.shape[-2:]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def unet_levels(encoders: nn.ModuleList, middle: nn.Module, decoders: nn.ModuleList) -> Iterator[tuple[int, nn.Module]]:
    """(U-Net level, module) pairs of a NAFNet-style U-Net; level l runs at 1/2**l of the padded input."""
    n = len(encoders)
    for i, enc in enumerate(encoders):
        yield i, enc
    yield n, middle
    for i, dec in enumerate(decoders):
        yield n - 1 - i, dec


def unet_context(levels: int, tlc_window: int = 0) -> int:
    """Tile context margin: 8 x the padding multiple, plus half the TLC window (base_size) for the *Local variants.

    8 * 2**levels estimates the effective receptive field of one block per level on each side (a dw 3x3 at level l
    reaches 2**l pixels, plus the stride-2 downs and ups); a pixel's TLC-pooled statistics reach half a window
    further. On the golden TLC configs, with windows aligned to the multiple, this margin keeps tiled output within
    0.5/255 of whole-image output. The deep official configs' theoretical receptive field is larger (28 blocks at
    1/8 scale), and with global statistics (the non-Local classes) no finite margin makes tiles exact, so there this
    only hides seams.
    """
    return max(32, 8 * 2**levels) + (tlc_window + 1) // 2


# ---------------------------------------------------------------------------------------------------------------------
# detector helpers


def seq_lengths(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[int, int]:
    """For keys `<prefix>.<i>.<j>.…`: {i: number of j} (max index + 1, as nn.Sequential numbers its children)."""
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(\d+)\.")
    out: dict[int, int] = {}
    for k in sd:
        m = pat.match(k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            out[i] = max(out.get(i, 0), j + 1)
    return out


def list_length(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """For keys `<prefix>.<i>.…`: max i + 1, or 0."""
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    idx = [int(m.group(1)) for k in sd if (m := pat.match(k))]
    return max(idx) + 1 if idx else 0


def unet_layout(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """img_channel, width and block counts of a NAFNet-style U-Net state dict (intro/encoders/downs/…/ending)."""
    intro = sd.get("intro.weight")
    if intro is None or intro.ndim != 4:
        return None
    enc = seq_lengths(sd, "encoders")
    dec = seq_lengths(sd, "decoders")
    return {
        "img_channel": int(intro.shape[1]),
        "width": int(intro.shape[0]),
        "middle_blk_num": list_length(sd, "middle_blks"),
        # levels come from the down/up convs, so a level with zero blocks still counts
        "enc_blk_nums": [enc.get(i, 0) for i in range(list_length(sd, "downs"))],
        "dec_blk_nums": [dec.get(i, 0) for i in range(list_length(sd, "ups"))],
    }


def same_keys_and_shapes(build: Callable[[], nn.Module], sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether a model built on the meta device (no memory) has exactly the state dict's keys and shapes.

    Detectors infer kwargs from a few shapes, then confirm them this way, so a match is exact, never a guess.
    """
    try:
        with torch.device("meta"):
            ref = build().state_dict()
    except (ValueError, TypeError, RuntimeError):
        return False
    if ref.keys() != sd.keys():
        return False
    return all(tuple(ref[k].shape) == tuple(sd[k].shape) for k in ref)
