"""Fusing parallel "same"-padded conv branches into one conv (RepVGG / RepLKNet style), for the families whose
re-parameterisable blocks are plain sums of convs (ParagonSR's ReparamConvV2, Aether's ReparamLargeKernelConv).

Two stride-1 convs with the same groups, odd kernels k <= K and paddings k // 2, K // 2 see the same input pixels
at the same offsets once the small kernel is zero-padded to K x K at its centre, so their sum is one K x K conv
whose weight and bias are the sums. The sums are formed in `fusion_dtype` (float64 where available).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .reparam import fusion_dtype


def center_pad(weight: torch.Tensor, size: int) -> torch.Tensor:
    """An (O, I, k, k) kernel zero-padded at its centre to (O, I, size, size); size - k must be even."""
    k = weight.shape[-1]
    if (size - k) % 2 or size < k:
        raise ValueError(f"cannot centre a {k}x{k} kernel in {size}x{size}")
    p = (size - k) // 2
    return F.pad(weight, (p, p, p, p)) if p else weight


def sum_branches(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the one size x size conv equal to the sum of the branches, in fusion dtype
    (callers hold no_grad and cast to their parameters' dtype)."""
    dt = fusion_dtype(weights[0].device)
    weight = sum(center_pad(w.to(dt), size) for w in weights)
    bias = torch.zeros(weights[0].shape[0], dtype=dt, device=weights[0].device)
    for b in biases:
        if b is not None:
            bias = bias + b.to(dt)
    assert isinstance(weight, torch.Tensor)
    return weight, bias
