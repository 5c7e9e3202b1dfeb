"""GPU paths: the families on CUDA in their supported precisions, and the engine's device code.

Marked `cuda`: skipped on CPU CI, run on the H200 (results committed under bench/results/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import archs
from restore_cli.engine.runner import Runner
from tests.util import golden_files, golden_spec, load_golden, smooth_image

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
FAMILIES = ("NAFNet", "UFPNet", "PLKSR", "RealPLKSR", "SPAN")


def _cases() -> list[Path]:
    return [p for p in golden_files() if p.parent.name != "real" and p.name.split("__")[0] in FAMILIES]


def _load(path: Path) -> tuple[torch.nn.Module, archs.ArchSpec]:
    return load_golden(path)[0], golden_spec(path)
HALF_TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _golden_io(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("input"), f.get_tensor("output")


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.name)
def test_family_on_cuda_all_precisions(path: Path) -> None:
    model, spec = _load(path)
    x, want = _golden_io(path)
    with safe_open(str(path), "pt") as f:
        tol = float(f.metadata().get("tolerance", "1e-4"))
    with torch.inference_mode():
        out = model.to(CUDA)(x.to(CUDA)).float().cpu()
    assert float((out - want).norm() / want.norm()) <= tol
    for dtype, ok in ((torch.float16, spec.fp16), (torch.bfloat16, spec.bf16)):
        if not ok:
            continue
        m = model.to(CUDA, dtype)
        with torch.inference_mode():
            out = m(x.to(CUDA, dtype)).float().cpu()
        assert torch.isfinite(out).all(), dtype
        err = float((out - want).norm() / want.norm())
        # Goldens whose recipe weights amplify float32 rounding (a looser file tolerance, e.g. SPAN's 3e-4) amplify
        # half rounding more (H200: SPAN fp16 5.6e-2). Half precision on trained weights: tests/test_bundled.py.
        bound = HALF_TOL[dtype] * max(1.0, tol / 1e-4) ** 2
        assert err <= bound, f"{dtype}: relative L2 {err:.3e} > {bound:.1e}"
        model = model.float()


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.name)
@pytest.mark.parametrize("resident", [True, False])
def test_engine_cuda_matches_cpu(path: Path, resident: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same tile plan on the GPU (whole image resident, or streamed tile by tile) and on the CPU."""
    model, spec = _load(path)
    # Both sides run one plan, so the margin need not cover the arch's context (the CPU side of a 128 px margin ran
    # for minutes); seams themselves are proven in tests/test_archs.py.
    tile, margin = 24, min(spec.context, 16)
    h, w = 2 * tile + 2 * margin + 11, 2 * tile + 2 * margin + 3
    image = smooth_image(h, w)
    cpu_out, _ = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=tile, overlap=8,
                        margin=margin).run(image)
    model, spec = _load(path)
    runner = Runner(model, spec, device=CUDA, dtype=torch.float32, tile=tile, overlap=8, batch=3, margin=margin)
    monkeypatch.setattr(runner, "_resident", lambda image, plan: resident)
    gpu_out, stats = runner.run(image)
    assert stats.tiles > 1
    # cuDNN and the CPU sum in other orders; random golden weights amplify that (H200: SPAN 2.3e-4, UFPNet's
    # per-pixel kernel softmax 1.9e-3 of the output range), so compare relative to the range.
    scale = float(cpu_out.abs().max())
    assert float((gpu_out - cpu_out).abs().max()) <= 5e-3 * max(1.0, scale)
    q, _ = runner.run((image * 255).round().to(torch.uint8), quantize=255)
    assert q.dtype == torch.uint8 and q.shape == cpu_out.shape


def test_auto_tile_probe_and_channels_last() -> None:
    spec = archs.spec("span", feature_channels=48, upscale=4)
    model = archs.build("span", feature_channels=48, upscale=4).eval()
    runner = Runner(model, spec, device=CUDA, dtype=torch.float16)
    assert runner.channels_last == spec.channels_last
    out, _ = runner.run(torch.rand(3, 300, 500))
    assert out.shape == (3, 1200, 2000) and torch.isfinite(out).all()
    assert runner._per_px > 0


def test_cuda_oom_backoff() -> None:
    class Fussy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] > 64:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return x * 1

    spec = archs.ArchSpec(id="fussy", family="t", upstream_class="Fussy", tasks=("deblur",), scale=1,
                          in_channels=3, out_channels=3, context=0)
    runner = Runner(Fussy(), spec, device=CUDA, dtype=torch.float16, tile=128, overlap=0)
    image = torch.rand(3, 200, 200)
    out, stats = runner.run(image)
    assert stats.retries == 1 and runner.tile == 64
    assert float((out - image).abs().max()) < 1e-3


