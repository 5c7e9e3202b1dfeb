"""Tile planning and blend weights.

Every tile has one fixed shape: a core of tile_h x tile_w input pixels, plus at least `margin` pixels of context on
every side that lies inside the image (cropped away after the model), rounded up to the arch's multiple. Windows at
the image border are shifted inwards rather than padded, so the model sees the true border exactly as it does on the
whole image. The image is reflect-padded (bottom/right) only up to the arch's multiple or a window larger than the
image; whole-image runs get the same padding, so tiled and whole runs see the same pixels. Cores overlap by at least
`overlap` pixels and are blended with separable raised-cosine ramps, normalised by the summed weights; image borders
get weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _starts(length: int, core: int, overlap: int) -> list[int]:
    """Evenly spread core origins so that the last core ends exactly at the image edge."""
    if core >= length:
        return [0]
    step = max(1, core - overlap)
    n = math.ceil((length - core) / step) + 1
    return [round(i * (length - core) / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    scale: int
    tile_h: int  # core size, input pixels
    tile_w: int
    margin: int
    window_h: int  # what the model sees: core + context, rounded up to the arch's multiple
    window_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    multiple_of: int = 1

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) of the image after bottom/right reflect padding."""
        return (max(round_up(self.height, self.multiple_of), self.window_h),
                max(round_up(self.width, self.multiple_of), self.window_w))

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding of the whole image."""
        ph, pw = self.padded_size
        return (0, pw - self.width, 0, ph - self.height)

    def window_origin(self, y: int, x: int) -> tuple[int, int]:
        """Top-left of the window around the core at (y, x): on the arch's grid, inside the padded image.

        The origin snaps to a multiple of `multiple_of`: U-Nets downsample by that factor, and a window off the grid
        would sample every strided layer at another phase than the whole-image run does.
        """
        ph, pw = self.padded_size
        m = self.multiple_of
        oy = min(max((y - self.margin) // m * m, 0), ph - self.window_h)
        ox = min(max((x - self.margin) // m * m, 0), pw - self.window_w)
        return oy, ox

    def positions(self) -> list[tuple[int, int, int, int]]:
        """(row index, col index, core y, core x) in raster order."""
        return [(i, j, y, x) for i, y in enumerate(self.ys) for j, x in enumerate(self.xs)]


def _axis(length: int, tile: int, margin: int, multiple_of: int, min_size: int) -> tuple[int, int]:
    """(core, window) along one axis. Where a window would not fit inside the (multiple-padded) image, the axis is
    not tiled: the core is the whole axis, padded exactly as a whole-image run pads it."""
    whole = max(round_up(length, multiple_of), round_up(min_size, multiple_of))
    if tile <= 0 or tile >= length:
        return length, whole
    # Room for the origin to snap down to the grid (see window_origin) without eating into the context.
    window = max(round_up(tile + 2 * margin + multiple_of - 1, multiple_of), round_up(min_size, multiple_of))
    if window >= whole:
        return length, whole
    return tile, window


def plan_tiles(height: int, width: int, *, tile: int, overlap: int, margin: int, multiple_of: int = 1,
               scale: int = 1, min_size: int = 1) -> TilePlan:
    """Plan tiles for an image; tile <= 0 means one tile covering the whole image."""
    tile_h, window_h = _axis(height, tile, margin, multiple_of, min_size)
    tile_w, window_w = _axis(width, tile, margin, multiple_of, min_size)
    if tile_h == height and tile_w == width:
        margin = 0
    overlap = max(0, min(overlap, tile_h - 1, tile_w - 1))
    return TilePlan(height, width, scale, tile_h, tile_w, margin, window_h, window_w,
                    tuple(_starts(height, tile_h, overlap)), tuple(_starts(width, tile_w, overlap)), multiple_of)


def ramp_1d(starts: tuple[int, ...], index: int, core: int, scale: int) -> torch.Tensor:
    """Weights along one axis of one tile's core, in output pixels: raised-cosine rises over each shared band."""
    w = torch.ones(core * scale, dtype=torch.float32)
    if index > 0:
        band = (starts[index - 1] + core - starts[index]) * scale
        if band > 0:
            t = (torch.arange(band, dtype=torch.float32) + 0.5) / band
            w[:band] = 0.5 - 0.5 * torch.cos(math.pi * t)
    if index < len(starts) - 1:
        band = (starts[index] + core - starts[index + 1]) * scale
        if band > 0:
            t = (torch.arange(band, dtype=torch.float32) + 0.5) / band
            w[-band:] *= 0.5 + 0.5 * torch.cos(math.pi * t)
    return w


def pad_reflect(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding of any width (torch's needs pad < size): mirror repeatedly, replicate a 1-pixel axis."""
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        lim_w, lim_h = max(w - 1, 0), max(h - 1, 0)
        step = (min(left, lim_w), min(right, lim_w), min(top, lim_h), min(bottom, lim_h))
        if not any(step):
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step, strict=True))
    return x
