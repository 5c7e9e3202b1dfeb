"""LKFMixer and DIS (archs/lkfmixer.py, archs/dis.py): detector round trips, DIS tiles equal the whole image,
LKFMixer padding, argument checks. Goldens and manifests: tests/test_golden.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from tests.util import rel_l2


def _meta_sd(name: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return archs.build(name, **kwargs).state_dict()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lkfmixer", {}),
        ("lkfmixer", {"channels": 16, "num_block": 2, "large_kernel": 7, "upscale": 3, "split_factor": 0.5}),
        ("lkfmixer", {"channels": 16, "num_block": 1, "large_kernel": 9, "upscale": 2, "in_channels": 1,
                      "out_channels": 1}),
        ("dis", {}),
        ("dis", {"num_features": 16, "num_blocks": 3, "scale": 3, "use_depthwise": True}),
        ("dis", {"num_features": 16, "num_blocks": 2, "scale": 1}),
        ("dis", {"num_features": 8, "num_blocks": 12, "scale": 2, "in_channels": 1, "out_channels": 1}),
    ],
)
def test_detector_round_trip(name: str, kwargs: dict[str, Any]) -> None:
    sd = _meta_sd(name, **kwargs)
    found = archs.detect(sd)
    assert [f[0] for f in found] == [name]
    assert archs.entry(name).full_kwargs(found[0][1]) == archs.entry(name).full_kwargs(kwargs)


@pytest.mark.parametrize("kwargs", [{"num_features": 8, "num_blocks": 2, "scale": 4},
                                    {"num_features": 8, "num_blocks": 3, "scale": 3, "use_depthwise": True}])
def test_dis_tile_with_context_equals_whole_image(kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = archs.build("dis", **kwargs).eval()
    spec = archs.spec("dis", **kwargs)
    c, s = spec.context, spec.scale
    x = torch.rand(1, 3, 2 * c + 10, 2 * c + 12)
    with torch.no_grad():
        whole = model(x)
        tile = model(x[..., 1:c + 6 + c + 1, 2:c + 7 + c + 2])  # core (c+1, c+2) of 6 x 7, c of margin around it
    core = tile[..., c * s:(c + 6) * s, c * s:(c + 7) * s]
    assert rel_l2(core, whole[..., (c + 1) * s:(c + 7) * s, (c + 2) * s:(c + 9) * s]) < 1e-5


def test_lkfmixer_pads_to_eight_and_crops() -> None:
    torch.manual_seed(0)
    model = archs.build("lkfmixer", channels=8, num_block=1, large_kernel=5, upscale=2).eval()
    with torch.no_grad():
        for h, w in ((5, 7), (17, 9)):
            out = model(torch.rand(1, 3, h, w))
            assert out.shape == (1, 3, 2 * h, 2 * w) and torch.isfinite(out).all()
    assert archs.spec("lkfmixer").multiple_of == 8 and archs.spec("lkfmixer").tiling == "global"


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="scale"):
        archs.build("dis", scale=8)
    with pytest.raises(ValueError, match="in_channels"):
        archs.build("dis", out_channels=1)
    with pytest.raises(ValueError, match="odd"):
        archs.build("lkfmixer", large_kernel=8)
