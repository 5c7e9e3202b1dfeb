"""Family-specific behaviour of PLKSR, RealPLKSR and SPAN: detector round trips, Conv3XC fusion, no input mutation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from archs.layers.reparam import Conv3XC
from archs.layers.upsample import DySample
from tests.goldens import rel_l2


def _meta_shapes(arch: str, kwargs: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = archs.build(arch, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _meta_state_dict(arch: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return dict(archs.build(arch, **kwargs).state_dict())


PLKSR_CONFIGS: list[dict[str, Any]] = [
    {"upscaling_factor": 2},
    {"upscaling_factor": 3},
    {"upscaling_factor": 4},
    {"upscaling_factor": 4, "n_blocks": 12, "kernel_size": 13, "use_ea": False},  # plksr_tiny
    {"upscaling_factor": 2, "n_blocks": 12, "kernel_size": 13, "use_ea": False},
    {"upscaling_factor": 4, "dim": 32, "n_blocks": 3, "ccm_type": "CCM"},
    {"upscaling_factor": 3, "dim": 48, "n_blocks": 2, "ccm_type": "ICCM", "kernel_size": 9},
    {"upscaling_factor": 2, "dim": 32, "n_blocks": 2, "split_ratio": 0.5},
    {"upscaling_factor": 1, "dim": 16, "n_blocks": 1},
    {"upscaling_factor": 2, "dim": 16, "n_blocks": 2, "lk_type": "RectSparsePLK", "kernel_size": 15},
    {"upscaling_factor": 2, "dim": 16, "n_blocks": 2, "lk_type": "SparsePLK"},
    {
        "upscaling_factor": 2,
        "dim": 16,
        "n_blocks": 2,
        "lk_type": "SparsePLK",
        "use_max_kernel": True,
        "kernel_size": 21,
    },
    {"upscaling_factor": 4, "num_in_ch": 1, "num_out_ch": 1, "dim": 16, "n_blocks": 2},
]

REALPLKSR_CONFIGS: list[dict[str, Any]] = [
    {"upscaling_factor": 2},
    {"upscaling_factor": 3},
    {"upscaling_factor": 4},
    {"upscaling_factor": 4, "n_blocks": 12, "kernel_size": 13, "use_ea": False},  # realplksr_s
    {"upscaling_factor": 4, "dim": 96},  # realplksr_l
    {"upscaling_factor": 4, "dysample": True},
    {"upscaling_factor": 3, "dim": 32, "n_blocks": 2, "dysample": True},
    {"upscaling_factor": 2, "dim": 32, "n_blocks": 2, "dysample": True, "use_ea": False},
    {"upscaling_factor": 1, "dim": 16, "n_blocks": 1},
]

SPAN_CONFIGS: list[dict[str, Any]] = [
    {"upscale": 2},
    {"upscale": 3},
    {"upscale": 4},
    {"upscale": 4, "feature_channels": 52},
    {"upscale": 2, "feature_channels": 12},
    {"upscale": 1, "feature_channels": 16},
    {"upscale": 2, "num_out_ch": 1, "feature_channels": 16},
]


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("plksr", kw) for kw in PLKSR_CONFIGS]
    + [("realplksr", kw) for kw in REALPLKSR_CONFIGS]
    + [("span", kw) for kw in SPAN_CONFIGS],
)
def test_detector_round_trip(arch: str, kwargs: dict[str, Any]) -> None:
    sd = _meta_state_dict(arch, kwargs)
    found = archs.detect(sd)
    assert [name for name, _ in found] == [arch], found
    detected = found[0][1]
    assert _meta_shapes(arch, detected) == {k: tuple(v.shape) for k, v in sd.items()}
    full_in = archs.entry(arch).full_kwargs(kwargs)
    full_out = archs.entry(arch).full_kwargs(detected)
    for key, value in detected.items():
        if key == "split_ratio":  # only int(dim * ratio) is stored
            assert int(full_in["dim"] * value) == int(full_in["dim"] * full_in["split_ratio"])
        else:
            assert full_out[key] == full_in[key], key


def test_detector_refusals() -> None:
    sd = _meta_state_dict("span", {"upscale": 2, "feature_channels": 12})
    assert archs.detect({**sd, "no_norm": torch.zeros(1)}) == []  # neosr SPAN variant: keys would not match
    sd = _meta_state_dict("plksr", {"dim": 16, "n_blocks": 2, "lk_type": "SparsePLK", "sparse_kernels": (5, 7)})
    assert archs.detect(sd) == []  # dilations of non-default branch layouts are not recoverable
    sd = _meta_state_dict("realplksr", {"dim": 16, "n_blocks": 2})
    del sd["feats.1.norm.weight"]
    assert archs.detect(sd) == []


def test_descriptors() -> None:
    plk = archs.spec("plksr")
    assert (plk.scale, plk.context, plk.tiling, plk.code_license) == (4, 310, "safe", "MIT")
    assert archs.spec("plksr", n_blocks=12, kernel_size=13, use_ea=False).context == 98
    real = archs.spec("realplksr", upscaling_factor=2)
    assert (real.scale, real.context, real.tiling) == (2, 310, "global")
    span = archs.spec("span", upscale=2)
    assert (span.scale, span.context, span.tiling, span.code_license) == (2, 21, "safe", "Apache-2.0")


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "eval_conv" not in name:
                p.add_(0.02 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("plksr", {"dim": 16, "n_blocks": 2, "upscaling_factor": 2}),
        ("plksr", {"dim": 16, "n_blocks": 2, "upscaling_factor": 3, "with_idt": True, "ccm_type": "CCM"}),
        ("plksr", {"dim": 16, "n_blocks": 2, "upscaling_factor": 2, "lk_type": "RectSparsePLK", "kernel_size": 15}),
        ("realplksr", {"dim": 16, "n_blocks": 2, "upscaling_factor": 2}),
        ("realplksr", {"dim": 16, "n_blocks": 2, "upscaling_factor": 4, "dysample": True}),
        ("span", {"feature_channels": 12, "upscale": 3}),
    ],
)
def test_eval_forward_does_not_mutate_input(arch: str, kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = archs.build(arch, **kwargs)
    _randomise(model, 1)
    model.eval()
    x = torch.rand(1, 3, 13, 11)
    x0 = x.clone()
    with torch.inference_mode():
        y_inf = model(x)
    assert torch.equal(x, x0)
    with torch.no_grad():
        y_nograd = model(x)
    y_grad = model(x)  # grad enabled: the large-kernel head is concatenated instead of written in place
    assert torch.equal(x, x0)
    assert torch.equal(y_inf, y_nograd)
    assert torch.allclose(y_grad, y_nograd, rtol=0, atol=0)
    scale = archs.spec(arch, **kwargs).scale
    assert y_inf.shape == (1, 3, 13 * scale, 11 * scale)


@pytest.mark.parametrize("kwargs", [{"feature_channels": 12, "upscale": 2}, {"feature_channels": 48, "upscale": 4}])
def test_span_fused_equals_train_form(kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = archs.build("span", **kwargs)
    x = torch.rand(2, 3, 17, 14)
    with torch.no_grad():
        y_train = model(x)  # train form: three convs + skip per Conv3XC
        y_eval = model.eval()(x)  # fused single 3x3 per Conv3XC
    assert rel_l2(y_eval, y_train) <= 1e-5


def test_conv3xc_fusion_is_exact_per_layer() -> None:
    torch.manual_seed(0)
    conv = Conv3XC(5, 7)
    x = torch.randn(1, 5, 9, 8)
    with torch.no_grad():
        y_train = conv(x)
        y_eval = conv.eval()(x)
    assert rel_l2(y_eval, y_train) <= 1e-6


def test_span_load_order_and_stale_eval_conv() -> None:
    """Stored eval_conv values are ignored (as upstream); load -> eval and eval -> load agree."""
    torch.manual_seed(0)
    src = archs.build("span", feature_channels=12, upscale=2)
    _randomise(src, 2)
    sd = {k: (torch.randn_like(v) if "eval_conv" in k else v.clone()) for k, v in src.state_dict().items()}
    x = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        ref = src.eval()(x)

    a = archs.build("span", feature_channels=12, upscale=2)
    a.load_state_dict(sd, strict=True)
    b = archs.build("span", feature_channels=12, upscale=2).eval()
    b.load_state_dict(sd, strict=True)
    c = archs.build("span", feature_channels=12, upscale=2).eval()
    c.load_state_dict(sd, strict=True, assign=True)
    with torch.no_grad():
        ya, yb, yc = a.eval()(x), b(x), c(x)
    assert torch.equal(ya, ref) and torch.equal(yb, ref) and torch.equal(yc, ref)
    # The loaded state dict's tensors were not written into (fusion swaps in new tensors).
    assert all(torch.equal(v, sd[k]) for k, v in sd.items())


def test_span_plain_form_round_trip() -> None:
    """Training the fused form (to_plain) and mapping it back (from_plain) gives a SPAN whose branch form and fused
    form both compute what the trained plain model computes, and whose state dict loads strictly."""
    from archs.layers.reparam import from_plain, to_plain

    torch.manual_seed(0)
    model = archs.build("span", feature_channels=16, upscale=2)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    model.eval()
    plain = to_plain(model)
    assert not any(isinstance(m, Conv3XC) for m in plain.modules())
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert rel_l2(plain.eval()(x), model(x)) < 1e-6
        for p in plain.parameters():
            p.add_(0.02 * torch.randn_like(p))  # "training"
        want = plain(x)
    back = from_plain(archs.build("span", feature_channels=16, upscale=2), plain)
    fresh = archs.build("span", feature_channels=16, upscale=2)
    fresh.load_state_dict(back.state_dict(), strict=True)
    with torch.no_grad():
        assert rel_l2(fresh.eval()(x), want) < 1e-5
        assert rel_l2(fresh.train()(x), want) < 1e-5


def test_span_eval_inside_inference_mode_then_grad() -> None:
    model = archs.build("span", feature_channels=8, upscale=2)
    with torch.inference_mode():
        model.eval()
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    model(x).sum().backward()  # fused weights are normal tensors, usable by autograd
    assert x.grad is not None


def test_dysample_shapes_and_groups() -> None:
    for scale, groups in ((2, 4), (3, 3), (4, 4)):
        up = DySample(3 * scale**2, 3, scale, groups=groups)
        assert tuple(up.init_pos.shape) == (1, 2 * groups * scale**2, 1, 1)
        assert up(torch.rand(2, 3 * scale**2, 5, 7)).shape == (2, 3, 5 * scale, 7 * scale)
    with pytest.raises(ValueError):
        DySample(10, 3, 2, groups=4)


def test_plksr_grad_flows_in_train_mode() -> None:
    model = archs.build("plksr", dim=16, n_blocks=1, upscaling_factor=2)
    x = torch.rand(1, 3, 8, 8)
    model(x).mean().backward()
    lk = model.feats[1].lk.conv.weight  # type: ignore[union-attr]
    assert lk.grad is not None and lk.grad.abs().sum() > 0


CONTEXT_CASES = [
    ("plksr", {"dim": 16, "n_blocks": 2, "upscaling_factor": 2}),
    ("plksr", {"dim": 16, "n_blocks": 2, "upscaling_factor": 3, "ccm_type": "ICCM", "kernel_size": 9}),
    ("plksr", {"dim": 16, "n_blocks": 1, "upscaling_factor": 2, "lk_type": "RectSparsePLK", "kernel_size": 15}),
    ("span", {"feature_channels": 8, "upscale": 2}),
]


@pytest.mark.parametrize(("arch", "kwargs"), CONTEXT_CASES)
def test_context_is_the_receptive_field_radius(arch: str, kwargs: dict[str, Any]) -> None:
    """The gradient of one output pixel reaches exactly `context` input pixels in every direction."""
    torch.manual_seed(0)
    model = archs.build(arch, **kwargs).double().eval()
    spec = archs.spec(arch, **kwargs)
    c, s = spec.context, spec.scale
    x = torch.rand(1, 3, 2 * c + 9, 2 * c + 9, dtype=torch.float64, requires_grad=True)
    centre = c + 4
    model(x)[:, :, centre * s, centre * s].sum().backward()
    assert x.grad is not None
    support = x.grad.abs().sum((0, 1)) > 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    assert (centre - rows.min().item(), rows.max().item() - centre) == (c, c)
    assert (centre - cols.min().item(), cols.max().item() - centre) == (c, c)


@pytest.mark.parametrize(("arch", "kwargs"), CONTEXT_CASES)
def test_context_margin_makes_tiles_exact(arch: str, kwargs: dict[str, Any]) -> None:
    """A tile cut with `context` pixels of real neighbours on every side reproduces the full-frame output."""
    torch.manual_seed(0)
    model = archs.build(arch, **kwargs)
    _randomise(model, 3)
    model.double().eval()
    spec = archs.spec(arch, **kwargs)
    c, s = spec.context, spec.scale
    x = torch.rand(1, 3, 2 * c + 10, 2 * c + 12, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        tile = model(x[:, :, 1 : 2 * c + 7, 2 : 2 * c + 9])  # the 6 x 7 block at (c+1, c+2) with margin c
    centre = tile[:, :, c * s : (c + 6) * s, c * s : (c + 7) * s]
    ref = full[:, :, (c + 1) * s : (c + 7) * s, (c + 2) * s : (c + 9) * s]
    assert torch.allclose(centre, ref, rtol=0, atol=1e-10 * ref.abs().max().item())
