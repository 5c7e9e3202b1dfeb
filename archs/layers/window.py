"""Window attention plumbing of the Swin family (SwinIR, HAT, DAT, DRCT, ATD, ...), written once.

Conventions are Swin's (microsoft/Swin-Transformer, MIT), which the SR transformers copy:
* maps are channels-last (B, H, W, C) here; windows are (wh, ww) rectangles (an int means square), tokens in
  raster order inside a window, windows in raster order over the map;
* a window shift is a cyclic roll by (-sh, -sw) before partitioning (undone by +sh, +sw after), and the mask
  keeps tokens that were not neighbours before the roll from attending to each other;
* the relative position bias table has (2 wh - 1) * (2 ww - 1) rows, one per (dy, dx) offset between a query
  and a key (dy = y_q - y_k), row index (dy + wh - 1) * (2 ww - 1) + (dx + ww - 1).
H and W must be multiples of the window (pad first).
"""

from __future__ import annotations

import torch


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def window_partition(x: torch.Tensor, window: int | tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, wh, ww, C), windows in raster order (image by image)."""
    b, h, w, c = x.shape
    wh, ww = _pair(window)
    x = x.reshape(b, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, c)


def window_reverse(windows: torch.Tensor, window: int | tuple[int, int], h: int, w: int) -> torch.Tensor:
    """Inverse of window_partition: (B * nW, wh, ww, C) (or (B * nW, wh * ww, C)) -> (B, H, W, C)."""
    wh, ww = _pair(window)
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // wh) * (w // ww))
    x = windows.reshape(b, h // wh, w // ww, wh, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window: int | tuple[int, int]) -> torch.Tensor:
    """(N, N) int64 table rows for every (query, key) token pair of a window, N = wh * ww (Swin's
    `relative_position_index` buffer)."""
    wh, ww = _pair(window)
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(heads, Nq, Nk) bias from a ((2 wh - 1) * (2 ww - 1), heads) table and an (Nq, Nk) index."""
    n_q, n_k = index.shape
    return table[index.reshape(-1)].view(n_q, n_k, -1).permute(2, 0, 1).contiguous()


def shifted_window_mask(
    size: tuple[int, int],
    window: int | tuple[int, int],
    shift: int | tuple[int, int],
    *,
    fill: float = -100.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(nW, N, N) additive attention mask of shifted windows over an (H, W) map: 0 where query and key were
    neighbours before the cyclic shift, `fill` (Swin's -100) where the roll brought them together.

    Swin labels the rows [0, H - wh), [H - wh, H - sh), [H - sh, H) and the columns likewise, and masks pairs with
    different labels; that is the rule computed here (the regions a window can mix are the last two per axis).
    """
    h, w = size
    wh, ww = _pair(window)
    sh, sw = _pair(shift)
    if h % wh or w % ww:
        raise ValueError(f"map {h}x{w} is not a multiple of the window {wh}x{ww}")
    if not (0 <= sh < wh and 0 <= sw < ww):
        raise ValueError(f"shift {(sh, sw)} must be in [0, window) per axis, window {(wh, ww)}")
    rows = torch.zeros(h, dtype=torch.int64, device=device)
    cols = torch.zeros(w, dtype=torch.int64, device=device)
    rows[h - wh:] = 1
    cols[w - ww:] = 1
    if sh:
        rows[h - sh:] = 2
    if sw:
        cols[w - sw:] = 2
    labels = (rows[:, None] * 3 + cols[None, :]).view(1, h, w, 1)
    win = window_partition(labels, (wh, ww)).reshape(-1, wh * ww)  # (nW, N)
    differ = win[:, None, :] != win[:, :, None]
    return torch.zeros(differ.shape, device=device).masked_fill(differ, fill)
