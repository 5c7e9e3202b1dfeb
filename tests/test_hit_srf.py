"""Family-specific behaviour of HiT-SRF (archs/hit_srf.py). Goldens and manifests: test_golden.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import archs
from archs.hit_srf import reflect_pad_to
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2


def _upstream_pad(x: torch.Tensor, win: tuple[int, int]) -> torch.Tensor:
    """HiT-SRF's check_image_size, restated (channels first)."""
    h, w = x.shape[-2:]
    ph, pw = (win[0] - h % win[0]) % win[0], (win[1] - w % win[1]) % win[1]
    first_h, first_w = (h - 1, w - 1) if ph >= h or pw >= w else (0, 0)
    x = F.pad(x, (0, first_w, 0, first_h), "reflect")
    return F.pad(x, (0, pw - first_w, 0, ph - first_h), "reflect")


@pytest.mark.parametrize(("size", "win"), [((19, 27), (8, 8)), ((5, 27), (8, 8)), ((19, 27), (32, 32)),
                                           ((3, 30), (4, 4)), ((11, 27), (32, 32)), ((16, 24), (16, 8))])
def test_two_step_reflect_padding(size: tuple[int, int], win: tuple[int, int]) -> None:
    x = torch.randn(1, 2, *size)
    got = reflect_pad_to(x, win)
    assert got.shape[-2] % win[0] == 0 and got.shape[-1] % win[1] == 0
    assert torch.equal(got, _upstream_pad(x, win))


def test_padding_of_sizes_upstream_refuses() -> None:
    x = torch.randn(1, 2, 7, 9)
    with pytest.raises(RuntimeError):
        _upstream_pad(x, (32, 32))
    got = reflect_pad_to(x, (32, 32))
    assert got.shape[-2:] == (32, 32) and torch.equal(got[..., :13, :17], F.pad(x, (0, 8, 0, 6), "reflect"))
    assert reflect_pad_to(x[..., :1, :], (4, 4)).shape[-2:] == (4, 12)


def test_any_size_and_batch() -> None:
    torch.manual_seed(0)
    model = archs.build("hit_srf", embed_dim=10, depths=[6], num_heads=[1], base_win_size=[2, 2], upscale=2).eval()
    x = torch.rand(2, 3, 5, 9)  # pads up to 16x16 windows: two reflect steps on the rows, one on the columns
    with torch.no_grad():
        both = model(x)
        one = model(x[1:])
    assert both.shape == (2, 3, 10, 18)
    assert rel_l2(both[1:], one) < 1e-5


_SMALL: dict[str, Any] = {"embed_dim": 20, "depths": [2, 3], "num_heads": [2, 2], "base_win_size": [8, 8]}


@pytest.mark.parametrize(
    "kwargs",
    [
        {**_SMALL, "upsampler": "pixelshuffledirect", "upscale": 3},
        {**_SMALL, "upsampler": "pixelshuffle", "upscale": 2, "resi_connection": "3conv", "mlp_ratio": 1.5},
        {**_SMALL, "upsampler": "nearest+conv", "upscale": 4, "ape": True, "img_size": 32},
        {**_SMALL, "upsampler": "", "upscale": 1, "in_chans": 1, "patch_norm": False},
    ],
)
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    with torch.device("meta"):
        sd = archs.build("hit_srf", **kwargs).state_dict()
    found = archs.detect(sd)
    assert [f[0] for f in found] == ["hit_srf"]
    got, want = archs.entry("hit_srf").full_kwargs(found[0][1]), archs.entry("hit_srf").full_kwargs(kwargs)
    for k in ("embed_dim", "depths", "num_heads", "upsampler", "upscale", "resi_connection", "in_chans", "ape",
              "img_size", "patch_norm", "base_win_size"):
        assert got[k] == want[k], k
    assert int(got["mlp_ratio"] * 20) == int(want["mlp_ratio"] * 20)


def test_detector_takes_the_base_window_of_the_published_layout() -> None:
    """The base window is not in the state dict: hit_srf_medium's layout gets 16, hit_srf_large's 24."""
    for depth, base in ((6, 16), (12, 24)):
        kw = {"embed_dim": 180, "depths": [1] * depth, "num_heads": [6] * depth, "upsampler": "pixelshuffle",
              "base_win_size": [base, base], "img_size": 48}
        with torch.device("meta"):
            sd = archs.build("hit_srf", **kw).state_dict()
        assert archs.detect(sd)[0][1]["base_win_size"] == [base, base]


def test_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="hier_win_ratios"):
        archs.build("hit_srf", embed_dim=20, depths=[7], num_heads=[2])
    with pytest.raises(ValueError, match="multiple of the base"):
        archs.build("hit_srf", embed_dim=20, depths=[3], num_heads=[2], hier_win_ratios=[1, 1, 1.5])


def test_descriptor() -> None:
    spec = archs.spec("hit_srf")
    assert (spec.scale, spec.tiling, spec.multiple_of, spec.context) == (4, "global", 1, 64)


def test_half_precision_keeps_the_correlations_in_float32() -> None:
    """The golden's weights make the correlation's output leave the fp16 range (6.6e5 before the post-norm): the
    correlations, their projection and norm1 run in float32, so half-precision output stays finite."""
    model, t, _ = load_golden(GOLDEN / "HIT_SRF__e16_d666_h2_bw4_x4_direct.safetensors")  # skips when absent
    x = t["input"][..., :12, :16]
    try:
        with torch.no_grad():
            out = model.half()(x.half())
    finally:
        model.float()
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
