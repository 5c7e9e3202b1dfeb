"""The library surface the CLI uses: load_model() and restore_image().

load_model: model spec (preset name, local file, hf:// URI) -> weights file -> state dict -> built arch on a device.
restore_image: HxWxC numpy array (uint8 / uint16 / float32) -> restored array of the same dtype and channel layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import archs
from archs import ArchSpec

from . import loading, presets, resolve
from .engine.runner import Runner, RunStats, pick_device, pick_dtype
from .errors import UsageError

TileArg = int | str  # "auto", 0 (whole image) or a core size in pixels


@dataclass
class LoadedModel:
    """A model ready to run: the module on its device, its descriptor, and where it came from."""

    name: str
    runner: Runner
    spec: ArchSpec
    weights: Path
    license: str = "unknown (local file)"
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    # How a family name was resolved (see resolve.py): `choice.note` is the line to show the user.
    choice: resolve.Choice | None = None

    @property
    def module(self) -> nn.Module:
        return self.runner.model

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype


def _parse_tile(tile: TileArg) -> int | None:
    if isinstance(tile, str):
        if tile == "auto":
            return None
        if not tile.isdigit():
            raise UsageError(f"--tile takes auto, 0 or a size in pixels, not {tile!r}")
        tile = int(tile)
    if tile < 0:
        raise UsageError("--tile must be auto, 0 or a positive size")
    return tile


@dataclass(frozen=True)
class ResolvedWeights:
    """A --model value made concrete: a local weights file and what is known about it before reading it."""

    name: str  # for display: the preset name, the file name or the hf:// URI
    path: Path
    arch: str | None  # None: detect from the state dict
    kwargs: dict[str, Any]
    preset: presets.Preset | None = None
    choice: resolve.Choice | None = None  # set when a family name was resolved


def resolve_weights(model: str, *, task: str | None = None, offline: bool = False) -> ResolvedWeights:
    """Model spec -> local weights file. In this order: hf:// URI; weights file (by suffix, or an existing file);
    preset name; family name (its best preset for `task` that can be had now, see resolve.py)."""
    from . import hub

    if model.startswith("hf://"):
        got = hub.fetch_hf_uri(model, offline=offline)
        return ResolvedWeights(model, got.path, got.arch, dict(got.kwargs or {}))
    path = Path(model).expanduser()
    if resolve.looks_like_file(model):
        if not path.is_file():
            raise UsageError(f"{model}: weights file not found")
        return ResolvedWeights(path.name, path, None, {})
    family = resolve.family_named(model)
    if family is not None:
        choice = resolve.choose(family, task, offline=offline)
        p = choice.preset
        return ResolvedWeights(p.name, choice.path, p.arch, dict(p.kwargs), p, choice)
    if path.exists():  # a folder, say: not weights, and not a preset name either
        raise UsageError(f"{model}: weights file not found")
    preset = presets.get(model)
    if task is not None and not preset.serves(task):
        raise UsageError(f"preset {preset.name} is a {preset.task} model, not {task}; see `restore models list`")
    weights = hub.fetch_preset(preset, offline=offline)
    return ResolvedWeights(preset.name, weights, preset.arch, dict(preset.kwargs), preset)


def load_model(model: str | None = None, *, task: str | None = None, device: str = "auto",
               precision: str = "auto", tile: TileArg = "auto", overlap: int = 16, batch: int = 1,
               offline: bool = False) -> LoadedModel:
    """Resolve a preset name / family name / weights file / hf:// URI (or the task's default preset) and build
    the model. A family name needs `task` unless the family serves one task only."""
    if model is None:
        if task is None:
            raise UsageError("name a model or a task")
        model = presets.default_for(task).name
    got = resolve_weights(model, task=task, offline=offline)
    name, path, preset = got.name, got.path, got.preset
    sd = loading.read_state_dict(path)
    module = loading.build_from_state_dict(sd, where=str(path), arch=got.arch, kwargs=got.kwargs)
    spec = archs.spec(module.arch_id, **module.arch_kwargs)
    if spec.input_kind != "image":
        raise UsageError(f"{name} is a {spec.family} generator (its input is a latent code, not an image): "
                         "use it from Python with archs.build(), not on image files")
    if task is not None and preset is None and task not in spec.tasks and task != "restore":
        raise UsageError(f"{name} is a {'/'.join(spec.tasks)} model ({spec.id}), not {task}")
    dev = pick_device(device)
    runner = Runner(module, spec, device=dev, dtype=pick_dtype(precision, spec, dev), tile=_parse_tile(tile),
                    overlap=overlap, batch=batch)
    return LoadedModel(name=name, runner=runner, spec=spec, weights=path,
                       license=preset.license if preset else "unknown (local file)",
                       description=preset.description if preset else "", kwargs=module.arch_kwargs,
                       choice=got.choice)


# Runtime knobs some families expose as plain attributes (see each arch's docstring): CLI flag -> attribute.
RUNTIME_OPTIONS = {"scale": "scale", "ratio": "ratio", "exit_threshold": "exit_threshold", "topk": "topk"}


def set_options(model: LoadedModel, **options: Any) -> None:
    """Set runtime options (e.g. SpanC's scale, CAMixerSR's ratio, AdaRevID's exit threshold) on a loaded model."""
    import dataclasses

    for key, value in options.items():
        if value is None:
            continue
        attr = RUNTIME_OPTIONS[key]
        module = model.module
        if not hasattr(module, attr):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} does not apply to {model.spec.id} ({model.name})")
        setattr(module, attr, value)
        if key == "scale":
            # the engine sizes tiles and outputs by the descriptor's scale
            model.spec = dataclasses.replace(model.spec, scale=int(value))
            model.runner.spec = model.spec


def restore_image(model: LoadedModel, array: np.ndarray, *, tile: TileArg | None = None,
                  overlap: int | None = None, batch: int | None = None) -> tuple[np.ndarray, RunStats]:
    """Restore one HxWxC (or HxW) image; returns the result in the input's dtype and channel layout.

    Alpha is handled exactly: colour is premultiplied before the model and un-premultiplied after; alpha itself is
    carried over (bicubic-resized for SR, clipped to [0, 1]); an all-opaque alpha stays all-opaque. The flow (and
    every pixel conversion) is the CLI's: `pipeline.restore_array`.
    """
    from . import pipeline

    if tile is not None:
        model.runner.tile = _parse_tile(tile)
    if overlap is not None:
        model.runner.overlap = overlap
    if batch is not None:
        model.runner.batch = max(1, batch)
    return pipeline.restore_array(model, array)
