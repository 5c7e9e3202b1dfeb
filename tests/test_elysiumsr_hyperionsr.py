"""ElysiumSR and HyperionSR: the size classes (keys under `model.`) and the base classes (the same weights with
the prefix stripped, as restore's loader does) are each detected exactly once and give the same output; HyperionSR's
channel-attention gate against the golden's aux tensor; descriptors."""

from __future__ import annotations

import pytest
import torch

import archs
from restore_cli.loading import build_from_state_dict, canonicalize
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2


@pytest.mark.parametrize("family", ["ElysiumSR", "HyperionSR"])
def test_sized_and_stripped_weights_detect_and_agree(family: str) -> None:
    torch.manual_seed(0)
    sized = archs.build(f"{family}_S", scale=2).eval()
    sd = sized.state_dict()
    assert all(k.startswith("model.") for k in sd)
    (name, kw), = archs.detect(sd)
    assert name == f"{family.lower()}_s" and kw == {"scale": 2}
    stripped = canonicalize(sd)
    assert not any(k.startswith("model.") for k in stripped)
    (base_name, base_kw), = archs.detect(stripped)
    assert base_name == family.lower() and base_kw["scale"] == 2
    model = build_from_state_dict(stripped, where="test")
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(model(x), sized(x))


def test_hyperion_channel_attention_gate() -> None:
    """The golden stores the SE gate of block 0 in the middle group (the CA path barely moves the output)."""
    model, t, _ = load_golden(GOLDEN / "HyperionSR__S_x4.safetensors")
    (key,) = [k for k in t if k.startswith("aux.ca_gate_body")]
    group = int(key.removeprefix("aux.ca_gate_body").split("_")[0])
    seen: list[torch.Tensor] = []
    ca = model.model.body[group].blocks[0].ca.conv_du
    handle = ca.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model(t["input"])
    handle.remove()
    assert rel_l2(seen[0], t[key]) <= 1e-5


def test_descriptors() -> None:
    e = archs.spec("ElysiumSR_S", scale=2)
    assert e.tiling == "safe" and e.scale == 2 and e.context == 1 + 20 + 1 + 1 + 1
    assert archs.spec("elysiumsr", num_blocks=3).context == 1 + 6 + 3
    h = archs.spec("HyperionSR_XL")
    assert h.tiling == "global" and h.scale == 4 and h.context == 4
