"""Benchmark cases of the upfirdn2d op module for bench/ops.py: (label, run_kernel, run_reference) on CUDA.

Sizes are StyleGAN2's largest calls (the 1024x1024 layers of FFHQ config-f, batch 8) and a 1080p tile batch.
run_kernel calls the compiled extension directly, so a failed build is an error here rather than a silent fallback.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from archs.ops import _build
from archs.ops.upfirdn2d import fused_leaky_relu_reference, upfirdn2d_reference
from archs.stylegan2 import make_resample_kernel


def cases() -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
    ext = _build.load("upfirdn2d")
    if ext is None:
        raise RuntimeError(f"upfirdn2d kernel unavailable: {_build.status()}")
    dev = torch.device("cuda")
    k4 = make_resample_kernel((1, 3, 3, 1)).to(dev)
    out: list[tuple[str, Callable[[], None], Callable[[], None]]] = []

    def add_upfirdn(label: str, x: torch.Tensor, kernel: torch.Tensor, up: int, down: int,
                    pad: tuple[int, int]) -> None:
        pads = (pad[0], pad[1], pad[0], pad[1])

        @torch.inference_mode()
        def run_kernel() -> None:
            ext.upfirdn2d(x, kernel, up, up, down, down, *pads)

        @torch.inference_mode()
        def run_reference() -> None:
            upfirdn2d_reference(x, kernel, (up, up), (down, down), pads)

        out.append((label, run_kernel, run_reference))

    for dtype, name in ((torch.float16, "fp16"), (torch.float32, "fp32")):
        # ModulatedConv2d upsample: the blur after the stride-2 transposed conv (1025 -> 1024), 32 channels at 1024
        x = torch.randn(8, 32, 1025, 1025, device=dev, dtype=dtype)
        add_upfirdn(f"upfirdn2d blur 4x4 pad1 8x32x1025x1025 {name}", x, k4 * 4, 1, 1, (1, 1))
        # ToRGB skip: FIR x2 upsampling of the 512x512 RGB
        x = torch.randn(8, 3, 512, 512, device=dev, dtype=dtype)
        add_upfirdn(f"upfirdn2d up2 4x4 8x3x512x512 {name}", x, k4 * 4, 2, 1, (2, 1))
        # FIR x2 downsampling of a 1080p tile batch
        x = torch.randn(4, 16, 1080, 1920, device=dev, dtype=dtype)
        add_upfirdn(f"upfirdn2d down2 4x4 4x16x1080x1920 {name}", x, k4, 1, 2, (1, 1))

        x = torch.randn(8, 32, 1024, 1024, device=dev, dtype=dtype)
        bias = torch.randn(32, device=dev)

        @torch.inference_mode()
        def act_kernel(x: torch.Tensor = x, bias: torch.Tensor = bias) -> None:
            ext.fused_bias_leaky_relu(x, bias, 0.2, math.sqrt(2))

        @torch.inference_mode()
        def act_reference(x: torch.Tensor = x, bias: torch.Tensor = bias) -> None:
            fused_leaky_relu_reference(x, bias, 0.2, math.sqrt(2))

        out.append((f"fused_leaky_relu 8x32x1024x1024 {name}", act_kernel, act_reference))
    return out
