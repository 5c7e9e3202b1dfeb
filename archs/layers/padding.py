"""Pad an image or feature map at the bottom/right to a multiple of some size (upstream `check_image_size`).

One function with an explicit mode, because families differ and the difference shows at the border:
* "zeros": zero padding (NAFNet; MoCE-IR's FFT patches);
* "reflect": mirror without repeating the edge (UFPNet, AdaRevD, CAMixerSR, RHA); needs the pad < the side;
* "replicate": repeat the edge pixel;
* "reflect_or_replicate": reflect when the pad is smaller than the side on both axes, else replicate (Restormer's
  family, SFHformer, GFISRV2: upstream reflects, and only an input smaller than the pad cannot be reflected).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

PadMode = Literal["zeros", "reflect", "replicate", "reflect_or_replicate"]
PAD_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "reflect_or_replicate")


def padded_size(size: int, multiple: int, min_size: int = 0) -> int:
    """The smallest multiple of `multiple` that is >= size and >= min_size."""
    return max(-(-size // multiple) * multiple, min_size)


def pad_to_multiple(x: torch.Tensor, multiple: int, *, mode: PadMode, min_size: int = 0) -> torch.Tensor:
    """x padded at the bottom/right so that H and W are multiples of `multiple` (and at least `min_size`).

    Returns x itself when nothing is needed; callers crop the output back to the input size (times the scale).
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple, min_size) - h, padded_size(w, multiple, min_size) - w
    if ph == 0 and pw == 0:
        return x
    if mode == "zeros":
        return F.pad(x, (0, pw, 0, ph))
    if mode == "reflect_or_replicate":
        mode = "reflect" if ph < h and pw < w else "replicate"
    elif mode not in ("reflect", "replicate"):
        raise ValueError(f"unknown pad mode {mode!r}; expected one of {PAD_MODES}")
    return F.pad(x, (0, pw, 0, ph), mode=mode)
