"""RHA: Residual Hybrid Attention super-resolution (rewaifu/resselt `resselt/archs/rha/arch.py`, MIT).

A MambaOut-style gated CNN whose token mixer splits channels in two: one half goes through OmniShift (a
re-parameterisable 1/3/5 depthwise conv + identity), the other through max-pool(down) -> FocusedLinearAttention in
8x8 windows (alternately shifted by half a window with a cyclic roll) -> bilinear upsampling. Keyword names,
defaults and state-dict keys match upstream's `RHA`, so resselt checkpoints load strictly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from .layers.detect import buffer_value, list_length, ratio_for, same_keys_and_shapes, scale_and_out_channels
from .layers.norm import LayerNorm2d
from .layers.padding import pad_to_multiple
from .layers.precision import LOW_PRECISION
from .layers.reparam import Reparameterizable, fusion_dtype, set_fused
from .layers.uniupsample import SAMPLE_MODS as _SAMPLE_MODS
from .layers.uniupsample import UniUpsample as _UniUpsample
from .layers.window import window_partition, window_reverse
from .spec import ArchEntry, ArchSpec, StateDict, Task

SampleMods = Literal["conv", "pixelshuffledirect", "pixelshuffle", "nearest+conv", "dysample"]


class UniUpsample(_UniUpsample):
    """resselt's upsampler zoo (layers.uniupsample, version 2); its DySample refuses in_channels == groups too."""

    def __init__(self, upsample: str, scale: int = 2, in_dim: int = 64, out_dim: int = 3, mid_dim: int = 64,
                 group: int = 4) -> None:
        if upsample == "dysample" and scale > 1 and mid_dim <= group:
            raise ValueError(f"DySample needs more than {group} channels, got {mid_dim}")
        super().__init__(upsample, scale, in_dim, out_dim, mid_dim, group)


