"""ParagonSR2: dual-path super-resolution, a fixed Magic Kernel Sharp 2021 base plus a learned detail path scaled
by `detail_gain` (Philip Hofmann, MIT per the file header).

Semantics follow the seed's `arches/paragonsr2_arch.py` (class `ParagonSR2`; factories paragonsr2_realtime/stream/
photo/pro; `variant` picks NanoBlock / StreamBlock / PhotoBlock / ProBlock). Keyword names, defaults and state-dict
keys match. The file's ATD* classes are not used by ParagonSR2 and are left out.

Notes from upstream kept on purpose: WindowAttention zero-pads to the window, shifts odd-indexed blocks by half a
window with a cyclic roll and NO shifted-window mask (so attention wraps around the map) and has no position bias;
heads are fixed at 4. `attention_mode="flex"` computes the same softmax attention as SDPA (flex_attention without a
score_mod is SDPA), so both run through F.scaled_dot_product_attention here.

Not stored in a checkpoint, so detection takes the factory values of the detected variant: `upsampler_alpha`
(realtime 0.3, stream 0.0, photo and pro 0.4) and the photo/pro `window_size` (16). `detail_gain` is a parameter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint

from .layers.detect import count_indexed, same_keys_and_shapes, scale_and_out_channels
from .layers.magic_kernel import MAGIC_KERNEL, MAGIC_SHARP_2021, nearest_upscale, separable_convs
from .spec import ArchEntry, ArchSpec, StateDict

VARIANTS = ("realtime", "stream", "photo", "pro")


class SeparableConv(nn.Module):
    """A fixed separable filter v(h(x)); the taps also live in a `kernel` buffer, as upstream."""

    def __init__(self, channels: int, taps: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.tensor(taps, dtype=torch.float32))
        self.h, self.v = separable_convs(channels, taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.h(x))


class MagicKernelSharp2021Upsample(nn.Module):
    """x + alpha * (sharp(x) - x) when alpha > 0, nearest upscale, magic-kernel blur."""

    def __init__(self, in_ch: int, scale: int, alpha: float) -> None:
        super().__init__()
        self.scale, self.alpha = scale, alpha
        self.sharp = SeparableConv(in_ch, MAGIC_SHARP_2021)
        self.blur = SeparableConv(in_ch, MAGIC_KERNEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha > 0:
            x = x + self.alpha * (self.sharp(x) - x)
        return self.blur(nearest_upscale(x, self.scale))


class RMSNorm(nn.Module):
    """scale * x / sqrt(mean_c(x^2) + eps) + bias, the mean in float32."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.sqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps).to(x.dtype)
        return self.scale * x / rms + self.bias


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class WindowAttention(nn.Module):
    """Multi-head attention inside non-overlapping windows of a (B, H, W, C) map; zero pad, optional cyclic shift."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 8, shift_size: int = 0,
                 attention_mode: str = "sdpa") -> None:
        super().__init__()
        self.num_heads, self.window_size, self.shift_size = num_heads, window_size, shift_size
        self.attention_mode = attention_mode
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        win = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        q, k, v = (t.view(-1, ws * ws, self.num_heads, c // self.num_heads).transpose(1, 2)
                   for t in self.qkv(win).chunk(3, dim=-1))
        win = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, ws * ws, c)
        win = self.proj(win)
        x = win.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x[:, :h, :w, :]


class NanoBlock(nn.Module):
    """x + ls(conv2(gelu(dw(conv1(x)))))."""

    def __init__(self, dim: int, expansion: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, dim, 1)
        self.scale = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv2(F.gelu(self.dw(self.conv1(x))))) + x


class StreamBlock(nn.Module):
    """Dilated depthwise pair, 1x1 fuse, gated depthwise FFN (product in float32, clamped to the fp16 range)."""

    def __init__(self, dim: int, expansion: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.dw1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.dw3 = nn.Conv2d(dim, dim, 3, padding=3, dilation=3, groups=dim)
        self.fuse = nn.Conv2d(dim * 2, dim, 1)
        self.proj = nn.Conv2d(dim, hidden * 2, 1)
        self.gate = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.out = nn.Conv2d(hidden, dim, 1)
        self.scale = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat([self.dw1(x), self.dw3(x)], dim=1))
        a, b = self.gate(self.proj(y)).chunk(2, dim=1)
        y = (a.float() * b.float()).clamp(-65504, 65504).to(a.dtype)
        return self.scale(self.out(y)) + x


class PhotoBlock(nn.Module):
    """Conv mixing (RMSNorm, 1x1, depthwise 3x3 + GELU, 1x1) then optional window attention; one LayerScale."""

    def __init__(self, dim: int, expansion: float = 2.0, attention_mode: str | None = "sdpa",
                 export_safe: bool = False, window_size: int = 16, shift_size: int = 0) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.norm = RMSNorm(dim)
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, dim, 1)
        self.scale = LayerScale(dim)
        self.use_attn = attention_mode is not None and not export_safe
        if self.use_attn:
            self.attn_norm = RMSNorm(dim)
            self.attn = WindowAttention(dim, 4, window_size, shift_size, str(attention_mode))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale(self.conv2(F.gelu(self.dw(self.conv1(self.norm(x))))))
        if self.use_attn:
            a = self.attn(self.attn_norm(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            x = x + self.scale(a)
        return x


class TokenDictionaryCA(nn.Module):
    """Cross-attention of every pixel to a learned dictionary of tokens (q/k reduced to `reducted_dim`)."""

    def __init__(self, dim: int, num_tokens: int = 64, reducted_dim: int = 16) -> None:
        super().__init__()
        self.token_dict = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        self.q_proj = nn.Linear(dim, reducted_dim)
        self.k_proj = nn.Linear(dim, reducted_dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.scale = reducted_dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q_proj(x.flatten(2).transpose(1, 2))
        td = self.token_dict.expand(b, -1, -1)
        attn = F.softmax((q @ self.k_proj(td).transpose(-2, -1)) * self.scale, dim=-1)
        out = self.out_proj(attn @ self.v_proj(td))
        return out.transpose(1, 2).reshape(b, c, h, w)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation with Linear layers (no bias), GELU, reduction 16."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.GELU(),
                                nn.Linear(dim // reduction, dim, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3))).view(x.shape[0], x.shape[1], 1, 1)


class ProBlock(nn.Module):
    """Conv mixing, SE channel attention, window attention (optional), token-dictionary cross-attention."""

    def __init__(self, dim: int, expansion: float = 2.0, num_tokens: int = 64, window_size: int = 16,
                 shift_size: int = 0, attention_mode: str | None = "sdpa", export_safe: bool = False) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.norm1 = RMSNorm(dim)
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, dim, 1)
        self.scale1 = LayerScale(dim)
        self.channel_attn = ChannelAttention(dim)
        self.scale2 = LayerScale(dim)
        self.use_attn = attention_mode is not None and not export_safe
        if self.use_attn:
            self.norm3 = RMSNorm(dim)
            self.window_attn = WindowAttention(dim, 4, window_size, shift_size, str(attention_mode))
            self.scale3 = LayerScale(dim)
        self.norm4 = RMSNorm(dim)
        self.token_ca = TokenDictionaryCA(dim, num_tokens=num_tokens)
        self.scale4 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale1(self.conv2(F.gelu(self.dw(self.conv1(self.norm1(x))))))
        x = x + self.scale2(self.channel_attn(x))
        if self.use_attn:
            x = x + self.scale3(self.window_attn(self.norm3(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return x + self.scale4(self.token_ca(self.norm4(x)))


class ResidualGroup(nn.Module):
    """Blocks in sequence (no group-level skip, as upstream), optionally gradient-checkpointed when training."""

    def __init__(self, blocks: list[nn.Module], checkpointing: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and x.requires_grad:
            for blk in self.blocks:
                x = checkpoint.checkpoint(blk, x, use_reentrant=False)
            return x
        return self.blocks(x)


class ParagonSR2(nn.Module):
    """out = magic-kernel base(x) + conv_out(pixel-shuffle(conv_mid(body(conv_in(x))))) * detail_gain."""

    def __init__(
        self,
        *,
        scale: int = 4,
        in_chans: int = 3,
        num_feat: int = 64,
        num_groups: int = 4,
        num_blocks: int = 4,
        variant: str = "photo",
        detail_gain: float = 0.1,
        upsampler_alpha: float = 0.5,
        use_checkpointing: bool = False,
        attention_mode: str | None = "sdpa",
        export_safe: bool = False,
        window_size: int = 8,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant: {variant}")
        if attention_mode not in (None, "sdpa", "flex"):
            raise ValueError(f"attention_mode must be 'sdpa', 'flex' or None, got {attention_mode!r}")
        self.base = MagicKernelSharp2021Upsample(in_chans, scale, upsampler_alpha)
        self.conv_in = nn.Conv2d(in_chans, num_feat, 3, padding=1)

        def block(idx: int) -> nn.Module:
            shift = window_size // 2 if idx % 2 else 0  # global block index: odd blocks shift
            if variant == "realtime":
                return NanoBlock(num_feat)
            if variant == "stream":
                return StreamBlock(num_feat)
            if variant == "photo":
                return PhotoBlock(num_feat, attention_mode=attention_mode, export_safe=export_safe,
                                  window_size=window_size, shift_size=shift)
            return ProBlock(num_feat, num_tokens=64, window_size=window_size, shift_size=shift,
                            attention_mode=attention_mode, export_safe=export_safe)

        self.body = nn.Sequential(*[
            ResidualGroup([block(g * num_blocks + i) for i in range(num_blocks)], checkpointing=use_checkpointing)
            for g in range(num_groups)
        ])
        self.conv_mid = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.up = nn.Sequential(nn.Conv2d(num_feat, num_feat * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.conv_out = nn.Conv2d(num_feat, in_chans, 3, padding=1)
        self.detail_gain = nn.Parameter(torch.tensor(float(detail_gain)))

    def forward(self, x: torch.Tensor, feature_tap: bool = False, prev_feat: torch.Tensor | None = None,
                alpha: float = 0.2) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """As upstream: `prev_feat` blends the previous frame's conv_in features (video mode); `feature_tap` also
        returns this frame's conv_in features."""
        base = self.base(x)
        feat = self.conv_in(x)
        if prev_feat is not None:
            feat = (1.0 - alpha) * feat + alpha * prev_feat
        y = self.up(self.conv_mid(self.body(feat)))
        out = base + self.conv_out(y) * self.detail_gain
        return (out, feat) if feature_tap else out


