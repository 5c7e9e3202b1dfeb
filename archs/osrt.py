"""OSRT: omnidirectional image super-resolution with a distortion-aware transformer (Yu et al., CVPR 2023;
Fanghua-Yu/OSRT, MIT).

Semantics follow korvin2000/arch_research `OSRT/osrt_arch.py` (identical to Fanghua-Yu/OSRT@31d6e246
`odisr/archs/osrt_arch.py`); keyword names, defaults and state-dict keys match, so the official checkpoints load
strictly. A SwinIR backbone (residual Swin transformer blocks of shifted-window attention) conditioned on the ERP
latitude map `condition` (B, condition_dim, H, W):
* DAAB (`vit_condition[i]` trailing blocks of layer i): keys and values come from the normed features warped by a
  flow that `offset_conv` predicts from the condition, concatenated with an 8x8 in-window coordinate grid when
  `window_condition` (hard-coded 8x8 upstream, so window_size must be 8);
* DACB (`dcn_condition[i]`, one entry per layer plus one for the body): the layer's closing conv is followed by a
  LeakyReLU and a DCNv2 whose offsets and mask come from the condition (archs.layers.deform: torchvision's
  deform_conv2d where it loads, else the same arithmetic in PyTorch).

`forward(x, condition=None)`: without a condition, the model builds upstream's "cos_latitude" condition for a whole
equirectangular frame, cos(latitude) with latitude = (-1 + (2 i + 1) / H) * pi / 2 at row i (grid centres). Upstream
has no padding (H, W must be multiples of window_size); here the input and the condition are reflect-padded to the
window multiple and the output is cropped, which changes nothing for sizes upstream accepts. The condition belongs
to the whole frame, so tiles would see the wrong latitudes: tiling "global" (give it whole frames).

Differences from upstream, none changing float32 outputs: attention through scaled_dot_product_attention with the
bias and mask as additive terms; `mean` is a non-persistent buffer; `norm_layer`/`act_layer` are not arguments;
unknown `upsampler`/`resi_connection`/condition-conv types are errors instead of a missing module later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.deform import DCNv2Pack, flow_warp
from .layers.detect import count_indexed, ratio_for, read_swinir_head, same_keys_and_shapes
from .layers.drop import DropPath
from .layers.padding import pad_to_multiple
from .layers.upsample import add_swinir_head, swinir_head
from .layers.window import relative_position_index, shifted_window_mask, window_partition, window_reverse
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "OSRT", "cos_latitude"]

_UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def cos_latitude(h: int, w: int, *, batch: int = 1, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Upstream's "cos_latitude" condition of an ERP frame: (batch, 1, h, w), cos of the row centre's latitude."""
    rows = -1 + (2 * torch.arange(h, device=device, dtype=torch.float64) + 1) / h
    return torch.cos(rows * math.pi / 2).to(dtype).view(1, 1, h, 1).expand(batch, 1, h, w).contiguous()


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Window attention with a relative position bias table; q from one token set, k and v from another (the
    warped features in DAAB blocks)."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        xkv = xq if xkv is None else xkv
        b_, n, c = xq.shape
        heads = self.num_heads
        q = self.q(xq).reshape(b_, n, heads, c // heads).transpose(1, 2)
        k, v = self.kv(xkv).reshape(b_, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        index: torch.Tensor = self.relative_position_index  # type: ignore[assignment]
        bias = self.relative_position_bias_table[index.reshape(-1)].view(n, n, heads).permute(2, 0, 1).to(q.dtype)
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)).expand(b_ // nw, nw, heads, n, n)
            bias = bias.reshape(b_, heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))


def _offset_conv(cin: int, c_dim: int, cout: int, kind: str, *, final_act: bool) -> nn.Sequential:
    """The 1x1 conv stacks that map the condition to offsets ('1conv', '2conv', '3conv')."""
    def act() -> nn.LeakyReLU:
        return nn.LeakyReLU(negative_slope=0.2, inplace=True)

    if kind == "1conv":
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1)]
    elif kind == "2conv":
        layers = [nn.Conv2d(cin, c_dim, 1), act(), nn.Conv2d(c_dim, cout, 1)]
    elif kind == "3conv":
        layers = [nn.Conv2d(cin, c_dim, 1), act(), nn.Conv2d(c_dim, c_dim, 1), act(), nn.Conv2d(c_dim, cout, 1)]
    else:
        raise ValueError(f"condition conv type must be '1conv', '2conv' or '3conv', not {kind!r}")
    return nn.Sequential(*layers, act()) if final_act else nn.Sequential(*layers)


