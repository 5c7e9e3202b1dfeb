"""The awkward-input corpus through the real CLI: every case either restored or one clear failure row, never a
traceback or a half-written file; the good files all come out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from tests.conftest import no_traceback, restore


def _corpus(root: Path) -> dict[str, str]:
    """file name -> expected status."""
    rng = np.random.default_rng(0)
    root.mkdir()
    rgb = (rng.random((16, 20, 3)) * 255).astype(np.uint8)
    PILImage.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    PILImage.fromarray(rgb).convert("P", palette=PILImage.Palette.ADAPTIVE).save(root / "palette.png")
    PILImage.fromarray((rng.random((16, 20)) * 65535).astype(np.uint16)).save(root / "gray16.png")
    PILImage.fromarray(rgb[:1, :1]).save(root / "one.png")
    PILImage.fromarray(np.zeros((1, 65535, 3), np.uint8)).save(root / "wide.png")
    PILImage.fromarray(rgb).save(root / "actually_png.jpg", format="PNG")
    frames = [PILImage.fromarray(rgb), PILImage.fromarray(255 - rgb)]
    frames[0].save(root / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    PILImage.fromarray(np.zeros((300, 300, 3), np.uint8)).save(root / "bomb.png")
    PILImage.fromarray(rgb).save(os.path.join(os.fsencode(root), b"caf\xe9.png"))  # not UTF-8
    (root / "text.png").write_text("hello")
    return {"cmyk.jpg": "ok", "palette.png": "ok", "gray16.png": "ok", "one.png": "ok", "wide.png": "ok",
            "actually_png.jpg": "ok", "anim.webp": "ok", "bomb.png": "failed", "caf\udce9.png": "ok",
            "text.png": "failed"}


def test_awkward_inputs(span_weights: Path, tmp_path: Path) -> None:
    expected = _corpus(tmp_path / "in")
    out = tmp_path / "out"
    report = tmp_path / "r.json"
    p = restore("upscale", tmp_path / "in", "-o", out, "--model", span_weights, "--max-pixels", "70000", "-q",
                "--json", report)
    no_traceback(p)
    assert p.returncode == 1  # two bad files
    recs = {Path(r["input"]).name: r for r in json.loads(report.read_text())["files"]}
    assert {k: r["status"] for k, r in recs.items()} == expected
    assert "70,000" in recs["bomb.png"]["error"] and "--max-pixels" in recs["bomb.png"]["error"]
    assert recs["gray16.png"]["size_out"] == [40, 32]
    gray16 = PILImage.open(out / "gray16.png")
    assert gray16.mode in ("I;16", "I") and gray16.size == (40, 32)  # 16-bit gray stays 16-bit gray
    assert PILImage.open(out / "wide.png").size == (131070, 2)
    assert PILImage.open(out / "actually_png.png").size == (40, 32)  # decoded by content, written as PNG
    written = sorted(os.listdir(os.fsencode(out)))
    assert b"caf\xe9.png" in written and not any(n.startswith(b".") for n in written)
    # The bomb limit has an override.
    p = restore("upscale", tmp_path / "in" / "bomb.png", "-o", tmp_path / "o2", "--model", span_weights,
                "--max-pixels", "0", "-q")
    assert p.returncode == 0, p.stderr
