"""SpanC: re-parameterisation (fused eval form = training form, either load order), multi-scale forward and the
runtime `scale`, detector round trips, descriptor, receptive field and tiling through the engine."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from archs.spanc import IGConv, RepConv, SpanC
from restore_cli.engine.runner import Runner
from tests.conftest import GOLDEN
from tests.test_archs import DETECT_CASES
from tests.util import assert_detected, load_golden, meta_state_dict, rel_l2

SMALL: dict[str, Any] = {"feature_channels": 8, "implicit_dim": 16, "latent_layers": 2}
GOLDEN_FILE = GOLDEN / "SpanC__small.safetensors"


def _randomised(seed: int = 0, **kwargs: Any) -> SpanC:
    """A SpanC whose branches all matter: alphas spread around 0.8 (near-critical SPAB chain), weights jittered."""
    torch.manual_seed(seed)
    model = archs.build("spanc", **{**SMALL, **kwargs})
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(0.8 + 0.2 * torch.rand(p.shape, generator=g))
            elif p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    assert isinstance(model, SpanC)
    return model


def _golden_model() -> tuple[SpanC, dict[str, torch.Tensor]]:
    model, t, _ = load_golden(GOLDEN_FILE, "SpanC")
    assert isinstance(model, SpanC)
    return model, t


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_fused_eval_equals_training_form(scale: int) -> None:
    model = _randomised(3)
    x = torch.rand(2, 3, 13, 11)
    with torch.no_grad():
        y_train = model.train()(x, scale)  # SeqConv3x3 + 3x3 + Conv3XC branches, kernel generated on the fly
        y_eval = model.eval()(x, scale)  # one 3x3 per RepConv, precomputed IGConv kernel
    assert y_eval.shape == (2, 3, 13 * scale, 11 * scale)
    assert rel_l2(y_eval, y_train) <= 1e-5


def test_repconv_fusion_is_exact_per_layer() -> None:
    torch.manual_seed(0)
    conv = RepConv(5, 7)
    with torch.no_grad():
        conv.alpha.copy_(torch.tensor([0.7, -1.3, 0.4]))
    x = torch.randn(1, 5, 9, 8)
    with torch.no_grad():
        y_train = conv(x)
        y_eval = conv.eval()(x)
    assert rel_l2(y_eval, y_train) <= 1e-6


def test_load_order_and_stale_fused_values() -> None:
    """load -> eval, eval -> load and eval -> load(assign=True) give the same model; stored fused values
    (conv_3x3_rep, eval_conv) and a foreign MetaIGConv are ignored, and the caller's dict is left alone."""
    src = _randomised(5)
    x = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        ref = src.eval()(x)
    sd = {
        k: (torch.randn_like(v) if ("conv_3x3_rep" in k or "eval_conv" in k) else v.clone())
        for k, v in src.state_dict().items()
    }
    sd["MetaIGConv"] = torch.tensor([9, 9, 9, 9], dtype=torch.uint8)
    snapshot = {k: v.clone() for k, v in sd.items()}
    a = archs.build("spanc", **SMALL)
    a.load_state_dict(sd, strict=True)
    a.eval()
    b = archs.build("spanc", **SMALL).eval()
    b.load_state_dict(sd, strict=True)
    c = archs.build("spanc", **SMALL).eval()
    c.load_state_dict(sd, strict=True, assign=True)
    with torch.no_grad():
        outs = [m(x) for m in (a, b, c)] + [m(x, 3) for m in (a, b, c)]
        ref3 = src(x, 3)
    for y in outs[:3]:
        assert torch.equal(y, ref)
    for y in outs[3:]:
        assert torch.equal(y, ref3)
    assert all(torch.equal(v, snapshot[k]) for k, v in sd.items())
    assert a.MetaIGConv.tolist() == [1, 2, 3, 4]  # upstream keeps the model's own value


def test_runtime_scale_and_last_info() -> None:
    model = _randomised(7).eval()
    x = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        assert model(x).shape[-2:] == (18, 20)  # eval_base_scale = 2
        assert model.last_info == {"scale": 2}
        model.scale = 4
        y4 = model(x)
        assert y4.shape[-2:] == (36, 40) and model.last_info == {"scale": 4}
        assert torch.equal(y4, model(x, 4))
        assert model(x, 1).shape[-2:] == (9, 10)  # an explicit scale wins over the attribute
        # A scale outside scale_list: kernel generated on the fly, same function as the training form.
        y5 = model(x, 5)
        assert y5.shape[-2:] == (45, 50)
        assert rel_l2(y5, model.train()(x, 5)) <= 1e-5
    with pytest.raises(ValueError):
        model(x, 0)


