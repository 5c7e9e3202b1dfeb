"""MicroSR (archs/microsr.py): DRCT's layout and maths, detection, sizes, refusals.
Golden and manifests: tests/test_golden.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

import archs
from archs import microsr
from tests.conftest import GOLDEN
from tests.util import read_golden, recipe_state_dict, rel_l2

TINY: dict[str, Any] = {"embed_dim": 12, "depths": [1, 1], "num_heads": [2, 3], "window_size": 4, "gc": 4,
                        "img_size": 16, "upscale": 2, "upsampler": "pixelshuffle", "mlp_ratio": 2.0}


def test_drct_golden_is_reproduced() -> None:
    """MicroSR is DRCT (drct/arch.py) under another name: the DRCT golden (19x27 input, reflect padded inside)."""
    t, meta = read_golden(GOLDEN / "DRCT__e16_rdg3_h2_w4_gc8_x4.safetensors")
    model = archs.build("MicroSR", **json.loads(meta["kwargs"]))
    model.load_state_dict(recipe_state_dict(t, meta), strict=True)
    with torch.no_grad():
        out = model.eval()(t["input"])
    assert rel_l2(out, t["output"]) <= 1e-4


def test_registry_leaves_detection_to_drct() -> None:
    """No MicroSR detector: its checkpoints are DRCT's, detected as DRCT where that family is registered."""
    assert archs.entry("microsr").detect is None
    with torch.device("meta"):
        sd = archs.build("microsr", **TINY).state_dict()
    found = [n for n, _ in archs.detect(sd)]
    assert found == (["drct"] if "drct" in archs.names() else [])


@pytest.mark.parametrize("kwargs", [
    {},
    {"embed_dim": 10, "num_heads": [3, 4], "gc": 3, "in_chans": 1, "upscale": 3, "img_size": 8},
    {"ape": True, "patch_norm": False, "resi_connection": "identity", "upscale": 4, "depths": [6, 6, 6]},
])
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    kw = {**TINY, **kwargs}
    if "depths" in kwargs:
        kw["num_heads"] = [2, 3, 2]
    with torch.device("meta"):
        sd = archs.build("microsr", **kw).state_dict()
    found = microsr._detect(sd)
    assert found is not None
    with torch.device("meta"):
        again = archs.build("microsr", **found).state_dict()
    assert {k: v.shape for k, v in again.items()} == {k: v.shape for k, v in sd.items()}
    assert found["num_heads"] == kw["num_heads"] and found["upscale"] == kw["upscale"]


def test_sizes_and_refusals() -> None:
    torch.manual_seed(0)
    model = archs.build("microsr", **TINY).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 10, 13))  # padded to 12 x 16 inside (not the img_size: masks computed)
    assert out.shape == (1, 3, 20, 26) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="upsampler"):
        archs.build("MicroSR")  # upstream default upsampler '' returns the input
    assert archs.spec("microsr", **TINY).multiple_of == 4