# ---------------------------------------------------------------------------------------------------------------------
# Descriptor. realtime / stream (and photo without attention) are plain convolutions: "safe" with the exact
# receptive radius. Window attention wraps around the map (cyclic shift without a mask) and the pro block's SE pools
# over the whole map: "global", with the conv radius plus one window per attention block as the margin (capped).
_CONTEXT_CAP = 128
_FACTORY: dict[str, dict[str, Any]] = {
    "realtime": {"upsampler_alpha": 0.3},
    "stream": {"upsampler_alpha": 0.0},
    "photo": {"upsampler_alpha": 0.4, "window_size": 16},
    "pro": {"upsampler_alpha": 0.4, "window_size": 16},
}


def _has_attention(kw: dict[str, Any]) -> bool:
    return kw["variant"] in ("photo", "pro") and kw["attention_mode"] is not None and not kw["export_safe"]


def _context(kw: dict[str, Any]) -> int:
    scale, variant = int(kw["scale"]), str(kw["variant"])
    per_block = {"realtime": 1, "stream": 3 + 1, "photo": 1, "pro": 1}[variant]
    if _has_attention(kw):
        per_block += int(kw["window_size"])
    n = int(kw["num_groups"]) * int(kw["num_blocks"])
    detail = 1 + n * per_block + 1 + 1 + math.ceil(1 / scale)  # conv_in, body, conv_mid, up conv, conv_out (HR)
    base = (3 if float(kw["upsampler_alpha"]) > 0 else 0) + math.ceil(2 / scale)
    return min(_CONTEXT_CAP, max(detail, base))


