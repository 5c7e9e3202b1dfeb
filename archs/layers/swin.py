"""Blocks of the SwinIR/HAT line of SR transformers (HAT, DRCT, HMA, ATD, MSHAT, ...), written once.

Upstream copies these verbatim family after family; key names match theirs (`relative_position_bias_table`,
`qkv`, `proj`, `fc1`/`fc2`, `cab.N`, `attention.N`), so checkpoints load strictly:
* `Mlp` (fc1, GELU, fc2), `ChannelAttention` (RCAN squeeze-excite), `CAB` (HAT's conv + channel attention block);
* `PatchEmbed` (tokens (B, HW, C) from a map, optional LayerNorm), `patch_unembed` (tokens back to a map);
* `block_window` (Swin's rule: a block whose map is no larger than the window attends over the whole map, unshifted);
* `WindowAttention` (relative-position-biased window attention; the qkv projection inside or given by the caller)
  and `shifted_window_attention` (roll, partition, attend, merge, roll back);
* `OCAB` (HAT's overlapping cross-attention block) and `oca_relative_position_index`;
* HAT's residual hybrid attention group: `HAB` (window attention, or VMamba's SS2D for HATM, plus a scaled CAB),
  `AttenBlocks` (HABs then an OCAB), `RHAG` (x + conv(AttenBlocks(x))), `resi_conv`.

Attention runs through `F.scaled_dot_product_attention` with the bias (and the shifted-window mask) as an additive
float mask: the same softmax(q k^T * scale + bias) as upstream's explicit matmuls, with fused kernels on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .drop import DropPath
from .ss2d import SS2D
from .window import relative_position_bias, relative_position_index, window_partition, window_reverse


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (dropout between, identity in eval)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ChannelAttention(nn.Module):
    """RCAN channel attention: x * sigmoid(conv(relu(conv(avgpool(x)))))."""

    def __init__(self, num_feat: int, squeeze_factor: int = 16) -> None:
        super().__init__()
        mid = num_feat // squeeze_factor
        if mid < 1:
            raise ValueError(f"ChannelAttention: {num_feat} channels squeezed by {squeeze_factor} leave none")
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, mid, 1), nn.ReLU(inplace=True), nn.Conv2d(mid, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """HAT's channel attention block: 3x3 conv (squeezed by compress_ratio), GELU, 3x3 conv, channel attention."""

    def __init__(self, num_feat: int, compress_ratio: int = 3, squeeze_factor: int = 30) -> None:
        super().__init__()
        mid = num_feat // compress_ratio
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, mid, 3, 1, 1), nn.GELU(), nn.Conv2d(mid, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H*W, C) tokens, then the optional LayerNorm (patch_size 1, as every SR copy uses it)."""

    def __init__(self, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


def patch_unembed(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x_size[0], x_size[1])


def block_window(resolution: tuple[int, int] | list[int], window_size: int, shift_size: int) -> tuple[int, int]:
    """(window, shift) of a Swin block built for `resolution` (img_size // patch_size): when the map is no larger
    than the window, the window becomes the map and the block does not shift (Swin's rule, kept by every copy)."""
    side = min(resolution)
    if side <= window_size:
        return side, 0
    return window_size, shift_size


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
           scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias (+ mask)) v for windows (B * nW, heads, N, d); bias (heads, Nq, Nk), mask
    (nW, Nq, Nk) repeating over the batch. Calls stay 4-D (one per image when masked) so the fused kernels apply."""
    bias = bias.to(q.dtype)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    nw = mask.shape[0]
    full = bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)  # (nW, heads, Nq, Nk)
    if q.shape[0] == nw:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=scale)
    outs = [F.scaled_dot_product_attention(q[i:i + nw], k[i:i + nw], v[i:i + nw], attn_mask=full, scale=scale)
            for i in range(0, q.shape[0], nw)]
    return torch.cat(outs)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a relative position bias table.

    With `qkv=True` the module owns the qkv projection and `forward` takes tokens (B * nW, N, C); with `qkv=False`
    (HMA) the caller projects and passes (B * nW, N, 3C). `index_buffer=True` keeps the persistent
    `relative_position_index` buffer (SwinIR, DRCT); otherwise the model passes the index (HAT, HMA).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, *, qkv_bias: bool = True,
                 qk_scale: float | None = None, qkv: bool = True, index_buffer: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: {dim} channels do not split into {num_heads} heads")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        if index_buffer:
            self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias) if qkv else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rpi: torch.Tensor | None = None, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        if self.qkv is not None:
            x = self.qkv(x)
        b_, n, c3 = x.shape
        c = c3 // 3
        qkv = x.reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if rpi is None:
            rpi = self.relative_position_index  # type: ignore[assignment]
        assert rpi is not None
        bias = relative_position_bias(self.relative_position_bias_table, rpi)
        out = attend(qkv[0], qkv[1], qkv[2], bias, mask, self.scale)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))


def shifted_window_attention(x: torch.Tensor, attn: nn.Module, window: int, shift: int, *,
                             rpi: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W, C') -> (B, H, W, C): cyclic shift by -shift, attention inside window x window tiles (the mask
    only where shifted), merge, shift back. `attn` maps (B * nW, N, C') tokens to (B * nW, N, C)."""
    h, w = x.shape[1:3]
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(x, window).reshape(-1, window * window, x.shape[-1])
    out = attn(windows, rpi=rpi, mask=mask if shift else None)
    y = window_reverse(out.reshape(-1, window, window, out.shape[-1]), window, h, w)
    if shift:
        y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
    return y


def oca_relative_position_index(window_size: int, overlap_window: int) -> torch.Tensor:
    """(ws*ws, ows*ows) rows of OCAB's bias table, (ws + ows - 1)**2 rows: query in a ws window, key in the
    ows window centred on it, exactly as HAT's `calculate_rpi_oca` (whose offset leaves some rows negative: table
    indexing wraps them, and checkpoints store the buffer, so the values stay as upstream made them)."""
    def coords(n: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        return torch.stack([ys.flatten(), xs.flatten()])

    rel = coords(overlap_window)[:, None, :] - coords(window_size)[:, :, None]  # key minus query
    rel = rel + (window_size - overlap_window + 1)
    return rel[0] * (window_size + overlap_window - 1) + rel[1]


class OCAB(nn.Module):
    """HAT's overlapping cross-attention block: queries from window x window tiles attend to keys and values from
    the overlapping (1 + overlap_ratio) * window tile around them (zero padded at the border); then an MLP."""

    def __init__(self, dim: int, window_size: int, overlap_ratio: float, num_heads: int, *, qkv_bias: bool = True,
                 qk_scale: float | None = None, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"OCAB: {dim} channels do not split into {num_heads} heads")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        if (self.overlap_win_size - window_size) % 2:
            raise ValueError(f"OCAB needs an even overlap: int({overlap_ratio} * {window_size}) is odd")
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window_size + self.overlap_win_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], rpi: torch.Tensor) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        d = c // heads
        shortcut = x
        qkv = self.qkv(self.norm1(x)).reshape(b, h, w, 3, c)
        q = window_partition(qkv[..., 0, :], ws).reshape(-1, ws * ws, heads, d).transpose(1, 2)
        # keys/values: ows x ows patches at stride ws, zero padded by (ows - ws) / 2 (upstream's nn.Unfold)
        kv = qkv[..., 1:, :].reshape(b, h, w, 2 * c).permute(0, 3, 1, 2)
        pad = (ows - ws) // 2
        patches = F.unfold(kv, kernel_size=ows, stride=ws, padding=pad)  # (B, 2C * ows * ows, nW)
        nw = patches.shape[-1]
        patches = patches.reshape(b, 2, heads, d, ows * ows, nw).permute(1, 0, 5, 2, 4, 3)
        k, v = (t.reshape(b * nw, heads, ows * ows, d) for t in patches)
        bias = relative_position_bias(self.relative_position_bias_table, rpi)
        out = attend(q, k, v, bias, None, self.scale)  # (B * nW, heads, ws * ws, d)
        out = window_reverse(out.transpose(1, 2).reshape(-1, ws, ws, c), ws, h, w).reshape(b, h * w, c)
        x = self.proj(out) + shortcut
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------------------------------------------------------------
# HAT's residual hybrid attention group (HAT, HATM, HATIQCMix; MSHAT is HAT with extra heads)


