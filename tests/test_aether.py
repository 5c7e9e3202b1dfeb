"""Aether: fuse_model() against the golden's aux.fused, the fused checkpoint layout (fused_init) loading and
detection, the runtime fusion of unfused models, the two versions (aether / aether_core) and their one ambiguous
layout, and the descriptor."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from restore_cli.errors import WeightsError
from restore_cli.loading import detect_arch
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

GOLDEN_FILE = GOLDEN / "Aether__e24_d222_lk7_sk3_x4.safetensors"


def test_fuse_model_matches_golden_and_fused_layout_loads() -> None:
    model, t, _ = load_golden(GOLDEN_FILE)
    x = t["input"]
    with torch.no_grad():
        unfused = model(x)
        model.fuse_model()
        assert rel_l2(model(x), t["aux.fused"]) <= 1e-5
    sd = model.state_dict()
    assert any(k.endswith("conv.fused_conv.weight") for k in sd) and not any("lk_conv" in k for k in sd)
    (name, kw), = archs.detect(sd)
    assert name == "aether" and kw["fused_init"] is True and kw["lk_kernel"] == 7
    fused = archs.build(name, **kw)
    fused.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert rel_l2(fused.eval()(x), unfused) <= 1e-5
        # upstream's fused_init keeps normalising with the running statistics on top of the folded affine
        twice = archs.build(name, **kw, fused_norm=False)
        twice.load_state_dict(sd, strict=True)
        assert rel_l2(twice.eval()(x), unfused) > 1e-3


def test_runtime_fusion_equals_branches() -> None:
    model, _, _ = load_golden(GOLDEN_FILE)
    block = model.stages[0][0].conv
    assert not any("eval_weight" in k for k in model.state_dict())
    x = torch.randn(1, 24, 9, 10)
    with torch.no_grad():
        fused = block(x)
        branches = block.train()(x)
    assert rel_l2(fused, branches) <= 1e-6


CORE: dict[str, Any] = {"embed_dim": 16, "depths": [1, 1], "lk_kernel": 5, "scale": 3}


@pytest.mark.parametrize("name", ["aether", "aether_core"])
@pytest.mark.parametrize("attn", [False, True])
def test_versions_detected_apart(name: str, attn: bool) -> None:
    with torch.device("meta"):
        sd = archs.build(name, **CORE, use_channel_attn=attn, use_spatial_attn=attn).state_dict()
    (found, kw), = archs.detect(sd)
    assert found == name and kw["scale"] == 3 and kw["depths"] == [1, 1]


def test_single_stage_is_ambiguous() -> None:
    """One stage without channel attention: both versions have the same keys and shapes, so detection refuses."""
    with torch.device("meta"):
        sd = archs.build("aether", **{**CORE, "depths": [2]}, use_channel_attn=False).state_dict()
    assert sorted(n for n, _ in archs.detect(sd)) == ["aether", "aether_core"]
    with pytest.raises(WeightsError, match="ambiguous"):
        detect_arch(sd, where="x")


def test_descriptor() -> None:
    small = archs.spec("aether", use_channel_attn=False, use_spatial_attn=False)
    assert small.tiling == "safe" and small.context == 1 + 16 * 5 + 1 + 1 + 2 + 1
    assert archs.spec("aether_core").tiling == "global" and archs.spec("aether_core").upstream_class == "aether"
    with pytest.raises(ValueError, match="Unsupported scale"):
        archs.build("aether", scale=5)