class FocusedLinearAttention(nn.Module):
    """FLatten-Transformer's focused linear attention inside non-overlapping windows of `window_size`^2 tokens.

    Input and output are (B, C, H, W) with H, W multiples of the window. Each window is attended independently
    (linear attention with a ReLU feature map sharpened by the power `focusing_factor`, plus a depthwise conv of V
    inside the window). The kernel maths runs in float32 for half inputs: q**3 and its norms overflow float16 for
    modest activations, and the 1e-6 guards are below float16's normal range.
    """

    def __init__(
        self,
        dim: int = 64,
        window_size: int = 8,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        focusing_factor: int = 3,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.focusing_factor = focusing_factor
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)  # unused upstream as well; kept for parity
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        hd = self.head_dim
        self.dwc = nn.Conv2d(hd, hd, kernel_size, groups=hd, padding=kernel_size // 2)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.positional_encoding = nn.Parameter(torch.zeros(1, window_size**2, dim))

    def _focus(self, t: torch.Tensor) -> torch.Tensor:
        # Raise to the focusing power, then restore each token's original norm.
        norm = t.norm(dim=-1, keepdim=True)
        t = t**self.focusing_factor
        return t / t.norm(dim=-1, keepdim=True) * norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        ws, nh, hd = self.window_size, self.num_heads, self.head_dim
        n = ws * ws
        # (b, c, h, w) -> (b * windows, n, c), tokens in row-major order inside each window
        t = window_partition(x.permute(0, 2, 3, 1), ws).reshape(-1, n, c)
        nw = t.shape[0]
        q, k, v = self.qkv(t).reshape(nw, n, 3, c).unbind(2)
        dtype = q.dtype
        if dtype in LOW_PRECISION:
            q, k, v = q.float(), k.float(), v.float()
        k = k + self.positional_encoding.to(k.dtype)
        scale = F.softplus(self.scale.to(q.dtype))
        q = self._focus((F.relu(q) + 1e-6) / scale)
        k = self._focus((F.relu(k) + 1e-6) / scale)
        q, k, v = (u.reshape(nw, n, nh, hd).transpose(1, 2) for u in (q, k, v))  # (nw, heads, n, hd)
        z = 1.0 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
        kv = (k.transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)
        y = (q @ kv * z).transpose(1, 2).reshape(nw, n, c).to(dtype)
        # depthwise conv of V inside each window (zero padding at the window border), heads share the kernel
        vmap = v.to(dtype).reshape(nw * nh, ws, ws, hd).permute(0, 3, 1, 2)
        y = y + self.dwc(vmap).reshape(nw, c, n).transpose(1, 2)
        y = self.proj_drop(self.proj(y))
        return window_reverse(y, ws, h, w).permute(0, 3, 1, 2).contiguous()


class OmniShift(Reparameterizable):
    """alpha1 * x + alpha2 * dw1x1(x) + alpha3 * dw3x3(x) + alpha4 * dw5x5(x) while training; one dw5x5 in eval.

    The branches are all "same"-padded depthwise convs, so their sum is exactly one 5x5 depthwise conv with the
    smaller kernels zero-padded to 5x5 and alpha1 on the centre tap (`conv5x5_reparam`). Upstream fuses on
    `.eval()` only; we fuse on `.eval()` and after every `load_state_dict` (so stored `conv5x5_reparam.*` never
    matter, as upstream overwrites them on `.eval()` too), whatever the order of load and eval. Direct edits of
    the branch weights while in eval need another `.eval()` or `fuse()`.
    """

    def __init__(self, dim: int = 48) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(dim, dim, 1, groups=dim)
        self.conv3x3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.conv5x5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.alpha1 = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.alpha2 = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.alpha3 = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.alpha4 = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.conv5x5_reparam = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        return (
            self.alpha1 * x
            + self.alpha2 * self.conv1x1(x)
            + self.alpha3 * self.conv3x3(x)
            + self.alpha4 * self.conv5x5(x)
        )

    def fuse(self) -> None:
        """Write the single depthwise 5x5 equal to the four branches into conv5x5_reparam."""
        w5 = self.conv5x5.weight
        dt = fusion_dtype(w5.device)
        with torch.inference_mode(False), torch.no_grad():
            alphas = (self.alpha1, self.alpha2, self.alpha3, self.alpha4)
            a1, a2, a3, a4 = (a.to(dt).reshape(-1, 1, 1, 1) for a in alphas)
            weight = a4 * w5.to(dt)
            weight[:, :, 1:4, 1:4] += a3 * self.conv3x3.weight.to(dt)
            weight[:, :, 2:3, 2:3] += a2 * self.conv1x1.weight.to(dt) + a1
            b1, b3, b5 = self.conv1x1.bias, self.conv3x3.bias, self.conv5x5.bias
            assert b1 is not None and b3 is not None and b5 is not None
            bias = a2.flatten() * b1.to(dt) + a3.flatten() * b3.to(dt) + a4.flatten() * b5.to(dt)
            assert self.conv5x5_reparam.bias is not None
            set_fused(self.conv5x5_reparam.weight, weight)
            set_fused(self.conv5x5_reparam.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x) if self.training else self.conv5x5_reparam(x)


class Shift(nn.Module):
    """Cyclic roll of both spatial axes (the window shift; no attention mask, so it wraps around the image)."""

    def __init__(self, shift: int = 4) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, shifts=(self.shift, self.shift), dims=(2, 3))