def _describe(kw: dict[str, Any]) -> ArchSpec:
    scale = int(kw["scale"])
    glob = _has_attention(kw) or kw["variant"] == "pro"
    return ArchSpec(
        id="paragonsr2",
        family="ParagonSR2",
        upstream_class="ParagonSR2",
        tasks=("upscale",) if scale > 1 else ("restore",),
        scale=scale,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        # Designed for fp16 deployment: RMSNorm statistics in float32, the stream gate product clamped to fp16 range.
        fp16=True,
        bf16=True,
        tiling="global" if glob else "safe",
        context=_context(kw),
        code_license="MIT",
    )


# ---------------------------------------------------------------------------------------------------------------------
# Detector: the variant from the first block's keys, widths and scale from conv_in and the pixel-shuffle conv,
# groups / blocks by counting; attention present or not from the window-attention keys. Then a meta rebuild.

_B0 = "body.0.blocks.0."


def _variant(sd: StateDict) -> str | None:
    if _B0 + "token_ca.token_dict" in sd:
        return "pro"
    if _B0 + "dw3.weight" in sd:
        return "stream"
    if _B0 + "norm.scale" in sd:
        return "photo"
    if _B0 + "conv1.weight" in sd:
        return "realtime"
    return None


def _detect(sd: StateDict) -> dict[str, Any] | None:
    need = ("base.sharp.kernel", "base.blur.h.weight", "conv_in.weight", "conv_mid.weight", "up.0.weight",
            "conv_out.weight", "detail_gain")
    if any(k not in sd for k in need):
        return None
    variant = _variant(sd)
    if variant is None:
        return None
    num_feat, in_chans = (int(n) for n in sd["conv_in.weight"].shape[:2])
    found = scale_and_out_channels(int(sd["up.0.weight"].shape[0]), (num_feat,))
    if found is None:
        return None
    kwargs: dict[str, Any] = {
        "scale": found[0], "in_chans": in_chans, "num_feat": num_feat,
        "num_groups": count_indexed(sd, "body.{}.blocks.0."), "num_blocks": count_indexed(sd, "body.0.blocks.{}."),
        "variant": variant, **_FACTORY[variant],
    }
    if variant in ("photo", "pro"):
        attn_key = _B0 + ("attn.qkv.weight" if variant == "photo" else "window_attn.qkv.weight")
        kwargs["export_safe"] = attn_key not in sd
    return kwargs if same_keys_and_shapes(lambda: ParagonSR2(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="paragonsr2", family="ParagonSR2", cls=ParagonSR2, describe=_describe, detect=_detect),
)
