"""EQRSRGAN (archs/eqrsrgan.py): the layout loads and is detected; restoring refuses in one line.
Manifests (keys, shapes, detection): tests/test_golden.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import archs
from restore_cli import api
from restore_cli.errors import UsageError
from tests.conftest import no_traceback, restore

SMALL: dict[str, Any] = {"num_feat": 8, "num_block": 2, "num_grow_ch": 4}


def _meta_sd(**kwargs: Any) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return archs.build("eqrsrgan", **kwargs).state_dict()


@pytest.mark.parametrize("kwargs", [{"scale": 4}, {"scale": 2}, {"scale": 1, "num_in_ch": 1, "num_out_ch": 1}])
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    kw = {**SMALL, **kwargs}
    found = archs.detect(_meta_sd(**kw))
    assert [f[0] for f in found] == ["eqrsrgan"]
    full = archs.entry("eqrsrgan").full_kwargs
    assert full(found[0][1]) == full(kw)


def test_plain_rrdb_layouts_are_not_eqrsrgan() -> None:
    sd = _meta_sd(**SMALL)
    # BasicSR's RRDBNet has the same names without the Conv3d and the learned residual scales
    rrdbnet = {k: v for k, v in sd.items() if "stack_conv" not in k and "scale_res" not in k}
    assert archs.detect(rrdbnet) == []
    assert archs.detect({**sd, "body.0.extra": torch.empty(1, device="meta")}) == []


def test_restoring_is_refused_in_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = archs.build("eqrsrgan", **SMALL)
    with pytest.raises(NotImplementedError, match="not supported"):
        model(torch.rand(1, 3, 8, 8))
    weights = tmp_path / "eqrsrgan_x4.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    with pytest.raises(UsageError, match="restoring with EQRSRGAN is not supported"):
        api.load_model(str(weights), device="cpu")
    image = Path(__file__).resolve().parents[1] / "samples" / "lowres"
    p = restore("upscale", next(image.iterdir()), "-o", tmp_path / "out", "--model", weights)
    no_traceback(p)
    assert p.returncode != 0 and "restoring with EQRSRGAN is not supported" in p.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