class HybridAttention(nn.Module):
    """Half the channels through OmniShift, half through pooled windowed attention; 1x1 + Mish gate on the input."""

    def __init__(self, dim: int = 64, down: int = 8, shift: int = 0, window_size: int = 8) -> None:
        super().__init__()
        self.att = nn.Sequential(
            nn.MaxPool2d(down, down) if down > 1 else nn.Identity(),
            Shift(-shift) if shift else nn.Identity(),
            FocusedLinearAttention(dim // 2, window_size),
            Shift(shift) if shift else nn.Identity(),
            nn.Upsample(scale_factor=down, mode="bilinear") if down > 1 else nn.Identity(),
        )
        self.conv = OmniShift(dim // 2)
        self.aggr = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return self.aggr(torch.cat([self.conv(x1), self.att(x2)], dim=1)) * x


class GatedCNNBlock(nn.Module):
    """MambaOut gated CNN unit: LN -> 3x3 -> split (gate, identity part, mixer part) -> gated 3x3, plus the skip."""

    def __init__(
        self,
        dim: int = 64,
        expansion_ratio: float = 1.5,
        conv_ratio: float = 1.0,
        down: int = 1,
        shift: int = 0,
        window_size: int = 8,
    ) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        if hidden < conv_channels:
            raise ValueError(f"expansion_ratio {expansion_ratio} gives {hidden} hidden channels < {conv_channels}")
        self.fc1 = nn.Conv2d(dim, hidden * 2, 3, 1, 1)
        self.act = nn.Mish()
        self.split_indices = [hidden, hidden - conv_channels, conv_channels]
        self.conv = HybridAttention(dim, down, shift, window_size)
        self.fc2 = nn.Conv2d(hidden, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split_indices, dim=1)
        y = self.act(self.fc2(self.act(g) * torch.cat((i, self.conv(c)), dim=1)))
        return y + x


class GatedGroup(nn.Module):
    """res_blocks gated blocks (every second one with shifted windows), OmniShift, 1x1 conv, plus the skip."""

    def __init__(
        self,
        res_blocks: int = 6,
        dim: int = 64,
        down_sample: int = 4,
        expansion_ratio: float = 1.5,
        window_size: int = 8,
    ) -> None:
        super().__init__()
        self.register_buffer("down_sample", torch.tensor(down_sample, dtype=torch.uint8))
        blocks: list[nn.Module] = [
            GatedCNNBlock(
                dim,
                down=down_sample,
                expansion_ratio=expansion_ratio,
                shift=0 if i % 2 == 0 else window_size // 2,
                window_size=window_size,
            )
            for i in range(res_blocks)
        ]
        self.body = nn.Sequential(*blocks, OmniShift(dim), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class RHA(nn.Module):
    """Residual Hybrid Attention SR network.

    The input is reflect-padded (bottom/right) to a multiple of `pad` = max(down_list) * window_size (times the
    unshuffle factor) and the output cropped to (H * scale, W * scale). `unshuffle_mod` (scale 1 or 2 only)
    pixel-unshuffles the input and runs a x4 network.

    Differences from upstream: `unshuffle_mod=True` with scale >= 4 is refused (upstream builds a model with a
    PixelUnshuffle(0) that cannot run), and with unshuffle_mod the output is cropped to the true scale (upstream
    crops to 4x the input size, leaving the padding in the output when H or W is not a multiple of `pad`; on
    multiples the two agree).
    """

    def __init__(
        self,
        *,
        dim: int = 64,
        scale: int = 4,
        in_ch: int = 3,
        out_ch: int = 3,
        mid_dim: int = 32,
        down_list: Sequence[int] = (8, 4),
        expansion_ratio: float = 1.5,
        group_blocks: int = 4,
        res_blocks: int = 6,
        upsample: SampleMods = "pixelshuffledirect",
        unshuffle_mod: bool = False,
        window_size: int = 8,
    ) -> None:
        super().__init__()
        down_list = [int(d) for d in down_list]
        if not down_list:
            raise ValueError("down_list must not be empty")
        self.upscale = int(scale)  # the true output scale
        unshuffle = 0
        if unshuffle_mod:
            if scale == 3:
                raise ValueError("Unshuffle_mod does not support 3x")
            if scale >= 4:
                raise ValueError("unshuffle_mod needs scale 1 or 2 (upstream cannot run it at scale >= 4)")
            unshuffle = 4 // scale
            self.register_buffer("unshuffle", torch.tensor(unshuffle, dtype=torch.uint8))
            scale = 4
        self.scale = scale  # the network's internal scale, as upstream
        self.pad = (unshuffle if unshuffle > 0 else 1) * max(down_list) * window_size
        self.to_feat: nn.Module = (
            nn.Sequential(nn.PixelUnshuffle(unshuffle), nn.Conv2d(in_ch * unshuffle**2, dim, 3, 1, 1))
            if unshuffle_mod
            else nn.Conv2d(in_ch, dim, 3, 1, 1)
        )
        self.body = nn.Sequential(
            *[
                GatedGroup(res_blocks, dim, down_list[i % len(down_list)], expansion_ratio, window_size)
                for i in range(group_blocks)
            ]
        )
        self.to_img = UniUpsample(upsample, scale, dim, out_ch, mid_dim)
        self.apply(self._init_weights)
        for m in self.modules():  # the init above changed the branches
            if isinstance(m, OmniShift):
                m.fuse()
        # upstream's load_state_dict replaces the file's MetaUpsample/unshuffle by the model's own
        self._register_load_state_dict_pre_hook(self._keep_own_meta)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _keep_own_meta(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        key = prefix + "to_img.MetaUpsample"
        if key in state_dict:
            state_dict[key] = self.to_img.MetaUpsample
        if prefix + "unshuffle" in state_dict and hasattr(self, "unshuffle"):
            state_dict[prefix + "unshuffle"] = self.unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad, mode="reflect")
        x = self.to_feat(x)
        x = self.body(x) + x
        return self.to_img(x)[:, :, : h * self.upscale, : w * self.upscale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _pad_multiple(kw: dict[str, Any]) -> int:
    unshuffle = 4 // int(kw["scale"]) if kw["unshuffle_mod"] else 1
    return unshuffle * max(int(d) for d in kw["down_list"]) * int(kw["window_size"])


def _receptive_radius(kw: dict[str, Any]) -> int:
    """Theoretical receptive-field radius in input pixels (ignoring the cyclic wrap of shifted windows).

    Per gated block at pooling d with window w: fc1 3x3 (1) + max-pool (d - 1) + a window of w pooled pixels
    ((w - 1) * d) + bilinear upsampling (d) + fc2 3x3 (1) = (w + 1) * d + 1; the OmniShift branch (2) is shorter.
    Each group adds its OmniShift 5x5 (2); to_feat and the first upsampler conv add 1 each.
    """
    w, downs = int(kw["window_size"]), [int(d) for d in kw["down_list"]]
    u = 4 // int(kw["scale"]) if kw["unshuffle_mod"] else 1
    r = 2
    for i in range(int(kw["group_blocks"])):
        d = downs[i % len(downs)]
        r += int(kw["res_blocks"]) * ((w + 1) * d + 1) + 2
    return r * u


def _describe(kw: dict[str, Any]) -> ArchSpec:
    scale = int(kw["scale"])
    pad = _pad_multiple(kw)
    tasks: tuple[Task, ...] = ("upscale",) if scale > 1 else ("denoise",)
    return ArchSpec(
        id="rha",
        family="RHA",
        upstream_class="RHA",
        tasks=tasks,
        scale=scale,
        in_channels=int(kw["in_ch"]),
        out_channels=int(kw["out_ch"]),
        # The model reflect-pads to `pad` itself, which needs pad < H, W: any size >= pad/2 + 1 works.
        min_size=pad // 2 + 1,
        # Windows sit on a grid of window_size * down pixels from the top-left: tiles must start on it.
        multiple_of=pad,
        # The attention kernel runs in float32 inside (see FocusedLinearAttention); LayerNorm statistics too.
        fp16=True,
        bf16=True,
        channels_last=False,  # not measured
        # Windowed attention, but 8x8 windows of max-pooled pixels span 64 px at down 8, alternate blocks shift
        # them, and the shift is a cyclic roll without a mask, so pixels near one image border attend to pixels at
        # the opposite border. The theoretical receptive field (_receptive_radius: 1330 px for the default config)
        # is far larger than any useful tile margin, so tiles cannot be exact: "global", with a margin of two
        # pooled windows at the largest pooling (128 px by default) to hide seams.
        tiling="global",
        context=min(_receptive_radius(kw), 2 * pad),
        code_license="MIT",
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _shortest_period(values: list[int]) -> list[int]:
    for p in range(1, len(values) + 1):
        if all(values[i] == values[i % p] for i in range(len(values))):
            return values[:p]
    return values


def _upsampler_from_shapes(sd: StateDict, dim: int) -> tuple[str, int, int, int] | None:
    """(upsample, internal scale, out_ch, mid_dim) from the to_img layer shapes alone (when buffers are meta)."""
    convs = {int(k.split(".")[1]): tuple(v.shape) for k, v in sd.items()
             if k.startswith("to_img.") and k.endswith(".weight") and k.count(".") == 2}
    dys = next((int(k.split(".")[1]) for k in sd if k.startswith("to_img.") and k.endswith(".offset.weight")), None)
    if dys is not None:
        mid = int(sd[f"to_img.{dys}.offset.weight"].shape[1])
        n_off = int(sd[f"to_img.{dys}.offset.weight"].shape[0])
        s = math.isqrt(n_off // 8)  # 2 * groups(4) * s^2
        out_ch = int(sd[f"to_img.{dys}.end_conv.weight"].shape[0])
        return "dysample", s, out_ch, mid
    order = [convs[i] for i in sorted(convs)]
    if len(order) == 1:
        n = order[0][0]
        found = scale_and_out_channels(n)
        if found is not None and found[0] > 1:
            return "pixelshuffledirect", found[0], found[1], 32
        return "conv", 1, n, 32
    if len(order) >= 3 and order[1][1] == order[0][0] and order[1][0] in (4 * order[0][0], 9 * order[0][0]):
        mid = order[0][0]
        s = 3 if order[1][0] == 9 * mid else 2 ** (len(order) - 2)
        return "pixelshuffle", s, order[-1][0], mid
    if len(order) >= 3 and all(c[:2] == (dim, dim) for c in order[:-1]):
        return "nearest+conv", 2 ** (len(order) - 2), order[-1][0], 32  # x3 and x2 look alike: assume 2^n
    return None


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Hyperparameters from shapes; the uint8 buffers (down_sample, MetaUpsample, unshuffle) are read when they hold
    values. On the meta device (shape-only manifests) they are unknown: down_list defaults to (8, 4) and the
    upsampler is inferred from the layer shapes."""
    need = ("body.0.down_sample", "body.0.body.0.conv.att.2.positional_encoding", "body.0.body.0.fc1.weight",
            "to_img.MetaUpsample")
    if any(k not in sd for k in need):
        return None
    unshuffle_mod = "unshuffle" in sd
    feat = sd.get("to_feat.1.weight" if unshuffle_mod else "to_feat.weight")
    if feat is None or feat.dim() != 4:
        return None
    dim, c_in = int(feat.shape[0]), int(feat.shape[1])
    group_blocks = list_length(sd, "body")
    res_blocks = list_length(sd, "body.0.body") - 2
    if group_blocks < 1 or res_blocks < 0:
        return None
    window_size = math.isqrt(int(sd["body.0.body.0.conv.att.2.positional_encoding"].shape[1]))
    hidden = int(sd["body.0.body.0.fc1.weight"].shape[0]) // 2
    ratio = ratio_for(hidden, dim)

    downs = [buffer_value(sd[f"body.{i}.down_sample"]) for i in range(group_blocks) if f"body.{i}.down_sample" in sd]
    down_list = [8, 4] if None in downs or len(downs) != group_blocks else _shortest_period([int(d) for d in downs])

    meta = sd["to_img.MetaUpsample"]
    if meta.device.type != "meta" and meta.numel() == 7:
        _, idx, scale_int, _, out_ch, mid_dim, _ = (int(v) for v in meta.tolist())
        if not 0 <= idx < len(_SAMPLE_MODS):
            return None
        upsample = _SAMPLE_MODS[idx]
    else:
        found = _upsampler_from_shapes(sd, dim)
        if found is None:
            return None
        upsample, scale_int, out_ch, mid_dim = found

    if unshuffle_mod:
        u = buffer_value(sd["unshuffle"])
        if u is None:  # meta: assume 3 input channels when the unshuffled channel count allows it
            u = next((f for f in (2, 4) if c_in == 3 * f * f), 2 if c_in % 4 == 0 and c_in != 16 else 4)
        if u not in (2, 4) or c_in % (u * u):
            return None
        in_ch, scale = c_in // (u * u), 4 // u
    else:
        in_ch, scale = c_in, scale_int

    kwargs: dict[str, Any] = {
        "dim": dim, "scale": scale, "in_ch": in_ch, "out_ch": out_ch, "mid_dim": mid_dim, "down_list": down_list,
        "expansion_ratio": ratio, "group_blocks": group_blocks, "res_blocks": res_blocks, "upsample": upsample,
        "unshuffle_mod": unshuffle_mod, "window_size": window_size,
    }
    return kwargs if same_keys_and_shapes(lambda: RHA(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (ArchEntry(id="rha", family="RHA", cls=RHA, describe=_describe, detect=_detect),)
