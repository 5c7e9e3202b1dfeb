"""Golden-file helpers shared by the family tests: read a file, build its model strictly loaded, compare outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import archs
from tests.conftest import GOLDEN


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against b, in float64 (a zero b counts as a tiny norm, not a division by zero)."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def read_golden(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a golden file; skips the test when the file is absent."""
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 (safe_open is not iterable)


def recipe_state_dict(t: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, torch.Tensor]:
    """The state dict a golden file describes (golden/recipe.py, which ships beside the files)."""
    sys.path.insert(0, str(GOLDEN))
    from recipe import recipe_state_dict as build  # type: ignore[import-not-found]

    return build(t, meta)


def load_golden(path: Path, cls: str | None = None) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    """A golden file's model (built from its class, or `cls`, and kwargs; strictly loaded; eval), tensors and
    metadata."""
    t, meta = read_golden(path)
    model = archs.build(cls or meta["class"], **json.loads(meta["kwargs"]))
    model.load_state_dict(recipe_state_dict(t, meta), strict=True)
    return model.eval(), t, meta


# Published layouts another family shares exactly (keys and shapes cannot tell them apart), by arch id, pinned so that
# a new overlap is a decision. AMBIGUOUS: both detectors claim it and loading asks for the architecture (different
# maths: CFAT's triangular and sparse windows on HAT's weights). DETECTED_AS: the arch has no detector of its own; its
# checkpoints are detected as the other, which computes the same (MicroSR is DRCT: tests/test_microsr.py).
AMBIGUOUS: dict[str, str] = {"cfat": "hat"}
DETECTED_AS: dict[str, str] = {"microsr": "drct"}


def expected_detections(arch_id: str) -> list[str] | None:
    """The arch ids `archs.detect` must return for a state dict of `arch_id` in this tree (sorted); None when the
    family that detects it is not registered here."""
    if arch_id in DETECTED_AS:
        other = DETECTED_AS[arch_id]
        return [other] if other in archs.names() else None
    if arch_id in AMBIGUOUS and AMBIGUOUS[arch_id] in archs.names():
        return sorted([arch_id, AMBIGUOUS[arch_id]])
    return [arch_id]
