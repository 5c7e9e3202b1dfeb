"""StyleGAN2 generators (archs/stylegan2.py): goldens, manifests, detector, deterministic forward, the upstream
forward_styles API (latents, mixing, truncation), descriptor, half precision; on a GPU the op kernels in the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import archs
from archs import stylegan2
from archs.stylegan2 import StyleGAN2Generator, StyleGAN2GeneratorBilinear, _StyleGAN2Base
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

SMALL: dict[str, Any] = {"out_size": 32, "num_style_feat": 16, "num_mlp": 2, "narrow": 1 / 32}


def _goldens() -> list[Path]:
    return sorted(GOLDEN.glob("StyleGAN2Generator*.safetensors"))


def _manifests() -> list[Path]:
    return sorted(GOLDEN.glob("StyleGAN2Generator*.keys.json"))


def _load_golden(path: Path) -> tuple[_StyleGAN2Base, dict[str, torch.Tensor], dict[str, str]]:
    model, t, meta = load_golden(path)
    assert isinstance(model, _StyleGAN2Base)
    return model, t, meta


def _small(cls: type[_StyleGAN2Base] = StyleGAN2Generator, seed: int = 0, **kw: Any) -> _StyleGAN2Base:
    torch.manual_seed(seed)
    model = cls(**{**SMALL, **kw})
    with torch.no_grad():  # visible noise and biases (upstream initialises them to zero)
        for name, p in model.named_parameters():
            if name.endswith(("activate.bias", "to_rgb1.bias")) or (name.endswith(".weight") and p.numel() == 1):
                p.normal_(0, 0.3)
    return model.eval()


# -------------------------------------------------------------------------------------------------------- goldens


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="no golden folder")
def test_goldens_and_manifests_exist() -> None:
    assert len(_goldens()) == 2 and len(_manifests()) == 2


@pytest.mark.parametrize("path", _goldens(), ids=lambda p: p.name)
def test_golden_output(path: Path) -> None:
    """The harness call `model(input)` is upstream's forward([input], input_is_latent=False, randomize_noise=False)."""
    model, t, meta = _load_golden(path)
    assert meta["call"] == "forward([input], input_is_latent=False, randomize_noise=False)[0]"
    with torch.no_grad():
        out = model(t["input"])
        assert out.shape == t["output"].shape
        assert rel_l2(out, t["output"]) <= float(meta.get("tolerance", "1e-4"))
        image, latent = model.forward_styles([t["input"]], input_is_latent=False, randomize_noise=False)
    assert latent is None and torch.equal(image, out)


@pytest.mark.parametrize("path", _goldens(), ids=lambda p: p.name)
def test_golden_weights_detect_as_stylegan2_only(path: Path) -> None:
    """Both goldens have the same keys and shapes: the FIR generator is detected, the bilinear one is chosen by name."""
    model, _, meta = _load_golden(path)
    found = archs.detect(model.state_dict())
    assert [n for n, _ in found] == ["stylegan2"]
    kw = json.loads(meta["kwargs"])
    assert found[0][1]["out_size"] == kw["out_size"] and found[0][1]["narrow"] == kw["narrow"]


def test_detector_refuses_near_misses() -> None:
    sd = dict(_small().state_dict())
    assert stylegan2._detect(sd) is not None
    assert stylegan2._detect({k: v for k, v in sd.items() if k != "noises.noise3"}) is None
    assert stylegan2._detect({**sd, "extra.weight": torch.zeros(1)}) is None
    bad = dict(sd)
    bad["to_rgbs.0.bias"] = torch.zeros(1, 4, 1, 1)
    assert stylegan2._detect(bad) is None
    assert stylegan2._detect({"conv_first.weight": torch.zeros(8, 3, 3, 3)}) is None


# ------------------------------------------------------------------------------------------------------- behaviour


def test_forward_is_deterministic_and_leaves_rng_alone() -> None:
    model = _small()
    z = torch.randn(2, 16)
    rng = torch.get_rng_state()
    with torch.no_grad():
        a, b = model(z), model(z)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), rng)
    assert a.shape == (2, 3, 32, 32)
    with torch.no_grad():  # per-sample weights: each image depends only on its own code
        assert rel_l2(model(z[1:]), a[1:]) < 1e-5
        model.randomize_noise = True  # upstream's default: fresh noise each call
        c, d = model(z), model(z)
        model.randomize_noise = False
        assert not torch.equal(c, d)
        assert not torch.equal(model(z, randomize_noise=True), a)


