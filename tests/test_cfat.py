"""CFAT (archs/cfat.py): masks and triangles, size handling, refusals, detection against HAT's identical layout.
Golden and manifest: tests/test_golden.py."""

from __future__ import annotations

import json
import lzma
from typing import Any

import pytest
import torch

import archs
from archs import cfat
from archs.layers.window import shifted_window_mask
from tests.conftest import GOLDEN
from tests.util import expected_detections

TINY: dict[str, Any] = {"embed_dim": 8, "depths": [2, 2], "num_heads": [2, 2], "window_size": 4, "shift_size": [0, 8],
                        "interval": [0, 2], "squeeze_factor": 4, "img_size": 16, "upscale": 2, "conv_scale": 1.0}


def test_shift_mask_matches_swin_below_the_window_and_upstream_slices_above() -> None:
    assert torch.equal(cfat.shift_mask((32, 48), 16, 8), shifted_window_mask((32, 48), 16, 8))
    # shift 24 >= window 16: the slice [-16, -24) is empty and [-24, end) overrides the last 24 rows
    m = cfat.shift_mask((64, 64), 16, 24)
    rows = torch.zeros(64, dtype=torch.long)
    rows[40:] = 2
    lab = (rows[:, None] * 3 + rows[None, :]).reshape(4, 16, 4, 16).permute(0, 2, 1, 3).reshape(16, 256)
    assert torch.equal(m != 0, lab[:, None, :] != lab[:, :, None])


def test_triangles_partition_the_square_in_upstream_order() -> None:
    order = cfat.triangle_order(8)
    assert order.numel() == 256 and order[:15].tolist() == list(range(1, 16))  # upper triangle, first row
    pos = torch.arange(32 * 32).view(1, 32, 32, 1).float()
    win = cfat._partition(pos, 8, True, order)
    assert win.shape == (16, 64, 1)
    # window 0 is the upper triangle of the top-left 16 x 16 square, raster order
    assert win[0, :15, 0].tolist() == list(range(1, 16)) and win[0, 15, 0] == 32 + 2
    assert torch.equal(cfat._reverse(win, 8, True, order, 32, 32), pos)


def test_padding_refusals_and_descriptor() -> None:
    torch.manual_seed(0)
    model = archs.build("CFAT", **TINY).eval()
    assert model.size_multiple == 16
    with torch.no_grad():
        out = model(torch.rand(1, 3, 13, 21))
    assert out.shape == (1, 3, 26, 42) and torch.isfinite(out).all()
    assert archs.spec("cfat", **TINY).multiple_of == 16
    with pytest.raises(ValueError, match="shift_size entries"):
        archs.build("CFAT", **{**TINY, "shift_size": [0, 4]})
    with pytest.raises(ValueError, match="interval"):
        archs.build("CFAT", **{**TINY, "interval": [0, 0]})
    with pytest.raises(ValueError, match="upsampler"):
        archs.build("CFAT", **{**TINY, "upsampler": "pixelshuffledirect"})


@pytest.mark.parametrize("kwargs", [
    {"embed_dim": 12, "depths": [8], "num_heads": [3], "window_size": 4, "upscale": 3, "squeeze_factor": 4},
    {"embed_dim": 12, "depths": [8, 8, 8], "num_heads": [2, 3, 4], "window_size": 8, "overlap_ratio": 0.25,
     "compress_ratio": 2, "squeeze_factor": 6, "mlp_ratio": 4.0, "in_chans": 1, "upscale": 2},
    {"embed_dim": 12, "depths": [8, 8], "num_heads": [2, 2], "window_size": 4, "ape": True, "img_size": 32,
     "squeeze_factor": 3, "patch_norm": False, "resi_connection": "identity"},
])
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    with torch.device("meta"):
        sd = archs.build("cfat", **kwargs).state_dict()
    found = archs.detect(sd)
    assert sorted(n for n, _ in found) == expected_detections("cfat")  # HAT claims it too where registered
    full = archs.entry("cfat").full_kwargs
    want, got = full(kwargs), full(next(kw for n, kw in found if n == "cfat"))
    want["interval"] = got["interval"] = [0, 2] * 2  # only the sparse groups' entries matter (defaults)
    def norm(d: dict[str, Any]) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    assert norm(want) == norm(got)


def test_hat_layouts_are_not_claimed() -> None:
    """HAT's layout equals CFAT's; CFAT only claims its own published structure (8-block groups)."""
    with torch.device("meta"):
        sd = archs.build("cfat", **{**TINY, "depths": [6, 6], "shift_size": [0] * 6}).state_dict()
    assert cfat._detect(sd) is None
    path = GOLDEN / "HAT__team18_hatl_x4.keys.json.xz"
    if path.is_file():
        with lzma.open(path, "rt") as f:
            doc = json.load(f)
        assert cfat._detect({k: torch.empty(v, device="meta") for k, v in doc["state_dict"].items()}) is None


def test_cfat_layout_is_an_ambiguity_where_hat_is_registered() -> None:
    from restore_cli import loading
    from restore_cli.errors import WeightsError

    with torch.device("meta"):
        sd = archs.build("cfat", **{**TINY, "depths": [8, 8], "shift_size": [0] * 8}).state_dict()
    if "hat" not in archs.names():
        assert [n for n, _ in archs.detect(sd)] == ["cfat"]
        return
    with pytest.raises(WeightsError, match="ambiguous"):
        loading.detect_arch(sd, where="w.pth")
