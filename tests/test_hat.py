"""Family-specific behaviour of the HAT family (archs/hat.py: HAT, HATM, HATIQCMix). Golden outputs and the
official manifests are checked registry-wide in tests/test_golden.py."""

from __future__ import annotations

import functools
import json
import lzma
from typing import Any

import pytest
import torch

import archs
from archs.hat import HATIQCMix, image_statistics
from tests.conftest import GOLDEN
from tests.util import load_golden, read_golden, recipe_state_dict

IQC = "HAT__iqcmix_e16_d1x12_h2_w4_x4.safetensors"
TINY: dict[str, Any] = {"img_size": 8, "embed_dim": 8, "depths": [1] * 11, "num_heads": [2] * 11, "window_size": 4,
                        "squeeze_factor": 4, "mlp_ratio": 2.0, "upscale": 2, "upsampler": "pixelshuffle"}


@functools.cache
def _golden(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    return load_golden(GOLDEN / name)


@pytest.mark.parametrize("name", ["HAT__e16_d222_h2_w4_x4.safetensors", "HAT__hatm_e16_d222_h2_w4_x4.safetensors",
                                  IQC])
def test_golden_state_dict_is_detected(name: str) -> None:
    t, meta = read_golden(GOLDEN / name)
    found = archs.detect(recipe_state_dict(t, meta))
    assert [n for n, _ in found] == [meta["class"].lower()]
    want = archs.entry(meta["class"]).full_kwargs(json.loads(meta["kwargs"]))
    got = archs.entry(meta["class"]).full_kwargs(found[0][1])
    # not stored: conv_scale (detection assumes the published 0.01; these goldens use 1.0), the training-only
    # drop_path_rate, and img_size (only with ape)
    differ = {k for k in want if want[k] != got[k] and not (isinstance(want[k], list | tuple)
                                                            and list(want[k]) == list(got[k]))}
    assert differ <= {"conv_scale", "img_size", "drop_path_rate"}


def test_iqcmix_statistics_and_branches_on_the_golden_input() -> None:
    """The research notes' values for the golden input: brightness 114.9, contrast 50.9, sharpness 16.8, noise
    84.1, saturation 15.5, so branches 1, 2, 5, 7, 8."""
    model, t, _ = _golden(IQC)
    stats = image_statistics(t["input"])[0]
    assert torch.allclose(stats, torch.tensor([114.9, 50.9, 16.8, 84.1, 15.5]), atol=0.06)
    assert model.branch_choice(t["input"]).tolist() == [[1, 2, 5, 7, 8]]  # type: ignore[operator]


def test_iqcmix_picks_branches_per_image() -> None:
    """Upstream runs batch 1 only; here each image of a batch takes its own branches, as it would alone."""
    torch.manual_seed(0)
    model = HATIQCMix(**TINY).eval()
    dark = torch.rand(1, 3, 8, 8) * 0.2
    bright = 0.6 + torch.rand(1, 3, 8, 8) * 0.4
    batch = torch.cat([dark, bright])
    choice = model.branch_choice(batch)
    assert not torch.equal(choice[0], choice[1])
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(dark), model(bright)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_size_rules() -> None:
    model = archs.build("HAT", **{k: v for k, v in TINY.items() if k != "depths" and k != "num_heads"},
                        depths=[1], num_heads=[2]).eval()
    with pytest.raises(ValueError, match="multiple of the window"):
        model(torch.rand(1, 3, 8, 10))
    with pytest.raises(ValueError, match="smaller than the window"):
        archs.build("HAT", **{**TINY, "img_size": 2})
    with pytest.raises(ValueError, match="pixelshuffle"):
        archs.build("HAT", **{**TINY, "upsampler": ""})
    with pytest.raises(ValueError, match="even overlap"):
        archs.build("HAT", **{**TINY, "window_size": 6, "img_size": 12})


def test_descriptor() -> None:
    spec = archs.spec("HAT", **{**TINY, "upscale": 4})
    assert (spec.family, spec.scale, spec.multiple_of, spec.min_size, spec.tiling) == ("HAT", 4, 4, 4, "global")
    assert archs.spec("HATM", **TINY).upstream_class == "HATM"


def test_mshat_is_not_taken_for_hat() -> None:
    """MSHAT (DAT family, team15) is HAT plus two unused heads: the HAT detectors must not claim its checkpoints."""
    path = GOLDEN / "DAT__team15_mshat_x4.keys.json.xz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with lzma.open(path, "rt") as f:
        doc = json.load(f)
    sd = {k: torch.empty(v, device="meta") for k, v in doc["state_dict"].items()}
    assert not {n for n, _ in archs.detect(sd)} & {"hat", "hatm", "hatiqcmix"}
