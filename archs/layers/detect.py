"""Helpers for the detectors: reading layouts off state-dict keys and shapes, and the meta-rebuild confirmation.

A detector infers constructor kwargs from a few keys and shapes, then confirms them with `same_keys_and_shapes`
(a rebuild on the meta device, no memory), so a detection is exact, never a guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]

# What a constructor raises for kwargs that do not describe a buildable model.
BUILD_ERRORS = (ValueError, TypeError, RuntimeError, ZeroDivisionError)


def shapes(sd: StateDict) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a state dict."""
    return {k: tuple(v.shape) for k, v in sd.items()}


def same_keys_and_shapes(build: Callable[[], nn.Module], sd: StateDict) -> bool:
    """Whether a model built on the meta device has exactly the state dict's keys and shapes (False when the
    kwargs do not build at all)."""
    try:
        with torch.device("meta"):
            ref = build().state_dict()
    except BUILD_ERRORS:
        return False
    if ref.keys() != sd.keys():
        return False
    return all(tuple(ref[k].shape) == tuple(sd[k].shape) for k in ref)


def rebuilds(cls: Callable[..., nn.Module], kwargs: Mapping[str, Any], sd: StateDict) -> dict[str, Any] | None:
    """`dict(kwargs)` when `cls(**kwargs)` rebuilds the state dict's keys and shapes exactly, else None."""
    kw = dict(kwargs)
    return kw if same_keys_and_shapes(lambda: cls(**kw), sd) else None


def seq_lengths(sd: StateDict, prefix: str) -> dict[int, int]:
    """For keys `<prefix>.<i>.<j>.…`: {i: number of j} (max index + 1, as nn.Sequential numbers its children)."""
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(\d+)\.")
    out: dict[int, int] = {}
    for k in sd:
        m = pat.match(k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            out[i] = max(out.get(i, 0), j + 1)
    return out


def list_length(sd: StateDict, prefix: str) -> int:
    """For keys `<prefix>.<i>.…`: max i + 1, or 0."""
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    idx = [int(m.group(1)) for k in sd if (m := pat.match(k))]
    return max(idx) + 1 if idx else 0


def count_indexed(sd: StateDict, fmt: str, start: int = 0) -> int:
    """How many consecutive n = start, start + 1, … have a key equal to, or beginning with, `fmt.format(n)`."""
    n = start
    while (key := fmt.format(n)) in sd or any(k.startswith(key) for k in sd):
        n += 1
    return n - start


def buffer_value(t: torch.Tensor) -> int | None:
    """A one-element integer buffer's value, or None on the meta device (shape-only manifests)."""
    return None if t.is_meta else int(t.item())


# ---------------------------------------------------------------------------------------------------------------------
# pixel-shuffle heads


def pixel_shuffle_scale(channels: int, out_channels: int) -> int | None:
    """s with out_channels * s**2 == channels (a conv feeding PixelShuffle(s)), or None."""
    if out_channels <= 0 or channels % out_channels:
        return None
    s = math.isqrt(channels // out_channels)
    return s if s >= 1 and s * s * out_channels == channels else None


def scale_and_out_channels(channels: int, candidates: tuple[int, ...] = (3, 1)) -> tuple[int, int] | None:
    """(scale, out_channels) of a pixel-shuffle head with `channels` = out * scale**2, trying the output channel
    counts in `candidates` order (RGB first, then grey), as spandrel's `get_scale_and_output_channels`."""
    for out in candidates:
        s = pixel_shuffle_scale(channels, out)
        if s is not None:
            return s, out
    return None


def ratio_for(hidden: int, dim: int) -> float:
    """A float r with int(r * dim) == hidden (for expansion ratios stored only as a layer width)."""
    r = hidden / dim
    while int(r * dim) < hidden:  # float rounding just below hidden
        r = math.nextafter(r, math.inf)
    return r


def read_swinir_head(sd: Mapping[str, torch.Tensor], out_chans: int) -> tuple[str, int] | None:
    """(upsampler, upscale) of the head `add_swinir_head` builds, read from a state dict; None when the keys fit
    none of them."""
    if "conv_up1.weight" in sd:
        return "nearest+conv", 4
    first = sd.get("upsample.0.weight")
    if "conv_before_upsample.0.weight" in sd:
        if first is None:
            return None
        num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
        convs = sum(1 for k in sd if k.startswith("upsample.") and k.endswith(".weight"))
        # x3 is one conv to 9 * num_feat; 2^n is n convs to 4 * num_feat
        return "pixelshuffle", 3 if int(first.shape[0]) == 9 * num_feat else 2**convs
    if first is not None:
        scale = pixel_shuffle_scale(int(first.shape[0]), out_chans)
        return None if scale is None else ("pixelshuffledirect", scale)
    return "", 1
