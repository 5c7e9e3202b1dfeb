"""The `restore` command end to end, as a user runs it: real processes, real files, exit codes, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import save_file

from tests.conftest import no_traceback, restore


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    PILImage.fromarray((rng.random((40, 52, 3)) * 255).astype(np.uint8)).save(root / "a.png")
    PILImage.fromarray((rng.random((33, 47, 3)) * 255).astype(np.uint8)).save(root / "sub" / "b.jpg", quality=95)
    return root


def test_upscale_folder_mirrors_tree(photos: Path, span_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = tmp_path / "r.json"
    p = restore("upscale", photos, "-o", out, "--model", span_weights, "-r", "--tile", "24", "--json", report)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    a = PILImage.open(out / "a.png")
    b = PILImage.open(out / "sub" / "b.jpg")
    assert a.size == (104, 80) and b.size == (94, 66)
    doc = json.loads(report.read_text())
    assert doc["totals"]["ok"] == 2 and doc["run"]["arch"] == "span"
    rec = {Path(r["input"]).name: r for r in doc["files"]}
    assert rec["a.png"]["size_in"] == [52, 40] and rec["a.png"]["size_out"] == [104, 80]
    assert rec["a.png"]["status"] == "ok" and rec["a.png"]["infer_ms"] > 0
    assert "MP/s" in p.stderr and "decode" in p.stderr


def test_default_output_folder_and_never_overwrite(photos: Path, span_weights: Path) -> None:
    p = restore("sr", photos, "--model", span_weights, "--suffix", "_x2", "-q")
    assert p.returncode == 0, p.stderr
    assert (photos.parent / "photos_restored" / "a_x2.png").is_file()
    # Writing into the input folder with the same name would overwrite an input: refused per file.
    p = restore("upscale", photos / "a.png", "-o", photos, "--model", span_weights)
    no_traceback(p)
    assert p.returncode == 1 and "refusing to overwrite" in p.stderr


def test_bad_inputs_keep_the_batch_going(photos: Path, span_weights: Path, tmp_path: Path) -> None:
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (photos / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    p = restore("upscale", photos, "-o", out, "--model", span_weights, "-r")
    no_traceback(p)
    assert p.returncode == 1
    assert "broken.png" in p.stderr and "empty.jpg" in p.stderr and "2 failed" in p.stderr
    assert (out / "a.png").is_file() and (out / "sub" / "b.jpg").is_file()
    assert not (out / "broken.png").exists() and not any(f.name.startswith(".") for f in out.rglob("*"))


@pytest.mark.parametrize("args,code,needle", [
    (["deblur", "{photos}", "--model", "no-such-preset"], 2, "unknown model preset"),
    (["deblur", "/no/such/folder"], 2, "no such file or folder"),
    (["upscale", "{photos}", "--model", "/no/such/weights.pth"], 2, "not found"),
    (["upscale", "{photos}", "--model", "{weights}", "--tile", "big"], 2, "--tile"),
    (["upscale", "{photos}", "--model", "{weights}", "--device", "tpu"], 2, "device"),
    (["upscale", "{photos}", "--model", "{weights}", "--format", "gif"], 2, "--format"),
    (["deblur", "{photos}", "--model", "{weights}"], 2, "not deblur"),
    (["upscale", "{photos}", "--model", "{junk}"], 1, "no known architecture"),
])
def test_user_errors_are_one_line(args: list[str], code: int, needle: str, photos: Path, span_weights: Path,
                                  tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    save_file({"x.weight": torch.zeros(3, 3)}, str(junk))
    argv = [a.format(photos=photos, weights=span_weights, junk=junk) for a in args]
    p = restore(*argv, "-o", tmp_path / "o")
    no_traceback(p)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) <= 2, p.stderr


def test_models_list_and_info() -> None:
    p = restore("models", "list", "--task", "upscale")
    no_traceback(p)
    assert p.returncode == 0 and "realplksr-x4" in p.stdout and "MIT" in p.stdout
    p = restore("models", "info", "nafnet-gopro-w64")
    assert p.returncode == 0 and "67,888,835" in p.stdout and "drive.google.com" in p.stdout


def test_eval_command_writes_scores(tmp_path: Path) -> None:
    from tests.conftest import SHARED

    val = SHARED / "data" / "val"
    if not val.is_dir():
        pytest.skip("validation photos not available")
    report = tmp_path / "eval.json"
    p = restore("eval", val, "--model", "nafnet-s-denoise", "--degradation", "noise25", "--limit", "1", "--crop",
                "64", "--json", report)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    doc = json.loads(report.read_text())
    assert doc["summary"]["images"] == 1 and doc["summary"]["gain_psnr"] > 0
    assert doc["model"]["params"] > 0 and doc["model"]["macs_per_megapixel"] > 0
    p = restore("eval", val, "--degradation", "no-such")
    assert p.returncode == 2 and "unknown degradation" in p.stderr


def test_cli_and_hub_import_without_torch() -> None:
    """`restore --help`, `models download/remove` and hub use need no torch: it loads only with a model."""
    import subprocess
    import sys

    code = "import sys, restore_cli.cli, restore_cli.hub; print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
