"""The detectors of ESC, MoSRv2, MoESR, catanet, LKFMixer and DIS against every golden file and manifest: each
accepts its own family's files (as the right class) and no other family's, so a checkpoint is never ambiguous."""

from __future__ import annotations

import functools
import json
import lzma
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from archs import catanet, dis, esc, lkfmixer, moesr, mosrv2
from tests.conftest import GOLDEN

if not GOLDEN.is_dir():
    pytest.skip(f"golden folder {GOLDEN} not found", allow_module_level=True)

FAMILIES = {"ESC": esc, "MoSRv2": mosrv2, "MoESR": moesr, "catanet": catanet, "LKFMixer": lkfmixer, "DIS": dis}
FILES = sorted([*GOLDEN.glob("*.safetensors"), *GOLDEN.glob("real/*.safetensors"), *GOLDEN.glob("*.keys.json"),
                *GOLDEN.glob("*.keys.json.xz")])


@functools.cache
def _shapes(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(class, state dict as meta tensors) of a golden file or manifest."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            sd = {k[3:]: torch.empty(f.get_slice(k).get_shape(), device="meta")
                  for k in f.keys() if k.startswith("sd.")}  # noqa: SIM118 (safe_open is not iterable)
        sd.update({k: torch.empty(v, device="meta") for k, v in json.loads(meta.get("recipe_keys", "{}")).items()})
        return meta.get("class", ""), sd
    if path.suffix == ".xz":
        with lzma.open(path, "rt") as f:
            doc = json.load(f)
    else:
        doc = json.loads(path.read_text())
    return doc["class"], {k: torch.empty(v, device="meta") for k, v in doc["state_dict"].items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_detectors_accept_only_their_family(family: str) -> None:
    own = [p for p in FILES if p.name.startswith(f"{family}__")]
    assert own
    for path in FILES:
        cls, sd = _shapes(path)
        hits = [e.cls.__name__ for e in FAMILIES[family].ARCHS if e.detect is not None and e.detect(sd) is not None]
        assert hits == ([cls] if path in own else []), path.name
