"""ATD: Adaptive Token Dictionary transformer for super-resolution (Zhang et al., "Transcending the Limit of Local
Window: Advanced Super-Resolution Transformer with Adaptive Token Dictionary", CVPR 2024;
LabShuHangGU/Adaptive-Token-Dictionary, Apache-2.0).

Semantics follow korvin2000/arch_research@5108929 `atd/arch.py` (the spandrel-style copy: keyword-only
constructor, `norm` flag); keyword names, defaults and state-dict keys match, so official checkpoints load strictly.

Each ATD transformer layer adds three attentions of LN(x) to x, then a ConvFFN:
* SW-MSA: shifted window attention with a relative position bias (archs.layers.swin);
* ATD-CA: cosine cross-attention of every token to a learned token dictionary (num_tokens x dim), temperature
  1 + clamp(scale, 0, 1) * log(num_tokens);
* AC-MSA: tokens sorted by their most similar dictionary entry, cut into groups of `category_size` (the last group
  filled with the reversed tail), attention inside each group (cosine-free, logit_scale clamped at log 100).
Between layers the dictionary is refined from the image: td = s * td + (1 - s) * softmax(IN(sim^T)) x.

Upstream sorts the category ids with an unstable sort; with several groups the group membership then depends on how
ties fall (0.26 relative L2 between stable and unstable on the dev config). We sort stably, so the result is
deterministic (the golden uses a single group, where the order does not matter).

The input is extended by flip-and-concatenate to a multiple of `window_size` and the output cropped, as upstream.
The dictionary refinement (instance norm over all tokens) and the category groups span the whole image: tiling
"global". Differences from upstream, none changing float32 outputs: attention through scaled_dot_product_attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, ratio_for, read_swinir_head, same_keys_and_shapes
from .layers.swin import PatchEmbed, WindowAttention, patch_unembed, shifted_window_attention
from .layers.upsample import add_swinir_head, swinir_head
from .layers.window import relative_position_index, shifted_window_mask
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["AC_MSA", "ARCHS", "ATD", "ATD_CA", "ATDTransformerLayer"]

_LICENSE = "Apache-2.0"
_RGB_MEAN = (0.4488, 0.4371, 0.4040)
_NUM_FEAT = 64
_UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")


class DWConv(nn.Module):
    """Depthwise kxk conv + GELU on tokens."""

    def __init__(self, hidden_features: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.depthwise_conv = nn.Sequential(
            nn.Conv2d(hidden_features, hidden_features, kernel_size, 1, (kernel_size - 1) // 2,
                      groups=hidden_features),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        return self.depthwise_conv(patch_unembed(x, x_size)).flatten(2).transpose(1, 2)


class ConvFFN(nn.Module):
    """fc1 -> GELU -> (+ depthwise conv branch) -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.dwconv = DWConv(hidden_features, kernel_size)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x, x_size))


