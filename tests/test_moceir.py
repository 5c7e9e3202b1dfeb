"""Family-specific behaviour of MoCE-IR (archs/moceir.py): sparse top-k routing, per-image experts, last_info."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import torch

import archs
from archs.layers.restormer import GLOBAL_CONTEXT_CAP
from archs.moceir import AdapterLayer, ModExpert
from restore_cli.engine.runner import Runner
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

GOLDEN_FILE = "MoCEIR__d8_l4_spread_top1.safetensors"
# upstream's record of the golden forward (metadata notes, stats.routing): expert per decoder block
GOLDEN_ROUTING = {"dec.0.2.layers.0": [2], "dec.1.2.layers.0": [2], "dec.2.2.layers.0": [1]}


@functools.cache
def _golden() -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    model, t, meta = load_golden(GOLDEN / GOLDEN_FILE, "MoCEIR")
    return model, t, json.loads(meta["kwargs"])


def _count_expert_calls(model: torch.nn.Module) -> tuple[dict[str, list[int]], list[Any]]:
    """Hooks on every expert: {expert path: [batch size of each call]}."""
    calls: dict[str, list[int]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, ModExpert):
            calls[name] = []
            handles.append(m.register_forward_hook(lambda mod, inp, out, n=name: calls[n].append(inp[0].shape[0])))
    return calls, handles


def _block_of(expert_path: str) -> tuple[str, int]:
    # "dec.0.2.layers.0.adapter.experts.3.0" -> ("dec.0.2.layers.0", 3)
    block, rest = expert_path.split(".adapter.experts.")
    return block, int(rest.split(".")[0])


# ------------------------------------------------------------------------------------------------------------ golden


def test_golden_adapters_and_routing() -> None:
    model, t, _ = _golden()
    got: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, AdapterLayer):
            m.register_forward_hook(lambda mod, i, o, n=name: got.__setitem__(n, o))
    calls, handles = _count_expert_calls(model)
    with torch.no_grad():
        out = model(t["input"])
    for h in handles:
        h.remove()
    assert rel_l2(out, t["output"]) <= 1e-4
    for name, v in got.items():
        assert rel_l2(v, t[f"aux.{name}"]) <= 1e-5, name
    # the report sees upstream's choice (one image, top-1) ...
    info = model.last_info
    assert dict(zip(info["blocks"], info["experts"][0], strict=True)) == GOLDEN_ROUTING
    # ... and only those experts ran: one call per decoder block, none for the other experts
    ran = {_block_of(p): n for p, n in calls.items() if n}
    assert ran == {(b, e[0]): [1] for b, e in GOLDEN_ROUTING.items()}


def test_eval_is_deterministic_and_training_adds_gate_noise() -> None:
    model, t, _ = _golden()
    x = t["input"]
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
    assert torch.equal(a, b)  # no gate noise at inference
    model.train()
    try:
        torch.manual_seed(3)
        y = model(x)
        loss = model.total_loss
    finally:
        model.eval()
    assert loss is not None and torch.isfinite(loss) and loss.requires_grad
    y.mean().backward()
    model.zero_grad(set_to_none=True)


def test_batch_routes_each_image_on_its_own() -> None:
    """Upstream's eval path assumes one image; here a batch gives each image its own experts and result."""
    model, t, _ = _golden()
    g = torch.Generator().manual_seed(7)
    x = torch.cat([t["input"], torch.rand(2, 3, 40, 56, generator=g) * 4 - 2, t["input"].flip(-1) * 0.3])
    calls, handles = _count_expert_calls(model)
    with torch.no_grad():
        batched = model(x)
        info = model.last_info
        singles = []
        for i in range(x.shape[0]):
            singles.append(model(x[i : i + 1]))
            assert model.last_info["experts"][0] == info["experts"][i]
    for h in handles:
        h.remove()
    assert rel_l2(batched, torch.cat(singles)) < 1e-5
    assert len(info["experts"]) == 4 and len(info["blocks"]) == 3
    # in the batched forward each expert ran at most once per block, on exactly the images routed to it
    for path, sizes in calls.items():
        block, e = _block_of(path)
        j = info["blocks"].index(block)
        chose = sum(e in info["experts"][i][j] for i in range(4))
        assert sizes[:1] == ([chose] if chose else [])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_only_the_selected_experts_run(k: int) -> None:
    """Routing is sparse: an adapter runs k experts per image, not all of them masked afterwards."""
    torch.manual_seed(0)
    dim, experts = 8, 4
    layer = AdapterLayer(dim, 2, num_experts=experts, top_k=k, freq_dim=16, rank_type="spread",
                         depth_type="constant").eval()
    # gate on the pooled channel e: image i is routed to experts i, i+1, ... by construction
    with torch.no_grad():
        layer.routing.gate[2].weight.copy_(torch.eye(experts, dim) * 50)  # type: ignore[operator,index]
        layer.routing.freq_gate.weight.zero_()
    x = torch.zeros(2, dim, 16, 16)
    x[0, 0] = 1.0  # expert 0 first, then its runners-up
    x[1, 2] = 1.0 - 0.01 * torch.rand(16, 16)  # expert 2 first
    calls, handles = _count_expert_calls(layer)
    with torch.no_grad():
        layer(x, torch.zeros(2, 16), torch.randn(2, dim, 16, 16), k)
    for h in handles:
        h.remove()
    chosen = layer.last_experts
    assert chosen is not None and chosen.shape == (2, k)
    assert chosen[0, 0] == 0 and chosen[1, 0] == 2
    total = sum(len(v) for v in calls.values())
    assert total == len(set(chosen.flatten().tolist())) <= experts
    assert sum(sum(v) for v in calls.values()) == 2 * k  # each image visits exactly k experts
    for path, sizes in calls.items():
        e = int(path.split(".")[1])
        assert sizes == ([int((chosen == e).sum())] if (chosen == e).any() else [])


