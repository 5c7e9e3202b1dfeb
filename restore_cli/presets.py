"""weights.toml -> Preset records: lookup by name and by task default.

Weights are data: each preset names its architecture, the constructor kwargs, where the file comes from and
under which licence it may be used.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UsageError

TASKS = ("deblur", "denoise", "upscale", "restore", "face")
SourceKind = Literal["hf", "bundled", "url"]

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = PACKAGE_DIR / "bundled"


@dataclass(frozen=True)
class Source:
    """Where a preset's weights file comes from."""

    kind: SourceKind
    repo: str | None = None  # hf: "owner/name"
    filename: str | None = None  # hf: path inside the repo; bundled: file name in restore_cli/bundled
    revision: str | None = None  # hf: pinned commit sha or tag
    sha256: str | None = None
    url: str | None = None  # url: a page or file the user must fetch by hand
    note: str | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    task: str
    arch: str
    kwargs: dict[str, Any]
    source: Source
    scale: int
    license: str
    description: str
    tasks: tuple[str, ...] = field(default_factory=tuple)  # extra tasks it also serves

    def serves(self, task: str) -> bool:
        return task == self.task or task in self.tasks


def weights_toml_path() -> Path:
    """The package's weights.toml, or the file named by RESTORE_PRESETS (your own presets)."""
    override = os.environ.get("RESTORE_PRESETS")
    return Path(override).expanduser() if override else PACKAGE_DIR / "weights.toml"


def _parse_source(name: str, raw: dict[str, Any]) -> Source:
    if "hf" in raw:
        for key in ("filename", "revision"):
            if key not in raw:
                raise ValueError(f"preset {name}: hf source needs {key!r}")
        return Source("hf", repo=raw["hf"], filename=raw["filename"], revision=raw["revision"],
                      sha256=raw.get("sha256"), note=raw.get("note"))
    if "bundled" in raw:
        return Source("bundled", filename=raw["bundled"], sha256=raw.get("sha256"), note=raw.get("note"))
    if "url" in raw:
        return Source("url", url=raw["url"], filename=raw.get("filename"), sha256=raw.get("sha256"),
                      note=raw.get("note"))
    raise ValueError(f"preset {name}: source needs one of hf, bundled, url")


@lru_cache(maxsize=4)
def _load(path: Path) -> tuple[dict[str, Preset], dict[str, str]]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: cannot read presets ({e})") from None
    presets: dict[str, Preset] = {}
    for name, raw in data.get("presets", {}).items():
        presets[name] = Preset(
            name=name,
            task=raw["task"],
            tasks=tuple(raw.get("also", ())),
            arch=raw["arch"],
            kwargs=dict(raw.get("kwargs", {})),
            source=_parse_source(name, raw["source"]),
            scale=int(raw.get("scale", 1)),
            license=raw["license"],
            description=raw["description"],
        )
    defaults = dict(data.get("defaults", {}))
    for task, name in defaults.items():
        if name not in presets:
            raise ValueError(f"weights.toml: default for {task} names unknown preset {name!r}")
    return presets, defaults


def all_presets(path: Path | None = None) -> dict[str, Preset]:
    return _load(path or weights_toml_path())[0]


def get(name: str, path: Path | None = None) -> Preset:
    presets = all_presets(path)
    if name not in presets:
        close = [p for p in presets if name.lower() in p.lower()]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else " (see `restore models`)"
        raise UsageError(f"unknown model preset {name!r}{hint}")
    return presets[name]


def default_for(task: str, path: Path | None = None) -> Preset:
    presets, defaults = _load(path or weights_toml_path())
    if task not in defaults:
        raise UsageError(f"no default model for task {task!r}; pass --model")
    return presets[defaults[task]]
