"""Family-specific behaviour of OSRT (archs/osrt.py) and the deformable helpers it uses (archs/layers/deform.py).
Goldens and manifests: test_golden.py."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import archs
from archs.layers import deform
from archs.osrt import cos_latitude
from tests.conftest import GOLDEN
from tests.util import golden_inputs, load_golden, rel_l2

OSRT_GOLDEN = GOLDEN / "OSRT__e16_d22_h2_w8_vit3conv_dcn2conv_wc_x4.safetensors"


@functools.cache
def _golden() -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    return load_golden(OSRT_GOLDEN)


# ------------------------------------------------------------------------------------------------- deformable conv


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups"), [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 2)])
def test_deform_conv_with_zero_offsets_is_a_convolution(stride: int, padding: int, dilation: int, groups: int) -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 7, 9), torch.randn(6, 4 // groups, 3, 3), torch.randn(6)
    ho = (7 + 2 * padding - 2 * dilation - 1) // stride + 1
    wo = (9 + 2 * padding - 2 * dilation - 1) // stride + 1
    out = deform.deform_conv2d_reference(x, torch.zeros(2, 2 * 2 * 9, ho, wo), w, b, stride, padding, dilation,
                                         torch.ones(2, 2 * 9, ho, wo))
    assert rel_l2(out, F.conv2d(x, w, b, stride, padding, dilation, groups)) < 1e-6


def test_deform_conv_samples_bilinearly_with_zeros_outside() -> None:
    """A uniform offset of (+1, 0) reads one row down (zeros past the bottom); (+0.5, 0) averages two rows; the
    mask scales each tap."""
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 2, 6, 5), torch.randn(3, 2, 3, 3), torch.randn(3)
    off = torch.zeros(1, 18, 6, 5)
    off[:, 0::2] = 1.0
    want = F.conv2d(F.pad(x, (1, 1, 0, 2)), w, b)
    assert rel_l2(deform.deform_conv2d_reference(x, off, w, b, padding=1), want) < 1e-6
    off[:, 0::2] = 0.5
    mean = (x + F.pad(x[:, :, 1:], (0, 0, 0, 1))) / 2
    got = deform.deform_conv2d_reference(x, off, w, b, padding=1, mask=torch.full((1, 9, 6, 5), 0.5))
    want = 0.5 * F.conv2d(F.pad(mean, (1, 1, 1, 1)), w) + b.view(1, -1, 1, 1)
    assert rel_l2(got[:, :, 1:], want[:, :, 1:]) < 1e-6  # row 0 reads the half-sample at -0.5, not zero padding


def test_deform_conv_matches_torchvision_where_installed() -> None:
    op = deform._torchvision_op()
    if op is None:
        pytest.skip("torchvision's deform_conv2d is not available here")
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 8, 7), torch.randn(6, 2, 3, 3), torch.randn(6)
    off, mask = 3 * torch.randn(2, 2 * 2 * 9, 8, 7), torch.rand(2, 2 * 9, 8, 7)
    assert rel_l2(deform.deform_conv2d_reference(x, off, w, b, 1, 1, 1, mask), op(x, off, w, b, (1, 1), (1, 1),
                                                                                   (1, 1), mask)) < 1e-5


def test_dcnv2pack_starts_as_its_convolution() -> None:
    torch.manual_seed(0)
    m = deform.DCNv2Pack(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        # zero offsets and a sigmoid(0) = 0.5 mask: half the plain convolution, plus the bias
        want = 0.5 * F.conv2d(x, m.weight, None, 1, 1) + m.bias.view(1, -1, 1, 1)
        assert rel_l2(m(x, torch.randn(1, 4, 5, 6)), want) < 1e-6


# -------------------------------------------------------------------------------------------------------- the model


def test_default_condition_is_upstreams_cos_latitude() -> None:
    """Upstream's get_condition(h, w, 'cos_latitude'): cos(make_coord([h]) * pi / 2), grid centres in (-1, 1)."""
    h, w = 6, 3
    r = 1 / h
    centres = -1 + r + 2 * r * torch.arange(h, dtype=torch.float32)
    want = torch.cos(centres * math.pi / 2).view(1, 1, h, 1).expand(2, 1, h, w)
    assert torch.allclose(cos_latitude(h, w, batch=2), want, atol=1e-7)
    model, t, meta = _golden()
    x = t["input"]
    with torch.no_grad():
        assert rel_l2(model(x), model(x, cos_latitude(16, 24))) == 0.0
        assert rel_l2(model(*golden_inputs(t, meta)), t["output"]) < 1e-5


def test_sizes_off_the_window_are_padded_and_cropped() -> None:
    model, t, _ = _golden()
    x = t["input"][..., :13, :21]
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 3, 52, 84) and torch.isfinite(out).all()


_SMALL: dict[str, Any] = {"embed_dim": 16, "depths": [2, 2], "num_heads": [2, 2], "window_size": 8, "img_size": 16,
                          "mlp_ratio": 2.0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {**_SMALL, "upsampler": "pixelshuffle", "upscale": 4, "vit_condition": [1, 2], "vit_condition_type": "3conv",
         "dcn_condition": [1, 1, 1], "dcn_condition_type": "2conv", "window_condition": True, "c_dim": 16},
        {**_SMALL, "upsampler": "pixelshuffledirect", "upscale": 2, "vit_condition": [2, 0],
         "vit_condition_type": "2conv", "dcn_condition": [0, 1, 0], "condition_dim": 2, "c_dim": 8},
        {**_SMALL, "upsampler": "nearest+conv", "upscale": 4, "vit_condition": [1, 1], "window_condition": True,
         "dcn_condition": [1, 0, 1], "resi_connection": "3conv"},
        {**_SMALL, "upsampler": "", "upscale": 1, "window_size": 4, "img_size": 32, "in_chans": 1},
    ],
)
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    with torch.device("meta"):
        sd = archs.build("osrt", **kwargs).state_dict()
    found = archs.detect(sd)
    assert [f[0] for f in found] == ["osrt"]
    got, want = archs.entry("osrt").full_kwargs(found[0][1]), archs.entry("osrt").full_kwargs(kwargs)
    for k in ("embed_dim", "depths", "num_heads", "window_size", "img_size", "upsampler", "vit_condition",
              "window_condition", "condition_dim", "resi_connection", "in_chans"):
        assert got[k] == want[k], k


def test_detector_rejects_a_near_miss() -> None:
    with torch.device("meta"):
        sd = dict(archs.build("osrt", **_SMALL, upsampler="pixelshuffle", upscale=2).state_dict())
    del sd["layers.1.residual_group.blocks.0.attn.q.bias"]
    assert archs.detect(sd) == []


def test_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="window_size 8"):
        archs.build("osrt", embed_dim=16, depths=[1], num_heads=[2], window_size=4, vit_condition=[1],
                    window_condition=True)
    with pytest.raises(ValueError, match="nearest\\+conv"):
        archs.build("osrt", embed_dim=16, depths=[1], num_heads=[2], upsampler="nearest+conv", upscale=2)


def test_descriptor() -> None:
    spec = archs.spec("osrt", upsampler="pixelshuffle", upscale=4, window_size=8)
    assert (spec.scale, spec.tiling, spec.multiple_of, spec.tasks) == (4, "global", 1, ("upscale",))