def test_eval_kernels_are_buffers_outside_the_state_dict() -> None:
    model = _randomised(2)
    keys = set(model.state_dict())
    model.eval()
    assert set(model.state_dict()) == keys
    up = model.upsampler
    assert isinstance(up, IGConv)
    k2 = up.eval_kernel_x2
    assert isinstance(k2, torch.Tensor) and tuple(k2.shape) == (12, 8, 3, 3)
    model.to(torch.float64)
    assert up.eval_kernel_x2.dtype == torch.float64  # follows .to(), like the weights
    model.train()
    assert up.eval_kernel_x2 is None  # dropped in training: the weights will change


def test_eval_inside_inference_mode_then_grad() -> None:
    model = archs.build("spanc", **SMALL)
    with torch.inference_mode():
        model.eval()
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    model(x).sum().backward()  # fused weights and kernels are normal tensors
    assert x.grad is not None


def test_training_form_trains_every_branch() -> None:
    model = _randomised(1)
    model(torch.rand(1, 3, 8, 8), 3).square().mean().backward()
    rep = model.block_2.c1_r
    for p in (rep.alpha, rep.conv1.k0, rep.conv2.weight, rep.conv3.conv[1].weight, model.upsampler.freq):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert rep.conv_3x3_rep.weight.grad is None and not rep.conv_3x3_rep.weight.requires_grad


@pytest.mark.parametrize("kwargs", [{}, *(kw for name, kw, _ in DETECT_CASES if name == "spanc")])
def test_detector_reads_the_scale_list(kwargs: dict[str, Any]) -> None:
    """The MetaIGConv buffer's values give scale_list (meta tensors have none: those round trips, with 1..n, are in
    tests/test_archs.py); eval_base_scale is 2 when listed, else the smallest scale."""
    sd = meta_state_dict("spanc", **kwargs)
    full = archs.entry("spanc").full_kwargs(kwargs)
    sd["MetaIGConv"] = torch.tensor(list(set(full["scale_list"])), dtype=torch.uint8)
    detected = assert_detected(sd, "spanc")
    for key in ("num_in_ch", "feature_channels", "ig_kernel_size", "implicit_dim", "latent_layers"):
        assert detected[key] == full[key], key
    assert sorted(detected["scale_list"]) == sorted(set(full["scale_list"]))
    scales = detected["scale_list"]
    assert detected["eval_base_scale"] == (2 if 2 in scales else min(scales))


def test_detector_refusals() -> None:
    with torch.device("meta"):
        sd = dict(archs.build("spanc", **SMALL).state_dict())
    assert archs.detect({**sd, "extra": torch.zeros(1)}) == []
    del sd["upsampler.phase.weight"]
    assert archs.detect(sd) == []
    with torch.device("meta"):
        span = dict(archs.build("span", feature_channels=12, upscale=2).state_dict())
    assert [n for n, _ in archs.detect(span)] == ["span"]


def test_descriptor() -> None:
    spec = archs.spec("spanc")
    assert (spec.scale, spec.in_channels, spec.out_channels) == (2, 3, 3)
    assert (spec.tiling, spec.context, spec.multiple_of, spec.code_license) == ("safe", 21, 1, "MIT")
    assert archs.spec("spanc", eval_base_scale=4, ig_kernel_size=5).context == 22
    assert archs.entry("SpanPP").id == "spanc"


@pytest.mark.parametrize("scale", [2, 3])
def test_context_is_the_receptive_field_radius(scale: int) -> None:
    model = _randomised(4).double().eval()
    c = archs.spec("spanc").context
    x = torch.rand(1, 3, 2 * c + 9, 2 * c + 9, dtype=torch.float64, requires_grad=True)
    centre = c + 4
    model(x, scale)[:, :, centre * scale, centre * scale].sum().backward()
    assert x.grad is not None
    support = x.grad.abs().sum((0, 1)) > 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    assert (centre - rows.min().item(), rows.max().item() - centre) == (c, c)
    assert (centre - cols.min().item(), cols.max().item() - centre) == (c, c)


def test_engine_reports_the_scale() -> None:
    """The runner passes the model's last_info on (tiles == whole image is proven in tests/test_archs.py)."""
    model, _ = _golden_model()
    spec = archs.spec("SpanC", **model.arch_kwargs)  # type: ignore[arg-type]
    out, stats = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(torch.rand(3, 9, 7))
    assert out.shape == (3, 18, 14) and stats.model_info and stats.model_info[0] == {"scale": 2}
