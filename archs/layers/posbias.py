"""Dynamic relative position bias (CrossFormer's DynamicPosBias), as DAT and HiT-SRF carry it: a small MLP maps
every (dy, dx) offset of a window to one bias per head, so the bias table is computed, not stored."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def offset_table(wh: int, ww: int) -> torch.Tensor:
    """((2 wh - 1) * (2 ww - 1), 2) float (dy, dx) offsets, dy major, both ascending (DAT's `rpe_biases`)."""
    dy, dx = torch.meshgrid(torch.arange(1 - wh, wh), torch.arange(1 - ww, ww), indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], 1).float()


class DynamicPosBias(nn.Module):
    """pos_proj (2 -> dim // 4), then three (LayerNorm, ReLU, Linear) stages, the last to one value per head;
    `residual` adds the first two stages to their inputs instead of chaining them."""

    def __init__(self, dim: int, num_heads: int, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.num_heads = num_heads
        self.pos_dim = dim // 4

        def stage(out: int) -> nn.Sequential:
            return nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(inplace=True), nn.Linear(self.pos_dim, out))

        with warnings.catch_warnings():
            # narrow widths give pos_dim 0 upstream too: the bias is then pos3's bias alone
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.pos_proj = nn.Linear(2, self.pos_dim)
            self.pos1 = stage(self.pos_dim)
            self.pos2 = stage(self.pos_dim)
            self.pos3 = stage(num_heads)

    def forward(self, biases: torch.Tensor) -> torch.Tensor:
        pos = self.pos_proj(biases)
        if self.residual:
            pos = pos + self.pos1(pos)
            pos = pos + self.pos2(pos)
            return self.pos3(pos)
        return self.pos3(self.pos2(self.pos1(pos)))
