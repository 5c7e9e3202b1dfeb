"""archs/layers/swin.py: the shared window attention pieces against their explicit formulas."""

from __future__ import annotations

import torch

from archs.layers.swin import attend, block_window, oca_relative_position_index
from archs.layers.window import shifted_window_mask


def test_attend_matches_the_explicit_softmax_per_image() -> None:
    """Two images of 4 windows each, with bias and shifted mask: softmax(q k^T s + bias + mask) v."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 2, 16, 4, generator=g) for _ in range(3))
    bias = torch.randn(2, 16, 16, generator=g)
    mask = shifted_window_mask((8, 8), 4, 2)  # (4, 16, 16)
    scores = q @ k.transpose(-2, -1) * 0.5 + bias + mask.repeat(2, 1, 1).unsqueeze(1)
    want = scores.softmax(-1) @ v
    assert torch.allclose(attend(q, k, v, bias, mask, 0.5), want, atol=1e-5)
    assert torch.allclose(attend(q, k, v, bias, None, 0.5), (q @ k.transpose(-2, -1) * 0.5 + bias).softmax(-1) @ v,
                          atol=1e-5)


def test_oca_index_rows() -> None:
    """Query (y, x) in a 2x2 window, key (Y, X) in the 4x4 overlapping window: (Y - y - 1) * 5 + (X - x - 1), as
    HAT's calculate_rpi_oca computes it (offset ws - ows + 1 = -1). Some rows are negative there too: table
    indexing wraps them, and checkpoints store this buffer, so the values are kept as they are."""
    idx = oca_relative_position_index(2, 4)
    assert idx.shape == (4, 16)
    for qi in range(4):
        for ki in range(16):
            (y, x), (yy, xx) = divmod(qi, 2), divmod(ki, 4)
            assert int(idx[qi, ki]) == (yy - y - 1) * 5 + (xx - x - 1)


def test_block_window_rule() -> None:
    assert block_window((64, 64), 16, 8) == (16, 8)
    assert block_window((16, 32), 16, 8) == (16, 0)  # the map is no larger than the window: whole map, no shift
    assert block_window((8, 8), 16, 8) == (8, 0)
