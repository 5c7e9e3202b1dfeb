"""Swin's window multi-head self-attention and transformer MLP as the SR transformers copy them (SwinIR, HAT, DRCT,
FAT, CFAT, MicroSR, OAPT, ...), with upstream's parameter names, written once.

`WindowAttention` keys: `relative_position_bias_table` ((2 wh - 1) (2 ww - 1), heads), `relative_position_index`
(N, N) buffer (when the block owns it; HAT-style models pass one shared index instead), `qkv`, `proj`.
The maths is Swin's: softmax(q k^T * scale + bias [+ mask]) v, computed with scaled_dot_product_attention (float32
softmax accumulation on the GPU kernels, the same result up to rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .window import _pair, relative_position_bias, relative_position_index

__all__ = ["Mlp", "PatchEmbed", "WindowAttention", "window_sdpa"]


def window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
                scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias + mask) v over windows.

    q, k, v: (B * nW, heads, Nq, d) / (B * nW, heads, Nk, d); bias (heads, Nq, Nk); mask (nW, Nq, Nk) or None, the
    windows of each image in raster order (so the mask repeats every nW rows).
    """
    bw, heads, n_q, _ = q.shape
    n_k = k.shape[2]
    add = bias.to(q.dtype).unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        add = (add.unsqueeze(0) + mask.to(q.dtype).view(1, nw, 1, n_q, n_k)).expand(bw // nw, nw, heads, n_q, n_k)
        add = add.reshape(bw, heads, n_q, n_k)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=add, scale=scale)


class WindowAttention(nn.Module):
    """Window MSA with a relative position bias; x is (B * nW, N, C) tokens of whole windows."""

    def __init__(self, dim: int, window_size: int | tuple[int, int], num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, *, own_index: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = _pair(window_size)
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        if own_index:
            self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                rpi: torch.Tensor | None = None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        index = self.relative_position_index if rpi is None else rpi
        bias = relative_position_bias(self.relative_position_bias_table, index)  # type: ignore[arg-type]
        out = window_sdpa(qkv[0], qkv[1], qkv[2], bias, mask, self.scale)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class Mlp(nn.Module):
    """fc1, GELU, fc2 (dropout is 0 in every SR config and left out)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """SwinIR's patch embedding at patch size 1: (B, C, H, W) -> (B, H * W, C) tokens, then the optional LayerNorm
    (key `patch_embed.norm`)."""

    def __init__(self, embed_dim: int, norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x
