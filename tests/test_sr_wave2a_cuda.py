"""GPU checks of ESRGAN+, FAT, CFAT, MicroSR and OAPT_gt: the goldens in float32 on CUDA, and half precision where
the descriptor claims it (finite, close to float32). Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archs
from tests.conftest import GOLDEN
from tests.util import load_golden, rel_l2

FILES = {
    "ESRGANplus__nf16_nb3_x4_upconv.safetensors": (),
    "FAT__default_x4_in12x24.safetensors": (),
    "CFAT__e16_d222_h2_w8_sh0-8_int0-2-0_x4.safetensors": (),
    "MicroSR__e16_rdg3_h2_w4_gc8_x4.safetensors": (),
    "OAPT_gt__c1_e16_d222_h2_w4_interval_dense1_off3-5.safetensors": ((3.0, 5.0),),
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(FILES))
def test_golden_on_cuda_and_half_precision(name: str) -> None:
    model, t, meta = load_golden(Path(GOLDEN) / name)
    spec = archs.spec(meta["class"], **model.arch_kwargs)
    extra = tuple(torch.tensor([o], device="cuda") for o in FILES[name])
    x = t["input"].cuda()
    try:
        model.cuda()
        with torch.no_grad():
            assert rel_l2(model(x, *extra).cpu(), t["output"]) <= 1e-4
            for dtype, ok in ((torch.float16, spec.fp16), (torch.bfloat16, spec.bf16)):
                if not ok:
                    continue
                low = model.to(dtype)(x.to(dtype), *extra).float().cpu()
                model.float()
                assert torch.isfinite(low).all(), dtype
                assert rel_l2(low, t["output"]) < (2e-2 if dtype == torch.float16 else 6e-2), dtype
    finally:
        model.float().cpu()
