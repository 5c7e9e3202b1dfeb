"""Runtime options through the API: SpanC's --scale, CAMixerSR's --ratio; refused where they do not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import archs
from restore_cli import api
from restore_cli.errors import UsageError


def _weights(tmp_path: Path, name: str, **kwargs: object) -> Path:
    torch.manual_seed(0)
    model = archs.build(name, **kwargs)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_spanc_scale_option(tmp_path: Path) -> None:
    path = _weights(tmp_path, "SpanC", feature_channels=8, implicit_dim=16, latent_layers=2)
    model = api.load_model(str(path), device="cpu", tile=0)
    img = (np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8)
    base, _ = api.restore_image(model, img)
    assert base.shape == (80 * model.spec.scale, 96 * model.spec.scale, 3)
    api.set_options(model, scale=3)
    out, stats = api.restore_image(model, img, tile=24)
    assert out.shape == (240, 288, 3) and stats.tiles > 1
    assert {"scale": 3} in stats.model_info


def test_camixer_ratio_option_and_report(tmp_path: Path) -> None:
    path = _weights(tmp_path, "CAMixerSR", n_feats=12, n_block=[1, 1], n_group=1, scale=2)
    model = api.load_model(str(path), device="cpu", tile=0)
    img = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    api.set_options(model, ratio=0.25)
    _, stats = api.restore_image(model, img)
    assert stats.model_info and stats.model_info[0]["ratio"] == 0.25


def test_option_that_does_not_apply(tmp_path: Path) -> None:
    path = _weights(tmp_path, "SPAN", feature_channels=8, upscale=2)
    model = api.load_model(str(path), device="cpu")
    with pytest.raises(UsageError, match="--exit-threshold does not apply to span"):
        api.set_options(model, exit_threshold=0.1)


def test_generators_are_refused_on_images(tmp_path: Path) -> None:
    path = _weights(tmp_path, "StyleGAN2Generator", out_size=16, num_style_feat=16, num_mlp=1, narrow=0.0625)
    with pytest.raises(UsageError, match="generator"):
        api.load_model(str(path), device="cpu")
