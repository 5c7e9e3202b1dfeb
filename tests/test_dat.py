"""Family-specific behaviour of the DAT family (archs/dat.py: DAT, MSHAT). Goldens and manifests: test_golden.py."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

import archs
from tests.conftest import GOLDEN
from tests.util import load_golden, read_golden, rel_l2

DAT_GOLDEN = GOLDEN / "DAT__e16_d222_h2_s2x4_x4.safetensors"


@functools.cache
def _golden_dat() -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    return load_golden(DAT_GOLDEN)


def _meta_sd(name: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return archs.build(name, **kwargs).state_dict()


def _round_trip(name: str, kwargs: dict[str, Any], sd: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    sd = sd if sd is not None else _meta_sd(name, kwargs)
    found = archs.detect(sd)
    assert [f[0] for f in found] == [name]
    got = archs.entry(name).full_kwargs(found[0][1])
    assert {k: tuple(v.shape) for k, v in _meta_sd(name, found[0][1]).items()} == \
        {k: tuple(v.shape) for k, v in sd.items()}
    return got


def test_dat_stored_masks_are_upstreams() -> None:
    """The shift masks we build for img_size equal the ones upstream stored (sd.* of the golden), and sizes other
    than img_size get masks computed the same way."""
    t, _ = read_golden(DAT_GOLDEN)
    model, _, _ = _golden_dat()
    attn = model.layers[1].blocks[0].attn
    for i in (0, 1):
        assert torch.equal(attn._compute_masks(16, 16)[i], t[f"sd.layers.1.blocks.0.attn.attn_mask_{i}"])
    assert attn._masks_for(16, 16, torch.device("cpu"))[0] is attn.attn_mask_0
    assert attn._masks_for(20, 28, torch.device("cpu"))[1].shape == (10 * 7, 8, 8)


def test_dat_any_size_and_batch() -> None:
    """qkv is padded to the split size inside: odd sizes run, and a batch equals its images run alone."""
    model, t, _ = _golden_dat()
    x = torch.cat([t["input"][..., :13, :17], t["input"][..., 5:18, 9:26]])
    with torch.no_grad():
        both = model(x)
        one = model(x[1:])
    assert both.shape == (2, 3, 52, 68)
    assert rel_l2(both[1:], one) < 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"embed_dim": 16, "depth": [2, 2, 2], "num_heads": [2, 2, 2], "split_size": [2, 4], "img_size": 16},
        {"embed_dim": 32, "depth": [3], "num_heads": [4], "split_size": [4, 8], "upsampler": "pixelshuffledirect",
         "upscale": 3, "img_size": 32, "expansion_factor": 1.5},
        {"embed_dim": 24, "depth": [1, 4], "num_heads": [2, 6], "split_size": [2, 2], "upscale": 3,
         "resi_connection": "3conv", "qkv_bias": False, "in_chans": 1},
        {"embed_dim": 16, "depth": [2], "num_heads": [2], "split_size": [2, 4], "upscale": 8, "img_size": 8},
    ],
)
def test_dat_detector_round_trip(kwargs: dict[str, Any]) -> None:
    got = _round_trip("dat", kwargs)
    want = archs.entry("dat").full_kwargs(kwargs)
    for k in ("embed_dim", "depth", "num_heads", "split_size", "upscale", "upsampler", "resi_connection", "in_chans",
              "qkv_bias"):
        assert list(got[k]) == list(want[k]) if isinstance(want[k], list) else got[k] == want[k], k
    if any(d > 2 for d in kwargs["depth"]) or len(kwargs["depth"]) > 1:  # a shifted block stores img_size
        assert got["img_size"] == want["img_size"]


def test_dat_split_order_from_values() -> None:
    """Shapes cannot tell [4, 2] from [2, 4]; the stored offset table can."""
    kw = {"embed_dim": 16, "depth": [1], "num_heads": [2], "split_size": [4, 2]}
    torch.manual_seed(0)
    sd = archs.build("dat", **kw).state_dict()
    assert _round_trip("dat", kw, sd)["split_size"] == [4, 2]
    assert _round_trip("dat", kw)["split_size"] == [2, 4]  # meta: the smaller first, as the published configs


def test_dat_detector_rejects_near_misses() -> None:
    kw = {"embed_dim": 16, "depth": [2], "num_heads": [2], "split_size": [2, 4]}
    sd = dict(_meta_sd("dat", kw))
    sd["extra.weight"] = torch.empty(1, device="meta")
    assert archs.detect(sd) == []
    sd = dict(_meta_sd("dat", kw))
    del sd["layers.0.blocks.1.attn.temperature"]
    assert archs.detect(sd) == []


def test_dat_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="embed_dim >= 16"):
        archs.build("dat", embed_dim=12, depth=[1], num_heads=[2])
    with pytest.raises(ValueError, match="upsampler"):
        archs.build("dat", embed_dim=16, depth=[1], num_heads=[2], upsampler="nearest+conv")
    with pytest.raises(ValueError, match="scale 5"):
        archs.build("dat", embed_dim=16, depth=[1], num_heads=[2], upscale=5)


def test_dat_descriptor() -> None:
    spec = archs.spec("dat", upscale=2, split_size=[8, 32])
    assert (spec.scale, spec.tiling, spec.multiple_of, spec.fp16, spec.bf16) == (2, "global", 1, False, True)
    assert spec.context == 128


# ------------------------------------------------------------------------------------------------------------ MSHAT

MSHAT_KW: dict[str, Any] = {"img_size": 16, "embed_dim": 16, "depths": [2, 1], "num_heads": [2, 2], "window_size": 4,
                            "squeeze_factor": 4, "mlp_ratio": 2.0, "upscale": 2, "upsampler": "pixelshuffle"}


def test_mshat_extra_heads_do_not_touch_the_output() -> None:
    torch.manual_seed(0)
    model = archs.build("mshat", **MSHAT_KW).eval()
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        before = model(x)
        model.upsample_2x[0].weight.mul_(3.0)
        assert torch.equal(model(x), before)
    assert before.shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match="multiple of the window"):
        model(x[..., :7, :])


@pytest.mark.parametrize("kwargs", [MSHAT_KW, {**MSHAT_KW, "upscale": 3, "resi_connection": "identity",
                                               "compress_ratio": 4, "window_size": 8}])
def test_mshat_detector_round_trip(kwargs: dict[str, Any]) -> None:
    got = _round_trip("mshat", kwargs)
    want = archs.entry("mshat").full_kwargs(kwargs)
    for k in ("embed_dim", "depths", "num_heads", "window_size", "upscale", "resi_connection", "compress_ratio",
              "squeeze_factor", "overlap_ratio"):
        assert got[k] == want[k], k


def test_mshat_descriptor_and_refusals() -> None:
    spec = archs.spec("mshat", upsampler="pixelshuffle", window_size=16, upscale=4)
    assert (spec.scale, spec.multiple_of, spec.tiling) == (4, 16, "global")
    with pytest.raises(ValueError, match="pixelshuffle"):
        archs.build("mshat")