class ATD_CA(nn.Module):  # noqa: N801 (upstream class name)
    """Cross-attention of the tokens to the token dictionary; returns the output and the similarity map."""

    def __init__(self, dim: int, num_tokens: int = 64, reducted_dim: int = 10, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.wq = nn.Linear(dim, reducted_dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, reducted_dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.scale = nn.Parameter(torch.ones(num_tokens) * 0.5)

    def forward(self, x: torch.Tensor, td: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self.wq(x), self.wk(td), self.wv(td)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)  # (B, N, M)
        attn = (attn * (1 + self.scale.clamp(0, 1) * math.log(self.num_tokens))).softmax(-1)
        return attn @ v, attn


class AC_MSA(nn.Module):  # noqa: N801 (upstream class name)
    """Category-based attention: tokens grouped by their argmax dictionary entry (stable sort), attention inside
    groups of `category_size`."""

    def __init__(self, dim: int, num_heads: int = 4, category_size: int = 128, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.category_size = category_size
        self.proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(1, 1)))

    def forward(self, qkv: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        b, n, c3 = qkv.shape
        c, heads = c3 // 3, self.num_heads
        gs = min(n, self.category_size)
        ng = -(-n // gs)
        pad_n = ng * gs - n
        order = torch.sort(sim.argmax(-1), dim=-1, stable=True).indices  # (B, N)
        shuffled = torch.gather(qkv, 1, order.unsqueeze(-1).expand(b, n, c3))
        padded = torch.cat((shuffled, shuffled[:, n - pad_n:n].flip(1)), dim=1)
        q, k, v = padded.reshape(b, ng, gs, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)  # (B, ng, heads, gs, d)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        y = F.scaled_dot_product_attention(q * scale.to(q.dtype), k, v, scale=1.0)
        y = y.permute(0, 1, 3, 2, 4).reshape(b, n + pad_n, c)[:, :n]
        out = torch.empty_like(y).scatter_(1, order.unsqueeze(-1).expand(b, n, c), y)  # undo the sort
        return self.proj(out)


class ATDTransformerLayer(nn.Module):
    """x + SW-MSA + ATD-CA + AC-MSA (all of LN x), then x + ConvFFN(LN x); refines the dictionary unless last."""

    def __init__(self, *, dim: int, num_heads: int, window_size: int, shift_size: int, category_size: int,
                 num_tokens: int, reducted_dim: int, convffn_kernel_size: int, mlp_ratio: float, qkv_bias: bool,
                 is_last: bool) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.is_last = is_last
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        if not is_last:
            self.norm3 = nn.InstanceNorm1d(num_tokens, affine=True)
            self.sigma = nn.Parameter(torch.zeros(num_tokens, 1))
        self.wqkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_win = WindowAttention(dim, window_size, num_heads, qkv=False)
        self.attn_atd = ATD_CA(dim, num_tokens=num_tokens, reducted_dim=reducted_dim, qkv_bias=qkv_bias)
        self.attn_aca = AC_MSA(dim, num_heads=num_heads, category_size=category_size, qkv_bias=qkv_bias)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), convffn_kernel_size)

    def forward(self, x: torch.Tensor, td: torch.Tensor, x_size: tuple[int, int],
                params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        y = self.norm1(x)
        qkv = self.wqkv(y)
        x_atd, sim = self.attn_atd(y, td)
        x_aca = self.attn_aca(qkv, sim)
        x_win = shifted_window_attention(qkv.reshape(b, *x_size, 3 * c), self.attn_win, self.window_size,
                                         self.shift_size, rpi=params["rpi_sa"], mask=params["attn_mask"])
        x = x + x_win.reshape(b, n, c) + x_atd + x_aca
        x = x + self.convffn(self.norm2(x), x_size)
        if not self.is_last:
            mask_soft = self.norm3(sim.transpose(-1, -2)).softmax(-1)  # (B, M, N)
            s = self.sigma.sigmoid()
            td = s * td + (1 - s) * torch.einsum("btn,bnc->btc", mask_soft, x)
        return x, td


class BasicBlock(nn.Module):
    """`depth` ATD layers (every second one shifted) sharing one token dictionary `td`."""

    def __init__(self, *, dim: int, depth: int, num_heads: int, window_size: int, category_size: int,
                 num_tokens: int, reducted_dim: int, convffn_kernel_size: int, mlp_ratio: float,
                 qkv_bias: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ATDTransformerLayer(dim=dim, num_heads=num_heads, window_size=window_size,
                                shift_size=0 if i % 2 == 0 else window_size // 2, category_size=category_size,
                                num_tokens=num_tokens, reducted_dim=reducted_dim,
                                convffn_kernel_size=convffn_kernel_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                is_last=i == depth - 1)
            for i in range(depth)
        )
        self.td = nn.Parameter(torch.randn(num_tokens, dim))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], params: dict[str, Any]) -> torch.Tensor:
        td = self.td.expand(x.shape[0], -1, -1)
        for layer in self.layers:
            x, td = layer(x, td, x_size, params)
        return x


def _resi_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', not {resi_connection!r}")


