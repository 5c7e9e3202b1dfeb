"""Presets from the Hub through the real CLI: download, cache, offline, checksum, hf:// and removal.

A FakeHub on 127.0.0.1 stands in for the Hugging Face Hub; HF_ENDPOINT / HF_HOME point the CLI process at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.conftest import ROOT, no_traceback
from tests.hf_server import FakeHub, sha256


@pytest.fixture()
def env(tmp_path: Path, span_weights: Path) -> Iterator[tuple[FakeHub, dict[str, str], str]]:
    data = span_weights.read_bytes()
    home = tmp_path / "hf"
    home.mkdir()
    (home / ".agent_harnesses.json").write_text('{"standardEnvVars": [], "harnesses": {}}')
    toml = tmp_path / "presets.toml"
    toml.write_text(f"""
[defaults]
upscale = "tiny-span"

[presets.tiny-span]
task = "upscale"
arch = "SPAN"
kwargs = {{ feature_channels = 8, upscale = 2 }}
scale = 2
license = "MIT"
description = "test"
source = {{ hf = "acme/span", filename = "span.safetensors", revision = "v1", sha256 = "{sha256(data)}" }}

[presets.bad-sha]
task = "upscale"
arch = "SPAN"
kwargs = {{ feature_channels = 8, upscale = 2 }}
scale = 2
license = "MIT"
description = "test"
source = {{ hf = "acme/span", filename = "span.safetensors", revision = "v1", sha256 = "{'0' * 64}" }}

[presets.gone]
task = "upscale"
arch = "SPAN"
scale = 2
license = "MIT"
description = "test"
source = {{ hf = "acme/missing", filename = "x.safetensors", revision = "main" }}

[presets.elsewhere]
task = "upscale"
arch = "SPAN"
scale = 4
license = "Apache-2.0"
description = "test"
source = {{ url = "https://pan.baidu.com/s/1spanx4?pwd=abcd", filename = "spanx4.pth", note = "Baidu" }}
""")
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    with FakeHub() as hub:
        hub.add_commit("acme/span", {"span.safetensors": data}, refs=("main", "v1"))
        e.update(HF_HOME=str(home), HF_ENDPOINT=hub.url, RESTORE_PRESETS=str(toml), PYTHONPATH=str(ROOT),
                 RESTORE_CACHE_DIR=str(tmp_path / "rc"), COLUMNS="200")
        yield hub, e, str(tmp_path)


def run(e: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "restore_cli", *args], capture_output=True, text=True, env=e,
                          timeout=300)


def test_download_cache_offline_remove(env: tuple[FakeHub, dict[str, str], str]) -> None:
    hub, e, tmp = env
    img = Path(tmp) / "in.png"
    PILImage.fromarray((np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8)).save(img)

    p = run(e, "models", "list")
    assert p.returncode == 0 and "tiny-span" in p.stdout
    p = run(e, "models", "download", "tiny-span")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert hub.count("GET", "span.safetensors") + hub.count("GET", "/cdn/") >= 1
    hub.clear()
    p = run(e, "upscale", str(img), "-o", f"{tmp}/o1", "--offline")  # default preset, from the cache
    assert p.returncode == 0, p.stderr
    assert PILImage.open(f"{tmp}/o1/in.png").size == (20, 24)
    assert hub.requests == []

    p = run(e, "upscale", str(img), "-o", f"{tmp}/o2", "--model", "hf://acme/span/span.safetensors@v1")
    assert p.returncode == 0, p.stderr

    p = run(e, "models", "remove", "tiny-span")
    assert p.returncode == 0 and "removed" in p.stdout
    p = run(e, "upscale", str(img), "-o", f"{tmp}/o3", "--offline")
    no_traceback(p)
    assert p.returncode == 1 and "offline" in p.stderr and "tiny-span" in p.stderr


@pytest.mark.parametrize("model,needle", [
    ("bad-sha", "sha256"),
    ("gone", "acme/missing"),
    ("elsewhere", "https://pan.baidu.com/s/1spanx4?pwd=abcd"),
])
def test_failures_are_one_line(env: tuple[FakeHub, dict[str, str], str], model: str, needle: str) -> None:
    _, e, tmp = env
    img = Path(tmp) / "in.png"
    PILImage.new("RGB", (8, 8)).save(img)
    p = run(e, "upscale", str(img), "-o", f"{tmp}/o", "--model", model)
    no_traceback(p)
    assert p.returncode == 1, p.stderr
    assert needle in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr
    if model == "bad-sha":
        assert "0" * 64 in p.stderr  # both hashes named
