"""Family-specific behaviour of Restormer, PromptIR and DFPIR (archs/promptir.py, archs/_restormer.py)."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import torch

import archs
from archs.layers.norm import RestormerLayerNorm as LayerNorm
from archs.layers.restormer import GLOBAL_CONTEXT_CAP, channel_attention, ffn_factor
from restore_cli.engine.runner import Runner
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

SMALL: dict[str, Any] = {"dim": 8, "num_blocks": [1, 1, 1, 2], "num_refinement_blocks": 1, "heads": [1, 2, 2, 4]}
PROMPTIR_SMALL: dict[str, Any] = {"num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "decoder": True}


@functools.cache
def _golden(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    """A golden file's model (strictly loaded, eval), tensors and metadata; loaded once per module."""
    return load_golden(GOLDEN / name)


def _meta_sd(name: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return archs.build(name, **kwargs).state_dict()


def _norm(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            centre = 1.0 if name.endswith("weight") else 0.0  # norm scales around 1, biases around 0
            p.copy_(r / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else centre + 0.1 * r)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------ golden


def test_promptir_golden_prompt_branch() -> None:
    """aux.prompt1-3: the prompt generators (softmax mix, bilinear resize, conv) match upstream on their own."""
    model, t, _ = _golden("PromptIR__dec_nb1111_r1_ffn2.66.safetensors")
    got: dict[str, torch.Tensor] = {}
    for n in ("prompt1", "prompt2", "prompt3"):
        getattr(model, n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o))
    with torch.no_grad():
        out = model(t["input"])
    assert rel_l2(out, t["output"]) <= 1e-4
    for n, v in got.items():
        assert rel_l2(v, t[f"aux.{n}"]) <= 1e-5, n


@pytest.mark.parametrize("name", ["PromptIR__dec_nb1111_r1_ffn2.66.safetensors",
                                  "Restormer__d8_nb1112_r1_h1-2-2-4.safetensors"])
def test_golden_low_precision_and_odd_sizes(name: str) -> None:
    """bf16 on the CPU stays close to float32; sizes off the multiple of 8 are padded inside and cropped back."""
    model, t, _ = _golden(name)
    x = t["input"]
    with torch.no_grad():
        ref = model(x)
        try:
            low = model.to(torch.bfloat16)(x.bfloat16()).float()
        finally:
            model.float()
        odd = model(x[..., :37, :51])
    assert rel_l2(low, ref) < 0.05
    assert odd.shape == (1, 3, 37, 51) and torch.isfinite(odd).all()


# ----------------------------------------------------------------------------------------------------- construction


def test_promptir_refuses_configs_that_cannot_run() -> None:
    with pytest.raises(ValueError, match="decoder=False"):
        archs.build("PromptIR")
    with pytest.raises(ValueError, match="dim=48"):
        archs.build("PromptIR", decoder=True, dim=32)
    with pytest.raises(ValueError, match="LayerNorm_type"):
        archs.build("Restormer", LayerNorm_type="withbias")
    with pytest.raises(TypeError, match="unknown argument"):
        archs.build("Restormer", num_block=[1, 1, 1, 1])


def test_detector_rejects_a_near_miss() -> None:
    sd = dict(_meta_sd("restormer", SMALL))
    sd["extra.weight"] = torch.empty(1, device="meta")
    assert archs.detect(sd) == []
    sd = dict(_meta_sd("restormer", SMALL))
    del sd["refinement.0.ffn.dwconv.weight"]
    assert archs.detect(sd) == []


def test_ffn_factor() -> None:
    assert ffn_factor([(48, 127), (96, 255), (192, 510), (384, 1021)]) == 2.66
    assert ffn_factor([(8, 16), (64, 128)]) == 2.0
    f = ffn_factor([(10, 33), (20, 66)])
    assert f is not None and int(10 * f) == 33 and int(20 * f) == 66
    assert ffn_factor([(10, 33), (20, 60)]) is None


# ---------------------------------------------------------------------------------------------------------- helpers


def test_layer_norms_match_their_definitions() -> None:
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    ln = LayerNorm(6, "WithBias")
    with torch.no_grad():
        ln.body.weight.uniform_(0.5, 1.5)
        ln.body.bias.uniform_(-1, 1)  # type: ignore[union-attr]
    xt = x.permute(0, 2, 3, 1)
    mu, var = xt.mean(-1, keepdim=True), xt.var(-1, keepdim=True, unbiased=False)
    want = ((xt - mu) / torch.sqrt(var + 1e-5) * ln.body.weight + ln.body.bias).permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), want, atol=1e-5)
    bf = LayerNorm(6, "BiasFree")
    want_bf = (xt / torch.sqrt(var + 1e-5) * bf.body.weight).permute(0, 3, 1, 2)
    assert torch.allclose(bf(x), want_bf, atol=1e-5)
    assert bf(x.bfloat16()).dtype == torch.bfloat16


