"""Benchmark cases for the neighbourhood-attention kernels (archs.ops.neighborhood_attn) against the PyTorch reference.

Sizes follow DSwinIR (dim 48, heads [3, 6, 12, 24], head_dim 16; decoder level 1 at head_dim 32) on a batch of four
512 x 512 tiles (a 1080p frame in tiles): each head-group call sees one third of the level's heads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from archs.ops import _build
from archs.ops.neighborhood_attn import (
    na2d,
    na2d_av,
    na2d_av_reference,
    na2d_qk,
    na2d_qk_reference,
    na2d_reference,
)

Case = tuple[str, Callable[[], None], Callable[[], None]]


def _tensors(shape: tuple[int, int, int, int, int], kernel: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=dtype) for _ in range(3))
    rpb = 0.02 * torch.randn(shape[1], 2 * kernel - 1, 2 * kernel - 1, generator=g, device="cuda", dtype=dtype)
    return q, k, v, rpb


def cases() -> list[Case]:
    if _build.load("neighborhood_attn") is None:
        raise RuntimeError(f"neighborhood_attn kernel unavailable: {_build._ERRORS.get('neighborhood_attn')}")
    out: list[Case] = []
    # (label, (B, heads, H, W, D), kernel, dilation, dtype)
    fused = [
        ("L1 k3 d1", (4, 1, 512, 512, 16), 3, 1, torch.float16),
        ("L1 k3 d2", (4, 1, 512, 512, 16), 3, 2, torch.float16),
        ("L1 k5 d1", (4, 1, 512, 512, 16), 5, 1, torch.float16),
        ("L1 k5 d1 fp32", (4, 1, 512, 512, 16), 5, 1, torch.float32),
        ("dec L1 k5 d1 D32", (4, 1, 512, 512, 32), 5, 1, torch.float16),
        ("L2 k5 d1 bf16", (4, 2, 256, 256, 16), 5, 1, torch.bfloat16),
        ("latent k5 d1", (4, 8, 64, 64, 16), 5, 1, torch.float16),
    ]
    for label, shape, kernel, dil, dtype in fused:
        q, k, v, rpb = _tensors(shape, kernel, dtype)
        name = f"na2d fused {label} {tuple(shape)} {str(dtype).removeprefix('torch.')}"

        def run(q=q, k=k, v=v, rpb=rpb, kernel=kernel, dil=dil) -> None:
            with torch.no_grad():
                na2d(q, k, v, kernel, dil, rpb)

        def ref(q=q, k=k, v=v, rpb=rpb, kernel=kernel, dil=dil) -> None:
            with torch.no_grad():
                na2d_reference(q, k, v, kernel, dil, rpb)

        out.append((name, run, ref))
    q, k, v, rpb = _tensors((4, 1, 512, 512, 16), 5, torch.float16)
    attn = na2d_qk_reference(q, k, 5, 1, rpb).softmax(-1)

    def qk_run() -> None:
        with torch.no_grad():
            na2d_qk(q, k, 5, 1, rpb)

    def qk_ref() -> None:
        with torch.no_grad():
            na2d_qk_reference(q, k, 5, 1, rpb)

    def av_run() -> None:
        with torch.no_grad():
            na2d_av(attn, v, 5, 1)

    def av_ref() -> None:
        with torch.no_grad():
            na2d_av_reference(attn, v, 5, 1)

    out.append(("na2d_qk k5 d1 (4, 1, 512, 512, 16) float16", qk_run, qk_ref))
    out.append(("na2d_av k5 d1 (4, 1, 512, 512, 16) float16", av_run, av_ref))
    return out
