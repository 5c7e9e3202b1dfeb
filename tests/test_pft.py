"""Family-specific behaviour of PFT (archs/pft.py). Goldens and manifests: test_golden.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archs
from archs.pft import mirror_pad_to, smm_amv, smm_qmk
from tests.util import rel_l2


def test_sparse_products_are_the_cuda_kernels_sums() -> None:
    """smm_cuda's forward: QmK C[b,n,k] = sum_e A[b,n,e] B[b,e,idx[b,n,k]]; AmV C[b,n,c] = sum_k A[b,n,k]
    B[b,idx[b,n,k],c] (written literally here, float64)."""
    torch.manual_seed(0)
    b, n, d, t = 3, 16, 5, 6
    q, k, v = torch.randn(b, n, d, dtype=torch.float64), torch.randn(b, n, d, dtype=torch.float64), \
        torch.randn(b, n, d, dtype=torch.float64)
    idx = torch.stack([torch.stack([torch.randperm(n)[:t] for _ in range(n)]) for _ in range(b)])
    a = torch.rand(b, n, t, dtype=torch.float64)
    qmk = torch.einsum("bne,bnke->bnk", q, k[torch.arange(b)[:, None, None], idx])
    amv = torch.einsum("bnk,bnkc->bnc", a, v[torch.arange(b)[:, None, None], idx])
    assert rel_l2(smm_qmk(q, k, idx), qmk) < 1e-12
    assert rel_l2(smm_amv(a, v, idx), amv) < 1e-12


@pytest.mark.parametrize(("size", "multiple"), [((19, 27), 4), ((16, 24), 8), ((13, 5), 8), ((3, 2), 32)])
def test_mirror_padding(size: tuple[int, int], multiple: int) -> None:
    x = torch.randn(1, 2, *size)
    got = mirror_pad_to(x, multiple)
    h, w = (-(-s // multiple) * multiple for s in size)
    assert got.shape[-2:] == (h, w)
    if h <= 2 * size[0] and w <= 2 * size[1]:  # upstream's one mirror
        want = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :h]
        want = torch.cat([want, torch.flip(want, [3])], 3)[:, :, :, :w]
        assert torch.equal(got, want)
    assert torch.equal(got[..., : size[0], : size[1]], x)


def test_batch_equals_single_images() -> None:
    torch.manual_seed(0)
    model = archs.build("pft", embed_dim=16, depths=[2, 2], num_heads=2, num_topk=[16, 16, 9, 9], window_size=4,
                        upsampler="pixelshuffledirect", upscale=2).eval()
    x = torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        both, one = model(x), model(x[1:])
    assert both.shape == (2, 3, 18, 22)
    assert rel_l2(both[1:], one) < 1e-5


_SMALL: dict[str, Any] = {"depths": [2, 2], "window_size": 8}


@pytest.mark.parametrize(
    "kwargs",
    [
        {**_SMALL, "embed_dim": 120, "num_heads": 4, "upsampler": "pixelshuffle", "upscale": 3,
         "convffn_kernel_size": 7},
        {**_SMALL, "embed_dim": 52, "num_heads": 4, "upsampler": "pixelshuffledirect", "upscale": 2, "mlp_ratio": 1.0},
        {**_SMALL, "embed_dim": 24, "num_heads": 6, "upsampler": "nearest+conv", "upscale": 4,
         "resi_connection": "3conv"},
        {**_SMALL, "embed_dim": 24, "num_heads": 6, "upsampler": "", "upscale": 1, "in_chans": 1, "qkv_bias": False},
    ],
)
def test_detector_round_trip(kwargs: dict[str, Any]) -> None:
    kwargs = {**kwargs, "num_topk": [64] * 4}
    with torch.device("meta"):
        sd = archs.build("pft", **kwargs).state_dict()
    found = archs.detect(sd)
    assert [f[0] for f in found] == ["pft"]
    got, want = archs.entry("pft").full_kwargs(found[0][1]), archs.entry("pft").full_kwargs(kwargs)
    for k in ("embed_dim", "depths", "num_heads", "window_size", "upsampler", "upscale", "resi_connection",
              "in_chans", "qkv_bias", "convffn_kernel_size", "num_topk"):
        assert got[k] == want[k], k


def test_detector_takes_the_published_topk_schedule() -> None:
    kw = {"embed_dim": 52, "depths": [2, 4, 6, 6, 6], "num_heads": 4, "window_size": 4, "num_topk": [1] * 24,
          "upsampler": "pixelshuffledirect", "upscale": 4}
    with torch.device("meta"):
        sd = archs.build("pft", **kw).state_dict()
    got = archs.detect(sd)[0][1]["num_topk"]
    assert got[:2] == [1024, 1024] and got[-1] == 32 and len(got) == 24


def test_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="one int"):
        archs.build("pft", num_heads=[6, 6, 6, 6])
    with pytest.raises(ValueError, match="one entry per layer"):
        archs.build("pft", depths=[6, 6, 6, 6, 6], num_topk=[16] * 24)


def test_descriptor() -> None:
    spec = archs.spec("pft", upsampler="pixelshuffle", upscale=4, window_size=32)
    assert (spec.scale, spec.tiling, spec.multiple_of, spec.context) == (4, "global", 1, 64)


def test_half_precision_focusing_stays_finite() -> None:
    torch.manual_seed(0)
    model = archs.build("pft", embed_dim=16, depths=[2, 2], num_heads=2, num_topk=[16, 16, 6, 6], window_size=4,
                        upsampler="pixelshuffledirect", upscale=2).eval()
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        ref = model(x)
        half = model.half()(x.half()).float()
    assert torch.isfinite(half).all() and rel_l2(half, ref) < 0.05
