"""The tile planner and blending: equal tiles, context cropped away, seams that vanish."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from archs import ArchSpec
from restore_cli.engine.runner import Runner
from restore_cli.engine.tiles import pad_reflect, plan_tiles, ramp_1d


class LocalNet(nn.Module):
    """Four 3x3 convs (receptive radius 4) then an optional pixel-shuffle upscale: a model with known context."""

    def __init__(self, scale: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        layers: list[nn.Module] = []
        ch = [3, 8, 8, 8, 3 * scale * scale]
        for a, b in itertools.pairwise(ch):
            conv = nn.Conv2d(a, b, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
            layers += [conv, nn.GELU()]
        self.body = nn.Sequential(*layers[:-1])
        self.up = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.body(x))


def _spec(scale: int, multiple_of: int = 1, context: int = 4) -> ArchSpec:
    return ArchSpec(id="localnet", family="test", upstream_class="LocalNet", tasks=("deblur",), scale=scale,
                    in_channels=3, out_channels=3, multiple_of=multiple_of, context=context)


@pytest.mark.parametrize("h,w,tile,overlap", [(100, 77, 32, 8), (64, 64, 64, 0), (57, 130, 40, 16), (5, 300, 48, 4)])
def test_plan_covers_image_with_equal_tiles(h: int, w: int, tile: int, overlap: int) -> None:
    plan = plan_tiles(h, w, tile=tile, overlap=overlap, margin=6, multiple_of=8)
    assert plan.ys[0] == 0 and plan.ys[-1] + plan.tile_h == h
    assert plan.xs[0] == 0 and plan.xs[-1] + plan.tile_w == w
    assert plan.window_h % 8 == 0 and plan.window_w % 8 == 0
    # Each axis is either tiled with the full context or not tiled at all (padded as a whole-image run).
    assert plan.window_h >= plan.tile_h + 12 or plan.tile_h == h
    assert plan.window_w >= plan.tile_w + 12 or plan.tile_w == w
    for _, _, y, x in plan.positions():
        wy, wx = plan.window_origin(y, x)
        assert wy <= y and y + plan.tile_h <= wy + plan.window_h and wx <= x and x + plan.tile_w <= wx + plan.window_w
    for a, b in zip(plan.xs[:-1], plan.xs[1:], strict=True):
        assert a + plan.tile_w - b >= min(overlap, plan.tile_w - 1)


def test_blend_weights_sum_to_one() -> None:
    plan = plan_tiles(90, 70, tile=32, overlap=12, margin=0, scale=2)
    total = torch.zeros(180, 140)
    for i, j, y, x in plan.positions():
        w = ramp_1d(plan.ys, i, plan.tile_h, 2)[:, None] * ramp_1d(plan.xs, j, plan.tile_w, 2)[None, :]
        total[y * 2:(y + plan.tile_h) * 2, x * 2:(x + plan.tile_w) * 2] += w
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_pad_reflect_wider_than_image() -> None:
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    y = pad_reflect(x, 7, 5, 4, 9)
    assert y.shape == (1, 1, 2 + 13, 3 + 12)
    one = pad_reflect(torch.ones(1, 1, 1, 1), 3, 3, 3, 3)
    assert torch.equal(one, torch.ones(1, 1, 7, 7))


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("tile", [24, 37, 50])
def test_tiled_equals_whole_when_context_fits(scale: int, tile: int) -> None:
    torch.manual_seed(1)
    image = torch.rand(3, 61, 83)
    model = LocalNet(scale)
    spec = _spec(scale, multiple_of=4)
    whole, _ = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(image)
    runner = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=tile, overlap=8, batch=3)
    tiled, stats = runner.run(image)
    assert stats.tiles > 1
    assert tiled.shape == whole.shape == (3, 61 * scale, 83 * scale)
    # Interior pixels match exactly; only the reflect-padded image border could differ, and with the margin
    # equal to the receptive radius it does not.
    assert float((tiled - whole).abs().max()) < 1e-5


def test_too_small_margin_shows_seams() -> None:
    """The check above has teeth: with no context margin, tiles disagree with the whole image."""
    image = torch.rand(3, 64, 64)
    model = LocalNet(1)
    spec = _spec(1)
    whole, _ = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(image)
    tiled, _ = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=24, overlap=0,
                      margin=0).run(image)
    assert float((tiled - whole).abs().max()) > 1e-3


def test_oom_halves_tile_and_keeps_it() -> None:
    class Fussy(LocalNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] > 40:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().forward(x)

    image = torch.rand(3, 70, 70)
    runner = Runner(Fussy(1), _spec(1), device=torch.device("cpu"), dtype=torch.float32, tile=64, overlap=4)
    out, stats = runner.run(image)
    assert stats.retries == 1 and stats.tile == 32 and runner.tile == 32
    assert out.shape == (3, 70, 70)
    assert "out of memory" in stats.notes[0]


def test_restore_image_keeps_dtype_alpha_and_gray() -> None:
    from restore_cli.api import LoadedModel, restore_image

    model = nn.Identity()
    spec = _spec(1)
    lm = LoadedModel(name="id", runner=Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32,
                                                tile=0), spec=spec, weights=__import__("pathlib").Path("x"))
    rng = np.random.default_rng(0)
    dark16 = (rng.random((20, 30, 3)) * 300).astype(np.uint16)  # a dark 16-bit image stays 16-bit, exact
    out, _ = restore_image(lm, dark16)
    assert out.dtype == np.uint16 and np.array_equal(out, dark16)
    gray = (rng.random((20, 30)) * 255).astype(np.uint8)
    out, _ = restore_image(lm, gray)
    assert out.shape == gray.shape and np.abs(out.astype(int) - gray).max() <= 1
    rgba = (rng.random((20, 30, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = np.maximum(rgba[..., 3], 1)
    out, _ = restore_image(lm, rgba)
    assert np.array_equal(out[..., 3], rgba[..., 3])
    assert np.abs(out[..., :3].astype(int) - rgba[..., :3]).max() <= 1
    opaque = rgba.copy()
    opaque[..., 3] = 255
    out, _ = restore_image(lm, opaque)
    assert (out[..., 3] == 255).all()


def test_one_channel_model_on_colour_keeps_chroma() -> None:
    """A 1-channel model (Restore-RWKV) restores luma; colour input keeps its chroma, gray stays gray."""
    from restore_cli.api import LoadedModel, restore_image

    spec = ArchSpec(id="gray", family="t", upstream_class="Gray", tasks=("restore",), scale=1, in_channels=1,
                    out_channels=1, context=0)
    lm = LoadedModel(name="gray", runner=Runner(nn.Identity(), spec, device=torch.device("cpu"),
                                                  dtype=torch.float32, tile=0), spec=spec,
                     weights=__import__("pathlib").Path("x"))
    rng = np.random.default_rng(3)
    rgb = (rng.random((12, 14, 3)) * 255).astype(np.uint8)
    out, _ = restore_image(lm, rgb)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).max() <= 1
    gray = (rng.random((12, 14)) * 65535).astype(np.uint16)
    out, _ = restore_image(lm, gray)
    assert out.dtype == np.uint16 and np.array_equal(out, gray)


def test_choose_tile_prefers_whole_image_when_it_fits() -> None:
    from restore_cli.engine.runner import MIN_TILE, choose_tile

    # UFPNet-like: ~12.5 kB per pixel, 60 GB budget: a 1080p frame (26 GB) runs whole, an 8K frame is tiled.
    assert choose_tile(1080, 1920, per_px=12_500, budget=60e9, margin=320, batch=4, cap=4096) == 0
    side = choose_tile(4320, 7680, per_px=12_500, budget=60e9, margin=320, batch=4, cap=4096)
    assert 0 < side < 4320 and (side + 640) ** 2 * 4 * 12_500 <= 60e9
    assert choose_tile(4320, 7680, per_px=1e9, budget=1e9, margin=0, batch=1, cap=512) == MIN_TILE