def test_channel_attention_half_precision_is_stable() -> None:
    """Large maps: squared norms over H*W overflow float16; the attention matrix is computed in float32."""
    q, k, v = (torch.randn(1, 4, 256, 256) * 40 for _ in range(3))
    temp = torch.ones(2, 1, 1)
    ref = channel_attention(q, k, v, temp, 2)
    low = channel_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), temp, 2)
    assert torch.isfinite(low).all() and rel_l2(low, ref) < 0.02


# ------------------------------------------------------------------------------------------------------------ DFPIR


def _dfpir() -> torch.nn.Module:
    torch.manual_seed(0)
    return _random(archs.build("DFPIR", **SMALL), seed=1)


def test_dfpir_needs_a_text_embedding() -> None:
    model = _dfpir()
    x = torch.rand(2, 3, 24, 32)
    with pytest.raises(ValueError, match="text embedding"):
        model(x)
    with pytest.raises(ValueError, match="shape"):
        model(x, text_embedding=torch.randn(3, 512))
    with pytest.raises(ValueError, match="shape"):
        model(x, text_embedding=torch.randn(1, 256))


def test_dfpir_text_embedding_attribute_and_batch() -> None:
    model = _dfpir()
    x = torch.rand(2, 3, 24, 32)
    g = torch.Generator().manual_seed(3)
    text, other = torch.randn(512, generator=g), torch.randn(512, generator=g)
    with torch.no_grad():
        by_arg = model(x, text_embedding=text[None])
        model.text_embedding = text  # type: ignore[assignment]
        by_attr = model(x)
        single = model(x[1:])
        changed = model(x, text_embedding=other)
    assert torch.equal(by_arg, by_attr)
    assert rel_l2(single, by_attr[1:]) < 1e-5  # one embedding serves every image of the batch
    assert rel_l2(changed, by_attr) > 1e-4  # the text steers the restoration


# ----------------------------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("name", ["Restormer__d8_nb1112_r1_h1-2-2-4.safetensors",
                                  "PromptIR__dec_nb1111_r1_ffn2.66.safetensors"])
def test_tiling_error_is_measured_and_declared(name: str, record_property: Any) -> None:
    """MDTA couples every pixel with the whole tile: tiles differ from a whole-image run. The descriptor says
    "global"; the measured difference is recorded, and must not pass for "safe"."""
    model, _, meta = _golden(name)
    spec = archs.spec(meta["class"], **json.loads(meta["kwargs"]))
    assert spec.tiling == "global" and spec.multiple_of == 8 and spec.context <= GLOBAL_CONTEXT_CAP
    g = torch.Generator().manual_seed(5)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 7, generator=g), size=(64, 56), mode="bilinear")[0]
    kw = {"device": torch.device("cpu"), "dtype": torch.float32, "overlap": 8}
    whole, _ = Runner(model, spec, tile=0, **kw).run(image)
    tiled, stats = Runner(model, spec, tile=24, margin=8, **kw).run(image)
    assert stats.tiles > 1 and tiled.shape == whole.shape
    err = float((tiled - whole).abs().max())
    record_property("tiled_vs_whole_max_abs", err)
    assert err > 1 / 255  # measured: far from "safe", as declared
