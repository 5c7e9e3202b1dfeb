"""ConvMambaSR: golden outputs (mamba's selective_scan_ref upstream, our chunked reference / CUDA kernel here),
the official manifest, detection (and refusal of every other family's golden), head variants, half precision,
eval determinism and the global receptive field behind the "global" tiling hint."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import archs
from archs import convmambasr
from archs.convmambasr import ConvMambaSR
from tests.conftest import GOLDEN
from tests.util import file_state_dict, load_golden, rel_l2

GOLDEN_FILE = GOLDEN / "ConvMambaSR__x4_e30_d1-1_s4_rcg1.safetensors"
MANIFEST = GOLDEN / "ConvMambaSR__official_x4.keys.json"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden folder not found")


@functools.cache
def _golden_cached() -> tuple[ConvMambaSR, dict[str, torch.Tensor], dict[str, str]]:
    model, t, meta = load_golden(GOLDEN_FILE)
    assert isinstance(model, ConvMambaSR)
    return model, t, meta


def _golden() -> tuple[ConvMambaSR, dict[str, torch.Tensor], dict[str, str]]:
    model, t, meta = _golden_cached()
    return copy.deepcopy(model), t, meta


@needs_golden
def test_golden_detected_back_and_strict() -> None:
    model, _, _ = _golden()
    sd = model.state_dict()
    found = archs.detect(sd)
    assert [n for n, _ in found] == ["convmambasr"]
    archs.build(found[0][0], **found[0][1]).load_state_dict(sd, strict=True)
    broken = dict(sd)
    key = "RSSG_layers.0.residual_group.blocks.0.self_attention.A_logs"
    broken[key] = torch.zeros(broken[key].shape[0], broken[key].shape[1] + 1)
    assert archs.detect(broken) == []


@needs_golden
def test_detector_refuses_other_families() -> None:
    others = [p for p in [*GOLDEN.glob("*.safetensors"), *GOLDEN.glob("*.keys.json")]
              if not p.name.startswith("ConvMambaSR__")]
    assert others
    for path in others:
        assert convmambasr._detect(file_state_dict(path)) is None, path.name


def test_variants_run_and_keep_shape() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 1, 9, 7)
    for upsampler, scale in (("pixelshuffledirect", 3), ("", 1)):
        model = ConvMambaSR(in_chans=1, embed_dim=30, depths=(1,), RCG_num=1, d_state=4, upsampler=upsampler,
                            upscale=scale, resi_connection="3conv").eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, 1, 9 * scale, 7 * scale) and torch.isfinite(out).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="upsampler"):
        ConvMambaSR(upsampler="nearest+conv", embed_dim=30, depths=(1,))
    with pytest.raises(ValueError, match="resi_connection"):
        ConvMambaSR(resi_connection="2conv", embed_dim=30, depths=(1,))
    with pytest.raises(ValueError, match="scale 5"):
        ConvMambaSR(upsampler="pixelshuffle", upscale=5, embed_dim=30, depths=(1,))


def test_descriptor() -> None:
    s = archs.spec("ConvMambaSR", upscale=4, embed_dim=96, depths=[6, 6, 6, 6], RCG_num=16, upsampler="pixelshuffle")
    assert (s.tasks, s.scale, s.tiling, s.context, s.min_size, s.multiple_of) == (("upscale",), 4, "global", 128, 2, 1)
    assert (s.fp16, s.bf16, s.channels_last, s.code_license) == (True, True, False, "Apache-2.0")
    tiny = archs.spec("ConvMambaSR", upscale=4, embed_dim=30, depths=[1, 1], RCG_num=1, upsampler="pixelshuffle")
    assert tiny.context == 30  # conv radius below the cap: 1 + 2 * (2 * 1 + 11) + 1 + 2
    denoise = archs.spec("ConvMambaSR")
    assert denoise.scale == 1 and "denoise" in denoise.tasks


@needs_golden
@pytest.mark.parametrize(("dtype", "bound"), [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_half_precision_on_cpu(dtype: torch.dtype, bound: float) -> None:
    # A crop keeps the CPU's slow half-precision convolutions short; the float32 model is the reference.
    model, t, _ = _golden()
    x = t["input"][..., :12, :16]
    with torch.no_grad():
        want = model(x)
        out = model.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_l2(out, want) < bound


@needs_golden
def test_eval_is_deterministic_and_global() -> None:
    model, t, _ = _golden()
    x = t["input"][..., :12, :16]
    y = x.clone()
    y[..., 0, 0] += 0.5
    with torch.no_grad():
        a, b, c = model(x), model(x), model(y)
    assert torch.equal(a, b)
    # One input pixel in a corner moves the opposite corner (the scans and SimAM see the whole map).
    assert (c - a)[..., -8:, -8:].abs().max().item() > 1e-5
    assert archs.spec("ConvMambaSR", **getattr(model, "arch_kwargs")).tiling == "global"  # noqa: B009


def test_training_step_with_checkpointing() -> None:
    torch.manual_seed(0)
    model = ConvMambaSR(embed_dim=30, depths=(1,), RCG_num=1, d_state=4, upsampler="pixelshuffle", upscale=2,
                        use_checkpoint=True).train()
    out = model(torch.rand(2, 3, 6, 5))
    out.mean().backward()
    grad = model.get_parameter("RSSG_layers.0.residual_group.blocks.0.self_attention.A_logs").grad
    assert out.shape == (2, 3, 12, 10) and grad is not None and grad.abs().sum() > 0


@pytest.mark.cuda
@needs_golden
@pytest.mark.parametrize(("dtype", "bound"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_golden_on_cuda_with_kernel(dtype: torch.dtype, bound: float) -> None:
    from archs.ops import _build

    assert _build.load("selective_scan") is not None
    model, t, _ = _golden()
    with torch.inference_mode():
        out = model.cuda().to(dtype)(t["input"].cuda().to(dtype))
    assert rel_l2(out.cpu(), t["output"]) <= bound
