"""Family-specific behaviour of ESRGAN+ (archs/esrganplus.py: RRDB_Net). Goldens and manifests: tests/test_golden.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from archs import esrganplus
from restore_cli import loading

SMALL: dict[str, Any] = {"nf": 8, "nb": 2}


def _meta_sd(**kwargs: Any) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return archs.build("esrganplus", **kwargs).state_dict()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"upscale": 2, "in_nc": 1, "out_nc": 1},
        {"upscale": 1},
        {"upscale": 8, "upsample_mode": "pixelshuffle"},
        {"upscale": 3, "upsample_mode": "pixelshuffle"},
        {"norm_type": "batch"},
        {"norm_type": "batch", "mode": "NAC"},
        {"act_type": "prelu", "norm_type": "batch"},
    ],
)
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    kw = {**SMALL, **kwargs}
    found = archs.detect(_meta_sd(**kw))
    assert [f[0] for f in found] == ["esrganplus"]
    full = archs.entry("esrganplus").full_kwargs
    assert full(found[0][1]) == full(kw)


def test_plain_esrgan_and_near_misses_are_not_esrganplus() -> None:
    sd = _meta_sd(**SMALL)
    # plain ESRGAN (old BasicSR layout) has the same keys without ESRGAN+'s 1x1 skip in the dense blocks
    esrgan = {k: v for k, v in sd.items() if "conv1x1" not in k}
    assert archs.detect(esrgan) == []
    extra = {**sd, "model.1.sub.0.RDB1.extra": torch.empty(1, device="meta")}
    assert archs.detect(extra) == []


def test_eval_is_deterministic_and_training_noise_is_not() -> None:
    torch.manual_seed(0)
    model = archs.build("esrganplus", **SMALL, upscale=2)
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        model.eval()
        a, b = model(x), model(x)
        model.train()
        noisy = model(x)
    assert a.shape == (1, 3, 24, 20) and torch.equal(a, b)
    assert not torch.equal(a, noisy)


def test_refuses_scales_upstream_gets_wrong() -> None:
    with pytest.raises(ValueError, match="scale 6"):
        archs.build("esrganplus", **SMALL, upscale=6)
    assert archs.spec("RRDB_Net").context == 2 + 15 * 23 + 2 + 2


def test_tiles_with_the_context_margin_are_exact() -> None:
    torch.manual_seed(0)
    kw = {"nf": 4, "nb": 1, "upscale": 2}
    model = archs.build("esrganplus", **kw).eval()
    margin = archs.spec("esrganplus", **kw).context
    x = torch.rand(1, 3, 24, 64)
    with torch.no_grad():
        whole = model(x)
        left = model(x[..., :40])
    core = 2 * (40 - margin)
    assert (left[..., :core] - whole[..., :core]).abs().max() < 1e-5
    assert esrganplus._detect({}) is None


def test_checkpoint_keys_survive_the_loader() -> None:
    """`model.` is ESRGAN's own top-level Sequential, not a wrapper prefix: the loader keeps it (and still strips
    real wrappers around it)."""
    torch.manual_seed(0)
    sd = archs.build("esrganplus", **SMALL).state_dict()
    for raw in (sd, {"params": {f"module.{k}": v for k, v in sd.items()}}):
        got = loading.canonicalize(raw)
        assert set(got) == set(sd)
        assert loading.build_from_state_dict(got, where="w.pth").arch_id == "esrganplus"
