"""MoSRv2 and MoESR (archs/mosrv2.py, archs/moesr.py): detector round trips over the upsampler menu, tiles equal
the whole image (tiling "safe"), MetaUpsample handling, argument checks. Goldens and manifests: test_golden.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from tests.util import rel_l2


def _randomised(name: str, seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    model = archs.build(name, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if (p.ndim > 1 and p.shape[1:].numel() > 1) or pname.endswith("gamma"):
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if pname.endswith(("weight", "scale")) else 0))
    return model.eval()


def _meta_sd(name: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return archs.build(name, **kwargs).state_dict()


MOSR: dict[str, Any] = {"dim": 16, "n_block": 2, "mid_dim": 16}
MOESR: dict[str, Any] = {"dim": 16, "n_blocks": 1, "n_block": 1, "upsample_dim": 16}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mosrv2", {**MOSR, "scale": 4}),
        ("mosrv2", {**MOSR, "scale": 2, "upsampler": "pixelshuffle", "rms_norm": True}),
        ("mosrv2", {**MOSR, "scale": 1, "upsampler": "dysample", "mid_dim": 8}),
        ("mosrv2", {**MOSR, "scale": 3, "upsampler": "pixelshuffle", "expansion_ratio": 2.0}),
        ("mosrv2", {**MOSR, "scale": 4, "upsampler": "nearest+conv", "in_ch": 1}),
        ("mosrv2", {**MOSR, "scale": 2, "upsampler": "dysample", "unshuffle_mod": False}),
        ("moesr", {**MOESR, "scale": 4}),
        ("moesr", {**MOESR, "scale": 2, "upsampler": "dysample", "expansion_factor": 2.0}),
        ("moesr", {**MOESR, "scale": 3, "upsampler": "pixelshuffle", "expansion_msg": 2.0}),
        ("moesr", {**MOESR, "upsampler": "conv", "out_ch": 1, "in_ch": 1}),
        ("moesr", {**MOESR, "scale": 4, "upsampler": "nearest+conv", "n_blocks": 2}),
    ],
)
def test_detector_round_trip(name: str, kwargs: dict[str, Any]) -> None:
    for sd in (_meta_sd(name, **kwargs), archs.build(name, **kwargs).state_dict()):  # shapes only, then buffers
        found = archs.detect(sd)
        assert [f[0] for f in found] == [name]
        rebuilt = _meta_sd(name, **found[0][1])
        assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}
        assert archs.spec(name, **found[0][1]).scale == archs.spec(name, **kwargs).scale


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mosrv2", {"dim": 16, "n_block": 1, "scale": 2, "upsampler": "pixelshuffle", "mid_dim": 8}),
        ("moesr", {**MOESR, "scale": 2}),
    ],
)
def test_a_tile_with_its_context_equals_the_whole_image(name: str, kwargs: dict[str, Any]) -> None:
    model = _randomised(name, **kwargs)
    spec = archs.spec(name, **kwargs)
    m, c, s = spec.multiple_of, spec.context, spec.scale
    x = torch.rand(1, 3, 2 * c + 12, 2 * c + 14)
    with torch.no_grad():
        whole = model(x)
        y0 = x0 = c // m * m + m  # a core at least `context` from the borders, on the arch's grid
        tile = model(x[..., y0 - c // m * m:y0 + 6 + c, x0 - c // m * m:x0 + 8 + c])
    off = c // m * m
    core = tile[..., off * s:(off + 6) * s, off * s:(off + 8) * s]
    assert rel_l2(core, whole[..., y0 * s:(y0 + 6) * s, x0 * s:(x0 + 8) * s]) < 1e-5


def test_mosrv2_keeps_its_own_meta_and_moesr_loads_the_files() -> None:
    mosr = archs.build("mosrv2", **MOSR)
    sd = dict(mosr.state_dict())
    own = sd.pop("to_img.MetaUpsample").clone()
    mosr.load_state_dict(sd)  # supplied when absent, as upstream's load_state_dict does
    assert torch.equal(mosr.to_img.MetaUpsample, own)
    moesr = archs.build("moesr", **MOESR)
    sd = dict(moesr.state_dict())
    del sd["upscale.MetaUpsample"]
    with pytest.raises(RuntimeError, match="MetaUpsample"):
        moesr.load_state_dict(sd)


def test_odd_sizes_are_padded_and_cropped() -> None:
    for name, kw in (("mosrv2", {**MOSR, "scale": 1}), ("moesr", {**MOESR, "scale": 3})):
        model = _randomised(name, **kw)
        with torch.no_grad():
            out = model(torch.rand(1, 3, 7, 9))
        s = archs.spec(name, **kw).scale
        assert out.shape == (1, 3, 7 * s, 9 * s) and torch.isfinite(out).all()


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="upsampler"):
        archs.build("mosrv2", upsampler="bicubic")
    with pytest.raises(ValueError, match="DySample"):
        archs.build("mosrv2", upsampler="dysample", mid_dim=4)
    with pytest.raises(ValueError, match="multiple of 4"):
        archs.build("moesr", dim=18)
    assert archs.spec("moesr", upsampler="conv", scale=4).scale == 1
