"""The detectors of DAT, MSHAT, OSRT, HiT-SRF, PFT and GRL accept their own families' golden and manifest files and
no other file of ../shared/golden (every family's, registered or not)."""

from __future__ import annotations

import functools
import json
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from archs import dat, grl, hit_srf, osrt, pft
from tests.conftest import GOLDEN

if not GOLDEN.is_dir():
    pytest.skip(f"golden folder {GOLDEN} not found", allow_module_level=True)

# detector -> (file prefix, classes whose files it must accept)
DETECTORS: dict[str, tuple[Callable[..., object], str, tuple[str, ...]]] = {
    "dat": (dat._detect_dat, "DAT__", ("DAT",)),
    "mshat": (dat._detect_mshat, "DAT__", ("MSHAT",)),
    "osrt": (osrt._detect, "OSRT__", ("OSRT",)),
    "hit_srf": (hit_srf._detect, "HIT_SRF__", ("hit_srf",)),
    "pft": (pft._detect, "PFT__", ("PFT",)),
    "grl": (grl._detect, "GRL__", ("GRL",)),
}


@functools.cache
def _files() -> list[tuple[str, str, dict[str, torch.Tensor]]]:
    """(file name, class, meta state dict) of every golden and manifest."""
    out = []
    for path in sorted([*GOLDEN.glob("*.keys.json"), *GOLDEN.glob("*.keys.json.xz"), *GOLDEN.glob("*.safetensors"),
                        *GOLDEN.glob("real/*.safetensors")]):
        out.append((path.name, *_read(path)))
    return out


def _read(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    if path.suffix in (".json", ".xz"):
        with (lzma.open(path, "rt") if path.suffix == ".xz" else path.open()) as f:
            doc = json.load(f)
        return doc["class"], {k: torch.empty(v, device="meta") for k, v in doc["state_dict"].items()}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        sd = {k[3:]: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()  # noqa: SIM118
              if k.startswith("sd.")}
    sd.update({k: torch.empty(v, device="meta") for k, v in json.loads(meta.get("recipe_keys", "{}")).items()})
    return meta.get("class", ""), sd


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_accepts_only_its_family(name: str) -> None:
    detect, prefix, classes = DETECTORS[name]
    files = _files()
    assert any(f.startswith(prefix) for f, _, _ in files)
    for fname, cls, sd in files:
        own = fname.startswith(prefix) and cls in classes
        if not own and not sd:
            continue
        assert (detect(sd) is not None) == own, fname
