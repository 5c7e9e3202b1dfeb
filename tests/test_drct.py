"""Family-specific behaviour of DRCT (archs/drct.py). Golden outputs and the official manifests are checked
registry-wide in tests/test_golden.py."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import archs
from archs.drct import DRCT
from archs.layers.swin import WindowAttention
from tests.conftest import GOLDEN
from tests.util import load_golden, read_golden, recipe_state_dict, rel_l2

NAME = "DRCT__e16_rdg3_h2_w4_gc8_x4.safetensors"


@functools.cache
def _golden() -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    return load_golden(GOLDEN / NAME)


def test_golden_state_dict_is_detected() -> None:
    t, meta = read_golden(GOLDEN / NAME)
    found = archs.detect(recipe_state_dict(t, meta))
    assert [n for n, _ in found] == ["drct"]
    want = archs.entry("DRCT").full_kwargs(json.loads(meta["kwargs"]))
    got = archs.entry("DRCT").full_kwargs(found[0][1])
    # depths only count the groups (values unused upstream); drop rates are training-only and not stored
    assert {k for k in want if want[k] != got[k] and k not in ("depths", "drop_path_rate")} == set()
    assert len(got["depths"]) == len(want["depths"])


def test_attn_scale_twice_is_the_second_copys_scaling() -> None:
    """DRCT_arch.py scales q by head_dim**-0.5 and SDPA scales again: the flag reproduces that, off by default."""
    model, t, meta = _golden()
    twice = DRCT(**{**json.loads(meta["kwargs"]), "attn_scale_twice": True}).eval()
    twice.load_state_dict(model.state_dict())
    for m in twice.modules():
        if isinstance(m, WindowAttention):
            assert m.scale == pytest.approx((m.dim // m.num_heads) ** -1.0)
    x = t["input"][..., :16, :16]
    with torch.no_grad():
        assert rel_l2(twice(x), model(x)) > 1e-3


def test_tiles_with_the_context_margin_are_exact() -> None:
    """tiling "safe": a window holding `context` pixels (on the window grid) around a core reproduces it; a thin
    margin does not (strong random weights, so attention reaches across its windows)."""
    kw = {"img_size": 16, "embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 4, "gc": 4,
          "upscale": 2, "upsampler": "pixelshuffle"}
    model = DRCT(**kw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 0.1))
    spec = archs.spec("DRCT", **kw)
    assert spec.tiling == "safe" and spec.multiple_of == 4
    s = spec.scale

    def error(c: int) -> float:
        image = torch.rand(1, 3, c + 16, 2 * c + 24, generator=g)
        with torch.no_grad():
            whole = model(image)
            part = model(image[..., :c + 8, 8:2 * c + 16])  # core: rows [0, 8), cols [c + 8, c + 16)
        return rel_l2(part[..., :8 * s, c * s:(c + 8) * s], whole[..., :8 * s, (c + 8) * s:(c + 16) * s])

    assert error(-(-spec.context // 4) * 4) < 1e-5
    assert error(4) > 1e-3


def test_reflect_padding_and_crop() -> None:
    model, t, _ = _golden()
    x = t["input"][..., :13, :14]  # not multiples of the window (4)
    with torch.no_grad():
        out = model(x)
    assert out.shape[-2:] == (52, 56)
