"""CAMixerSR: the real published checkpoint reproduces upstream, deterministic routing, the runtime `ratio` and
`tile`, last_info, training form, detector round trips, descriptor and the engine's whole/tiled runs."""

from __future__ import annotations

import json

import pytest
import torch

import archs
from archs.camixersr import CAMixerSR, _keep_count
from restore_cli.engine.runner import Runner
from tests.conftest import GOLDEN
from tests.util import load_golden, read_golden, rel_l2

SMALL_FILE = GOLDEN / "CAMixerSR__small_x4.safetensors"
REAL_FILE = GOLDEN / "real" / "real__CAMixerSR_S.safetensors"
REAL_PTH = GOLDEN / "real" / "CAMixerSR_S.pth"


def _small() -> tuple[CAMixerSR, torch.Tensor]:
    """The small golden model (routing calibrated so that 3 of 12 windows rank as complex in every block)."""
    model, t, _ = load_golden(SMALL_FILE, "CAMixerSR")
    assert isinstance(model, CAMixerSR)
    return model, t["input"]


def test_real_checkpoint_reproduces_upstream() -> None:
    """CAMixerSR_S.pth (params_ema, strict) on a Kodak crop: upstream's output within 1e-4 relative L2."""
    t, meta = read_golden(REAL_FILE)
    if not REAL_PTH.is_file():
        pytest.skip(f"{REAL_PTH} not found")
    sd = torch.load(REAL_PTH, map_location="cpu", weights_only=True)["params_ema"]
    found = archs.detect(sd)
    assert found == [("camixersr", json.loads(meta["kwargs"]))]
    model = archs.build("CAMixerSR", **found[0][1])
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        out = model(t["input"])
    assert out.shape == t["output"].shape
    assert rel_l2(out, t["output"]) <= float(meta.get("tolerance", "1e-4"))
    assert model.last_info == {"ratio": 0.5, "kept": 0.5}  # golden notes: 10 of 20 blocks keep all 12, 10 keep 0


def test_routing_is_deterministic() -> None:
    model, x = _small()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
    assert torch.equal(a, b)


def test_keep_count_formula() -> None:
    # 3 of 12 windows rank complex (score[..., 0] larger): keep = min(int(12 * 3/12 * 2 * ratio), 12).
    score = torch.tensor([[0.9, 0.1]] * 3 + [[0.2, 0.8]] * 9).unsqueeze(0)
    assert [_keep_count(score, r) for r in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)] == [0, 1, 3, 12, 12, 12]
    assert _keep_count(torch.tensor([[[0.3, 0.7]] * 12]), 1.0) == 12  # ratio 1 keeps every window, as upstream


def test_runtime_ratio_and_last_info() -> None:
    model, x = _small()
    outs = {}
    for ratio, kept in ((0.5, 0.25), (0.25, 1 / 12), (1.0, 1.0), (0.0, 0.0)):
        model.ratio = ratio
        with torch.no_grad():
            outs[ratio] = model(x)
        assert model.last_info == {"ratio": ratio, "kept": round(kept, 4)}
    assert rel_l2(outs[1.0], outs[0.5]) > 1e-3  # more attention windows change the image
    assert rel_l2(outs[0.0], outs[0.5]) > 1e-3


def test_batch_items_are_independent() -> None:
    """Keep counts are per image (upstream pools them over the batch), so batching does not change a result."""
    model, x = _small()
    other = torch.rand_like(x)
    with torch.no_grad():
        both = model(torch.cat([x, other]))
        alone = model(x)
    assert torch.allclose(both[:1], alone, rtol=0, atol=1e-5)


def test_internal_tile() -> None:
    model, x = _small()
    square = x[..., :44, :44]
    with torch.no_grad():
        whole = model(square)
        model.tile = 64  # larger than the image: one tile, the whole image
        assert torch.equal(model(square), whole)
        model.tile = 24
        tiled = model(x)
        assert tiled.shape == (1, 3, 52 * 4, 44 * 4)
        assert torch.equal(model(x, tile=None), tiled)  # the argument falls back to the attribute
    model.tile = None
    assert archs.spec("CAMixerSR", tile=64).tiling == "internal"


def test_training_form() -> None:
    model, x = _small()
    model.train()
    y = model(x[..., :32, :32])
    assert y.shape == (1, 3, 128, 128)
    assert model.ratio_loss is not None and model.ratio_loss.numel() == 1
    assert model.last_info["ratio"] == 0.5 and 0.0 <= model.last_info["kept"] <= 1.0
    (y.square().mean() + model.ratio_loss.sum()).backward()
    route = model.body[0].body[0].mixer.route
    assert route.out_mask[0].weight.grad is not None  # straight-through Gumbel mask carries gradients
    assert model.head.weight.grad is not None


def test_low_precision_bf16() -> None:
    model, x = _small()
    with torch.no_grad():
        ref = model(x)
        low = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert torch.isfinite(low).all()
    assert rel_l2(low.float(), ref) <= 0.05


def test_detector_refusals() -> None:
    with torch.device("meta"):
        sd = dict(archs.build("camixersr", n_block=[1, 1], n_group=2, n_feats=16).state_dict())
    assert archs.detect({**sd, "extra.weight": torch.zeros(1)}) == []
    del sd["body.1.body.0.ffn.dwconv.weight"]
    assert archs.detect(sd) == []


def test_descriptor() -> None:
    spec = archs.spec("CAMixerSR")
    assert (spec.scale, spec.in_channels, spec.out_channels, spec.tasks) == (4, 3, 3, ("upscale",))
    assert (spec.tiling, spec.min_size, spec.multiple_of, spec.code_license) == ("global", 16, 16, "Apache-2.0")
    assert spec.context == 4 + 27 * 20
    assert archs.spec("CAMixerSR", n_block=[1, 2], n_group=2, n_feats=16).context == 4 + 27 * 3


def test_engine_whole_and_tiled() -> None:
    """Whole-image runs through the engine equal the model (its padding to 16 is upstream's); tiles do not, which
    is what tiling='global' declares: channel attention and window ranking see the whole image."""
    model, _ = _small()
    spec = archs.spec("CAMixerSR", **model.arch_kwargs)  # type: ignore[arg-type]
    torch.manual_seed(0)
    image = torch.rand(3, 64, 100)
    with torch.no_grad():
        direct = model(image[None])[0]
    whole, stats = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(image)
    assert torch.allclose(whole, direct, rtol=0, atol=1e-6)
    assert stats.model_info == [{"ratio": 0.5, "kept": model.last_info["kept"]}]
    tiled, tstats = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=48, overlap=8,
                           margin=8).run(image)
    assert tstats.tiles == 3
    err = (tiled - whole).abs().max().item()
    assert err > 1 / 255 and spec.tiling != "safe"  # measured: max 0.022, mean 7e-5 with these weights
