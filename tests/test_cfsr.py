"""CFSR: detection of the upscaling and same-size variants, mean normalisation, and the descriptor."""

from __future__ import annotations

import torch

import archs
from tests.util import rel_l2

SMALL = {"embed_dim": 16, "depths": [1, 2], "dw_size": 5, "mlp_ratio": 2.0}


def test_detect_upscale_and_same_size() -> None:
    with torch.device("meta"):
        up = archs.build("cfsr", **SMALL, upscale=3).state_dict()
        same = archs.build("cfsr", **SMALL, upsampler="conv").state_dict()
    (name, kw), = archs.detect(up)
    assert name == "cfsr" and kw["upscale"] == 3 and kw["depths"] == [1, 2] and kw["dw_size"] == 5
    (name, kw), = archs.detect(same)
    assert name == "cfsr" and kw["upsampler"] != "pixelshuffledirect"
    assert archs.spec("cfsr", **kw).scale == 1


def test_same_size_variant_and_mean_norm() -> None:
    torch.manual_seed(0)
    model = archs.build("cfsr", **SMALL, upsampler="conv").eval()
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        y = model(x)
        assert y.shape == x.shape
        normed = archs.build("cfsr", **SMALL, upsampler="conv", mean_norm=True).eval()
        normed.load_state_dict(model.state_dict())
        assert "mean" not in normed.state_dict()
        mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
        assert rel_l2(normed(x), model(x - mean) + mean) <= 1e-6


def test_descriptor() -> None:
    s = archs.spec("cfsr")
    assert s.scale == 4 and s.tiling == "safe" and s.context == 1 + 12 * 5 + 2