class HAB(nn.Module):
    """Hybrid attention block: x + W-MSA(LN x) (or SS2D) + conv_scale * CAB(LN x); then x + MLP(LN x)."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, compress_ratio: int, squeeze_factor: int, conv_scale: float, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop: float, drop_path: float, mamba: bool = False) -> None:
        super().__init__()
        self.window_size, self.shift_size = block_window(input_resolution, window_size, shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.mamba = mamba
        if mamba:
            self.vmamba = SS2D(d_model=dim)
        else:
            self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.conv_scale = conv_scale
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], rpi_sa: torch.Tensor,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        y = self.norm1(x).reshape(b, h, w, c)
        conv_x = self.conv_block(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.mamba:
            attn_x = self.vmamba(y)
        else:
            attn_x = shifted_window_attention(y, self.attn, self.window_size, self.shift_size, rpi=rpi_sa,
                                              mask=attn_mask)
        x = x + self.drop_path(attn_x.reshape(b, h * w, c)) + conv_x * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AttenBlocks(nn.Module):
    """`depth` HABs (every second one shifted by window_size // 2), then the OCAB."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 compress_ratio: int, squeeze_factor: int, conv_scale: float, overlap_ratio: float, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop: float, drop_path: Sequence[float],
                 mamba: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            HAB(dim=dim, input_resolution=input_resolution, num_heads=num_heads, window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2, compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor, conv_scale=conv_scale, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                qk_scale=qk_scale, drop=drop, drop_path=drop_path[i], mamba=mamba)
            for i in range(depth)
        )
        self.overlap_attn = OCAB(dim, window_size, overlap_ratio, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                 mlp_ratio=mlp_ratio)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], params: dict[str, Any]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, x_size, params["rpi_sa"], params["attn_mask"])
        return self.overlap_attn(x, x_size, params["rpi_oca"])


class RHAG(nn.Module):
    """Residual hybrid attention group: x + conv(AttenBlocks(x)) (conv: 3x3, or identity)."""

    def __init__(self, *, resi_connection: str, **kwargs: Any) -> None:
        super().__init__()
        dim = kwargs["dim"]
        self.residual_group = AttenBlocks(**kwargs)
        self.conv = resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], params: dict[str, Any]) -> torch.Tensor:
        y = patch_unembed(self.residual_group(x, x_size, params), x_size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


def resi_conv(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing a residual group: '1conv' (3x3) or 'identity'."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "identity":
        return nn.Identity()
    raise ValueError(f"resi_connection must be '1conv' or 'identity', not {resi_connection!r}")
