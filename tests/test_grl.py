"""Family-specific behaviour of GRL (archs/grl.py). Goldens and manifests: test_golden.py."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

import archs
from archs import grl
from archs.layers.window import relative_position_index
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

GRL_GOLDEN = GOLDEN / "GRL__e72_d222_w4_s4_g2_df2_lc_x4.safetensors"


@functools.cache
def _golden() -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    return load_golden(GRL_GOLDEN)


def test_golden_stripe_attention_output() -> None:
    """The anchor stripe attention of layers.1.blocks.0 (stored by the golden: the output barely moves with it)."""
    model, t, _ = _golden()
    seen: list[torch.Tensor] = []
    hook = model.layers[1].blocks[0].attn.stripe_attn.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            model(t["input"])
    finally:
        hook.remove()
    assert rel_l2(seen[0], t["aux.layers.1.blocks.0.attn.stripe_attn"]) < 1e-4


def test_window_index_is_swins() -> None:
    assert torch.equal(grl.position_index((4, 4)), relative_position_index(4))
    # anchors: (window, anchor) index within the (wh + awh - 1) x (ww + aww - 1) table
    idx = grl.position_index((8, 4), 2, True)
    assert idx.shape == (32, 8) and int(idx.min()) == 0 and int(idx.max()) == 11 * 5 - 1
    assert grl.coords_table((8, 4), df=2).shape == (1, 11, 5, 2)


def test_non_square_inputs_run() -> None:
    """Upstream's vertical-stripe tables come from the horizontal ones reversed, so its forward needs a square
    padded input; here each stripe direction gets its own tables: any size runs, and a batch equals its images."""
    torch.manual_seed(0)
    kw = {"embed_dim": 16, "depths": [2], "num_heads_window": [2], "num_heads_stripe": [2], "window_size": 4,
          "stripe_size": [4, None], "stripe_groups": [None, 2], "stripe_shift": True, "anchor_window_down_factor": 2,
          "mlp_ratio": 2.0, "upscale": 2, "upsampler": "pixelshuffledirect"}
    model = archs.build("grl", **kw).eval()
    x = torch.rand(2, 3, 13, 22)  # pads to 16 x 24
    with torch.no_grad():
        both, one = model(x), model(x[1:])
    assert both.shape == (2, 3, 26, 44)
    assert rel_l2(both[1:], one) < 1e-5


def _official_like(kw: dict[str, Any], img: int = 64) -> dict[str, torch.Tensor]:
    """A state dict with the tables an official checkpoint stores (upstream's persistent buffers for img_size)."""
    with torch.device("meta"):
        model = archs.build("grl", **kw)
    sd = dict(model.state_dict())
    tables = model.table_index_mask((img, img), torch.device("cpu"))
    sd.update({k: v.to("meta") for k, v in tables.items()})
    return sd


def test_stored_tables_tell_the_layout_and_are_dropped_on_load() -> None:
    kw = {"embed_dim": 16, "depths": [2], "num_heads_window": [2], "num_heads_stripe": [2], "window_size": 8,
          "stripe_size": [16, 32], "stripe_shift": True, "anchor_window_down_factor": 4, "mlp_ratio": 2.0,
          "upscale": 4, "upsampler": "nearest+conv"}
    found = archs.detect(_official_like(kw, 32))
    assert [f[0] for f in found] == ["grl"]
    got = found[0][1]
    assert (got["window_size"], got["stripe_size"], got["anchor_window_down_factor"]) == (8, [16, 32], 4)
    torch.manual_seed(0)
    model = archs.build("grl", **kw)
    sd = {**model.state_dict(), **model.table_index_mask((32, 32), torch.device("cpu"))}
    archs.build("grl", **kw).load_state_dict(sd, strict=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"upsampler": "pixelshuffle", "upscale": 3, "local_connection": True, "embed_dim": 72},
        {"upsampler": "pixelshuffledirect", "upscale": 2, "qkv_proj_type": "separable_conv", "conv_type": "3conv"},
        {"upsampler": "", "upscale": 1, "in_channels": 1, "out_channels": 1, "anchor_proj_type": "conv2d",
         "conv_type": "linear"},
        {"upsampler": "", "upscale": 1, "anchor_proj_type": "separable_conv", "anchor_one_stage": False,
         "anchor_window_down_factor": 4, "conv_type": "1conv1x1"},
    ],
)
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    kw = {"embed_dim": 16, "depths": [2, 1], "num_heads_window": [2, 4], "num_heads_stripe": [2, 2],
          "mlp_ratio": 2.0, **kwargs}
    with torch.device("meta"):
        sd = archs.build("grl", **kw).state_dict()
    found = archs.detect(sd)
    assert [f[0] for f in found] == ["grl"]
    got, want = archs.entry("grl").full_kwargs(found[0][1]), archs.entry("grl").full_kwargs(kw)
    for k in ("embed_dim", "depths", "num_heads_window", "num_heads_stripe", "upsampler", "upscale", "in_channels",
              "out_channels", "local_connection", "qkv_proj_type", "conv_type", "anchor_proj_type",
              "anchor_one_stage"):
        assert got[k] == want[k], k


def test_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="embed_dim >= 18"):
        archs.build("grl", embed_dim=16, local_connection=True)
    with pytest.raises(ValueError, match="anchor_proj_type"):
        archs.build("grl", anchor_proj_type="bilinear")


def test_descriptor() -> None:
    spec = archs.spec("grl", upsampler="pixelshuffle", upscale=4)
    assert (spec.scale, spec.tiling, spec.multiple_of, spec.tasks) == (4, "global", 1, ("upscale",))
