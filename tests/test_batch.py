"""Batch robustness through the real CLI: many files with bad ones among them, resume, Ctrl-C, --compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.conftest import ROOT, no_traceback, restore


def _png(path: Path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    PILImage.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, set[str]]:
    """500 files, 20 of them bad in different ways."""
    root = tmp_path / "many"
    root.mkdir()
    bad: set[str] = set()
    for i in range(480):
        _png(root / f"ok_{i:03d}.png", 8, 8, i)
    makers = [
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR truncated"),
        lambda p: p.write_text("this is a text file"),
        lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg"),
    ]
    for i in range(20):
        name = f"bad_{i:02d}.png" if i % 2 else f"bad_{i:02d}.jpg"
        makers[i % len(makers)](root / name)
        bad.add(name)
    return root, bad


def test_500_files_20_bad(corpus: tuple[Path, set[str]], span_weights: Path, tmp_path: Path) -> None:
    root, bad = corpus
    out = tmp_path / "out"
    report = tmp_path / "r.json"
    p = restore("upscale", root, "-o", out, "--model", span_weights, "-q", "--json", report)
    no_traceback(p)
    assert p.returncode == 1
    doc = json.loads(report.read_text())
    assert doc["totals"] == {**doc["totals"], "files": 500, "ok": 480, "failed": 20}
    failed = {Path(r["input"]).name for r in doc["files"] if r["status"] == "failed"}
    assert failed == bad
    assert all(r["error"] and "\n" not in r["error"] for r in doc["files"] if r["status"] == "failed")
    written = {p.name for p in out.iterdir()}
    assert written == {f"ok_{i:03d}.png" for i in range(480)}  # nothing half-written, no temporaries
    # --skip-existing resumes: nothing left to do but the bad files.
    p = restore("upscale", root, "-o", out, "--model", span_weights, "-q", "--skip-existing", "--json", report)
    assert json.loads(report.read_text())["totals"]["skipped"] == 480


def test_ctrl_c_stops_cleanly(span_weights: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(60):
        _png(root / f"f{i:02d}.png", 96, 96, i)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "restore_cli", "upscale", str(root), "-o", str(out), "--model",
                             str(span_weights), "--tile", "32", "--overlap", "4"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.is_dir() and any(out.glob("*.png"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    done = sorted(out.iterdir())
    assert 0 < len(done) < 60
    assert all(not p.name.startswith(".") for p in done)  # temporaries removed
    for p in done:
        assert PILImage.open(p).size == (192, 192)  # every written file is whole


def test_compare_and_animated_gif(span_weights: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    frames = [PILImage.new("RGB", (20, 16), c) for c in ("red", "blue")]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    _png(root / "still.png", 16, 20, 0)
    p = restore("upscale", root, "-o", tmp_path / "out", "--model", span_weights, "--compare")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    side = PILImage.open(tmp_path / "out" / "still_compare.png")
    assert side.size == (40 + 8 + 40, 32)
    gif_out = PILImage.open(tmp_path / "out" / "anim.png")  # first frame, written as PNG
    assert gif_out.size == (40, 32)
