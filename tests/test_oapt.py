"""OAPT_gt (archs/oapt.py): offset handling, block schedule, sizes, detection.
Golden (offset (3, 5)) and manifest: tests/test_golden.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from archs import oapt
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

TINY: dict[str, Any] = {"in_chans": 1, "embed_dim": 8, "depths": [4], "num_heads": [2], "window_size": 4,
                        "img_size": 16, "img_range": 255.0, "mlp_ratio": 2.0}


@pytest.mark.parametrize("mode,dense_first,offset_blocks,shifted", [
    ("interval", True, [1, 3], [2, 3]),
    ("interval", False, [0, 2], [2, 3]),
    ("non-interval", True, [2, 3], [1, 3]),
    ("non-interval", False, [0, 1], [1, 3]),
])
def test_block_schedule(mode: str, dense_first: bool, offset_blocks: list[int], shifted: list[int]) -> None:
    model = archs.build("OAPT_gt", **{**TINY, "mode": mode, "DenseFirstPositions": dense_first})
    group = model.layers[0].residual_group
    assert [i for i in range(4) if group.uses_offset(i)] == offset_blocks
    assert [i for i, b in enumerate(group.blocks) if b.shift_size] == shifted


def test_offsets_default_and_refusals() -> None:
    model, t, _ = load_golden(GOLDEN / "OAPT_gt__c1_e16_d222_h2_w4_interval_dense1_off3-5.safetensors")
    x = t["input"]
    with torch.no_grad():
        plain = model(x)  # self.offset = (0, 0): every block is a plain Swin block
        assert torch.equal(plain, model(x, torch.tensor([[0.2, -0.3]])))  # rounded, as upstream
        model.offset = torch.tensor([[3.0, 5.0]])
        assert rel_l2(model(x), t["output"]) <= 1e-4
        assert rel_l2(plain, t["output"]) > 1e-3
        model.offset = (0, 0)
        with pytest.raises(ValueError, match=r"0\.\.7"):
            model(x, torch.tensor([[8.0, 0.0]]))


@pytest.mark.parametrize("offset", [(0, 3), (5, 0), (7, 7)])
def test_unaligned_sizes_run(offset: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = archs.build("OAPT_gt", **TINY).eval()
    x = torch.rand(1, 1, 21, 30)  # neither a multiple of 8 nor of the window: padded inside, as upstream
    with torch.no_grad():
        out = model(x, torch.tensor([offset], dtype=torch.float32))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs", [
    {"mode": "interval"},
    {"mode": "non-interval", "depths": [2, 4], "num_heads": [2, 4]},
    {"mode": "non-interval", "in_chans": 3, "img_range": 1.0, "resi_connection": "3conv", "ape": True},
])
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    kw = {**TINY, **kwargs}
    with torch.device("meta"):
        sd = archs.build("oapt_gt", **kw).state_dict()
    found = archs.detect(sd)
    assert [n for n, _ in found] == ["oapt_gt"]
    got = found[0][1]
    assert got["mode"] == kw["mode"] and got["img_range"] == kw["img_range"] and got["depths"] == kw["depths"]


def test_refusals_and_descriptor() -> None:
    with pytest.raises(ValueError, match="upsampler"):
        archs.build("OAPT_gt", **{**TINY, "upsampler": "pixelshuffle"})
    spec = archs.spec("OAPT", **TINY)
    assert (spec.scale, spec.multiple_of, spec.tasks, spec.in_channels) == (1, 8, ("restore",), 1)
    assert oapt._detect({}) is None
