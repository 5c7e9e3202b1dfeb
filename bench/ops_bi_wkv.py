"""bi_wkv kernel vs its float64 PyTorch reference, at the sizes Restore-RWKV (dim 48) sees on a 1080p frame.

Level l of the U-Net has T = (1080 / 2^l) * (1920 / 2^l) tokens and 48 * 2^l channels (level 1 decodes at 96);
tile batches trade T for B. Restore-RWKV calls the op twice per block (raster scan, then transposed scan).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from archs.ops import _build
from archs.ops.bi_wkv import bi_wkv_reference

# (label, B, T, C, dtype)
SIZES = [
    ("1080p level 1 encoder, fp32", 1, 1080 * 1920, 48, torch.float32),
    ("4 tiles 512x512, level 1 decoder, fp32", 4, 512 * 512, 96, torch.float32),
    ("1080p level 2, bf16", 1, 540 * 960, 96, torch.bfloat16),
    ("1080p level 3, fp32", 1, 270 * 480, 192, torch.float32),
    ("1080p latent, fp32", 1, 135 * 240, 384, torch.float32),
    ("16 tiles 128x128, latent, fp16", 16, 16 * 16, 384, torch.float16),
]


def _runner(fn: Callable[..., object], *args: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        fn(*args)

    return run


def cases() -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
    module = _build.load("bi_wkv")
    if module is None:
        raise RuntimeError(f"the bi_wkv kernel is not available: {_build.status()}")
    out: list[tuple[str, Callable[[], None], Callable[[], None]]] = []
    for label, B, T, C, dtype in SIZES:
        g = torch.Generator(device="cuda").manual_seed(0)
        # w, u as Restore-RWKV passes them: parameter / T
        w = torch.randn(C, device="cuda", generator=g) / T
        u = torch.randn(C, device="cuda", generator=g) / T
        k = torch.randn(B, T, C, device="cuda", generator=g).to(dtype)
        v = torch.randn(B, T, C, device="cuda", generator=g).to(dtype)
        out.append((f"B{B} T{T} C{C} ({label})", _runner(module.forward, w, u, k, v),
                    _runner(bi_wkv_reference, w, u, k, v)))
    return out
