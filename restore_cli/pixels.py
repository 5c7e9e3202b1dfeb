"""Pixels <-> model tensors, in one place: dtype scaling, channel matching (gray, luma-only models) and alpha.

`prepare` turns an H x W x C (or H x W) array into the (C, H, W) tensor the engine takes, plus what `finish` needs
to turn the engine's output back into an array of the input's dtype and channel layout. Integer pixels whose
channels fit the model go to the engine as integers (uint8, or int32 for 16-bit: torch's uint16 lacks most ops)
and come back quantised on the device; everything else goes as float32 in [0, 1].

Alpha is handled exactly: colour is premultiplied before the model and un-premultiplied after; alpha itself is
carried over (bicubic-resized for SR, clipped to [0, 1]); an all-opaque alpha stays all-opaque.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import RestoreError
from .io.images import from_float, to_float

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_DTYPES = (np.uint8, np.uint16, np.float32, np.float64, np.float16)


@dataclass
class Prepared:
    """One picture ready for the engine, and how to undo the conversion."""

    tensor: torch.Tensor  # (C, H, W): uint8 / int32 integer pixels, or float32 in [0, 1]
    quantize: int | None  # 255 / 65535: the engine returns integer pixels of that range
    dtype: np.dtype  # the input's
    squeeze: bool  # the input was H x W
    have: int  # colour channels in the input (alpha not counted)
    want: int  # the model's input channels
    colour: np.ndarray | None = None  # float colour, kept when a luma-only model needs its chroma back
    alpha: np.ndarray | None = None  # float alpha, H x W x 1
    opaque: bool = True

    @property
    def key(self) -> tuple[object, ...]:
        """Pictures with equal keys can share one forward pass."""
        return tuple(self.tensor.shape), self.tensor.dtype, self.quantize


def prepare(array: np.ndarray, in_channels: int) -> Prepared:
    """An H x W x C array (uint8 / uint16 / float) for a model taking `in_channels` channels."""
    if array.dtype not in _DTYPES:
        raise RestoreError(f"unsupported pixel type {array.dtype}")
    squeeze = array.ndim == 2
    raw = array[..., None] if squeeze else array
    if raw.ndim != 3 or raw.shape[2] not in (1, 2, 3, 4):
        raise RestoreError(f"unsupported image shape {array.shape}")
    channels = raw.shape[2]
    has_alpha = channels in (2, 4)
    have = channels - has_alpha
    if not has_alpha and have == in_channels and array.dtype in (np.uint8, np.uint16):
        # the common case: integer pixels travel as they are and come back quantised on the device
        deep = array.dtype == np.uint16
        t = torch.from_numpy(np.ascontiguousarray(raw.transpose(2, 0, 1), dtype=np.int32 if deep else np.uint8))
        return Prepared(t, 65535 if deep else 255, array.dtype, squeeze, have, in_channels)
    img = to_float(raw)
    colour, alpha, opaque = img, None, True
    if has_alpha:
        colour, alpha = img[..., :-1], img[..., -1:]
        opaque = bool(np.all(alpha >= 1.0))
        if not opaque:
            colour = colour * alpha
    if have == 1 and in_channels == 3:
        x = np.repeat(colour, 3, axis=2)
    elif have == 3 and in_channels == 1:
        x = (colour @ _LUMA)[..., None]  # a 1-channel model restores luma; chroma is carried over
    elif have == in_channels:
        x = colour
    else:
        raise RestoreError(f"the model takes {in_channels}-channel input, the image has {have}")
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
    return Prepared(t, None, array.dtype, squeeze, have, in_channels,
                    colour=colour if have == 3 and in_channels == 1 else None, alpha=alpha, opaque=opaque)


def finish(p: Prepared, out: torch.Tensor, scale: int) -> np.ndarray:
    """The engine's (C', H*s, W*s) output -> an array in the input's dtype and channel layout (contiguous)."""
    arr = out.numpy().transpose(1, 2, 0)
    if p.quantize is not None:
        result = np.ascontiguousarray(arr, dtype=p.dtype)
        return result[..., 0] if p.squeeze else result
    if p.have == 1 and p.want == 3:
        arr = (arr @ _LUMA)[..., None]
    elif p.colour is not None:
        chroma = p.colour - (p.colour @ _LUMA)[..., None]
        arr = arr + (_resize(chroma, scale) if scale != 1 else chroma)
    if p.alpha is not None:
        if p.opaque:
            alpha_out = np.ones((*arr.shape[:2], 1), dtype=np.float32)
        else:
            alpha_out = np.clip(_resize(p.alpha, scale) if scale != 1 else p.alpha, 0.0, 1.0)
            arr = np.where(alpha_out > 1e-6, arr / np.maximum(alpha_out, 1e-6), 0.0)
        arr = np.concatenate([arr, alpha_out], axis=2)
    result = from_float(arr.astype(np.float32), p.dtype if p.dtype in (np.uint8, np.uint16) else np.float32)
    result = np.ascontiguousarray(result)
    return result[..., 0] if p.squeeze else result


def _resize(arr: np.ndarray, scale: int) -> np.ndarray:
    import cv2

    h, w = arr.shape[:2]
    res = cv2.resize(arr, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    return res.reshape(h * scale, w * scale, *arr.shape[2:])
