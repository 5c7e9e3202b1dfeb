"""The bundled default models: files match weights.toml, load offline, and actually restore (CPU, seconds)."""

from __future__ import annotations

import hashlib

import pytest

from restore_cli import api, evaluate, presets
from tests.conftest import SHARED

BUNDLED = [p for p in presets.all_presets().values() if p.source.kind == "bundled"]
# The degradation each model was trained for (SR: the real-world pipeline; see docs/models.md for bicubic).
TASK_DEGRADATION = {"deblur": "deblur_motion", "denoise": "noise25", "upscale": "sr_real_x{scale}"}


def test_every_task_default_is_bundled() -> None:
    for task in ("deblur", "denoise", "upscale"):
        assert presets.default_for(task).source.kind == "bundled"


@pytest.mark.parametrize("preset", BUNDLED, ids=lambda p: p.name)
def test_bundled_file_matches_its_checksum_and_size(preset: presets.Preset) -> None:
    path = presets.BUNDLED_DIR / preset.source.filename
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == preset.source.sha256
    assert len(data) <= 8 * 1024 * 1024
    model = api.load_model(preset.name, device="cpu", offline=True)
    assert model.spec.scale == preset.scale and preset.task in model.spec.tasks


@pytest.mark.skipif(not (SHARED / "data" / "val").is_dir(), reason="validation photos not available")
@pytest.mark.parametrize("preset", BUNDLED, ids=lambda p: p.name)
def test_bundled_model_improves_psnr(preset: presets.Preset) -> None:
    model = api.load_model(preset.name, device="cpu", offline=True)
    deg = TASK_DEGRADATION[preset.task].format(scale=preset.scale)
    res = evaluate.evaluate(lambda img: api.restore_image(model, img)[0], SHARED / "data" / "val", deg,
                            limit=2, crop=160)
    assert res.gain_psnr > 0.1, res.summary()


@pytest.mark.parametrize("preset", BUNDLED, ids=lambda p: p.name)
def test_bundled_model_half_precision_stays_close(preset: presets.Preset) -> None:
    """The GPU runs these in fp16 / bf16 (precision auto): trained weights stay within a fraction of 1/255."""
    import torch

    model = api.load_model(preset.name, device="cpu", offline=True)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(48, 48), mode="bicubic")
    x = x.clamp(0, 1)
    m = model.module
    with torch.no_grad():
        ref = m(x)
        for dtype, ok in ((torch.float16, model.spec.fp16), (torch.bfloat16, model.spec.bf16)):
            if ok:
                y = m.to(dtype)(x.to(dtype)).float()
                assert float((y - ref).abs().max()) < 4 / 255, dtype
                m.float()


@pytest.mark.skipif(not (SHARED / "data" / "val").is_dir(), reason="validation photos not available")
def test_x4_default_beats_bicubic_on_clean_downscales() -> None:
    """The default upscaler also sharpens plain bicubic downscales (Kodak24: +0.43 dB Y over bicubic on all 24;
    the model it replaced was at -0.02 dB), not only the real-world pipeline it was first trained on."""
    model = api.load_model(presets.default_for("upscale").name, device="cpu", offline=True)
    res = evaluate.evaluate(lambda img: api.restore_image(model, img)[0], SHARED / "data" / "val", "sr_x4",
                            limit=2, crop=160)
    assert res.gain_psnr > 0.2, res.summary()
