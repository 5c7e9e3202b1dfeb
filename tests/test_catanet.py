"""catanet (archs/catanet.py): the stable token sort, both centre sources, training updates, size limits and
detection. Golden and manifests: tests/test_golden.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from archs.catanet import LRSA, TAB
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

TINY: dict[str, Any] = {"dim": 16, "block_num": 2, "qk_dim": 8, "mlp_dim": 16, "heads": 2, "patch_size": [8, 10],
                        "n_iters": [2, 2], "num_tokens": [4, 6], "group_size": [16, 24], "upscale": 2}


def _meta_sd(**kwargs: Any) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return archs.build("catanet", **kwargs).state_dict()


def test_golden_needs_the_stable_sort() -> None:
    """The golden's reference output is upstream's with a stable argsort; the unstable CPU sort gives ~8% off."""
    model, t, _ = load_golden(GOLDEN / "catanet__d16_b3_qk12_mlp24_h2_x4_initted.safetensors")
    with torch.no_grad():
        out = model(t["input"])
    assert rel_l2(out, t["output"]) < 1e-5
    assert rel_l2(out, t["aux.output_unstable_argsort_torch2.13_cpu"]) > 1e-2


def test_uninitialised_centres_come_from_the_image_and_training_sets_them() -> None:
    torch.manual_seed(0)
    tab = TAB(16, 8, 16, 2, n_iter=2, num_tokens=4, group_size=16)
    x = torch.randn(1, 16, 9, 12)
    with torch.no_grad():
        tab.eval()
        assert not bool(tab.initted)
        y = tab(x)  # chunk means of the tokens (N = 108 is a multiple of 4: a whole extra chunk is mirrored in)
        assert y.shape == x.shape and torch.isfinite(y).all()
        tab.train()
        tab(x)
    assert bool(tab.initted)
    first = tab.means.clone()
    with torch.no_grad():
        tab(x + 0.1)
    moved = (tab.means - first).norm()
    assert 0 < moved < 0.01 * first.norm()  # EMA with decay 0.999


def test_lrsa_patches_overlap_and_average() -> None:
    """With an identity-free layer stack zeroed, LRSA's patch sum / overlap halving returns the input exactly
    where two or four patches overlap (the halving matches the overlap count)."""
    lrsa = LRSA(8, 8, 8, 2).eval()
    with torch.no_grad():
        for p in lrsa.parameters():
            p.zero_()
        x = torch.randn(1, 8, 20, 26)
        assert torch.allclose(lrsa(x, 8), x, atol=1e-6)
        with pytest.raises(ValueError, match="at least 8x8"):
            lrsa(x[..., :7, :], 8)


def test_trained_centres_make_samples_independent() -> None:
    """With stored centres (initted, as in trained checkpoints) each sample is processed alone; without them the
    centres are chunk means over the whole batch, as upstream."""
    model = archs.build("catanet", **TINY).eval()
    for tab, _ in model.blocks:  # type: ignore[misc]
        tab.initted.fill_(True)
    x = torch.rand(2, 3, 12, 14)
    with torch.no_grad():
        both = model(x)
        one = torch.cat([model(x[:1]), model(x[1:])])
    assert both.shape == (2, 3, 24, 28) and rel_l2(both, one) < 1e-5


@pytest.mark.parametrize("kwargs", [
    {},
    {"upscale": 2},
    {"upscale": 3, "in_chans": 1},
    {**TINY, "upscale": 1},
    {**TINY, "upscale": 4, "heads": 4, "dim": 20, "qk_dim": 12},
])
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    sd = _meta_sd(**kwargs)
    found = archs.detect(sd)
    assert [f[0] for f in found] == ["catanet"]
    assert {k: v.shape for k, v in _meta_sd(**found[0][1]).items()} == {k: v.shape for k, v in sd.items()}
    assert archs.spec("catanet", **found[0][1]).scale == archs.spec("catanet", **kwargs).scale


def test_descriptor_and_argument_checks() -> None:
    spec = archs.spec("catanet")
    assert spec.min_size == 28 and spec.tiling == "global" and spec.scale == 4
    with pytest.raises(ValueError, match="upscale"):
        archs.build("catanet", upscale=8)
    with pytest.raises(ValueError, match="multiples of heads"):
        archs.build("catanet", heads=5)
    assert archs.entry("CATANet").id == "catanet"
