"""Seams are proven on the real families: tiled output equals whole-image output.

Golden weights (upstream-initialised small configs) on a smooth random image larger than the tiles. Families whose
context fits the margin ("safe") must agree within 1/255; TLC variants (tile-stable whole-image statistics) within
2/255. Tile sizes include ones that do not divide the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import archs
from restore_cli.engine.runner import Runner
from tests.conftest import GOLDEN
from tests.goldens import load_golden

if not GOLDEN.is_dir():
    pytest.skip(f"golden folder {GOLDEN} not found", allow_module_level=True)

FAMILIES = ("NAFNet", "UFPNet", "PLKSR", "RealPLKSR", "SPAN")
TOLERANCE = {"safe": 1 / 255, "tlc": 2 / 255}


def _cases() -> list[Path]:
    out = []
    for p in sorted(GOLDEN.glob("*.safetensors")):
        if p.name.split("__")[0] not in FAMILIES:
            continue
        with safe_open(str(p), "pt") as f:
            cls = f.metadata()["class"]
        try:
            archs.entry(cls)
        except KeyError:
            continue
        out.append(p)
    return out


def _load(path: Path) -> tuple[torch.nn.Module, archs.ArchSpec]:
    model, _, meta = load_golden(path)
    return model, archs.spec(meta["class"], **json.loads(meta["kwargs"]))


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Photo-like test content: low-frequency colour fields plus fine texture."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(1, 3, h // 16 + 2, w // 16 + 2, generator=g), size=(h, w), mode="bicubic")
    return (0.8 * low + 0.2 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)[0]


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.name)
def test_tiled_matches_whole(path: Path) -> None:
    model, spec = _load(path)
    if spec.tiling not in TOLERANCE:
        pytest.skip(f"{spec.id} is tiled with large tiles only ({spec.tiling}); see test_global_archs_prefer_whole")
    tiles = (40, 53)
    # Large enough that every tile size really tiles (window = tile + 2 * context fits twice), odd sizes on purpose.
    h, w = 2 * max(tiles) + 2 * spec.context + 9, 2 * max(tiles) + 2 * spec.context - 5
    image = smooth_image(h, w)
    cpu = torch.device("cpu")
    whole, _ = Runner(model, spec, device=cpu, dtype=torch.float32, tile=0).run(image)
    for tile in tiles:
        runner = Runner(model, spec, device=cpu, dtype=torch.float32, tile=tile, overlap=12, batch=2)
        tiled, stats = runner.run(image)
        assert stats.tiles > 1
        err = float((tiled - whole).abs().max())
        assert err <= TOLERANCE[spec.tiling], f"tile {tile}: max |tiled - whole| = {err * 255:.3f}/255"


def test_global_archs_prefer_whole() -> None:
    """Archs with untreated whole-image statistics get one tile on the CPU and large tiles on the GPU."""
    for name in archs.names():
        spec = archs.spec(name)
        if spec.tiling in ("global", "internal"):
            runner = Runner(torch.nn.Identity(), spec, device=torch.device("cpu"), dtype=torch.float32)
            assert runner._auto_tile(1080, 1920) == 0, name
