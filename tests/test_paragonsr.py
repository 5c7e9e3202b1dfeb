"""ParagonSR: the unfused (train-mode) golden output, the released fused layout (fuse_for_release) loading and
detection, fusion following load in either order, and the descriptor."""

from __future__ import annotations

from typing import Any

import torch

import archs
from archs.paragonsr import ParagonSR, ReparamConvV2
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

GOLDEN_FILE = GOLDEN / "ParagonSR__f24_g2_b2_e2_x4.safetensors"
TINY: dict[str, Any] = {"scale": 2, "num_feat": 16, "num_groups": 1, "num_blocks": 2}


def _randomised(kwargs: dict[str, Any], seed: int = 0) -> ParagonSR:
    model = archs.build("ParagonSR", **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "magic_upsampler" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5 if p.dim() > 1
                    else 0.1 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith("gamma") else 0.0))
    assert isinstance(model, ParagonSR)
    return model.eval()


def test_golden_unfused_branches() -> None:
    """aux.unfused: the same weights in train mode (separate branches) match upstream's train-mode output."""
    model, t, _ = load_golden(GOLDEN_FILE)
    with torch.no_grad():
        assert rel_l2(model.train()(t["input"]), t["aux.unfused"]) <= 1e-5
        assert rel_l2(model.eval()(t["input"]), t["output"]) <= 1e-5


def _release(model: ParagonSR) -> dict[str, torch.Tensor]:
    """What upstream's fuse_for_release() saves: each ReparamConvV2 replaced by one conv `<name>.weight/bias`."""
    sd: dict[str, torch.Tensor] = {}
    reps = {n: m for n, m in model.named_modules() if isinstance(m, ReparamConvV2)}
    for k, v in model.state_dict().items():
        if not any(k.startswith(n + ".") for n in reps):
            sd[k] = v
    for n, m in reps.items():
        m.fuse()
        sd[n + ".weight"], sd[n + ".bias"] = m.fused_weight.clone(), m.fused_bias.clone()
    return sd


def test_released_fused_checkpoint_loads_and_is_detected() -> None:
    src = _randomised(TINY)
    x = torch.rand(1, 3, 13, 17)
    with torch.no_grad():
        want = src(x)
    sd = _release(src)
    found = archs.detect(sd)
    assert [n for n, _ in found] == ["paragonsr"]
    kwargs = found[0][1]
    assert kwargs["fused"] is True and kwargs["num_feat"] == 16 and kwargs["scale"] == 4
    fused = archs.build("paragonsr", **{**kwargs, "scale": 2})
    fused.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert rel_l2(fused.eval()(x), want) <= 1e-5
    # the unfused checkpoint is detected as the unfused layout
    (name, kw), = archs.detect(src.state_dict())
    assert name == "paragonsr" and "fused" not in kw


def test_fusion_follows_load_in_either_order() -> None:
    src = _randomised(TINY, seed=3)
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        want = src(x)
    late = archs.build("ParagonSR", **TINY).eval()
    late.load_state_dict(src.state_dict())
    with torch.no_grad():
        assert torch.equal(late(x), want)
    assert not any("fused_weight" in k for k in late.state_dict())  # derived, never saved


def test_descriptor() -> None:
    s = archs.spec("paragonsr", num_groups=2, num_blocks=3)
    assert s.scale == 4 and s.tiling == "global" and s.context == 1 + 6 * 6 + 1 + 3 + 1
    assert archs.spec("paragonsr").context == 128  # capped


def test_pixelshuffle_head_of_the_author_repository() -> None:
    """Phhofm/ParagonSR's version: a pixel-shuffle head (scale stored), released fused or not."""
    src = _randomised({**TINY, "scale": 3, "upsampler": "pixelshuffle"}, seed=5)
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        want = src(x)
    assert want.shape == (1, 3, 21, 27)
    for sd, fused in ((src.state_dict(), False), (_release(src), True)):
        (name, kw), = archs.detect(sd)
        assert name == "paragonsr" and kw["upsampler"] == "pixelshuffle" and kw["scale"] == 3
        assert kw.get("fused", False) is fused
        model = archs.build(name, **kw)
        model.load_state_dict(sd, strict=True)
        with torch.no_grad():
            assert rel_l2(model.eval()(x), want) <= 1e-5
    assert archs.spec("paragonsr", upsampler="pixelshuffle", num_groups=1, num_blocks=1).context == 1 + 6 + 1 + 2
