"""The helper layer (archs/layers): window plumbing against direct reference computations, padding modes,
detector helpers, DySample and DropPath."""

from __future__ import annotations

import itertools

import pytest
import torch

from archs.layers.detect import (
    count_indexed,
    pixel_shuffle_scale,
    ratio_for,
    same_keys_and_shapes,
    scale_and_out_channels,
)
from archs.layers.drop import DropPath
from archs.layers.padding import pad_to_multiple
from archs.layers.upsample import DySample, Upsample, UpsampleOneStep
from archs.layers.window import (
    relative_position_bias,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

WINDOWS = [(2, 2), (2, 3), (4, 4), (3, 2)]

# ---------------------------------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize("window", WINDOWS)
def test_window_partition_is_raster_order_of_crops(window: tuple[int, int]) -> None:
    wh, ww = window
    b, h, w, c = 2, 3 * wh, 2 * ww, 5
    x = torch.randn(b, h, w, c)
    want = torch.stack([x[n, y:y + wh, x0:x0 + ww] for n in range(b) for y in range(0, h, wh)
                        for x0 in range(0, w, ww)])
    got = window_partition(x, window if wh != ww else wh)
    assert torch.equal(got, want)
    assert torch.equal(window_reverse(got, window, h, w), x)
    assert torch.equal(window_reverse(got.flatten(1, 2), window, h, w), x)  # token form (B * nW, N, C)
    # an NCHW map seen channels-last (a strided view) partitions the same way
    nchw = x.permute(0, 3, 1, 2).contiguous()
    assert torch.equal(window_partition(nchw.permute(0, 2, 3, 1), window), want)


@pytest.mark.parametrize("window", WINDOWS)
def test_relative_position_index_by_definition(window: tuple[int, int]) -> None:
    wh, ww = window
    got = relative_position_index(window)
    tokens = [(y, x) for y in range(wh) for x in range(ww)]
    want = torch.tensor([[(yq - yk + wh - 1) * (2 * ww - 1) + (xq - xk + ww - 1) for (yk, xk) in tokens]
                         for (yq, xq) in tokens])
    assert torch.equal(got, want)
    assert got.dtype == torch.int64 and int(got.max()) == (2 * wh - 1) * (2 * ww - 1) - 1 and int(got.min()) == 0
    assert (got.diagonal() == (wh - 1) * (2 * ww - 1) + ww - 1).all()  # offset (0, 0) is the table's centre row


def test_relative_position_index_square_matches_swin_buffer() -> None:
    """Swin's published 2x2 index (Swin-Transformer `relative_position_index` for window 2)."""
    want = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), want)


def test_relative_position_bias_gathers_the_table() -> None:
    window, heads = (3, 2), 4
    table = torch.randn((2 * 3 - 1) * (2 * 2 - 1), heads)
    index = relative_position_index(window)
    bias = relative_position_bias(table, index)
    assert bias.shape == (heads, 6, 6)
    for h, p, q in itertools.product(range(heads), range(6), range(6)):
        assert bias[h, p, q] == table[index[p, q], h]


