"""MambaOut's gated CNN block (yuweihao/MambaOut, Apache-2.0) as umzi's SR families carry it (MoSRv2, MoESR):
pre-norm, a 3x3 conv to two `hidden` halves, the conv half's last `conv_channels` through an inception depthwise
conv, a Mish gate, a 3x3 conv back, a learned per-channel scale `gamma` and the skip.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from .norm import LayerNorm2d, RMSNorm2d


class InceptionDWConv2d(nn.Module):
    """Identity on most channels; three branch_ratio slices through a 3x3, a 1xK and a Kx1 depthwise conv."""

    def __init__(self, in_channels: int, square_kernel_size: int = 3, band_kernel_size: int = 11,
                 branch_ratio: float = 0.125) -> None:
        super().__init__()
        gc = int(in_channels * branch_ratio)
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel_size, padding=square_kernel_size // 2, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel_size), padding=(0, band_kernel_size // 2), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel_size, 1), padding=(band_kernel_size // 2, 0), groups=gc)
        self.split_indexes = (in_channels - 3 * gc, gc, gc, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_indexes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)


class GatedCNNBlock(nn.Module):
    """x + gamma * mish(fc2(mish(g) * [i, inception(c)])), (g, i, c) = split(fc1(norm(x))).

    `rms_norm` picks umzi's RMSNorm (keys scale/offset) instead of LayerNorm2d (weight/bias, eps 1e-6).
    """

    def __init__(self, dim: int = 64, expansion_ratio: float = 8 / 3, rms_norm: bool = False,
                 conv_ratio: float = 1.0) -> None:
        super().__init__()
        self.norm: nn.Module = RMSNorm2d(dim) if rms_norm else LayerNorm2d(dim)
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        if hidden < conv_channels:
            raise ValueError(f"GatedCNNBlock: hidden width {hidden} < conv width {conv_channels}")
        self.fc1 = nn.Conv2d(dim, hidden * 2, 3, 1, 1)
        self.act = nn.Mish()
        self.split_indices = [hidden, hidden - conv_channels, conv_channels]
        self.conv = InceptionDWConv2d(conv_channels)
        self.fc2 = nn.Conv2d(hidden, dim, 3, 1, 1)
        self.gamma = nn.Parameter(torch.ones([1, dim, 1, 1]))
        for m in (self.fc1, self.fc2, self.conv.dwconv_hw, self.conv.dwconv_w, self.conv.dwconv_h):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split_indices, dim=1)
        y = self.act(self.fc2(self.act(g) * torch.cat((i, self.conv(c)), dim=1)))
        return y * self.gamma + x
