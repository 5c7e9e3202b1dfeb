"""weights.toml -> Preset records: lookup by name and by task default.

Weights are data: each preset names its architecture, the constructor kwargs, where the file comes from and
under which licence it may be used.
"""

from __future__ import annotations

import os
import re
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

    @property
    def short_license(self) -> str:
        """The licence in a dozen characters for tables ("MIT", "Apache-2.0", "APL-NC"); details stay in license."""
        head = re.split(r" \(|[:;]", self.license, maxsplit=1)[0].strip()
        if len(head) <= 12:
            return head
        # Long names become their initials: "Academic Public License (non-commercial)" -> "APL-NC".
        short = "".join(w[0] for w in head.split() if w[0].isupper())
        return short + ("-NC" if "non-commercial" in self.license.lower() else "")


@dataclass(frozen=True)
class Family:
    """A name that stands for "this architecture's recommended weights": per task, presets best first."""

    name: str
    chains: dict[str, tuple[str, ...]]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.chains)


def weights_toml_path() -> Path:
    """The package's weights.toml, or the file named by RESTORE_PRESETS (your own presets)."""
    override = os.environ.get("RESTORE_PRESETS")
    return Path(override).expanduser() if override else PACKAGE_DIR / "weights.toml"


_SOURCE_KEYS = ("hf", "bundled", "url", "filename", "revision", "sha256", "note")
_PRESET_HINT = "each preset needs task, arch, license, description and source"


class _Reader:
    """Typed access to one TOML table; every problem is a UsageError naming the file and the dotted key."""

    def __init__(self, path: Path, where: str, raw: object) -> None:
        self.path, self.where = path, where
        if not isinstance(raw, dict):
            raise self.error(where, f"must be a table, not {_kind(raw)}")
        self.raw: dict[str, Any] = raw

    def error(self, key: str, problem: str) -> UsageError:
        return UsageError(f"{self.path}: {key}: {problem}")

    def get(self, key: str, kind: type, *, required: bool = True, hint: str = "") -> Any:
        where = f"{self.where}.{key}"
        if key not in self.raw:
            if required:
                raise self.error(where, "missing" + (f" ({hint})" if hint else ""))
            return None
        value = self.raw[key]
        # bool is an int subclass in Python, but `scale = true` is a mistake
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(where, f"must be {_KINDS.get(kind, kind.__name__)}, not {_kind(value)}")
        return value

    def string(self, key: str, *, required: bool = True, hint: str = "") -> Any:
        value = self.get(key, str, required=required, hint=hint)
        if value is not None and not value.strip():
            raise self.error(f"{self.where}.{key}", "must not be empty")
        return value

    def task(self, key: str, value: object) -> str:
        if value not in TASKS:
            raise self.error(key, f"unknown task {value!r}; tasks: {', '.join(TASKS)}")
        return str(value)

    def names(self, key: str) -> tuple[str, ...]:
        """A list of strings (e.g. `also`, a family's chain); absent -> ()."""
        value = self.get(key, list, required=False)
        if value is None:
            return ()
        for item in value:
            if not isinstance(item, str):
                raise self.error(f"{self.where}.{key}", f"must be a list of strings, not one holding {_kind(item)}")
        return tuple(value)


_KINDS = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "a table", list: "a list"}


def _kind(value: object) -> str:
    """'an integer (3)': what a TOML value is, for messages (its repr cut short)."""
    return f"{_KINDS.get(type(value), type(value).__name__)} ({value!r:.60})"


def _parse_source(r: _Reader) -> Source:
    for key in _SOURCE_KEYS:
        r.string(key, required=False)
    if "hf" in r.raw:
        hint = "an hf source names filename and revision"
        return Source("hf", repo=r.string("hf"), filename=r.string("filename", hint=hint),
                      revision=r.string("revision", hint=hint), sha256=r.string("sha256", required=False),
                      note=r.string("note", required=False))
    if "bundled" in r.raw:
        return Source("bundled", filename=r.string("bundled"), sha256=r.string("sha256", required=False),
                      note=r.string("note", required=False))
    if "url" in r.raw:
        return Source("url", url=r.string("url"), filename=r.string("filename", required=False),
                      sha256=r.string("sha256", required=False), note=r.string("note", required=False))
    raise r.error(r.where, "needs one of hf, bundled, url")