def _mask_reference(h: int, w: int, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """By definition: after torch.roll(x, (-sh, -sw)), rolled row i holds original row (i + sh) mod H, which
    wrapped around the border iff i >= H - sh (columns likewise). Two tokens of a window may attend iff they wrapped
    alike on both axes, i.e. they were neighbours in the original image."""
    wh, ww = window
    sh, sw = shift
    out = []
    for y0 in range(0, h, wh):
        for x0 in range(0, w, ww):
            toks = [(y0 + i, x0 + j) for i in range(wh) for j in range(ww)]
            flags = [(y >= h - sh if sh else False, x >= w - sw if sw else False) for y, x in toks]
            out.append([[0.0 if fp == fq else -100.0 for fq in flags] for fp in flags])
    return torch.tensor(out)


@pytest.mark.parametrize(("size", "window", "shift"), [
    ((8, 8), (4, 4), (2, 2)),
    ((8, 12), (4, 4), (2, 2)),
    ((6, 9), (2, 3), (1, 1)),
    ((12, 8), (4, 4), (3, 1)),
    ((8, 8), (4, 4), (0, 2)),
    ((8, 8), (4, 4), (2, 0)),
    ((4, 4), (4, 4), (2, 2)),
])
def test_shifted_window_mask_by_definition(size: tuple[int, int], window: tuple[int, int],
                                          shift: tuple[int, int]) -> None:
    got = shifted_window_mask(size, window, shift)
    assert torch.equal(got, _mask_reference(*size, window, shift))


def test_shifted_window_mask_square_ints_and_first_windows_open() -> None:
    mask = shifted_window_mask((8, 8), 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the first window never mixes wrapped pixels
    assert (mask[3] != 0).any() and torch.equal(mask, mask.transpose(1, 2))
    assert (shifted_window_mask((8, 8), 4, 0) == 0).all()


def test_shifted_window_attention_equals_attention_among_original_neighbours() -> None:
    """Masked attention in shifted windows, rolled back, equals attention where every pixel attends to the pixels of
    its shifted window that were its neighbours before the roll (computed pixel by pixel on the original map)."""
    torch.manual_seed(0)
    h, w, ws, sh, c = 8, 12, 4, 2, 3
    x = torch.randn(1, h, w, c)
    rolled = torch.roll(x, (-sh, -sh), dims=(1, 2))
    win = window_partition(rolled, ws).flatten(1, 2)  # (nW, N, C)
    logits = win @ win.transpose(1, 2) + shifted_window_mask((h, w), ws, sh)
    out = window_reverse(logits.softmax(-1) @ win, ws, h, w)
    out = torch.roll(out, (sh, sh), dims=(1, 2))
    ref = torch.empty_like(x)
    for y, x0 in itertools.product(range(h), range(w)):
        ry, rx = (y - sh) % h, (x0 - sh) % w  # position in the rolled map
        wy, wx = ry // ws * ws, rx // ws * ws
        keys = []
        for ky, kx in itertools.product(range(wy, wy + ws), range(wx, wx + ws)):
            oy, ox = (ky + sh) % h, (kx + sh) % w  # the key's original position
            same = (ky >= h - sh) == (ry >= h - sh) and (kx >= w - sh) == (rx >= w - sh)
            if same:
                keys.append(x[0, oy, ox])
        k = torch.stack(keys)
        ref[0, y, x0] = (k @ x[0, y, x0]).softmax(0) @ k
    assert torch.allclose(out, ref, atol=1e-5)


def test_shifted_window_mask_refusals() -> None:
    with pytest.raises(ValueError, match="multiple"):
        shifted_window_mask((10, 8), 4, 2)
    with pytest.raises(ValueError, match="shift"):
        shifted_window_mask((8, 8), 4, 4)


# ---------------------------------------------------------------------------------------------------------------------
# padding


def test_pad_to_multiple_modes() -> None:
    x = torch.arange(1.0, 1 + 5 * 6).view(1, 1, 5, 6)
    assert pad_to_multiple(x, 1, mode="reflect") is x
    assert pad_to_multiple(x[..., :4, :4], 4, mode="zeros").shape == (1, 1, 4, 4)
    zeros = pad_to_multiple(x, 4, mode="zeros")
    assert zeros.shape == (1, 1, 8, 8) and torch.equal(zeros[..., :5, :6], x) and zeros[..., 5:, :].abs().sum() == 0
    reflect = pad_to_multiple(x, 4, mode="reflect")
    assert torch.equal(reflect[..., 5, :6], x[..., 3, :]) and torch.equal(reflect[..., :5, 6], x[..., :, 4])
    replicate = pad_to_multiple(x, 4, mode="replicate")
    assert torch.equal(replicate[..., 7, :6], x[..., 4, :])
    # reflect_or_replicate: reflect while the pad is smaller than the side, else replicate
    assert torch.equal(pad_to_multiple(x, 4, mode="reflect_or_replicate"), reflect)
    tiny = x[..., :2, :2]
    replicated = pad_to_multiple(tiny, 8, mode="replicate")
    assert torch.equal(pad_to_multiple(tiny, 8, mode="reflect_or_replicate"), replicated)
    # min_size: at least that many pixels, still a multiple
    assert pad_to_multiple(x, 4, mode="zeros", min_size=16).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="pad mode"):
        pad_to_multiple(x, 4, mode="circular")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# detector helpers


def test_pixel_shuffle_inference() -> None:
    assert pixel_shuffle_scale(48, 3) == 4 and pixel_shuffle_scale(27, 3) == 3 and pixel_shuffle_scale(3, 3) == 1
    assert pixel_shuffle_scale(50, 3) is None and pixel_shuffle_scale(24, 3) is None
    assert pixel_shuffle_scale(4, 0) is None
    assert scale_and_out_channels(48) == (4, 3) and scale_and_out_channels(16) == (4, 1)
    assert scale_and_out_channels(12, (1, 3)) == (2, 3) and scale_and_out_channels(7) is None


def test_count_indexed_and_ratio() -> None:
    sd = {f"body.{i}.conv.weight": torch.zeros(1) for i in range(3)} | {"body.12.conv.weight": torch.zeros(1)}
    assert count_indexed(sd, "body.{}.") == 3
    assert count_indexed(sd, "body.{}.conv.weight", start=1) == 2
    assert count_indexed(sd, "head.{}.") == 0
    for hidden, dim in ((96, 64), (127, 48), (170, 64)):
        assert int(ratio_for(hidden, dim) * dim) == hidden


def test_same_keys_and_shapes() -> None:
    sd = torch.nn.Conv2d(3, 4, 3).state_dict()
    assert same_keys_and_shapes(lambda: torch.nn.Conv2d(3, 4, 3), sd)
    assert not same_keys_and_shapes(lambda: torch.nn.Conv2d(3, 4, 5), sd)
    assert not same_keys_and_shapes(lambda: torch.nn.Conv2d(3, 4, 3, bias=False), sd)
    assert not same_keys_and_shapes(lambda: torch.nn.Conv2d(3, 4, 3, groups=2), sd)  # build error: no match


# ---------------------------------------------------------------------------------------------------------------------
# blocks


def test_dysample_shapes_and_groups() -> None:
    for scale, groups in ((2, 4), (3, 3), (4, 4)):
        up = DySample(3 * scale**2, 3, scale, groups=groups)
        assert tuple(up.init_pos.shape) == (1, 2 * groups * scale**2, 1, 1)
        assert up(torch.rand(2, 3 * scale**2, 5, 7)).shape == (2, 3, 5 * scale, 7 * scale)
    with pytest.raises(ValueError):
        DySample(10, 3, 2, groups=4)


def test_dysample_at_init_is_bilinear_sampling_at_subpixel_centres() -> None:
    """Zero offsets:  each output pixel samples the input bilinearly at its own centre, which
    is what F.interpolate(bilinear, align_corners=False) computes (border pixels replicated); bfloat16 runs too."""
    up = DySample(8, 8, 2, groups=4, end_convolution=False)
    with torch.no_grad():
        up.offset.weight.zero_()
        up.offset.bias.zero_()
    x = torch.rand(1, 8, 5, 6)
    want = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(up(x), want, atol=1e-6)
    assert up.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


def test_swinir_upsamplers() -> None:
    assert [type(m).__name__ for m in Upsample(4, 8)] == ["Conv2d", "PixelShuffle"] * 2
    assert Upsample(3, 8)(torch.rand(1, 8, 4, 5)).shape == (1, 8, 12, 15)
    with pytest.raises(ValueError, match="2\\^n and 3"):
        Upsample(5, 8)
    assert UpsampleOneStep(3, 8, 1)(torch.rand(1, 8, 4, 5)).shape == (1, 1, 12, 15)


def test_drop_path() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(4000, 2)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0} and abs(y.mean().item() - 1) < 0.1
    assert torch.equal(DropPath(0.0).train()(x), x)
