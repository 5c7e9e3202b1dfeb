"""Benchmark cases for the selective-scan kernel against its PyTorch reference (timed by bench/ops.py).

Sizes are ConvMambaSR's SS2D at the official width (embed 96 -> d_inner 192, K = 4 directions -> 768 scanned
channels in 4 B/C groups, d_state 16, delta_bias + softplus, D skip, no z), on tile batches and on whole maps.
Where mamba-ssm's `selective_scan_cuda` is importable (bench/mamba_ssm_build.py), its kernel gets rows of its own
against the same reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from archs.ops.selective_scan import mamba_ssm_kernel, selective_scan, selective_scan_ref


def _case(batch: int, side: int, dtype: torch.dtype, *, channels: int = 768, groups: int = 4, n: int = 16,
          backend: str = "restore") -> tuple[Callable[[], None], Callable[[], None]]:
    g = torch.Generator(device="cuda").manual_seed(0)
    length = side * side

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device="cuda") * scale

    u = rnd(batch, channels, length).to(dtype)
    delta = rnd(batch, channels, length, scale=0.5).to(dtype)
    A = -torch.exp(rnd(channels, n, scale=0.5))
    B = rnd(batch, groups, n, length).to(dtype)
    C = rnd(batch, groups, n, length).to(dtype)
    D = rnd(channels)
    bias = rnd(channels, scale=0.5)

    def kernel() -> None:
        with torch.inference_mode():
            selective_scan(u, delta, A, B, C, D, None, bias, True, backend=backend)

    def reference() -> None:
        with torch.inference_mode():
            selective_scan_ref(u, delta, A, B, C, D, None, bias, True)

    return kernel, reference


def cases() -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
    if not torch.cuda.is_available():
        return []
    out: list[tuple[str, Callable[[], None], Callable[[], None]]] = []
    for label, batch, side, dtype in [
        ("selective_scan SS2D 1x768ch 64x64 fp32", 1, 64, torch.float32),
        ("selective_scan SS2D 8x768ch 64x64 fp32 (tile batch)", 8, 64, torch.float32),
        ("selective_scan SS2D 8x768ch 64x64 bf16 (tile batch)", 8, 64, torch.bfloat16),
        ("selective_scan SS2D 4x768ch 128x128 fp16", 4, 128, torch.float16),
        ("selective_scan SS2D 1x768ch 256x256 fp32 (whole map, L split)", 1, 256, torch.float32),
    ]:
        kernel, reference = _case(batch, side, dtype)
        out.append((label, kernel, reference))
        if mamba_ssm_kernel() is not None:
            kernel, reference = _case(batch, side, dtype, backend="mamba_ssm")
            out.append((label + " [mamba-ssm kernel]", kernel, reference))
    return out
