"""Model cost: parameters and multiply-accumulates per megapixel, counted from the layers a forward really runs."""

from __future__ import annotations

import math

import torch
from torch import nn


def macs_per_megapixel(model: nn.Module, *, in_channels: int = 3, side: int = 256) -> float:
    """MACs of conv / transposed-conv / linear layers on a side x side input, scaled to one input megapixel.

    Counts the layers on the path actually taken (hooks), so early exits and routed experts count as run.
    Attention matmuls, norms and activations are not counted (they are small next to the convolutions of the
    families here, and torch gives no portable way to hook them).
    """
    total = 0

    def conv_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        w = m.weight  # type: ignore[union-attr]
        if isinstance(m, nn.ConvTranspose2d):
            total += inp[0].numel() * w.shape[1] * math.prod(w.shape[2:])  # every input pixel scatters a kernel
        else:
            total += out.numel() * math.prod(w.shape[1:])

    def linear_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features  # type: ignore[operator]

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv1d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        p = next(model.parameters())
        x = torch.rand(1, in_channels, side, side, device=p.device, dtype=p.dtype)
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total / (side * side / 1e6)
