"""ESC family (archs/esc.py): batch independence, the geometric re-parameterisation, FlashBias, odd sizes,
detector round trips and the boundaries between the four classes. Goldens and manifests: tests/test_golden.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from archs.esc import ESC, ESCRealM, geo_ensemble
from tests.util import rel_l2

TINY: dict[str, Any] = {"dim": 16, "pdim": 4, "kernel_size": 5, "n_blocks": 1, "conv_blocks": 1, "window_size": 4,
                        "num_heads": 2, "exp_ratio": 1.25}


def _randomised(name: str, seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    model = archs.build(name, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if pname.endswith("ln_out.weight") else 0.0))
    return model.eval()


def _meta_sd(name: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return archs.build(name, **kwargs).state_dict()


@pytest.mark.parametrize("name", ["esc", "escfp", "escreal", "escrealm"])
def test_batch_of_two_equals_each_alone(name: str) -> None:
    """Upstream's eval path only handles batch 1 (its dynamic kernel is reshaped per channel); each sample here
    gets its own dynamic kernel."""
    kw = {**TINY, "kernel_size": 5, "upscaling_factor": 2}
    if name == "escrealm":
        kw["upsampler"] = "pixelshuffle"
        kw["mid_dim"] = 8
    model = _randomised(name, **kw)
    x = torch.rand(2, 3, 10, 13)
    with torch.no_grad():
        both = model(x)
        one = torch.cat([model(x[:1]), model(x[1:])])
    assert both.shape == (2, 3, 10 * archs.spec(name, **kw).scale, 13 * archs.spec(name, **kw).scale)
    assert rel_l2(both, one) < 1e-5


def test_geo_ensemble_is_a_projection() -> None:
    """A kernel baked by upstream's convert() is already symmetric: ensembling it again changes nothing, so
    converted and unconverted checkpoints both load and run through the same forward."""
    k = torch.randn(4, 4, 7, 7, dtype=torch.float64)
    once = geo_ensemble(k)
    assert torch.allclose(geo_ensemble(once), once, atol=1e-12)
    assert torch.allclose(once, once.flip(3)) and torch.allclose(once, torch.rot90(once, 1, [2, 3]))
    model = _randomised("esc", **TINY)
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        want = model(x)
        model.plk_filter.copy_(geo_ensemble(model.plk_filter))
        assert rel_l2(model(x), want) < 1e-6


def test_flashbias_equals_the_table_it_factorises() -> None:
    """FlashBias stores the (N x N) position bias as q_b k_b^T; with exact factors it is the table's attention."""
    ref = _randomised("esc", **TINY)
    fb = archs.build("esc", **TINY, attn_type="FlashBias", flashbias_rank=16).eval()
    sd = dict(ref.state_dict())
    attn = ref.blocks[0].attn
    bias = attn._bias().double()  # (heads, 16, 16)
    u, s, vh = torch.linalg.svd(bias)
    sd["blocks.0.attn.flashbias_q"] = (u * s.sqrt().unsqueeze(1)).float()
    sd["blocks.0.attn.flashbias_k"] = (vh.transpose(-2, -1) * s.sqrt().unsqueeze(1)).float()
    del sd["blocks.0.attn.relative_position_bias"]
    fb.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        assert rel_l2(fb(x), ref(x)) < 1e-5
    found = archs.detect(fb.state_dict())
    assert [f[0] for f in found] == ["esc"]
    assert found[0][1]["attn_type"] == "FlashBias" and found[0][1]["flashbias_rank"] == 16


def test_window_padding_and_tiny_inputs() -> None:
    """Features are reflect-padded to the window per attention and cropped; sides too short to reflect replicate
    (upstream raises there)."""
    model = _randomised("esc", **{**TINY, "window_size": 8})
    with torch.no_grad():
        for h, w in ((3, 5), (9, 17), (16, 8)):
            out = model(torch.rand(1, 3, h, w))
            assert out.shape == (1, 3, 4 * h, 4 * w) and torch.isfinite(out).all()


def test_escrealm_unshuffle_pads_and_crops() -> None:
    model = _randomised("escrealm", **TINY, upscaling_factor=1, upsampler="pixelshuffledirect")
    assert isinstance(model, ESCRealM) and model.padding == 4
    with torch.no_grad():
        out = model(torch.rand(1, 3, 13, 18))
    assert out.shape == (1, 3, 13, 18)


