"""RHA: OmniShift re-parameterisation, windowed attention locality and its cyclic wrap, padding/cropping,
descriptor, detector round trips and tiling honesty."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

import archs
from archs.rha import RHA, FocusedLinearAttention, OmniShift, _receptive_radius
from restore_cli.engine.runner import Runner
from tests.conftest import GOLDEN
from tests.test_archs import DETECT_CASES
from tests.util import assert_detected, load_golden, meta_state_dict, rel_l2

# A tiny configuration: pooling 2 and 4 with 4x4 windows, so the arch's grid (pad) is 16 px.
TINY: dict[str, Any] = {"dim": 16, "scale": 2, "group_blocks": 2, "res_blocks": 2, "down_list": (2, 4),
                        "window_size": 4, "mid_dim": 16}
# Smaller still for engine runs: one group (a plain and a shifted block), pooling 2, scale 1; grid 8 px.
MINI: dict[str, Any] = {"dim": 16, "scale": 1, "group_blocks": 1, "res_blocks": 2, "down_list": (2,), "window_size": 4}


def _randomised(kwargs: dict[str, Any], seed: int = 0) -> RHA:
    """A model whose every float parameter is O(1) random (trained-like magnitudes), in eval mode."""
    model = archs.build("RHA", **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha1", "alpha2", "alpha3", "alpha4")) or p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith("norm.weight") else 0.0))
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    assert isinstance(model, RHA)
    return model.eval()


def test_omnishift_fused_equals_branches() -> None:
    torch.manual_seed(0)
    m = OmniShift(12)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 12, 19, 23)
    with torch.no_grad():
        m.train()
        unfused = m(x)
        m.eval()  # fuses into conv5x5_reparam
        fused = m(x)
        assert torch.equal(fused, m.conv5x5_reparam(x))
    assert rel_l2(fused, unfused) <= 1e-5
    assert m.conv5x5_reparam.weight.shape == (12, 1, 5, 5)  # one depthwise 5x5


def test_whole_model_eval_equals_train_forward() -> None:
    """Train mode runs the four OmniShift branches, eval the fused convs: same function (no dropout/noise)."""
    model = _randomised(TINY)
    x = torch.rand(1, 3, 16, 32)
    with torch.no_grad():
        fused = model.eval()(x)
        unfused = model.train()(x)
    assert rel_l2(fused, unfused) <= 1e-5


def test_fusion_follows_load_in_either_order() -> None:
    src = _randomised(MINI, seed=1)
    sd = src.state_dict()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        want = src(x)
    late = archs.build("RHA", **MINI).eval()  # eval first, load after: the post-load hook fuses
    late.load_state_dict(sd)
    # stored conv5x5_reparam values are ignored, as upstream (it overwrites them on .eval())
    garbage = {k: (torch.randn_like(v) if "reparam" in k else v) for k, v in sd.items()}
    early = archs.build("RHA", **MINI)
    early.load_state_dict(garbage)
    early.eval()
    with torch.no_grad():
        assert torch.allclose(late(x), want, rtol=0, atol=1e-6)
        assert torch.allclose(early(x), want, rtol=0, atol=1e-6)


def test_attention_is_windowed() -> None:
    """A change inside one window of the (pooled) map reaches only that window."""
    torch.manual_seed(0)
    fla = FocusedLinearAttention(16, window_size=4).eval()
    with torch.no_grad():
        for p in fla.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        x = torch.randn(1, 16, 12, 16)
        y0 = fla(x)
        x2 = x.clone()
        x2[:, :, 5, 9] += 3.0  # window (1, 2)
        diff = (fla(x2) - y0).abs().amax(dim=1)[0]
    changed = diff > 0
    assert changed[4:8, 8:12].any()
    changed[4:8, 8:12] = False
    assert not changed.any()


def test_shifted_windows_wrap_around_the_image() -> None:
    """The window shift is a cyclic roll without a mask: the bottom-right pixel reaches the top-left output."""
    model = _randomised(MINI)
    x = torch.rand(1, 3, 48, 48)
    x2 = x.clone()
    x2[:, :, -1, -1] = 1.0 - x2[:, :, -1, -1]
    with torch.no_grad():
        d = (model(x2) - model(x)).abs()
    assert d[:, :, :4, :4].amax() > 1e-4


PAD_CASES: list[tuple[tuple[int, int], dict[str, Any]]] = [
    ((20, 37), TINY),
    ((33, 18), {**TINY, "scale": 2, "unshuffle_mod": True}),  # pad 32
    ((40, 33), {**TINY, "scale": 1, "unshuffle_mod": True}),  # pad 64
]


@pytest.mark.parametrize(("size", "kwargs"), PAD_CASES)
def test_padding_and_crop(size: tuple[int, int], kwargs: dict[str, Any]) -> None:
    """Any size from min_size up works and comes back at exactly scale x (upstream's reflect pad needs pad < size)."""
    model = archs.build("RHA", **kwargs).eval()
    h, w = size
    assert min(h, w) >= archs.spec("RHA", **kwargs).min_size
    with torch.no_grad():
        y = model(torch.rand(1, 3, h, w))
    s = int(kwargs["scale"])
    assert y.shape == (1, 3, h * s, w * s)


def test_unshuffle_at_scale_4_is_refused() -> None:
    with pytest.raises(ValueError, match="unshuffle_mod"):
        archs.build("RHA", unshuffle_mod=True, scale=4)
    with pytest.raises(ValueError, match="3x"):
        archs.build("RHA", unshuffle_mod=True, scale=3)


def test_descriptor() -> None:
    sp = archs.spec("RHA")
    assert (sp.scale, sp.tasks, sp.multiple_of, sp.min_size) == (4, ("upscale",), 64, 33)
    assert sp.tiling == "global"
    assert sp.context == 128  # two pooled windows at down 8 (the receptive field itself is 1330 px)
    assert _receptive_radius(archs.entry("rha").full_kwargs({})) == 1330
    assert archs.spec("RHA", scale=2, unshuffle_mod=True).multiple_of == 128
    assert archs.spec("RHA", scale=1).tasks == ("denoise",)
    assert archs.spec("RHA", **TINY).multiple_of == 16


def _id(k: dict[str, Any]) -> str:
    return ",".join(f"{a}={b}" for a, b in k.items()) or "default"


def _small_enough(kwargs: dict[str, Any]) -> bool:
    return sum(v.numel() for v in meta_state_dict("rha", **kwargs).values()) < 1e6


# the small configurations only: building the others for real is slow
@pytest.mark.parametrize("kwargs", [kw for name, kw, _ in DETECT_CASES if name == "rha" and _small_enough(kw)], ids=_id)
def test_detector_reads_its_buffers(kwargs: dict[str, Any]) -> None:
    """Real uint8 buffers (down_sample, MetaUpsample, unshuffle) with meta parameters: every kwarg comes back (the
    shape-only round trips of the same configurations are in tests/test_archs.py)."""
    real = archs.build("RHA", **kwargs)
    sd = {k: (v if not v.is_floating_point() else torch.empty(v.shape, device="meta"))
          for k, v in real.state_dict().items()}
    got = assert_detected(sd, "rha")
    full = archs.entry("rha").full_kwargs(kwargs)
    for k, v in full.items():
        want = list(v) if isinstance(v, tuple) else v
        if k == "down_list":
            n = int(full["group_blocks"])
            assert [got[k][i % len(got[k])] for i in range(n)] == [want[i % len(want)] for i in range(n)]
        else:
            assert got[k] == want, k


def test_detector_rejects_near_misses() -> None:
    with torch.device("meta"):
        sd = dict(archs.build("RHA", dim=32, group_blocks=1, res_blocks=1).state_dict())
    del sd["body.0.body.1.alpha4"]
    assert archs.entry("rha").detect is not None and archs.entry("rha").detect(sd) is None
    with torch.device("meta"):
        sd = dict(archs.build("RHA", dim=32, group_blocks=1, res_blocks=1).state_dict())
    sd["extra.weight"] = torch.empty(1, device="meta")
    assert archs.detect(sd) == []


def test_meta_upsample_buffer_is_the_models_own() -> None:
    """Upstream's load_state_dict keeps the model's MetaUpsample whatever the file says."""
    model = archs.build("RHA", **TINY)
    sd = dict(model.state_dict())
    sd["to_img.MetaUpsample"] = torch.zeros(7, dtype=torch.uint8)
    model.load_state_dict(sd)
    assert model.to_img.MetaUpsample.tolist() == [2, 1, 2, 16, 3, 16, 4]


def test_engine_whole_image_equals_model() -> None:
    model = _randomised(MINI)
    spec = archs.spec("RHA", **MINI)
    img = torch.rand(3, 36, 52)
    out, _ = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(img)
    with torch.no_grad():
        direct = model(img[None])[0]
    assert torch.allclose(out, direct, atol=1e-5)


def test_tiling_is_not_exact_and_says_so() -> None:
    """Measure tiled-vs-whole error at the descriptor's margin; the hint must not claim "safe" when it is large."""
    model = _randomised(MINI, seed=3)
    spec = archs.spec("RHA", **MINI)
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(96, 96), mode="bicubic",
                                          align_corners=False).clamp(0, 1)[0]
    whole, _ = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(img)
    tiled, stats = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=32, overlap=8).run(img)
    assert stats.tiles > 1
    err = float((tiled - whole).abs().max())
    print(f"RHA tiled vs whole: max abs error {err:.4f} (tile 32, margin {spec.context})", file=sys.stderr)
    if err > 1 / 255:
        assert spec.tiling != "safe"
    assert spec.tiling == "global"


@pytest.mark.skipif(not (GOLDEN / "RHA__small_x4.safetensors").is_file(), reason="golden file missing")
def test_low_precision_stays_close() -> None:
    model, t, _ = load_golden(GOLDEN / "RHA__small_x4.safetensors", "RHA")
    x = t["input"]
    with torch.inference_mode():
        ref = model(x)
        out = model.to(torch.bfloat16)(x.bfloat16()).float()
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) < 0.02
