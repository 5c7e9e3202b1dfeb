"""Tiled output equals whole-image output for the "safe" configurations of ParagonSR2, ElysiumSR, Aether and CFSR
(small random-initialised configs, so the receptive-field margin the descriptor gives is exercised quickly)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from restore_cli.engine.runner import Runner
from tests.util import smooth_image

CASES: list[tuple[str, dict[str, Any]]] = [
    ("ParagonSR2", {"variant": "realtime", "num_feat": 8, "num_groups": 1, "num_blocks": 2, "scale": 2}),
    ("ParagonSR2", {"variant": "stream", "num_feat": 8, "num_groups": 1, "num_blocks": 2, "scale": 2}),
    ("elysiumsr", {"num_feat": 8, "num_blocks": 2, "scale": 2}),
    ("aether", {"embed_dim": 8, "depths": [1, 1], "lk_kernel": 5, "scale": 2, "use_channel_attn": False}),
    ("cfsr", {"embed_dim": 8, "depths": [1, 1], "dw_size": 5, "upscale": 2}),
]


@pytest.mark.parametrize(("arch", "kwargs"), CASES, ids=[f"{a}-{k.get('variant', '')}" for a, k in CASES])
def test_tiled_matches_whole(arch: str, kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = archs.build(arch, **kwargs).eval()
    spec = archs.spec(arch, **kwargs)
    assert spec.tiling == "safe"
    tile = 24
    h, w = 2 * tile + 2 * spec.context + 9, 2 * tile + 2 * spec.context - 5
    image = smooth_image(h, w)
    cpu = torch.device("cpu")
    whole, _ = Runner(model, spec, device=cpu, dtype=torch.float32, tile=0).run(image)
    tiled, stats = Runner(model, spec, device=cpu, dtype=torch.float32, tile=tile, overlap=8, batch=2).run(image)
    assert stats.tiles > 1
    assert float((tiled - whole).abs().max()) <= 1 / 255
