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


# Extra forward arguments of goldens whose `call` is more than forward(x), by the call text's tail.
_OSRT_CALL = "torch.cos(torch.linspace(-1.2, 1.2, 16)).view(1, 1, 16, 1).expand(1, 1, 16, 24).contiguous())"


def golden_inputs(t: dict[str, torch.Tensor], meta: dict[str, str]) -> tuple[torch.Tensor, ...]:
    """The positional arguments of a golden's call: the input, plus what the call builds (OSRT's latitude map)."""
    call = meta.get("call", "forward(x)")
    if call.endswith(_OSRT_CALL):
        return t["input"], torch.cos(torch.linspace(-1.2, 1.2, 16)).view(1, 1, 16, 1).expand(1, 1, 16, 24).contiguous()
    return (t["input"],)
