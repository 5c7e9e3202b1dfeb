"""ParagonSR2: detection of every variant (with and without attention), the video-mode forward options,
shape handling of the window attention and the descriptor's tiling per variant."""

from __future__ import annotations

import pytest
import torch

import archs
from tests.util import rel_l2

SMALL = {"num_feat": 16, "num_groups": 1, "num_blocks": 2, "scale": 2}


@pytest.mark.parametrize("variant", ["realtime", "stream", "photo", "pro"])
@pytest.mark.parametrize("export_safe", [False, True])
def test_detect_round_trip(variant: str, export_safe: bool) -> None:
    with torch.device("meta"):
        model = archs.build("ParagonSR2", **SMALL, variant=variant, export_safe=export_safe, window_size=16)
    sd = model.state_dict()
    (name, kw), = archs.detect(sd)
    assert name == "paragonsr2" and kw["variant"] == variant and kw["scale"] == 2
    if variant in ("photo", "pro"):
        assert kw["export_safe"] is export_safe


def test_feature_tap_and_prev_feat() -> None:
    torch.manual_seed(0)
    model = archs.build("ParagonSR2", **SMALL, variant="photo").eval()
    x = torch.rand(1, 3, 11, 13)  # not a multiple of the 8-pixel window: padded and cropped inside
    with torch.no_grad():
        out, feat = model(x, feature_tap=True)
        assert out.shape == (1, 3, 22, 26) and feat.shape == (1, 16, 11, 13)
        assert rel_l2(model(x, prev_feat=feat, alpha=0.3), out) <= 1e-6  # blending with itself changes nothing
        assert rel_l2(model(x, prev_feat=torch.zeros_like(feat), alpha=0.5), out) > 0


def test_descriptor_tiling() -> None:
    assert archs.spec("paragonsr2", variant="realtime").tiling == "safe"
    assert archs.spec("paragonsr2", variant="stream").tiling == "safe"
    assert archs.spec("paragonsr2", variant="photo").tiling == "global"
    assert archs.spec("paragonsr2", variant="photo", export_safe=True).tiling == "safe"
    assert archs.spec("paragonsr2", variant="pro", export_safe=True).tiling == "global"  # SE pools the whole map
    # realtime x4, 1 x 3 NanoBlocks: conv_in 1 + 3 + conv_mid 1 + up 1 + conv_out 1 (HR)
    assert archs.spec("paragonsr2", variant="realtime", num_groups=1, num_blocks=3).context == 7
