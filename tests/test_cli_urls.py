"""URL presets through the real CLI: `models download / list / info / remove`, offline runs, one-line failures.

A GitHub look-alike and a Google Drive look-alike (tests/web_server.py) run on 127.0.0.1; RESTORE_PRESETS points
the CLI at presets that name them, RESTORE_GDRIVE_ENDPOINT at the fake Drive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image as PILImage

from tests.conftest import ROOT, no_traceback
from tests.web_server import FakeDrive, WebServer, github_asset, sha256

PRESET = """
[presets.{name}]
task = "upscale"
arch = "SPAN"
kwargs = {{ feature_channels = 8, upscale = 2 }}
scale = 2
license = "MIT"
description = "test"
source = {source}
"""


@dataclass
class Env:
    vars: dict[str, str]
    tmp: Path
    github: WebServer
    objects: WebServer
    drive: FakeDrive
    data: bytes

    def requests(self) -> int:
        servers = (self.github, self.objects, self.drive.site, self.drive.content)
        return sum(len(s.requests) for s in servers)

    def offline(self) -> Env:
        return Env(self.vars | {"HF_HUB_OFFLINE": "1"}, self.tmp, self.github, self.objects, self.drive, self.data)

    def clear(self) -> None:
        for s in (self.github, self.objects, self.drive.site, self.drive.content):
            s.clear()


@pytest.fixture()
def env(tmp_path: Path, span_weights: Path) -> Iterator[Env]:
    data = span_weights.read_bytes()
    with WebServer() as github, WebServer() as objects, FakeDrive() as drive:
        release = github_asset(github, objects, "/acme/span/releases/download/v1/span.safetensors", data)
        folder = drive.add_folder("SPAN", {"x2": drive.add_folder("x2", {
            "span.safetensors": drive.add_file("span.safetensors", data, large=True)})})
        sources = {
            "gh-span": f'{{ url = "{release}", filename = "span.safetensors", sha256 = "{sha256(data)}" }}',
            "drive-span": f'{{ url = "{drive.folder_url(folder)}", filename = "x2/span.safetensors" }}',
            "bad-sha": f'{{ url = "{release}", filename = "copy.safetensors", sha256 = "{"0" * 64}" }}',
            "baidu-span": '{ url = "https://pan.baidu.com/s/1span?pwd=abcd", note = "extraction code abcd" }',
        }
        toml = tmp_path / "presets.toml"
        toml.write_text("".join(PRESET.format(name=n, source=s) for n, s in sources.items()))
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("HF_", "HUGGING")) and not k.lower().endswith("_proxy")}
        e.update(RESTORE_PRESETS=str(toml), RESTORE_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT),
                 RESTORE_GDRIVE_ENDPOINT=drive.site.url, HF_HOME=str(tmp_path / "hf"), COLUMNS="250")
        yield Env(e, tmp_path, github, objects, drive, data)


def run(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "restore_cli", *args], capture_output=True, text=True, env=env.vars,
                       timeout=300)
    no_traceback(p)
    return p


def test_download_offline_run_and_remove(env: Env) -> None:
    p = run(env, "models", "download", "drive-span", "gh-span")
    assert p.returncode == 0, p.stderr
    assert str(env.tmp / "cache" / "urls" / "drive.google.com") in p.stdout and "gh-span: " in p.stdout
    assert [ln for ln in p.stderr.splitlines() if "unpinned" in ln] == [ln for ln in p.stderr.splitlines() if ln]
    assert "drive-span is unpinned" in p.stderr and "gh-span" not in p.stderr  # only the unpinned one says so
    lock = json.loads((env.tmp / "cache" / "urls.lock.json").read_text())
    (entry,) = lock.values()
    assert entry["sha256"] == sha256(env.data) and entry["preset"] == "drive-span"

    env.clear()
    img = env.tmp / "in.png"
    PILImage.new("RGB", (10, 12), (40, 90, 160)).save(img)
    p = run(env, "upscale", str(img), "-o", str(env.tmp / "o1"), "--model", "drive-span", "--offline", "--quiet")
    assert p.returncode == 0, p.stderr
    assert PILImage.open(env.tmp / "o1" / "in.png").size == (20, 24)
    assert env.requests() == 0
    assert len([ln for ln in p.stderr.splitlines() if "drive-span is unpinned" in ln]) == 1, p.stderr

    p = run(env, "models", "remove", "drive-span", "baidu-span")
    assert p.returncode == 0 and "drive-span: removed" in p.stdout and "baidu-span: not cached" in p.stdout
    p = run(env.offline(), "models", "download", "drive-span")
    assert p.returncode == 1 and "offline" in p.stderr and "restore models download drive-span" in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr
    assert env.requests() == 0


def test_list_and_info_in_process(env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                  ) -> None:
    """What `models list` shows in its "local" column and `models info` for an unpinned url preset."""
    from restore_cli import cli, hub, presets, resolve

    for key in ("RESTORE_PRESETS", "RESTORE_CACHE_DIR", "RESTORE_GDRIVE_ENDPOINT"):
        monkeypatch.setenv(key, env.vars[key])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    found = presets.all_presets()
    assert {n: resolve.status(p) for n, p in found.items()} == {
        "gh-span": "downloadable", "drive-span": "downloadable", "bad-sha": "downloadable", "baidu-span": "manual"}
    hub.fetch_preset(found["drive-span"], progress=False)
    assert resolve.status(found["drive-span"]) == "cached"
    capsys.readouterr()
    cli.models_info("drive-span")
    assert f"{sha256(env.data)} (unpinned: recorded on first download" in capsys.readouterr().out


@pytest.mark.parametrize("model,needles", [
    ("bad-sha", ("0" * 64, "nothing was kept")),
    ("baidu-span", ("https://pan.baidu.com/s/1span?pwd=abcd", "--model PATH", "extraction code abcd")),
])
def test_failures_are_one_line(env: Env, model: str, needles: tuple[str, ...]) -> None:
    p = run(env, "models", "download", model)
    assert p.returncode == 1
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr
    for needle in needles:
        assert needle in p.stderr
    if model == "bad-sha":
        assert sha256(env.data) in p.stderr
        assert not list((env.tmp / "cache" / "urls").rglob("*.safetensors*"))
