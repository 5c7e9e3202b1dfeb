"""Restore-RWKV (archs/restore_rwkv.py): detector refusals, OmniShift fusion, padding, descriptor, CUDA kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import archs
from archs import restore_rwkv
from archs.restore_rwkv import OmniShift, Restore_RWKV
from tests.conftest import GOLDEN
from tests.util import file_state_dict, golden_files, load_golden, rel_l2

SMALL: dict[str, Any] = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith(("spatial_decay", "spatial_first")):
                p.copy_(5 * r)  # a visible decay and bonus
            elif p.ndim > 1:
                p.copy_(r / p[0].numel() ** 0.5)
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * r)
    return model


def test_detector_accepts_only_its_family() -> None:
    paths = sorted([*GOLDEN.glob("*.safetensors"), *GOLDEN.glob("*.keys.json"), *GOLDEN.glob("real/*.safetensors")])
    if not paths:
        pytest.skip("no golden files")
    for path in paths:
        got = restore_rwkv._detect(file_state_dict(path))
        assert (got is not None) == path.name.startswith("Restore_RWKV__"), path.name


def test_detector_refuses_a_truncated_state_dict() -> None:
    with torch.device("meta"):
        sd = dict(Restore_RWKV(**SMALL).state_dict())
    assert restore_rwkv._detect(sd) is not None
    del sd["decoder_level2.0.gamma1"]
    assert restore_rwkv._detect(sd) is None


def test_omnishift_fusion_is_exact() -> None:
    torch.manual_seed(0)
    m = OmniShift(5)
    x = torch.randn(2, 5, 9, 7)
    want = m.train()(x)
    assert torch.allclose(m.eval()(x), want, atol=1e-5)
    # stored conv5x5_reparam values never matter: loading fuses again, whatever the order of load and eval
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["conv5x5_reparam.weight"].normal_()
    fresh = OmniShift(5).eval()
    fresh.load_state_dict(sd)
    assert torch.allclose(fresh(x), want, atol=1e-5)


def test_train_and_eval_agree_and_backward_runs() -> None:
    model = _random(Restore_RWKV(**SMALL))
    x = torch.rand(1, 1, 16, 24)
    y_train = model.train()(x)
    y_train.abs().mean().backward()  # autograd through the float64 Bi-WKV reference
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in model.named_parameters()
               if "reparam" not in n)
    with torch.no_grad():
        y_eval = model.eval()(x)
        assert torch.equal(model(x), y_eval)  # deterministic
    assert rel_l2(y_eval, y_train.detach()) < 1e-5


def test_any_size_pads_to_multiple_of_8() -> None:
    model = _random(Restore_RWKV(**SMALL)).eval()
    x = torch.rand(1, 1, 13, 21)
    with torch.no_grad():
        y = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect"))
    assert y.shape == x.shape
    assert torch.equal(y, padded[..., :13, :21])


def test_scan_directions_matter() -> None:
    """The second Bi-WKV runs on the transposed scan: transposing the image changes which decay pair it sees."""
    model = _random(Restore_RWKV(**SMALL), seed=1).eval()
    x = torch.rand(1, 1, 16, 24)
    with torch.no_grad():
        y = model(x)
        yt = model(x.transpose(2, 3).contiguous()).transpose(2, 3)
    assert rel_l2(yt, y) > 1e-4


def test_descriptor() -> None:
    s = archs.spec("Restore_RWKV")
    assert (s.id, s.family, s.upstream_class, s.scale) == ("restore_rwkv", "Restore_RWKV", "Restore_RWKV", 1)
    assert (s.in_channels, s.out_channels, s.min_size, s.multiple_of) == (1, 1, 8, 8)
    assert s.tasks == ("restore", "denoise") and s.tiling == "global" and s.context == 256
    assert (s.fp16, s.bf16, s.channels_last, s.code_license) == (False, True, False, "Apache-2.0")
    assert archs.spec("restore-rwkv", **SMALL).context == 2 + 4 * 3 + 2 * 4 * 2 + 4 * 4 * 2 + 8 * 4 + 35


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    from archs.ops import _build

    assert _build.load("bi_wkv") is not None  # the model below runs on the kernel
    model = _random(Restore_RWKV(**SMALL)).eval()
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        want = model(x)
        got = model.cuda().to(dtype)(x.cuda().to(dtype)).float().cpu()
    assert torch.isfinite(got).all()
    assert rel_l2(got, want) < (1e-4 if dtype == torch.float32 else 3e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("path", golden_files("Restore_RWKV__*.safetensors"), ids=lambda p: p.name)
def test_cuda_golden(path: Path) -> None:
    """The goldens through the CUDA kernel (float32): same tolerance as on the CPU reference."""
    model, t, meta = load_golden(path)
    with torch.no_grad():
        out = model.cuda()(t["input"].cuda()).cpu()
    assert rel_l2(out, t["output"]) <= float(meta.get("tolerance", "1e-4"))