class SwinTransformerBlock(nn.Module):
    """Swin block (shifted on odd indices) whose keys/values are the condition-warped features when
    use_vit_condition (DAAB)."""

    def __init__(self, *, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop_path: float,
                 use_vit_condition: bool, condition_dim: int, vit_condition_type: str, window_condition: bool,
                 window_condition_only: bool, c_dim: int) -> None:
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.window_size, self.shift_size = window_size, shift_size
        if min(self.input_resolution) <= self.window_size:
            self.shift_size, self.window_size = 0, min(self.input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f"shift_size {self.shift_size} must be in [0, window_size {self.window_size})")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if self.shift_size > 0:
            self.register_buffer("attn_mask", self._mask(self.input_resolution))
        else:
            self.attn_mask = None
        self.use_vit_condition = use_vit_condition
        self.window_condition = window_condition
        self.window_condition_only = window_condition_only
        if use_vit_condition:
            if window_condition and self.window_size != 8:
                raise ValueError("window_condition needs window_size 8 (upstream's in-window grid is 8x8)")
            cin = (2 if window_condition_only else condition_dim + 2) if window_condition else condition_dim
            self.offset_conv = _offset_conv(cin, c_dim, 2, vit_condition_type, final_act=False)

    def _mask(self, size: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        return shifted_window_mask(size, self.window_size, self.shift_size, device=device)

    def _roll(self, x: torch.Tensor, sign: int) -> torch.Tensor:
        s = sign * self.shift_size
        return torch.roll(x, (s, s), (1, 2)) if self.shift_size else x

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        return window_partition(self._roll(x, -1), self.window_size).reshape(-1, self.window_size**2, c)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], condition: torch.Tensor) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        warped = None
        if self.use_vit_condition:
            cond = condition
            if self.window_condition:
                lin = torch.linspace(-1, 1, 8, device=x.device)
                grid = torch.stack(torch.meshgrid(lin, lin, indexing="ij")).to(x.dtype)
                grid = grid.unsqueeze(0).repeat(b, 1, h // self.window_size, w // self.window_size)
                if self.shift_size:
                    grid = torch.roll(grid, (-self.shift_size, -self.shift_size), (2, 3))
                cond = grid if self.window_condition_only else torch.cat([condition, grid], 1)
            offset = self.offset_conv(cond).permute(0, 2, 3, 1)
            xw = flow_warp(x.permute(0, 3, 1, 2), offset, padding_mode="border").permute(0, 2, 3, 1)
            warped = self._windows(xw)
        if (h, w) == self.input_resolution or self.attn_mask is None:
            mask = self.attn_mask
        else:
            mask = self._mask((h, w), x.device)
        out = self.attn(self._windows(x), warped, mask=mask if self.shift_size else None)
        out = self._roll(window_reverse(out.view(-1, self.window_size, self.window_size, c), self.window_size, h, w),
                         1)
        x = shortcut + self.drop_path(out.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    def __init__(self, *, dim: int, depth: int, vit_condition: int, drop_path: Sequence[float],
                 **block_kw: Any) -> None:
        super().__init__()
        window_size = block_kw.pop("window_size")
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim=dim, window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                                 drop_path=drop_path[i], use_vit_condition=i >= depth - vit_condition, **block_kw)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], condition: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, x_size, condition)
        return x


def _resi_conv(dim: int, resi_connection: str) -> nn.Module:
    """The closing conv of a layer / the body; a Sequential (DACB appends a LeakyReLU), or identity for '0conv'."""
    if resi_connection == "1conv":
        return nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1))
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    if resi_connection == "0conv":
        return nn.Identity()
    raise ValueError(f"resi_connection must be '1conv', '3conv' or '0conv', not {resi_connection!r}")


class _DACB(nn.Module):
    """Closing conv, then (DACB) LeakyReLU and DCNv2 with offsets from the condition."""

    def __init__(self, dim: int, resi_connection: str, use_dcn: bool, condition_dim: int, c_dim: int,
                 dcn_condition_type: str) -> None:
        super().__init__()
        self.conv = _resi_conv(dim, resi_connection)
        self.use_dcn_conv = use_dcn
        if use_dcn:
            if resi_connection != "0conv":
                self.conv.append(nn.LeakyReLU(negative_slope=0.2, inplace=True))  # type: ignore[operator]
            if dcn_condition_type not in ("1conv", "2conv"):
                raise ValueError(f"dcn_condition_type must be '1conv' or '2conv', not {dcn_condition_type!r}")
            self.offset_conv = _offset_conv(condition_dim, c_dim, dim, dcn_condition_type, final_act=True)
            self.dcn = DCNv2Pack(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.dcn(x, self.offset_conv(condition)) if self.use_dcn_conv else x


class RSTB(_DACB):
    """Residual Swin transformer block: Swin layer, closing conv (with DACB), plus the input."""

    def __init__(self, *, dim: int, resi_connection: str, use_dcn_conv: bool, condition_dim: int, c_dim: int,
                 dcn_condition_type: str, **layer_kw: Any) -> None:
        super().__init__(dim, resi_connection, use_dcn_conv, condition_dim, c_dim, dcn_condition_type)
        self.residual_group = BasicLayer(dim=dim, condition_dim=condition_dim, c_dim=c_dim, **layer_kw)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], condition: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        y = self.residual_group(x, x_size, condition).transpose(1, 2).reshape(b, c, *x_size)
        return super().forward(y, condition).flatten(2).transpose(1, 2) + x


