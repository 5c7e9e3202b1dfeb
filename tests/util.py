"""Helpers shared by the architecture tests (like spandrel's tests/util.py): golden files, meta-device state dicts,
the detector round trip, randomised weights, test images and the tiled-vs-whole check."""

from __future__ import annotations

import json
import lzma
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import archs
from tests.conftest import GOLDEN

# ---------------------------------------------------------------------------------------------------------------------
# numbers


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against b, in float64 (a zero b counts as a tiny norm, not a division by zero)."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def plain(v: Any) -> Any:
    """Tuples as lists, recursively: kwargs compare equal whether they came from Python or from a detector."""
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------------------------------------------------
# golden files


def golden_meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


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


def read_manifest(path: Path) -> dict[str, Any]:
    """An official keys manifest: plain JSON (`*.keys.json`) or xz-compressed minified JSON (`*.keys.json.xz`)."""
    if path.suffix == ".xz":
        with lzma.open(path, "rt") as f:
            return json.load(f)
    return json.loads(path.read_text())


def file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Meta tensors with the keys and shapes of a golden file's state dict (its stored `sd.` tensors and recipe keys)
    or of an official keys manifest (`*.keys.json`): what a detector sees, without the data."""
    if path.name.endswith((".keys.json", ".keys.json.xz")):
        return {k: torch.empty(v, device="meta") for k, v in read_manifest(path)["state_dict"].items()}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        keys = [k for k in f.keys() if k.startswith("sd.")]  # noqa: SIM118 (safe_open is not iterable)
        sd = {k[3:]: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in keys}
    sd.update({k: torch.empty(v, device="meta") for k, v in json.loads(meta.get("recipe_keys", "{}")).items()})
    return sd


def golden_spec(path: Path) -> archs.ArchSpec:
    meta = golden_meta(path)
    return archs.spec(meta["class"], **json.loads(meta["kwargs"]))


def known_class(cls: str) -> bool:
    try:
        archs.entry(cls)
        return True
    except KeyError:
        return False


def golden_files(pattern: str = "*.safetensors") -> list[Path]:
    """Golden files (in golden/ and golden/real/) of registered classes; empty without the golden folder."""
    if not GOLDEN.is_dir():
        return []
    paths = [*GOLDEN.glob(pattern), *GOLDEN.glob(f"real/{pattern}")]
    return sorted(p for p in paths if known_class(golden_meta(p)["class"]))


def manifests(pattern: str = "*.keys.json") -> list[Path]:
    """Official keys manifests (plain and .xz) of registered classes."""
    if not GOLDEN.is_dir():
        return []
    paths = [*GOLDEN.glob(pattern), *GOLDEN.glob(f"{pattern}.xz")]
    return sorted(p for p in paths if known_class(read_manifest(p)["class"]))


# ---------------------------------------------------------------------------------------------------------------------
# state dicts and detection


def meta_state_dict(name: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    """The state dict of archs.build(name, **kwargs) on the meta device (shapes only)."""
    with torch.device("meta"):
        return dict(archs.build(name, **kwargs).state_dict())


def shapes(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def assert_detected(sd: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
    """The state dict is detected as `name` alone (or as pinned in AMBIGUOUS / DETECTED_AS below), and the detected
    kwargs rebuild its keys and shapes exactly; returns those kwargs."""
    found = archs.detect(sd)
    want = expected_detections(name)
    if want is None:
        pytest.skip(f"{name}: the family that detects it is not registered")
    assert sorted(n for n, _ in found) == want, f"detectors matched {[n for n, _ in found]}, expected {want}"
    arch, kwargs = next((f for f in found if f[0] == name), found[0])
    assert shapes(meta_state_dict(arch, **kwargs)) == shapes(sd)
    return kwargs


def assert_round_trip(name: str, kwargs: Mapping[str, Any], loose: Iterable[str] = ()) -> dict[str, Any]:
    """Build `name` with kwargs on the meta device, detect it back (alone, rebuilding the same keys and shapes), and
    check that every given kwarg not in `loose` comes back with its value ("*" in loose: compare no kwargs).
    Returns the detected kwargs."""
    got = assert_detected(meta_state_dict(name, **kwargs), name)
    if "*" in loose or name in DETECTED_AS:
        return got
    entry = archs.entry(name)
    want, full = plain(entry.full_kwargs(kwargs)), plain(entry.full_kwargs(got))
    skip = set(loose)
    assert {k: full[k] for k in kwargs if k not in skip} == {k: want[k] for k in kwargs if k not in skip}
    return got


# ---------------------------------------------------------------------------------------------------------------------
# weights and images


def randomise(model: torch.nn.Module, seed: int = 0, scale: float = 0.02,
              skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Add seeded noise to every floating-point parameter (names containing one of `skip` excepted): fresh models
    have zero-initialised residual scales that would make many paths the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and not any(s in name for s in skip):
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def smooth_image(h: int, w: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """Photo-like test content (C, H, W) in [0, 1]: low-frequency colour fields plus fine texture."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(1, channels, h // 16 + 2, w // 16 + 2, generator=g), size=(h, w), mode="bicubic")
    return (0.8 * low + 0.2 * torch.rand(1, channels, h, w, generator=g)).clamp(0, 1)[0]


def tiled_and_whole(model: torch.nn.Module, spec: archs.ArchSpec, image: torch.Tensor, tile: int, overlap: int = 12,
                    dtype: torch.dtype = torch.float32, **runner: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(tiled, whole, tile count) of one image through the engine on the CPU (the model runs in `dtype`)."""
    from restore_cli.engine.runner import Runner

    cpu = torch.device("cpu")
    whole, _ = Runner(model, spec, device=cpu, dtype=dtype, tile=0).run(image)
    tiled, stats = Runner(model, spec, device=cpu, dtype=dtype, tile=tile, overlap=overlap, **runner).run(image)
    return tiled, whole, stats.tiles
# Extra forward arguments of goldens whose `call` is more than forward(x), by the call text's tail.
_OSRT_CALL = "torch.cos(torch.linspace(-1.2, 1.2, 16)).view(1, 1, 16, 1).expand(1, 1, 16, 24).contiguous())"


def golden_inputs(t: dict[str, torch.Tensor], meta: dict[str, str]) -> tuple[torch.Tensor, ...]:
    """The positional arguments of a golden's call: the input, plus what the call builds (OSRT's latitude map)."""
    call = meta.get("call", "forward(x)")
    if call.endswith(_OSRT_CALL):
        return t["input"], torch.cos(torch.linspace(-1.2, 1.2, 16)).view(1, 1, 16, 1).expand(1, 1, 16, 24).contiguous()
    # a literal second argument, e.g. OAPT's `forward(x, torch.tensor([[3.0, 5.0]]))`
    m = re.fullmatch(r"forward\(x, torch\.tensor\((.+)\)\)", call)
    if m:
        return t["input"], torch.tensor(json.loads(m.group(1)))
    return (t["input"],)


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