def _parse_preset(path: Path, name: str, raw: object) -> Preset:
    r = _Reader(path, f"presets.{name}", raw)
    scale = r.get("scale", int, required=False)
    if scale is not None and scale < 1:
        raise r.error(f"{r.where}.scale", f"must be 1 or more, not {scale}")
    return Preset(
        name=name,
        task=r.task(f"{r.where}.task", r.string("task", hint=_PRESET_HINT)),
        tasks=tuple(r.task(f"{r.where}.also", t) for t in r.names("also")),
        arch=r.string("arch", hint=_PRESET_HINT),
        kwargs=dict(r.get("kwargs", dict, required=False) or {}),
        source=_parse_source(_Reader(path, f"{r.where}.source", r.get("source", dict, hint=_PRESET_HINT))),
        scale=scale or 1,
        license=r.string("license", hint=_PRESET_HINT),
        description=r.string("description", hint=_PRESET_HINT),
    )


def _parse_family(path: Path, name: str, raw: object, presets: dict[str, Preset]) -> Family:
    r = _Reader(path, f"families.{name}", raw)
    chains: dict[str, tuple[str, ...]] = {}
    for task in r.raw:
        where = f"{r.where}.{task}"
        r.task(where, task)
        chain = r.names(task)
        if not chain:
            raise r.error(where, "must list at least one preset")
        for preset in chain:
            if preset not in presets:
                raise r.error(where, f"unknown preset {preset!r}")
            if not presets[preset].serves(task):
                raise r.error(where, f"preset {preset} is a {presets[preset].task} model, not {task}")
        chains[task] = chain
    if not chains:
        raise r.error(r.where, f"lists no task; give one or more of {', '.join(TASKS)}")
    return Family(name=name, chains=chains)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one parsed file, cached per path
class Catalog:
    """Everything weights.toml says: presets by name, the default preset per task, families by name."""

    presets: dict[str, Preset]
    defaults: dict[str, str]
    families: dict[str, Family]


def catalog(path: Path | None = None) -> Catalog:
    """Parse and check a presets file (default: weights_toml_path()); any mistake is a UsageError naming file
    and key, so a broken RESTORE_PRESETS file reads as a usage problem, never as an internal error."""
    return _catalog(path or weights_toml_path())


@lru_cache(maxsize=4)
def _catalog(path: Path) -> Catalog:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read presets ({e.strerror or e})") from None
    top = _Reader(path, "(top level)", data)
    presets = {name: _parse_preset(path, name, raw)
               for name, raw in (top.get("presets", dict, required=False) or {}).items()}
    defaults: dict[str, str] = {}
    table = _Reader(path, "defaults", top.get("defaults", dict, required=False) or {})
    for task in table.raw:
        r_task = table.task(f"defaults.{task}", task)
        name = table.string(task)
        if name not in presets:
            raise table.error(f"defaults.{task}", f"names unknown preset {name!r}")
        defaults[r_task] = name
    families = {name.lower(): _parse_family(path, name.lower(), raw, presets)
                for name, raw in (top.get("families", dict, required=False) or {}).items()}
    return Catalog(presets, defaults, families)


def all_presets(path: Path | None = None) -> dict[str, Preset]:
    return catalog(path).presets


def get(name: str, path: Path | None = None) -> Preset:
    presets = all_presets(path)
    if name not in presets:
        close = [p for p in presets if name.lower() in p.lower()]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else " (see `restore models`)"
        raise UsageError(f"unknown model preset {name!r}{hint}")
    return presets[name]


def default_for(task: str, path: Path | None = None) -> Preset:
    cat = catalog(path)
    if task not in cat.defaults:
        raise UsageError(f"no default model for task {task!r}; pass --model")
    return cat.presets[cat.defaults[task]]