class ATDB(nn.Module):
    """Residual ATD block: x + conv(BasicBlock(x))."""

    def __init__(self, *, resi_connection: str, **kwargs: Any) -> None:
        super().__init__()
        self.residual_group = BasicBlock(**kwargs)
        self.conv = _resi_conv(kwargs["dim"], resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], params: dict[str, Any]) -> torch.Tensor:
        y = patch_unembed(self.residual_group(x, x_size, params), x_size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


class ATD(nn.Module):
    """ATD: conv_first, ATDBs, LayerNorm, conv_after_body, SR head (pixelshuffle, pixelshuffledirect,
    nearest+conv) or the restoration head (""); flip-pad to the window, crop."""

    def __init__(self, *, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 1, in_chans: int = 3,
                 embed_dim: int = 90, depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 8, category_size: int = 256, num_tokens: int = 64, reducted_dim: int = 4,
                 convffn_kernel_size: int = 5, mlp_ratio: float = 2.0, qkv_bias: bool = True, norm_layer: Any = None,
                 ape: bool = False, patch_norm: bool = True, upscale: int = 1, img_range: float = 1.0,
                 upsampler: str = "", resi_connection: str = "1conv", norm: bool = True) -> None:
        super().__init__()
        if norm_layer not in (None, nn.LayerNorm):
            raise ValueError("only nn.LayerNorm is supported as norm_layer")
        if upsampler not in _UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, not {upsampler!r}")
        if upsampler == "nearest+conv" and upscale != 4:
            raise ValueError("upsampler 'nearest+conv' is x4 only")
        if len(num_heads) < len(depths):
            raise ValueError(f"num_heads has {len(num_heads)} entries for {len(depths)} groups")
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        resolution = (int(img[0]) // int(patch[0]), int(img[1]) // int(patch[1]))
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.window_size = window_size
        self.is_norm = norm
        if not norm:
            self.register_buffer("no_norm", torch.zeros(1))
        self.register_buffer("mean", torch.tensor(_RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3
                             else torch.zeros(1, 1, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(
                nn.init.trunc_normal_(torch.zeros(1, resolution[0] * resolution[1], embed_dim), std=0.02))
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        self.layers = nn.ModuleList(
            ATDB(dim=embed_dim, depth=int(depths[i]), num_heads=int(num_heads[i]), window_size=window_size,
                 category_size=category_size, num_tokens=num_tokens, reducted_dim=reducted_dim,
                 convffn_kernel_size=convffn_kernel_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                 resi_connection=resi_connection)
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)
        add_swinir_head(self, upsampler=upsampler, upscale=upscale, embed_dim=embed_dim, num_feat=_NUM_FEAT,
                        out_chans=in_chans)

    def forward_features(self, x: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        for layer in self.layers:
            x = layer(x, x_size, params)
        return patch_unembed(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0, w0 = x.shape[-2:]
        m = self.window_size
        h, w = -(-h0 // m) * m, -(-w0 // m) * m
        # upstream's padding: append the flipped image (edge pixel repeated), then cut to the multiple
        x = torch.cat([x, x.flip(2)], 2)[:, :, :h]
        x = torch.cat([x, x.flip(3)], 3)[:, :, :, :w]
        mean = self.mean.to(x.dtype)
        if self.is_norm:
            x = (x - mean) * self.img_range
        params = {"attn_mask": shifted_window_mask((h, w), m, m // 2, device=x.device),
                  "rpi_sa": self.relative_position_index_SA}
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first, params)) + first)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x, params)) + x
            x = swinir_head(self, x)
        if self.is_norm:
            x = x / self.img_range + mean
        return x[..., :h0 * self.upscale, :w0 * self.upscale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _context(kw: dict[str, Any]) -> int:
    """Local receptive radius (the dictionary and category attention reach everything regardless), capped."""
    ws, k = int(kw["window_size"]), int(kw["convffn_kernel_size"])
    return min(128, sum(int(d) for d in kw["depths"]) * (ws + k // 2) + 4)


def _describe(kw: dict[str, Any]) -> ArchSpec:
    up = str(kw["upsampler"])
    return ArchSpec(
        id="atd",
        family="ATD",
        upstream_class="ATD",
        tasks=("upscale",) if up else ("denoise", "restore"),
        scale=int(kw["upscale"]) if up else 1,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=1,
        multiple_of=1,  # pads itself (flip and concatenate), as upstream
        # spandrel runs ATD in bf16, not fp16; measured on the GPU by the lead
        fp16=False,
        bf16=True,
        channels_last=False,
        tiling="global",
        context=_context(kw),
        code_license=_LICENSE,
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Everything that shapes the state dict comes from it. Not stored: category_size (the published 256, or 128
    for the pixelshuffledirect light models), img_size (64 unless ape), img_range 1."""
    l0 = "layers.0.residual_group.layers.0."
    if f"{l0}attn_aca.logit_scale" not in sd or "layers.0.residual_group.td" not in sd \
            or "conv_first.weight" not in sd or "relative_position_index_SA" not in sd:
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    n_layers = count_indexed(sd, "layers.{}.residual_group.td")
    depths = [count_indexed(sd, f"layers.{i}.residual_group.layers.{{}}.norm1.weight") for i in range(n_layers)]
    heads = [int(sd[f"layers.{i}.residual_group.layers.0.attn_win.relative_position_bias_table"].shape[1])
             for i in range(n_layers)]
    ws = math.isqrt(int(sd["relative_position_index_SA"].shape[0]))
    hidden = int(sd[f"{l0}convffn.fc1.weight"].shape[0])
    head = read_swinir_head(sd, in_chans)
    if head is None:
        return None
    upsampler, upscale = head
    pos = sd.get("absolute_pos_embed")
    kw: dict[str, Any] = {
        "img_size": math.isqrt(int(pos.shape[1])) if pos is not None else 64, "patch_size": 1,
        "in_chans": in_chans, "embed_dim": embed_dim, "depths": depths, "num_heads": heads, "window_size": ws,
        "category_size": 128 if upsampler == "pixelshuffledirect" else 256,
        "num_tokens": int(sd["layers.0.residual_group.td"].shape[0]),
        "reducted_dim": int(sd[f"{l0}attn_atd.wq.weight"].shape[0]),
        "convffn_kernel_size": int(sd[f"{l0}convffn.dwconv.depthwise_conv.0.weight"].shape[-1]),
        "mlp_ratio": ratio_for(hidden, embed_dim), "qkv_bias": f"{l0}wqkv.bias" in sd, "ape": pos is not None,
        "patch_norm": "patch_embed.norm.weight" in sd, "upscale": upscale, "img_range": 1.0,
        "upsampler": upsampler, "resi_connection": "3conv" if "layers.0.conv.0.weight" in sd else "1conv",
        "norm": "no_norm" not in sd,
    }
    return kw if same_keys_and_shapes(lambda: ATD(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="atd", family="ATD", cls=ATD, describe=_describe, detect=_detect),
)