def test_topk_is_a_runtime_option() -> None:
    model, t, _ = _golden()
    try:
        model.topk = 2  # type: ignore[assignment]
        with torch.no_grad():
            out = model(t["input"])
        assert all(len(e) == 2 for e in model.last_info["experts"][0])
        assert torch.isfinite(out).all()
        model.topk = 5  # type: ignore[assignment]
        with pytest.raises(ValueError, match="topk"):
            model(t["input"])
    finally:
        model.topk = 1  # type: ignore[assignment]


def test_low_precision_and_odd_sizes() -> None:
    model, t, _ = _golden()
    x = t["input"]
    with torch.no_grad():
        ref = model(x)
        try:
            low = model.to(torch.bfloat16)(x.bfloat16()).float()  # FFTs run in float32 inside
        finally:
            model.float()
        odd = model(x[..., :37, :51])  # padded inside to a multiple of 8, cropped back
    assert rel_l2(low, ref) < 0.05
    assert odd.shape == (1, 3, 37, 51) and torch.isfinite(odd).all()


# ---------------------------------------------------------------------------------------------------------- detector


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="rank_type"):
        archs.build("MoCEIR", rank_type="linear")
    with pytest.raises(ValueError, match="expert_layer"):
        archs.build("MoCEIR", expert_layer="Attention")
    with pytest.raises(ValueError, match="topk"):
        archs.build("MoCEIR", topk=0)
    with pytest.raises(ValueError, match="depth"):
        archs.build("MoCEIR", depth_type="constant", stage_depth=[0, 1, 1])


# ------------------------------------------------------------------------------------------------------------ tiling


def test_tiling_error_is_measured_and_declared(record_property: Any) -> None:
    """Channel attention and the routers' pooling see the whole tile: tiles differ from a whole-image run."""
    model, _, kwargs = _golden()
    spec = archs.spec("MoCEIR", **kwargs)
    assert spec.tiling == "global" and spec.multiple_of == 8 and spec.context <= GLOBAL_CONTEXT_CAP
    g = torch.Generator().manual_seed(5)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 7, generator=g), size=(80, 72), mode="bilinear")[0]
    kw = {"device": torch.device("cpu"), "dtype": torch.float32, "overlap": 8}
    whole, _ = Runner(model, spec, tile=0, **kw).run(image)
    tiled, stats = Runner(model, spec, tile=32, margin=8, **kw).run(image)
    assert stats.tiles > 1 and tiled.shape == whole.shape
    assert len(stats.model_info) == stats.tiles and "experts" in stats.model_info[0]  # reported per tile
    err = float((tiled - whole).abs().max())
    record_property("tiled_vs_whole_max_abs", err)
    assert err > 1 / 255  # measured: far from "safe", as declared
