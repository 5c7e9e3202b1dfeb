"""Family-specific behaviour of HMA (archs/hma.py). Golden outputs and the official manifests are checked
registry-wide in tests/test_golden.py."""

from __future__ import annotations

import json

import pytest
import torch

import archs
from archs.hma import grid_shuffle, grid_unshuffle
from tests.conftest import GOLDEN
from tests.util import read_golden, recipe_state_dict

NAME = "HMA__e16_d222_h2_w4_i2_x4.safetensors"


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_golden_state_dict_is_detected() -> None:
    t, meta = read_golden(GOLDEN / NAME)
    found = archs.detect(recipe_state_dict(t, meta))
    assert [n for n, _ in found] == ["hma"]
    want = archs.entry("hma").full_kwargs(json.loads(meta["kwargs"]))
    got = archs.entry("hma").full_kwargs(found[0][1])
    # not stored: interval_size (detection takes the published 4; this golden uses 2), drop rates, img_size
    assert {k for k in want if want[k] != got[k]} <= {"interval_size", "drop_path_rate", "img_size"}


def test_grid_shuffle_round_trip_and_layout() -> None:
    x = torch.arange(2 * 8 * 12 * 3, dtype=torch.float32).reshape(2, 8, 12, 3)
    g = grid_shuffle(x, 4)
    assert g.shape == (2 * 16, 2, 3, 3)
    assert torch.equal(g[1], x[0, 0::4, 1::4])  # offset (0, 1) of the first image: every 4th pixel
    assert torch.equal(grid_unshuffle(g, 2, 8, 12, 4), x)


def test_size_rule_and_descriptor() -> None:
    kw = {"embed_dim": 16, "depths": [1], "num_heads": [2], "window_size": 4, "interval_size": 8, "img_size": 16}
    spec = archs.spec("hma", **kw)
    assert (spec.multiple_of, spec.min_size, spec.scale, spec.tiling) == (8, 8, 4, "global")
    model = archs.build("hma", **kw).eval()
    with pytest.raises(ValueError, match="not a multiple of 8"):
        model(torch.rand(1, 3, 12, 16))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 16)).shape == (1, 3, 32, 64)
