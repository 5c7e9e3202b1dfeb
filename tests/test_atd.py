"""Family-specific behaviour of ATD (archs/atd.py). Golden outputs and the official manifests are checked
registry-wide in tests/test_golden.py."""

from __future__ import annotations

import json

import torch

import archs
from archs.atd import AC_MSA, ATD
from tests.conftest import GOLDEN
from tests.util import read_golden, recipe_state_dict, rel_l2

NAME = "ATD__e16_d222_h2_w4_t8_x4.safetensors"


def test_golden_state_dict_is_detected() -> None:
    t, meta = read_golden(GOLDEN / NAME)
    found = archs.detect(recipe_state_dict(t, meta))
    assert [n for n, _ in found] == ["atd"]
    want = archs.entry("ATD").full_kwargs(json.loads(meta["kwargs"]))
    got = archs.entry("ATD").full_kwargs(found[0][1])
    # category_size is not stored (detection takes the published 256; the golden uses one group), nor img_size
    assert {k for k in want if want[k] != got[k]} <= {"category_size", "img_size"}


def _reference_ac_msa(m: AC_MSA, qkv: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """AC-MSA written out token by token: a stable sort by category (Python's sorted), groups of category_size,
    the last one filled with the reversed tail, attention per group and head, then back to the token order."""
    b, n, c3 = qkv.shape
    c, heads = c3 // 3, m.num_heads
    gs = min(n, m.category_size)
    ng = -(-n // gs)
    scale = float(m.logit_scale.clamp(max=torch.log(torch.tensor(100.0))).exp())
    out = torch.zeros(b, n, c)
    for bi in range(b):
        cat = sim[bi].argmax(-1).tolist()
        order = sorted(range(n), key=lambda i: cat[i])
        pad = ng * gs - n
        seq = order + order[n - pad:][::-1]
        for g in range(ng):
            members = seq[g * gs:(g + 1) * gs]
            rows = qkv[bi, members].reshape(gs, 3, heads, c // heads)
            for h in range(heads):
                q, k, v = rows[:, 0, h], rows[:, 1, h], rows[:, 2, h]
                y = ((q @ k.T) * scale).softmax(-1) @ v
                for j, tok in enumerate(members):
                    if g * gs + j < n:  # padded copies are dropped
                        out[bi, tok, h * (c // heads):(h + 1) * (c // heads)] = y[j]
    return m.proj(out)


def test_category_attention_groups_stably() -> None:
    """Several groups, a padded last group and many ties (4 categories for 30 tokens): the result is the stable-sort
    grouping, whatever order the sort implementation would leave ties in."""
    torch.manual_seed(0)
    m = AC_MSA(8, num_heads=2, category_size=8).eval()
    qkv = torch.randn(2, 30, 24)
    sim = torch.randn(2, 30, 4)
    with torch.no_grad():
        got = m(qkv, sim)
        want = _reference_ac_msa(m, qkv, sim)
    assert rel_l2(got, want) < 1e-5


def test_flip_padding_and_crop() -> None:
    """Upstream extends the input with its mirror (edge pixel repeated) to the window multiple, then crops."""
    torch.manual_seed(0)
    kw = {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 4, "category_size": 16, "num_tokens": 4,
          "reducted_dim": 2, "upscale": 2, "upsampler": "pixelshuffledirect"}
    model = ATD(**kw).eval()
    x = torch.rand(1, 3, 6, 7)
    padded = torch.cat([x, x.flip(2)], 2)[:, :, :8]
    padded = torch.cat([padded, padded.flip(3)], 3)[:, :, :, :8]
    with torch.no_grad():
        out, full = model(x), model(padded)
    assert out.shape[-2:] == (12, 14)
    assert rel_l2(out, full[..., :12, :14]) < 1e-6
    spec = archs.spec("ATD", **kw)
    assert (spec.scale, spec.multiple_of, spec.tiling) == (2, 1, "global")