class OSRT(nn.Module):
    """OSRT. `upsampler`: 'pixelshuffle', 'pixelshuffledirect' (OSRT-light), 'nearest+conv' (x4) or '' (same size).
    `img_size` sets the stored shift masks' size (any size runs); drop rates act only while training."""

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
        condition_dim: int = 1,
        vit_condition: Sequence[int] | None = None,
        vit_condition_type: str = "1conv",
        dcn_condition: Sequence[int] | None = None,
        dcn_condition_type: str = "1conv",
        window_condition: bool = False,
        window_condition_only: bool = False,
        c_dim: int = 60,
    ) -> None:
        super().__init__()
        if upsampler not in _UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, not {upsampler!r}")
        if patch_size != 1:
            raise ValueError("OSRT runs with patch_size 1 only (its patch embedding does not patch)")
        del drop_rate, attn_drop_rate, use_checkpoint  # dropout / checkpointing: nothing in eval
        res = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        num_feat = 64
        self.img_range = float(img_range)
        self.register_buffer("mean", torch.tensor(_RGB_MEAN if in_chans == 3 else (0.0,)).view(1, -1, 1, 1),
                             persistent=False)
        self.upscale, self.upsampler, self.window_size = upscale, upsampler, window_size
        self.condition_dim = condition_dim
        n = len(depths)
        vit = list(vit_condition) if vit_condition is not None else [0] * n
        dcn = list(dcn_condition) if dcn_condition is not None else [0] * (n + 1)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.embed_dim = embed_dim
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim))
        self.patch_norm = patch_norm
        if patch_norm:
            self.patch_embed = nn.Module()
            self.patch_embed.norm = nn.LayerNorm(embed_dim)
        total = sum(depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]  # torch.linspace
        self.layers = nn.ModuleList(
            RSTB(dim=embed_dim, resi_connection=resi_connection, use_dcn_conv=bool(dcn[i]),
                 condition_dim=condition_dim, c_dim=c_dim, dcn_condition_type=dcn_condition_type,
                 depth=depths[i], vit_condition=vit[i], drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                 input_resolution=res, num_heads=num_heads[i], window_size=window_size, mlp_ratio=mlp_ratio,
                 qkv_bias=qkv_bias, qk_scale=qk_scale, vit_condition_type=vit_condition_type,
                 window_condition=window_condition, window_condition_only=window_condition_only)
            for i in range(n)
        )
        self.norm = nn.LayerNorm(embed_dim)
        body = _DACB(embed_dim, resi_connection, bool(dcn[-1]), condition_dim, c_dim, dcn_condition_type)
        # upstream keeps these three as attributes of the model itself
        self.conv_after_body = body.conv
        self.use_dcn_conv = body.use_dcn_conv
        if body.use_dcn_conv:
            self.offset_conv, self.dcn = body.offset_conv, body.dcn
        add_swinir_head(self, upsampler=upsampler, upscale=upscale, embed_dim=embed_dim, num_feat=num_feat,
                        out_chans=in_chans)

    def forward_features(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        if self.patch_norm:
            t = self.patch_embed.norm(t)
        if self.ape:
            t = t + self.absolute_pos_embed
        for layer in self.layers:
            t = layer(t, (h, w), condition)
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)

    def _body(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        y = self.conv_after_body(self.forward_features(x, condition))
        return (self.dcn(y, self.offset_conv(condition)) if self.use_dcn_conv else y) + x

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        if condition is None:
            condition = cos_latitude(h, w, batch=b, device=x.device, dtype=x.dtype)
        x = pad_to_multiple(x, self.window_size, mode="reflect_or_replicate")
        condition = pad_to_multiple(condition.to(x.dtype), self.window_size, mode="reflect_or_replicate")
        mean = self.mean.to(x.dtype)  # type: ignore[operator]
        x = (x - mean) * self.img_range
        if self.upsampler:
            x = swinir_head(self, self._body(self.conv_first(x), condition))
        else:
            x = x + self.conv_last(self._body(self.conv_first(x), condition))
        s = self.upscale if self.upsampler else 1
        return (x / self.img_range + mean)[..., : h * s, : w * s]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    upscaled = bool(kw["upsampler"])
    return ArchSpec(
        id="osrt",
        family="OSRT",
        upstream_class="OSRT",
        tasks=("upscale",) if upscaled else ("restore",),
        scale=int(kw["upscale"]) if upscaled else 1,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=1,
        multiple_of=1,  # padded to the window inside, with the condition
        fp16=True,
        bf16=True,
        channels_last=False,
        # the latitude condition belongs to the whole ERP frame
        tiling="global",
        context=4 * int(kw["window_size"]),
        code_license="MIT",
    )


def _conv_type(sd: StateDict, prefix: str) -> str | None:
    """'1conv' / '2conv' / '3conv' from the indices of a condition conv stack."""
    n = sum(1 for k in sd if k.startswith(prefix) and k.endswith(".weight"))
    return {1: "1conv", 2: "2conv", 3: "3conv"}.get(n)


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Widths, depths, heads (bias table), window (index shape), img_size (a stored shift mask), condition
    layout (which blocks have offset convs, their conv types and widths), DCN placement, head and residual
    connection; the rebuilt model must match every key and shape."""
    table = "layers.0.residual_group.blocks.0.attn.relative_position_bias_table"
    if "conv_first.weight" not in sd or table not in sd or "layers.0.residual_group.blocks.0.attn.kv.weight" not in sd:
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    n_layers = count_indexed(sd, "layers.{}.residual_group.blocks.0.norm1.weight")
    depths = [count_indexed(sd, f"layers.{i}.residual_group.blocks.{{}}.norm1.weight") for i in range(n_layers)]
    heads = [int(sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1])
             for i in range(n_layers)]
    window = math.isqrt(int(sd["layers.0.residual_group.blocks.0.attn.relative_position_index"].shape[0]))
    img_size = 64
    mask = next((t for k, t in sd.items() if k.endswith(".attn_mask")), None)
    if mask is not None:
        img_size = math.isqrt(int(mask.shape[0])) * window
    vit = []
    vit_type, vit_cin, c_dim = "1conv", 0, 60
    for i, d in enumerate(depths):
        blocks = [j for j in range(d) if f"layers.{i}.residual_group.blocks.{j}.offset_conv.0.weight" in sd]
        vit.append(len(blocks))
        if blocks:
            pre = f"layers.{i}.residual_group.blocks.{blocks[0]}.offset_conv."
            vit_type = _conv_type(sd, pre) or vit_type
            vit_cin = int(sd[pre + "0.weight"].shape[1])
            if vit_type != "1conv":
                c_dim = int(sd[pre + "0.weight"].shape[0])
    dcn = [int(f"layers.{i}.dcn.weight" in sd) for i in range(n_layers)] + [int("dcn.weight" in sd)]
    dcn_type, condition_dim = "1conv", 1
    dcn_pre = next((p for p in [*(f"layers.{i}.offset_conv." for i in range(n_layers)), "offset_conv."]
                    if p + "0.weight" in sd), None)
    if dcn_pre is not None:
        dcn_type = "2conv" if dcn_pre + "2.weight" in sd else "1conv"
        condition_dim = int(sd[dcn_pre + "0.weight"].shape[1])
        if dcn_type == "2conv":
            c_dim = int(sd[dcn_pre + "0.weight"].shape[0])
        window_condition = vit_cin == condition_dim + 2
    else:
        # no DCN to tell the condition's width: a window of 8 with >= 3 inputs reads as 1 + the 2-channel grid
        window_condition = window == 8 and vit_cin >= 3
        condition_dim = max(1, vit_cin - 2 if window_condition else vit_cin)
    resi = "0conv"
    if "layers.0.conv.0.weight" in sd:
        resi = "3conv" if "layers.0.conv.2.weight" in sd else "1conv"
    hidden = int(sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0])
    kw: dict[str, Any] = {
        "img_size": img_size,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "mlp_ratio": ratio_for(hidden, embed_dim),
        "qkv_bias": "layers.0.residual_group.blocks.0.attn.q.bias" in sd,
        "ape": "absolute_pos_embed" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "resi_connection": resi,
        "condition_dim": condition_dim,
        "vit_condition": vit if any(vit) else None,  # upstream's default None means no DAAB anywhere
        "vit_condition_type": vit_type,
        "dcn_condition": dcn if any(dcn) else None,
        "dcn_condition_type": dcn_type,
        "window_condition": window_condition,
        "c_dim": c_dim,
    }
    head = read_swinir_head(sd, in_chans)
    if head is None:
        return None
    kw.update(upsampler=head[0], upscale=head[1])
    return kw if same_keys_and_shapes(lambda: OSRT(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="osrt", family="OSRT", cls=OSRT, describe=_describe, detect=_detect),
)
