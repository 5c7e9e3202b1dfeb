"""HiFaceGAN: spectral norm (torch-compatible keys, no power iteration in eval), determinism, signed I/O, size rules,
descriptor, detector round trips and tiling honesty."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import spectral_norm

import archs
from archs.hifacegan import HiFaceGAN, SpectralNormConv2d
from restore_cli.engine.runner import Runner
from tests.util import rel_l2

SMALL: dict[str, Any] = {"num_feat": 2}  # 16 * nf = 32 channels at the bottleneck


def _model(kwargs: dict[str, Any], seed: int = 0) -> HiFaceGAN:
    torch.manual_seed(seed)
    model = archs.build("HiFaceGAN", **kwargs)
    assert isinstance(model, HiFaceGAN)
    return model.eval()


def _face(size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_spectral_norm_matches_torch() -> None:
    """Same state keys as torch.nn.utils.spectral_norm; one power iteration per training forward; none in eval."""
    torch.manual_seed(0)
    ref = spectral_norm(nn.Conv2d(6, 5, 3, padding=1))
    ours = SpectralNormConv2d(6, 5, 3, padding=1)
    assert list(ours.state_dict()) == list(ref.state_dict())  # bias, weight_orig, weight_u, weight_v
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 9, 7)
    ref.train()
    ours.train()
    for _ in range(3):  # power iterations update u and v identically
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_u, ref.weight_u)
    torch.testing.assert_close(ours.weight_v, ref.weight_v)
    ref.eval()
    ours.eval()
    u0, v0 = ours.weight_u.clone(), ours.weight_v.clone()
    with torch.no_grad():
        y = ours(x)
        torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.weight_u, u0) and torch.equal(ours.weight_v, v0)  # eval does not iterate
    w = ours.weight_orig / torch.dot(u0, ours.weight_orig.flatten(1) @ v0)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, ours.bias, padding=1))


def test_state_dict_keys_are_upstreams_spectral_keys() -> None:
    sd = _model(SMALL).state_dict()
    assert {"head_0.conv_0.weight_orig", "head_0.conv_0.weight_u", "head_0.conv_0.weight_v", "head_0.conv_0.bias",
            "ups.0.conv_s.weight_orig", "ups.0.conv_s.weight_u", "ups.0.conv_s.weight_v"} <= set(sd)
    assert not any(k.endswith(".weight") and ".conv_" in k and "norm" not in k for k in sd)
    assert "ups.0.conv_s.bias" not in sd
    plain = _model({**SMALL, "norm_g": "spadeinstance3x3"}).state_dict()
    assert "head_0.conv_0.weight" in plain and not any("weight_orig" in k for k in plain)


@pytest.mark.parametrize("norm_g", ["spectralspadesyncbatch3x3", "spectralspadebatch3x3"])
def test_eval_is_deterministic(norm_g: str) -> None:
    model = _model({**SMALL, "norm_g": norm_g})
    x = _face()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.no_grad():
        a = model(x)
        b = model(x)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing random in forward
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no u/v or running-stat updates


def test_syncbatch_is_instance_norm() -> None:
    """BasicSR replaces SyncBatchNorm by InstanceNorm2d: syncbatch and instance are the same function."""
    a = _model({**SMALL, "norm_g": "spectralspadesyncbatch3x3"}, seed=1)
    b = _model({**SMALL, "norm_g": "spectralspadeinstance3x3"}, seed=2)
    b.load_state_dict(a.state_dict())
    x = _face()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_signed_io() -> None:
    model = _model(SMALL)
    x = _face()
    with torch.no_grad():
        raw = model(x * 2 - 1)
        model.signed_io = True
        y = model(x)
    torch.testing.assert_close(y, (raw + 1) / 2)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_sizes() -> None:
    model = _model(SMALL)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 96)).shape == (1, 3, 64, 96)
        assert model(torch.rand(1, 3, 32, 64)).shape == (1, 3, 32, 64)  # 1x2 at the bottleneck still works
        with pytest.raises(ValueError):
            model(torch.rand(1, 3, 32, 32))  # a 1x1 bottleneck: InstanceNorm needs more than one pixel
        assert model(torch.rand(1, 3, 80, 64)).shape != (1, 3, 80, 64)  # not a multiple of 32: size changes


def test_descriptor() -> None:
    sp = archs.spec("HiFaceGAN")
    assert (sp.tasks, sp.scale, sp.in_channels, sp.out_channels) == (("face",), 1, 3, 3)
    assert (sp.min_size, sp.multiple_of) == (64, 32)
    assert sp.tiling == "global"
    assert sp.context == 315
    assert archs.spec("HiFaceGAN", is_train=False, init_train_phase=1).scale == 1
    with pytest.raises(ValueError, match="downscaled"):
        archs.spec("HiFaceGAN", init_train_phase=1)


def test_detector_rejects_near_misses() -> None:
    with torch.device("meta"):
        sd = dict(archs.build("HiFaceGAN", num_feat=2).state_dict())
    del sd["ups.3.conv_s.weight_v"]
    assert archs.detect(sd) == []


def test_engine_whole_face_equals_model() -> None:
    model = _model(SMALL)
    spec = archs.spec("HiFaceGAN", **SMALL)
    img = _face(128)[0]
    out, stats = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(img)
    assert stats.tiles == 1
    with torch.no_grad():
        torch.testing.assert_close(out, model(img[None])[0])
    # CPU auto tile size: "global" families run whole up to 4 MP
    auto = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32)
    assert auto._auto_tile(512, 512) == 0


def test_tiling_error_is_reported() -> None:
    """Tiles change the InstanceNorm statistics: measure the error and check the hint does not claim "safe"."""
    model = _model({**SMALL, "norm_g": "spectralspadebatch3x3"}, seed=3)
    spec = archs.spec("HiFaceGAN", **SMALL)
    img = _face(128, seed=1)[0]
    whole, _ = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(img)
    tiled, stats = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=48, overlap=8,
                          margin=8).run(img)
    assert stats.tiles > 1
    err = float((tiled - whole).abs().max())
    print(f"HiFaceGAN tiled vs whole: max abs error {err:.4f} (tile 48, margin 8)", file=sys.stderr)
    if err > 1 / 255:
        assert spec.tiling != "safe"
    assert spec.tiling == "global"


def test_bf16_runs() -> None:
    model = _model(SMALL)
    x = _face(64)
    with torch.inference_mode():
        ref = model(x)
        out = model.to(torch.bfloat16)(x.bfloat16()).float()
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) < 0.15  # random weights amplify rounding; see the report for fp16/bf16 numbers


def test_face_renovation_key_names() -> None:
    from archs.hifacegan import from_face_renovation

    with torch.device("meta"):
        sd = dict(archs.build("HiFaceGAN", num_feat=2, norm_g="spectralspadebatch3x3").state_dict())
    original = {k.replace("g_middle_", "G_middle_"): v for k, v in sd.items()}
    assert archs.detect(original) == []
    assert list(from_face_renovation(original)) == list(sd)
    assert [n for n, _ in archs.detect(from_face_renovation(original))] == ["hifacegan"]