def test_forward_styles_upstream_api() -> None:
    model = _small()
    z1, z2 = torch.randn(1, 16), torch.randn(1, 16)
    with torch.no_grad():
        img, lat = model.forward_styles([z1], randomize_noise=False, return_latents=True)
        assert lat is not None and lat.shape == (1, model.num_latent, 16)
        assert torch.equal(img, model(z1))
        w = model.get_latent(z1)
        assert torch.allclose(model(w, input_is_latent=True), img, atol=1e-6)
        per_layer = w.unsqueeze(1).repeat(1, model.num_latent, 1)  # an encoder's (B, num_latent, C) latents
        assert torch.allclose(model(per_layer, input_is_latent=True), img, atol=1e-6)
        # mixing at inject_index k: the first k latents from z1, the rest from z2
        mixed, lat2 = model.forward_styles([z1, z2], randomize_noise=False, inject_index=3, return_latents=True)
        assert lat2 is not None
        assert torch.equal(lat2[:, :3], lat[:, :3]) and torch.equal(lat2[:, 3:], model.get_latent(z2)
                                                                       .unsqueeze(1).expand(-1, 5, -1))
        assert not torch.equal(mixed, img)
        # truncation 0 collapses every code to the truncation latent
        centre = model.mean_latent(64)
        t1 = model(z1, truncation=0.0, truncation_latent=centre)
        t2 = model(z2, truncation=0.0, truncation_latent=centre)
        assert torch.allclose(t1, t2, atol=1e-6)
        with pytest.raises(ValueError, match="truncation_latent"):
            model(z1, truncation=0.5)
        with pytest.raises(ValueError, match="one or two"):
            model.forward_styles([z1, z1, z1])
        # explicit noise maps replace the buffers
        noise = model.make_noise()
        assert [tuple(n.shape[-2:]) for n in noise] == [tuple(getattr(model.noises, f"noise{i}").shape[-2:])
                                                        for i in range(model.num_layers)]
        assert not torch.equal(model.forward_styles([z1], noise=noise)[0], img)


def test_bilinear_variant_differs_only_in_resampling() -> None:
    fir, bil = _small(StyleGAN2Generator), _small(StyleGAN2GeneratorBilinear)
    assert {k: v.shape for k, v in fir.state_dict().items()} == {k: v.shape for k, v in bil.state_dict().items()}
    bil.load_state_dict(fir.state_dict())
    z = torch.randn(1, 16)
    with torch.no_grad():
        a, b = fir(z), bil(z)
    assert a.shape == b.shape and not torch.allclose(a, b)
    nearest = _small(StyleGAN2GeneratorBilinear, interpolation_mode="nearest")
    with torch.no_grad():
        assert nearest(z).shape == (1, 3, 32, 32)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(out_size=96)
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(out_size=2048)
    with pytest.raises(ValueError, match="interpolation_mode"):
        StyleGAN2GeneratorBilinear(interpolation_mode="area")
    with pytest.raises(TypeError):
        archs.build("StyleGAN2Generator", num_in_ch=3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float32(dtype: torch.dtype) -> None:
    model = _small(num_style_feat=16, narrow=1 / 16)
    z = torch.randn(2, 16)
    with torch.no_grad():
        want = model(z)
        got = model.to(dtype)(z)  # a float32 code into a half model: the style path runs in float32 anyway
    assert got.dtype == dtype and torch.isfinite(got.float()).all()
    assert rel_l2(got, want) < (5e-3 if dtype == torch.float16 else 3e-2)


def test_descriptor() -> None:
    for name in ("StyleGAN2Generator", "StyleGAN2GeneratorBilinear"):
        spec = archs.spec(name, out_size=512, channel_multiplier=1)
        assert spec.family == "StyleGAN2" and spec.tasks == ("face",)
        assert (spec.scale, spec.in_channels, spec.out_channels) == (1, 3, 3)
        assert spec.tiling == "internal" and spec.code_license == "Apache-2.0"
    assert archs.entry("stylegan2_bilinear").detect is None
    assert archs.spec("stylegan2").upstream_class == "StyleGAN2Generator"


def test_build_defaults_are_ffhq_config_f() -> None:
    with torch.device("meta"):
        model = archs.build("StyleGAN2Generator")
    kwargs: dict[str, Any] = model.arch_kwargs  # type: ignore[assignment]
    assert kwargs["out_size"] == 1024 and kwargs["channel_multiplier"] == 2
    assert sum(p.numel() for p in model.parameters()) > 30_000_000


# ------------------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("path", _goldens(), ids=lambda p: p.name)
def test_cuda_golden_with_kernels(path: Path) -> None:
    from archs.ops import _build

    assert _build.load("upfirdn2d") is not None
    model, t, _ = _load_golden(path)
    model.cuda()
    with torch.no_grad():
        out = model(t["input"].cuda()).cpu()
    assert rel_l2(out, t["output"]) <= 1e-4
    with torch.no_grad():
        half = model.half()(t["input"].cuda()).float().cpu()
    assert torch.isfinite(half).all() and rel_l2(half, t["output"]) < 5e-3
