"""Family-specific behaviour of DSwinIR (archs/dswinir.py: MSDeformableNAIR)."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F

import archs
from archs import dswinir
from archs.dswinir import MSDeformableNeighborhoodAttention
from archs.layers.padding import pad_to_multiple
from archs.ops import _build
from tests.conftest import GOLDEN
from tests.util import file_state_dict, load_golden, meta_state_dict, rel_l2

GOLDENS = sorted(GOLDEN.glob("MSDeformableNAIR__*.safetensors"))
MANIFESTS = sorted(GOLDEN.glob("MSDeformableNAIR__*.keys.json"))


@functools.cache
def _golden(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    return load_golden(GOLDEN / name)


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            centre = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0
            p.copy_(r / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else centre + 0.1 * r)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------ golden


def test_golden_low_precision_and_odd_sizes() -> None:
    model, t, _ = _golden("MSDeformableNAIR__dim12_h3-3-6-6_b1-1-1-1_r1.safetensors")
    x = t["input"]
    with torch.no_grad():
        ref = model(x)
        try:
            low = model.to(torch.bfloat16)(x.bfloat16()).float()
        finally:
            model.float()
        small = model(x[..., :20, :45])  # padded to min_size 48 inside (replicate: 28 rows > 20), cropped back
    assert rel_l2(low, ref) < 0.05
    assert small.shape == (1, 3, 20, 45) and torch.isfinite(small).all()
    # the model pads like this: reflect up to the multiple of 8 when the input is large enough, replicate when not
    pad = pad_to_multiple(x[..., :61, :45], 8, mode="reflect_or_replicate", min_size=model.min_size)
    assert pad.shape[-2:] == (64, 48) and torch.equal(pad[..., 61, :45], x[..., 59, :45])
    pad = pad_to_multiple(x[..., :20, :45], 8, mode="reflect_or_replicate", min_size=model.min_size)
    assert pad.shape[-2:] == (48, 48) and torch.equal(pad[..., 47, :45], x[..., 19, :45])


# ---------------------------------------------------------------------------------------------- manifests, detection


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden folder not found")
def test_detector_matches_only_this_family() -> None:
    files = [*GOLDEN.glob("*.keys.json"), *GOLDEN.glob("*.safetensors"), *GOLDEN.glob("real/*.safetensors")]
    others = [p for p in files if not p.name.startswith("MSDeformableNAIR__")]
    assert others
    for p in others:
        assert dswinir._detect(file_state_dict(p)) is None, p.name
    for p in [*GOLDENS, *MANIFESTS]:
        assert dswinir._detect(file_state_dict(p)) is not None, p.name


def test_detector_rejects_a_near_miss() -> None:
    kw = {"dim": 12, "heads": [3, 3, 6, 6], "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}
    sd = meta_state_dict("dswinir", **kw)
    sd["extra.weight"] = torch.empty(1, device="meta")
    assert archs.detect(sd) == []
    sd = meta_state_dict("dswinir", **kw)
    del sd["latent.0.attn.rpb_h3"]
    assert archs.detect(sd) == []


# ---------------------------------------------------------------------------------------------------- construction


def test_refuses_configs_that_cannot_run() -> None:
    # upstream defaults (heads [2, 4, 8, 8]) build upstream but fail in forward
    with pytest.raises(ValueError, match="multiple of 3"):
        archs.build("MSDeformableNAIR")
    with pytest.raises(ValueError, match="multiple of 3"):
        archs.build("dswinir", dim=12, heads=[3, 3, 6, 5])
    with pytest.raises(ValueError, match="odd"):
        archs.build("dswinir", dim=12, heads=[3, 3, 6, 6], kernel_size=[4, 3, 3, 3])
    with pytest.raises(TypeError, match="unknown argument"):
        archs.build("dswinir", num_block=[1, 1, 1, 1])
    spec = archs.spec("dswinir")  # the descriptor of the defaults still exists
    assert spec.min_size == 48 and spec.multiple_of == 8 and spec.tiling == "safe"


def test_descriptor() -> None:
    kw = json.loads((GOLDEN / "MSDeformableNAIR__dim48_h3-6-12-24.keys.json").read_text())["kwargs"] \
        if MANIFESTS else {"dim": 48, "heads": [3, 6, 12, 24]}
    spec = archs.spec("dswinir", **kw)
    assert (spec.scale, spec.in_channels, spec.out_channels, spec.tasks) == (1, 3, 3, ("restore",))
    assert spec.context == 629  # exact receptive radius of [4, 6, 6, 8] + 4 refinement blocks
    # the latent's third head group with dilation 2: (3 + 2) x 2 = 10 px at 1/8 scale, 80 px input
    assert archs.spec("dswinir", **{**kw, "dilation": [1, 1, 1, 2]}).min_size == 80
    # kernel 7 at 1/4 scale: its dilation-2 group needs 14 px there, 56 px input
    assert archs.spec("dswinir", **{**kw, "kernel_size": [3, 3, 7, 3]}).min_size == 56


def test_deformable_sampling_is_upstreams_grid_sample() -> None:
    """The bilinear mix equals upstream's grid_sample at linspace(0.5, H-0.5)/(H-1) reference points plus
    tanh(offset)/(H-1), align_corners=True, zero padding."""
    torch.manual_seed(0)
    attn = _random(MSDeformableNeighborhoodAttention(dim=12, num_heads=3, kernel_size=3)).double()
    b, c, h, w = 2, 12, 13, 17
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    with torch.no_grad():
        q = attn.proj_q(x) * 3  # larger offsets: saturated tanh and every edge case
        got = attn._deform(x, q)
        want = _upstream_sampling(attn, x, q)
    assert rel_l2(got, want) < 1e-12


def _upstream_sampling(attn: MSDeformableNeighborhoodAttention, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    g, cg = 3, 4
    off = attn.conv_offset(q.reshape(b * g, cg, h, w))
    off = off.tanh() * torch.tensor([1 / (h - 1), 1 / (w - 1)], dtype=x.dtype).reshape(1, 2, 1, 1)
    ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=x.dtype),
                            torch.linspace(0.5, w - 0.5, w, dtype=x.dtype), indexing="ij")
    ref = torch.stack((ry / (h - 1) * 2 - 1, rx / (w - 1) * 2 - 1), -1)
    pos = off.permute(0, 2, 3, 1) + ref
    return F.grid_sample(x.reshape(b * g, cg, h, w), pos[..., (1, 0)], mode="bilinear",
                         align_corners=True).reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------------------ H200 checks


@pytest.mark.cuda
def test_golden_on_cuda_uses_the_kernel() -> None:
    assert _build.load("neighborhood_attn") is not None, _build._ERRORS.get("neighborhood_attn")
    model, t, _ = _golden("MSDeformableNAIR__dim12_h3-3-6-6_b1-1-1-1_r1.safetensors")
    x = t["input"].cuda()
    try:
        model.cuda()
        with torch.no_grad():
            out = model(x)
            assert rel_l2(out.cpu(), t["output"]) <= 1e-4
            for dtype, tol in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
                low = model.to(dtype)(x.to(dtype)).float()
                model.float()
                assert torch.isfinite(low).all() and rel_l2(low.cpu(), t["output"]) < tol, dtype
            odd = model(torch.rand(2, 3, 61, 83, device="cuda"))
            assert odd.shape == (2, 3, 61, 83) and torch.isfinite(odd).all()
    finally:
        model.float().cpu()
