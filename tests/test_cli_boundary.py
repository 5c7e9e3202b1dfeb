"""The user boundary: every --help works, command-line mistakes get click's usage message and exit 2, a broken
presets file is a usage error naming file and key, and nothing we print is read as rich markup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.conftest import ROOT, no_traceback

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def run(*args: str | Path, env: dict[str, str] | None = None, columns: int = 200) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "restore_cli", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=300)


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command (hidden ones too), walked from the app: new commands are covered as added."""
    import typer.main

    from restore_cli.cli import app

    paths: list[tuple[str, ...]] = [()]

    def walk(cmd: object, prefix: tuple[str, ...]) -> None:
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            paths.append((*prefix, name))
            walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


COMMANDS = _command_paths()


def test_the_walk_finds_the_commands() -> None:
    found = {" ".join(p) for p in COMMANDS}
    assert {"deblur", "denoise", "upscale", "sr", "eval", "doctor", "models", "models info", "models list"} <= found


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "restore")
def test_every_help_works(path: tuple[str, ...]) -> None:
    p = run(*path, "--help", columns=80)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert "Usage:" in p.stdout and p.stderr == ""
    if path in (("deblur",), ("denoise",), ("upscale",), ("eval",)):
        # the text that rich markup used to eat (or crash on) is shown as written
        assert "hf://owner/repo[/file][@rev]" in p.stdout.replace("\n", " ").replace("  ", "")


@pytest.mark.parametrize("args,needle", [
    (["foo"], "No such command 'foo'"),
    (["deblur"], "Missing argument"),
    (["eval"], "Missing argument"),
    (["models", "info"], "Missing argument"),
    (["deblur", "x.png", "--overlap", "-1"], "--overlap"),
    (["deblur", "x.png", "--no-such-flag"], "No such option"),
    (["models", "frobnicate"], "No such command"),
])
def test_command_line_mistakes_get_the_usage_message(args: list[str], needle: str) -> None:
    p = run(*args)
    no_traceback(p)
    assert p.returncode == 2, p.stderr
    assert "Usage:" in p.stderr and "Error:" in p.stderr and needle in p.stderr
    assert "internal error" not in p.stderr


def test_eval_list_needs_no_folder() -> None:
    p = run("eval", "--list")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert "noise25" in p.stdout and "bicubic_x4" in p.stdout


_GOOD = """
[defaults]
upscale = "tiny"

[presets.tiny]
task = "upscale"
arch = "SPAN"
kwargs = { feature_channels = 8, upscale = 2 }
scale = 2
license = "MIT"
description = "test"
source = { url = "https://example.org/x.pth" }
"""


@pytest.mark.parametrize("text,key", [
    ("[presets.tiny\ntask = 1", "not valid TOML"),
    (_GOOD.replace('arch = "SPAN"\n', ""), "presets.tiny.arch: missing"),
    (_GOOD.replace("scale = 2", 'scale = "two"'), "presets.tiny.scale: must be an integer"),
    (_GOOD.replace("scale = 2", "scale = true"), "presets.tiny.scale: must be an integer"),
    (_GOOD.replace("kwargs = {", "kwargs = 3 #"), "presets.tiny.kwargs: must be a table"),
    (_GOOD.replace('task = "upscale"', 'task = "sharpen"'), "presets.tiny.task: unknown task 'sharpen'"),
    (_GOOD.replace('source = { url = "https://example.org/x.pth" }', 'source = { ftp = "x" }'),
     "presets.tiny.source: needs one of hf, bundled, url"),
    (_GOOD.replace('source = { url = "https://example.org/x.pth" }', 'source = { hf = "a/b" }'),
     "presets.tiny.source.filename: missing"),
    (_GOOD.replace('upscale = "tiny"', 'upscale = "huge"'), "defaults.upscale: names unknown preset 'huge'"),
    (_GOOD + '[families.tiny]\nupscale = ["nope"]\n', "families.tiny.upscale: unknown preset 'nope'"),
    (_GOOD + '[families.tiny]\ndeblur = ["tiny"]\n', "families.tiny.deblur: preset tiny is a upscale model"),
    (_GOOD + '[families.tiny]\nupscale = "tiny"\n', "families.tiny.upscale: must be a list"),
    ('presets = 3\n', "presets: must be a table"),
])
@pytest.mark.parametrize("command", [["models", "list"], ["upscale", "{img}", "-o", "{out}", "--model", "tiny"]])
def test_malformed_presets_file_is_a_usage_error(tmp_path: Path, text: str, key: str, command: list[str]) -> None:
    toml = tmp_path / "mine.toml"
    toml.write_text(text)
    img = tmp_path / "in.png"
    PILImage.new("RGB", (8, 8)).save(img)
    p = run(*(a.format(img=img, out=tmp_path / "out") for a in command), env={"RESTORE_PRESETS": str(toml)})
    no_traceback(p)
    assert p.returncode == 2, p.stderr
    assert str(toml) in p.stderr and key in p.stderr, p.stderr
    assert "internal error" not in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr


def test_models_fits_80_columns() -> None:
    from restore_cli import presets

    p = run("models", columns=80)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    # readable: every preset name on one line, not folded
    for name in presets.all_presets():
        assert any(ln.split(" ", 1)[0] == name for ln in lines), name
    assert "APL-NC" in p.stdout and "Academic" not in p.stdout  # long licences shortened, details in `models info`


def test_printed_text_is_never_markup(tmp_path: Path, span_weights: Path) -> None:
    """File names, model names and preset fields with square brackets come out as they are."""
    # "photos[" + "/b].png" prints as "photos[/b].png": a closing tag that matches nothing, which crashed rich
    photos = tmp_path / "photos["
    photos.mkdir()
    names = ["[red]a.png", "b].png", "c[bold.png"]
    for n in names:
        PILImage.fromarray((np.random.default_rng(0).random((8, 9, 3)) * 255).astype(np.uint8)).save(photos / n)
    (photos / "[red]broken].png").write_bytes(b"not a png")
    p = run("upscale", photos, "-o", tmp_path / "out", "--model", span_weights)
    no_traceback(p)
    assert p.returncode == 1, p.stderr  # the broken one failed, the rest went on
    for n in [*names, "[red]broken].png"]:
        assert f"photos[/{n}" in p.stderr, n
    assert all((tmp_path / "out" / n).is_file() for n in names)

    toml = tmp_path / "mine.toml"
    toml.write_text(_GOOD.replace('description = "test"', 'description = "x [/b] [red]y[/red]"'))
    p = run("models", "info", "tiny", env={"RESTORE_PRESETS": str(toml)})
    no_traceback(p)
    assert p.returncode == 0 and "x [/b] [red]y[/red]" in p.stdout, p.stderr

    p = run("upscale", photos, "--model", "hf://acme/[/b]weights.pth")
    no_traceback(p)
    assert p.returncode == 2 and "[/b]" in p.stderr and "internal error" not in p.stderr, p.stderr


def test_pyproject_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "tomli>=2; python_version < '3.11'" in project["dependencies"]
    assert project["license"] == "MIT"
