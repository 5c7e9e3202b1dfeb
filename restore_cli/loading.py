"""Weights file -> state dict -> built model: safe reading, canonicalising wrappers, detecting the architecture.

Pickled checkpoints are only read with `torch.load(weights_only=True)`; there is no unsafe fallback.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

import archs

from .errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
# Wrappers that training frameworks put around the state dict, most preferred first (EMA weights win).
_WRAPPER_KEYS = ("params_ema", "params-ema", "model_ema", "state_dict_ema", "params", "state_dict",
                 "model_state_dict", "model", "net", "netG", "generator", "g_ema")
_PREFIXES = ("module.", "netG.", "net.", "model.", "_orig_mod.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat {key: tensor} dict without running any code from it."""
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses globals outside torch's allow-list: the file wants to run code.
        raise WeightsError(f"{path}: refused to load, the pickle asks for code outside the safe allow-list "
                           f"({_first_line(e)})") from None
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{path}: not a readable weights file ({_first_line(e)})") from None
    return canonicalize(raw, where=str(path))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def canonicalize(raw: Any, *, where: str = "state dict") -> dict[str, torch.Tensor]:
    """Unwrap framework containers and strip wrapper prefixes so keys match the arch's own names."""
    obj = raw
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None and len(obj) == 1:
            inner = next(iter(obj.values()))
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{where}: holds a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"{where}: contains no tensors")
    for prefix in _PREFIXES:
        # a prefix followed only by indices is the model's own top-level nn.Sequential (ESRGAN's `model.0...`)
        if all(k.startswith(prefix) for k in sd) and not all(k[len(prefix):][:1].isdigit() for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


@dataclass(frozen=True)
class KeyReport:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 3) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
        if self.mismatched:
            k, want, got = self.mismatched[0]
            more = f" (+{len(self.mismatched) - 1} more)" if len(self.mismatched) > 1 else ""
            parts.append(f"{len(self.mismatched)} mis-shaped: {k} expects {list(want)}, file has {list(got)}{more}")
        return "; ".join(parts)


def compare_keys(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> KeyReport:
    own = model.state_dict()
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = [(k, tuple(own[k].shape), tuple(sd[k].shape)) for k in own if k in sd and own[k].shape != sd[k].shape]
    return KeyReport(missing, unexpected, mismatched)


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, where: str) -> None:
    """Strict load, with a readable report of what does not match instead of torch's wall of text."""
    report = compare_keys(model, sd)
    if not report.ok:
        arch = getattr(model, "arch_id", type(model).__name__)
        raise WeightsError(f"{where}: weights do not fit {arch}: {report.summary()}")
    model.load_state_dict(sd, strict=True)


def detect_arch(sd: Mapping[str, torch.Tensor], *, where: str) -> tuple[str, dict[str, Any]]:
    """Run every detector; exactly one must match."""
    found = archs.detect(sd)
    if not found:
        raise WeightsError(f"{where}: no known architecture matches these weights "
                           f"(known: {', '.join(archs.names())})")
    if len(found) > 1:
        raise WeightsError(f"{where}: ambiguous weights, several architectures match: "
                           f"{', '.join(name for name, _ in found)}; name one in a preset")
    return found[0]


def build_from_state_dict(sd: Mapping[str, torch.Tensor], *, where: str, arch: str | None = None,
                          kwargs: Mapping[str, Any] | None = None, tile_stable: bool = True) -> nn.Module:
    """Build the arch (named, or detected) and load the weights strictly; eval mode, on the CPU."""
    if arch is None:
        arch, detected = detect_arch(sd, where=where)
        kw: dict[str, Any] = {**detected, **(kwargs or {})}
        local = archs.entry(arch).local_variant
        if tile_stable and local is not None:
            arch = local
    else:
        kw = dict(kwargs or {})
    try:
        model = archs.build(arch, **kw)
    except (TypeError, ValueError, KeyError) as e:
        # A preset of an unpublished configuration names no kwargs; when upstream's defaults cannot build, the
        # weights say what they are (the named arch's own detector).
        detect = archs.entry(arch).detect if not kw else None
        found = detect(sd) if detect is not None else None
        if found is None:
            raise WeightsError(f"{where}: cannot build {arch}: {e}") from None
        model = archs.build(arch, **found)
    load_strict(model, sd, where=where)
    return model.eval()