def test_escreal_nearest_head_is_always_x4() -> None:
    assert archs.spec("escreal", upscaling_factor=2).scale == 4
    assert archs.spec("escreal", upscaling_factor=2, use_dysample=True).scale == 2
    model = _randomised("escreal", **TINY, upscaling_factor=2)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_escrealm_keeps_its_own_meta_record() -> None:
    model = archs.build("escrealm", **TINY, upsampler="pixelshuffle", mid_dim=8)
    sd = dict(model.state_dict())
    own = sd["to_img.MetaUpsample"].clone()
    sd["to_img.MetaUpsample"] = torch.zeros_like(own)
    model.load_state_dict(sd)
    assert torch.equal(model.to_img.MetaUpsample, own)
    del sd["to_img.MetaUpsample"]
    model.load_state_dict(sd)  # supplied when absent, as upstream's load_state_dict does


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("esc", {"upscaling_factor": 3}),
        ("esc", {"upscaling_factor": 2, "use_ln": True, "conv_blocks": 2}),
        ("esc", {"upscaling_factor": 4, "attn_type": "FlashBias"}),
        ("escfp", {"upscaling_factor": 2}),
        ("escreal", {"upscaling_factor": 4}),
        ("escreal", {"upscaling_factor": 3, "use_dysample": True}),
        ("escreal", {"upscaling_factor": 4, "attn_type": "FlashBias", "flashbias_rank": 8}),
        ("escrealm", {"upscaling_factor": 2, "upsampler": "dysample", "mid_dim": 8}),
        ("escrealm", {"upscaling_factor": 1, "upsampler": "conv"}),
        ("escrealm", {"upscaling_factor": 2, "upsampler": "pixelshuffle", "unshuffle_mod": False, "mid_dim": 8}),
        ("escrealm", {"upscaling_factor": 4, "upsampler": "nearest+conv"}),
        ("escrealm", {"upscaling_factor": 3, "upsampler": "pixelshuffledirect"}),
    ],
)
def test_detector_round_trip(name: str, kwargs: dict[str, Any]) -> None:
    sd = _meta_sd(name, **{**TINY, **kwargs})
    found = archs.detect(sd)
    assert [f[0] for f in found] == [name]
    rebuilt = _meta_sd(name, **found[0][1])
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


def test_detector_rejects_near_misses() -> None:
    sd = dict(_meta_sd("esc", **TINY))
    sd["skip.0.weight"] = torch.empty(32, 3, 1, 1, device="meta")  # looks like ESC-Real, but no real skip
    assert archs.detect(sd) == []
    sd = dict(_meta_sd("escreal", **TINY))
    del sd["blocks.0.lns.0.weight"]
    assert archs.detect(sd) == []


def test_classes_need_valid_arguments() -> None:
    with pytest.raises(ValueError, match="attn_type"):
        ESC(attn_type="Fast")
    with pytest.raises(ValueError, match="FlashBias"):
        archs.build("escfp", attn_type="FlashBias")
    with pytest.raises(ValueError, match="kernel_size"):
        ESC(kernel_size=12)


@pytest.mark.parametrize("name", ["esc", "escfp"])
def test_loading_another_scale_resizes_the_subpixel_conv(name: str) -> None:
    """Upstream's load_state_dict: a to_img trained at x4 loaded into an x2 model, each (colour, s x s) grid of
    every input channel and tap resized bilinearly."""
    import torch.nn.functional as F

    x4 = _randomised(name, **TINY, upscaling_factor=4)
    x2 = archs.build(name, **TINY, upscaling_factor=2)
    x2.load_state_dict(x4.state_dict())
    w4, w2 = x4.to_img.weight, x2.to_img.weight
    assert w2.shape == (12, 16, 3, 3)
    want = F.interpolate(w4[:, 5, 1, 2].reshape(1, 3, 4, 4), size=(2, 2), mode="bilinear", align_corners=False)
    assert torch.allclose(w2[:, 5, 1, 2], want.reshape(-1))
    same = archs.build(name, **TINY, upscaling_factor=4)
    same.load_state_dict(x4.state_dict())
    assert torch.equal(same.to_img.weight, w4)
