"""Issue 13 on the GPU: every fast-path optimisation keeps the output of the listed families within 1/255 of the fp32
whole-frame result on a natural picture, and the engine's capture, fallback and transfer paths work.

Marked `cuda` (skipped on CPU CI). Small configurations of each family (the same blocks, fewer of them) keep the
captures quick; the full configurations' captured forwards are compared with eager by bench/throughput.py
(its `diff /255` column).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import archs
from restore_cli import api, loading, presets
from restore_cli.benchmark import natural_frame
from restore_cli.engine.runner import Runner
from tests.test_engine import LocalNet, _spec

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
# (preset or arch, kwargs, input width, input height). Where restore ships trained weights of a listed family they are
# used, and there the literal check holds: within 1/255 of the fp32 whole frame (fp16; CPU measurement of
# the eager path: 0.14-0.21/255). Random weights amplify rounding (SPAN x4 fp16: 5.6/255 eager), and bf16 keeps 8
# significant bits (1.3-1.8/255 eager even on trained weights), so for the others each optimisation must add no
# error beyond the eager half-precision path's own: within max(1/255, 1.5 x its error).
MODELS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "span-s-x4": ("span-s-x4", {}, 96, 72),  # SPAN ch48 x4, trained
    "nafnet-s-deblur": ("nafnet-s-deblur", {}, 192, 144),  # NAFNetLocal, trained
    "ufpnet-s": ("ufpnet-s", {}, 192, 144),  # UFPNet Local, trained
    "plksr-x4": ("plksr", {"n_blocks": 4, "upscaling_factor": 4}, 96, 72),
    "realplksr-x4": ("realplksr", {"n_blocks": 4, "upscaling_factor": 4}, 96, 72),
    "camixersr-x4": ("camixersr", {"n_block": [1, 2], "n_group": 2, "n_feats": 16}, 96, 80),
    "promptir": ("promptir", {"num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "decoder": True}, 192, 144),
    "moceir": ("moceir", {"dim": 8, "levels": 3, "heads": [1, 2, 4], "num_blocks": [1, 2, 1],
                          "num_dec_blocks": [2, 1], "stage_depth": [1, 1]}, 192, 144),
}
# inductor compiles take seconds each: the families whose descriptors ask for it, one per kind of network
INDUCTOR = ("span-s-x4", "plksr-x4", "nafnet-s-deblur")


def _setup(name: str) -> tuple[nn.Module, archs.ArchSpec, torch.Tensor, bool]:
    """(model, spec, natural image as float CHW, trained?)"""
    source, kwargs, w, h = MODELS[name]
    torch.manual_seed(0)
    trained = not kwargs
    if trained:
        p = presets.get(source)
        model = archs.build(p.arch, **p.kwargs)
        model.load_state_dict(loading.read_state_dict(presets.BUNDLED_DIR / str(p.source.filename)))
        spec = archs.spec(p.arch, **p.kwargs)
    else:
        model, spec = archs.build(source, **kwargs), archs.spec(source, **kwargs)
    frame = natural_frame(w, h)
    return model.eval(), spec, torch.from_numpy(frame).permute(2, 0, 1).float().div(255), trained


def _bound(dtype: torch.dtype, trained: bool, eager_err: float) -> float:
    if trained and dtype is torch.float16:
        return 1 / 255
    return max(1 / 255, 1.5 * eager_err)


def _run(model: nn.Module, spec: archs.ArchSpec, image: torch.Tensor, dtype: torch.dtype, *,
         must_capture: bool = False, **kw: Any) -> torch.Tensor:
    runner = Runner(copy.deepcopy(model), spec, device=CUDA, dtype=dtype, overlap=8, **kw)
    _, first = runner.run(image)  # a capturing mode captures on the first run; the second replays
    if must_capture:  # the descriptor's own mode must really run, not fall back to eager
        assert not [n for n in first.notes if "failed" in n], first.notes
    out, _ = runner.run(image)
    return out.float().clamp(0, 1)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", list(MODELS))
def test_each_optimisation_keeps_the_fp32_result(name: str, record_property: Any) -> None:
    model, spec, image, trained = _setup(name)
    dtype = torch.float16 if spec.fp16 else torch.bfloat16
    ref = _run(model, spec, image, torch.float32, tile=0)
    half = _run(model, spec, image, dtype, tile=0)
    eager_err = _err(half, ref)
    record_property("eager_half_vs_fp32_x255", round(eager_err * 255, 3))
    bound = _bound(dtype, trained, eager_err)
    assert eager_err <= bound, f"eager {dtype}: {eager_err * 255:.2f}/255"
    variants = {
        "channels_last flipped": {"tile": 0, "channels_last": not spec.channels_last},
        "graph": {"tile": 0, "compile": "graph"},
    }
    if name in INDUCTOR or spec.compile_mode == "graph":
        variants["descriptor mode"] = {"tile": 0, "compile": spec.compile_mode, "must_capture": True}
    for label, kw in variants.items():
        out = _run(model, spec, image, dtype, **kw)
        assert _err(out, ref) <= bound, f"{label}: {_err(out, ref) * 255:.2f}/255 from fp32"


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_and_captured_tiles_keep_the_tiled_result(name: str) -> None:
    """Tiles with a small margin differ from the whole frame by design (tests/test_seams.py covers seams); what
    batching and capturing must not change is the tiled result itself."""
    model, spec, image, trained = _setup(name)
    dtype = torch.float16 if spec.fp16 else torch.bfloat16
    tiles = {"tile": 48, "margin": min(spec.context, 16)}
    ref = _run(model, spec, image, torch.float32, batch=1, **tiles)
    bound = _bound(dtype, trained, _err(_run(model, spec, image, dtype, batch=1, **tiles), ref))
    for label, kw in {"auto batch": {"batch": None}, "graph, batch 3": {"batch": 3, "compile": "graph"}}.items():
        out = _run(model, spec, image, dtype, **tiles, **kw)
        assert _err(out, ref) <= bound, f"{label}: {_err(out, ref) * 255:.2f}/255 from fp32"


def _graph_spec() -> archs.ArchSpec:
    return dataclasses.replace(_spec(1), compile_mode="graph")


def test_auto_captures_on_the_second_image_of_a_long_job() -> None:
    image = torch.rand(3, 64, 80)
    runner = Runner(LocalNet(1), _graph_spec(), device=CUDA, dtype=torch.float16, tile=0, compile="auto")
    runner.expect(1000)
    first, s1 = runner.run(image)
    second, s2 = runner.run(image)
    third, s3 = runner.run(image)
    assert s1.compile_s == 0 and s2.compile_s > 0 and s3.compile_s == 0
    assert _err(first.float(), third.float()) <= 1e-3 and _err(second.float(), third.float()) <= 1e-3
    single = Runner(LocalNet(1), _graph_spec(), device=CUDA, dtype=torch.float16, tile=0, compile="auto")
    compile_s = [single.run(image)[1].compile_s for _ in range(3)]  # no hint: a graph pays back by the second image
    assert compile_s[0] == 0 and compile_s[1] > 0 and compile_s[2] == 0


def test_a_model_that_cannot_be_captured_runs_eagerly() -> None:
    class Syncing(LocalNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.mean()) > 2:  # a host sync: not allowed while a CUDA graph is being captured
                x = x * 0
            return super().forward(x)

    image = torch.rand(3, 40, 40)
    model = Syncing(1)
    ref, _ = Runner(copy.deepcopy(model), _spec(1), device=CUDA, dtype=torch.float32, tile=0).run(image)
    runner = Runner(model, _spec(1), device=CUDA, dtype=torch.float32, tile=0, compile="graph")
    out, stats = runner.run(image)
    assert any("compile (graph) failed" in n for n in stats.notes)
    assert _err(out, ref) <= 1e-5
    out2, stats2 = runner.run(image)  # stays eager, says nothing more
    assert not stats2.notes and _err(out2, ref) <= 1e-5


def test_uint8_frames_on_the_gpu_match_the_cpu() -> None:
    """restore_image on the GPU (quantised on the device, HWC memory back through pinned buffers): the CPU's pixels."""
    frame = natural_frame(80, 64)
    model = LocalNet(2)
    spec = _spec(2)
    cpu = api.LoadedModel("t", Runner(copy.deepcopy(model), spec, device=torch.device("cpu"),
                                      dtype=torch.float32, tile=0), spec, weights=None)  # type: ignore[arg-type]
    gpu = api.LoadedModel("t", Runner(model, spec, device=CUDA, dtype=torch.float32, tile=0), spec,
                          weights=None)  # type: ignore[arg-type]
    a, _ = api.restore_image(cpu, frame)
    b, _ = api.restore_image(gpu, frame)
    assert b.flags["C_CONTIGUOUS"] and b.shape == (128, 160, 3) and b.dtype == np.uint8
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_streamed_tiles_overlap_and_blend_like_resident_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles streamed from the CPU (async uploads and downloads on the side stream) equal tiles of a resident image."""
    image = torch.rand(3, 100, 120)
    model = LocalNet(2)
    spec = _spec(2)
    ref, _ = Runner(copy.deepcopy(model), spec, device=CUDA, dtype=torch.float32, tile=32, overlap=8).run(image)
    for mode in ("off", "graph"):
        runner = Runner(copy.deepcopy(model), spec, device=CUDA, dtype=torch.float32, tile=32, overlap=8, batch=3,
                        compile=mode)
        monkeypatch.setattr(runner, "_resident", lambda image, plan: False)
        out, stats = runner.run(image)
        assert stats.tiles > 3
        assert _err(out, ref) <= 1e-5, mode


def test_layernorm2d_fp16_on_cuda_does_not_overflow() -> None:
    from archs.layers.norm import LayerNorm2d

    ln = LayerNorm2d(32).to(CUDA)
    x = torch.randn(2, 32, 17, 23, device=CUDA) * 500 + 300
    ref = ln(x.double().float())
    for fmt in (torch.contiguous_format, torch.channels_last):
        out = ln.half()(x.half().contiguous(memory_format=fmt))
        assert torch.isfinite(out).all()
        assert out.is_contiguous(memory_format=fmt)
        assert _err(out.float(), ref) <= 1e-2
        ln = ln.float()
