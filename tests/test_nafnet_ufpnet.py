"""Family-specific behaviour of NAFNet / Baseline / UFPNet and their TLC (*Local) variants."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import archs
from archs.layers.tlc import LocalAvgPool2d
from tests.util import meta_state_dict

NAFNET_CONFIGS: list[dict[str, Any]] = [
    {"img_channel": 3, "width": 32, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 28], "dec_blk_nums": [1, 1, 1, 1]},
    {"img_channel": 3, "width": 64, "middle_blk_num": 12, "enc_blk_nums": [2, 2, 4, 8], "dec_blk_nums": [2, 2, 2, 2]},
    {"img_channel": 1, "width": 16, "middle_blk_num": 0, "enc_blk_nums": [1, 0, 3], "dec_blk_nums": [2, 0, 1]},
    {"img_channel": 3, "width": 8, "middle_blk_num": 2, "enc_blk_nums": [], "dec_blk_nums": []},
]
BASELINE_CONFIGS: list[dict[str, Any]] = [
    {**NAFNET_CONFIGS[0], "dw_expand": 1, "ffn_expand": 2},
    {**NAFNET_CONFIGS[1], "dw_expand": 2, "ffn_expand": 2},
    {**NAFNET_CONFIGS[2], "dw_expand": 3, "ffn_expand": 1},
]
UFPNET_CONFIGS: list[dict[str, Any]] = [
    {"img_channel": 3, "width": 64, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 28], "dec_blk_nums": [1, 1, 1, 1]},
    {"img_channel": 3, "width": 8, "middle_blk_num": 2, "enc_blk_nums": [1, 1, 3], "dec_blk_nums": [1, 2, 1]},
]


def test_detectors_reject_truncated_or_foreign_state_dicts() -> None:
    sd = meta_state_dict("nafnet", **NAFNET_CONFIGS[0])
    del sd["ending.bias"]
    assert archs.detect(sd) == []
    sd = meta_state_dict("ufpnet", **UFPNET_CONFIGS[1])
    sd = {k: v for k, v in sd.items() if not k.startswith("flow.")}
    assert archs.detect(sd) == []
    assert archs.detect({"conv.weight": torch.empty(3, 3, 3, 3, device="meta")}) == []


def test_names_and_specs() -> None:
    assert archs.entry("NAFNetLocal").id == "nafnet_local"
    assert archs.entry("UFPNet_code_uncertainty_Local").id == "ufpnet_local"
    s = archs.spec("nafnet", **NAFNET_CONFIGS[0])
    assert (s.tasks, s.scale, s.multiple_of, s.tiling, s.code_license) == (
        ("deblur", "denoise"),
        1,
        16,
        "global",
        "MIT",
    )
    assert archs.spec("baseline_local", **BASELINE_CONFIGS[2]).in_channels == 1
    assert archs.spec("baseline_local", **BASELINE_CONFIGS[2]).tiling == "tlc"
    u = archs.spec("ufpnet_local", **UFPNET_CONFIGS[0])
    assert (u.tasks, u.multiple_of, u.tiling, u.min_size) == (("deblur",), 16, "tlc", 16)
    assert "unspecified" in u.code_license
    # TLC statistics reach half a window (1.5 x 256 by default) beyond what the plain model needs
    assert u.context >= archs.spec("ufpnet", **UFPNET_CONFIGS[0]).context + 192


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.3 if p.ndim < 2 else p[0].numel() ** -0.5
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


SMALL_NAF = {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 2], "dec_blk_nums": [1, 1, 1]}
SMALL_BASE = {**SMALL_NAF, "dw_expand": 2, "ffn_expand": 2}


@pytest.mark.parametrize(
    ("plain", "local", "kwargs"), [("nafnet", "nafnet_local", SMALL_NAF), ("baseline", "baseline_local", SMALL_BASE)]
)
def test_tlc_equals_plain_up_to_base_size(plain: str, local: str, kwargs: dict[str, Any]) -> None:
    ref = _randomize(archs.build(plain, **kwargs))
    tlc = archs.build(local, **kwargs, train_size=(1, 3, 32, 24)).eval()  # base size 48 x 36
    tlc.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        # "no larger" after the padding to a multiple of 8: every window then covers its whole feature map
        for h, w in [(48, 32), (41, 30), (17, 9)]:
            x = torch.rand(1, 3, h, w)
            assert torch.equal(tlc(x), ref(x))
        # larger than the base size: windows become local, the output must change
        x = torch.rand(1, 3, 96, 80)
        assert not torch.allclose(tlc(x), ref(x))


def test_tlc_windows_follow_upstream_formula() -> None:
    m = archs.build("nafnet_local", **NAFNET_CONFIGS[0])  # train_size 256 -> base 384
    pools = [mod for mod in m.modules() if isinstance(mod, LocalAvgPool2d)]
    assert len(pools) == sum(NAFNET_CONFIGS[0]["enc_blk_nums"]) + 1 + sum(NAFNET_CONFIGS[0]["dec_blk_nums"])
    assert m.encoders[0][0].sca[0].kernel_size == (384, 384)
    assert m.encoders[3][0].sca[0].kernel_size == (48, 48)
    assert m.middle_blks[0].sca[0].kernel_size == (24, 24)
    assert m.decoders[0][0].sca[0].kernel_size == (48, 48)
    assert m.decoders[3][0].sca[0].kernel_size == (384, 384)
    # a train size that is not a multiple of the padding: windows come from the padded training features
    m = archs.build("nafnet_local", **SMALL_NAF, train_size=(1, 3, 30, 22))  # padded to 32 x 24, base 45 x 33
    assert m.encoders[0][0].sca[0].kernel_size == (32 * 45 // 30, 24 * 33 // 22)
    assert m.middle_blks[0].sca[0].kernel_size == (4 * 45 // 30, 3 * 33 // 22)
    m = archs.build("nafnet_local", **SMALL_NAF, base_size=(20, 10))
    assert m.encoders[0][0].sca[0].kernel_size == (20, 10)


def test_local_avg_pool_is_a_replicate_padded_box_mean() -> None:
    x = torch.randn(2, 4, 23, 17, dtype=torch.float64)
    pool = LocalAvgPool2d((6, 5))
    box = F.avg_pool2d(x, (6, 5), stride=1)
    ref = F.pad(box, (2, 2, 2, 3), mode="replicate")
    torch.testing.assert_close(pool(x), ref)
    # window at least the map: global mean
    torch.testing.assert_close(LocalAvgPool2d((23, 17))(x), x.mean(dim=(2, 3), keepdim=True))
    # half precision runs the integral image in fp32 and keeps the dtype
    xh = (x * 100 + 500).half()
    out = pool(xh)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), pool(xh.double()), rtol=2e-3, atol=0.5)


def _layernorm2d_reference(x: torch.Tensor, ln: torch.nn.Module) -> torch.Tensor:
    """Upstream's six-pass LayerNorm2d, in float64."""
    xd = x.double()
    mu = xd.mean(1, keepdim=True)
    var = (xd - mu).pow(2).mean(1, keepdim=True)
    y = (xd - mu) / torch.sqrt(var + ln.eps)
    return ln.weight.double().view(1, -1, 1, 1) * y + ln.bias.double().view(1, -1, 1, 1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_layernorm2d_fused_matches_upstream_math_and_keeps_layout(channels_last: bool) -> None:
    from archs.layers.norm import LayerNorm2d

    ln = LayerNorm2d(16)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 16, 13, 11) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = ln(x)
    torch.testing.assert_close(out.double(), _layernorm2d_reference(x, ln), rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert list(ln.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layernorm2d_half_does_not_overflow(dtype: torch.dtype) -> None:
    """Activations in the hundreds: their squared deviations overflow float16, the statistics must be float32."""
    from archs.layers.norm import LayerNorm2d

    ln = LayerNorm2d(8)
    x = (torch.randn(1, 8, 5, 5) * 1000 + 300).to(dtype)
    assert float(x.float().abs().max()) > 256
    with torch.no_grad():
        out = ln.to(dtype)(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), _layernorm2d_reference(x, ln), rtol=2e-2, atol=2e-2)


SMALL_UFP = UFPNET_CONFIGS[1]


@pytest.fixture(scope="module")
def ufpnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomize(archs.build("ufpnet", **SMALL_UFP), seed=1)


def test_ufpnet_forward_returns_image_deterministically(ufpnet: torch.nn.Module) -> None:
    x = torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        a = ufpnet(x)
        b = ufpnet(x)
    assert isinstance(a, torch.Tensor)
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_ufpnet_forward_with_kernel(ufpnet: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 37, 29)
    with torch.no_grad():
        kernel, img = ufpnet.forward_with_kernel(x)
        assert torch.equal(img, ufpnet(x))
    # kernels of the reflect-padded 40 x 32 input (multiple of 8), one 19 x 19 kernel per pixel
    assert kernel.shape == (2, 40 * 32, 19, 19)
    assert torch.isfinite(kernel).all()


def test_ufpnet_code_noise_only_in_training(ufpnet: torch.nn.Module) -> None:
    x = torch.rand(1, 3, 16, 16)
    try:
        ufpnet.train()
        with torch.no_grad():
            k1, _ = ufpnet.forward_with_kernel(x)
            k2, _ = ufpnet.forward_with_kernel(x)
        assert not torch.equal(k1, k2)
    finally:
        ufpnet.eval()


def test_ufpnet_local_equals_plain_up_to_base_size(ufpnet: torch.nn.Module) -> None:
    tlc = archs.build("ufpnet_local", **SMALL_UFP, train_size=(1, 3, 32, 32)).eval()
    tlc.load_state_dict(ufpnet.state_dict(), strict=True)
    with torch.no_grad():
        x = torch.rand(1, 3, 40, 44)
        assert torch.equal(tlc(x), ufpnet(x))
        x = torch.rand(1, 3, 80, 72)
        assert not torch.equal(tlc(x), ufpnet(x))


def test_ufpnet_half_precision_keeps_flow_in_fp32(ufpnet: torch.nn.Module) -> None:
    x = torch.rand(1, 3, 24, 24)
    half = archs.build("ufpnet", **SMALL_UFP)
    half.load_state_dict(ufpnet.state_dict())
    half = half.eval().to(torch.bfloat16)
    with torch.no_grad():
        k, img = half.forward_with_kernel(x.to(torch.bfloat16))
        ref = ufpnet(x)
    assert img.dtype == torch.bfloat16 and k.dtype == torch.bfloat16
    assert torch.isfinite(img.float()).all()
    assert (img.float() - ref).norm() / ref.norm() < 0.05


@pytest.mark.parametrize("bad", [{"kernel_size": 21}, {"img_channel": 1}])
def test_ufpnet_rejects_configs_upstream_cannot_run(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        archs.build("ufpnet", **{**SMALL_UFP, **bad})


def test_estimator_width_is_ours_and_detected() -> None:
    """estimator_width (not upstream) sizes the kernel estimator; 64 is upstream's layout, others are detected."""
    kw = {"width": 16, "enc_blk_nums": [1, 1, 2], "middle_blk_num": 2, "dec_blk_nums": [1, 1, 1]}
    with torch.device("meta"):
        upstream = archs.build("ufpnet", **kw)
        small = archs.build("ufpnet", **kw, estimator_width=24)
    assert upstream.kernel_extra.Encoding_Block1.Conv_head.weight.shape[0] == 64
    assert sum(p.numel() for p in small.parameters()) < 4_000_000  # fits the 8 MB fp16 budget of ufpnet-s
    found = archs.detect(small.state_dict())
    assert [n for n, _ in found] == ["ufpnet"] and found[0][1]["estimator_width"] == 24
    assert "estimator_width" not in archs.detect(upstream.state_dict())[0][1]
