"""AetherNet: large-kernel depthwise CNN for super-resolution (Philip Hofmann, phhofm/aethernet, MIT per the
file header), in the two versions the seed carries, both upstream classes named `aether`:

* `aether` (`neosr/aether_arch.py`): per-stage 1x1 reductions (`fusion_convs`) concatenated into a full-width
  QuantFusion, SE channel attention with 1x1 convs;
* `aether_core` (`neosr/aether_core.py`, renamed here): stages concatenated at full width (its `fusion_convs` exist
  in the state dict but are unused), SE with Linear layers, per-sample statistics when DeploymentNorm trains.

Keyword names, defaults and state-dict keys match upstream. The quantisation stubs of upstream are inactive
unless its `prepare_qat()` is called (not provided here); they hold no state.

Re-parameterisation. Upstream fuses only on an explicit `fuse_model()`: each ReparamLargeKernelConv's large and
small depthwise kernels become one (`conv.fused_conv.*`) and every DeploymentNorm is folded into its weight/bias.
`fuse_model()` here does the same, so its state dict is upstream's fused one. A checkpoint in that layout is built
with `fused_init=True`; upstream's `fused_init=True` would still normalise with the running statistics on top of
the folded weight/bias (normalising twice), so here the norms of a `fused_init` model are folded unless
`fused_norm=False` (ours) asks for upstream's behaviour. Unfused models additionally run each large-kernel conv as
one fused conv in eval (computed on `.eval()` and after loads, not stored), which changes float32 outputs by
rounding only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.branch_fusion import sum_branches
from .layers.detect import count_indexed, pixel_shuffle_scale, ratio_for, same_keys_and_shapes
from .layers.drop import DropPath
from .layers.reparam import Reparameterizable
from .layers.upsample import is_pow2
from .spec import ArchEntry, ArchSpec, StateDict


class ReparamLargeKernelConv(Reparameterizable):
    """Depthwise lk x lk conv + sk x sk conv with separate bias parameters; or, fused, one zero-padded conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                 small_kernel: int, fused_init: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or small_kernel % 2 == 0:
            raise ValueError("Kernel sizes must be odd numbers")
        self.kernel_size, self.small_kernel, self.stride, self.groups = kernel_size, small_kernel, stride, groups
        self.padding = kernel_size // 2
        self.fused = fused_init
        if fused_init:
            self.explicit_pad = nn.ZeroPad2d(self.padding)
            self.fused_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, 0, groups=groups)
        else:
            self.lk_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, self.padding, groups=groups,
                                     bias=False)
            self.sk_conv = nn.Conv2d(in_channels, out_channels, small_kernel, stride, small_kernel // 2,
                                     groups=groups, bias=False)
            self.lk_bias = nn.Parameter(torch.zeros(out_channels))
            self.sk_bias = nn.Parameter(torch.zeros(out_channels))
            # The eval-time single conv: derived from the branches, never saved (upstream's state dict has none).
            self.register_buffer("eval_weight", torch.empty_like(self.lk_conv.weight), persistent=False)
            self.register_buffer("eval_bias", torch.empty(out_channels), persistent=False)
            self.fuse()

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one lk x lk conv equal to both branches, in the fusion dtype."""
        return sum_branches([self.lk_conv.weight, self.sk_conv.weight], [self.lk_bias, self.sk_bias],
                            self.kernel_size)

    def fuse(self) -> None:
        if self.fused:
            return
        with torch.inference_mode(False), torch.no_grad():
            w, b = self.fused_kernel()
            self.eval_weight = w.to(self.lk_conv.weight.dtype)
            self.eval_bias = b.to(self.lk_conv.weight.dtype)

    def to_fused_layout(self) -> None:
        """Upstream's `fuse()`: replace the branches by `fused_conv` (changes the state-dict keys)."""
        if self.fused:
            return
        w, b = self.fused_kernel()
        conv = nn.Conv2d(self.lk_conv.in_channels, self.lk_conv.out_channels, self.kernel_size, self.stride, 0,
                         groups=self.groups).to(self.lk_conv.weight.device, self.lk_conv.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)  # type: ignore[union-attr]
        del self.lk_conv, self.sk_conv, self.lk_bias, self.sk_bias, self.eval_weight, self.eval_bias
        self.explicit_pad = nn.ZeroPad2d(self.padding)
        self.fused_conv = conv
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.fused_conv(self.explicit_pad(x))
        if not self.training:
            return F.conv2d(x, self.eval_weight, self.eval_bias, self.stride, self.padding, 1, self.groups)
        return (self.lk_conv(x) + self.lk_bias.view(1, -1, 1, 1)
                + self.sk_conv(x) + self.sk_bias.view(1, -1, 1, 1))


class DeploymentNorm(nn.Module):
    """Batch-norm-like affine normalisation with running statistics ([1, C, 1, 1] buffers); folded when fused."""

    def __init__(self, channels: int, *, per_sample: bool = False, fused: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = 1e-5
        self.per_sample = per_sample  # aether_core: training statistics per sample over (C, H, W)
        self.fused = fused
        self.register_buffer("running_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("running_var", torch.ones(1, channels, 1, 1))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return x * self.weight + self.bias
        if self.training:
            dims = (1, 2, 3) if self.per_sample else (0, 2, 3)
            mean = x.mean(dim=dims, keepdim=True)
            var = x.var(dim=dims, keepdim=True, unbiased=False)
            with torch.no_grad():
                m, v = (mean.mean(0, keepdim=True), var.mean(0, keepdim=True)) if self.per_sample else (mean, var)
                self.running_mean.mul_(0.9).add_(m, alpha=0.1)
                self.running_var.mul_(0.9).add_(v, alpha=0.1)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias

    def fuse(self) -> None:
        """Fold the running statistics into weight / bias (upstream's `fuse()`)."""
        if self.fused:
            return
        with torch.no_grad():
            scale = self.weight / torch.sqrt(self.running_var + self.eps)
            self.bias.copy_(self.bias - self.running_mean * scale)
            self.weight.copy_(scale)
        self.fused = True


class GatedConvFFN(nn.Module):
    """conv_out(silu(conv_gate(x) / temperature) * conv_main(x)), dropout after the product and the output."""

    def __init__(self, in_channels: int, mlp_ratio: float = 2.0, drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(in_channels * mlp_ratio)
        self.conv_gate = nn.Conv2d(in_channels, hidden, 1)
        self.conv_main = nn.Conv2d(in_channels, hidden, 1)
        self.drop1 = nn.Dropout(drop)
        self.conv_out = nn.Conv2d(hidden, in_channels, 1)
        self.drop2 = nn.Dropout(drop)
        self.temperature = nn.Parameter(torch.tensor(0.07))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.conv_gate(x) / self.temperature) * self.conv_main(x)
        return self.drop2(self.conv_out(self.drop1(y)))


class DynamicChannelScaling(nn.Module):
    """Squeeze-and-excitation, reduction 8, ReLU: 1x1 convs (aether) or Linear layers (aether_core)."""

    def __init__(self, dim: int, reduction: int = 8, *, linear: bool = False) -> None:
        super().__init__()
        mid = dim // reduction
        self.linear = linear
        if linear:
            self.fc = nn.Sequential(nn.Linear(dim, mid), nn.ReLU(), nn.Linear(mid, dim), nn.Sigmoid())
        else:
            self.fc = nn.Sequential(nn.Conv2d(dim, mid, 1), nn.ReLU(), nn.Conv2d(mid, dim, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3), keepdim=not self.linear)
        s = self.fc(y)
        return x * (s.view(x.shape[0], x.shape[1], 1, 1) if self.linear else s)


class SpatialAttention(nn.Module):
    """x * sigmoid(conv7x7([max_c x, mean_c x]))."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class AetherBlock(nn.Module):
    """x + drop_path(spatial(channel(ffn(norm(large_kernel_conv(x))))))."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float, drop_path: float, lk_kernel: int, sk_kernel: int,
                 fused_init: bool, fused_norm: bool, use_channel_attn: bool, use_spatial_attn: bool,
                 core: bool) -> None:
        super().__init__()
        self.conv = ReparamLargeKernelConv(dim, dim, lk_kernel, 1, dim, sk_kernel, fused_init)
        self.norm = DeploymentNorm(dim, per_sample=core, fused=fused_norm)
        self.ffn = GatedConvFFN(dim, mlp_ratio, drop)
        self.channel_attn: nn.Module = DynamicChannelScaling(dim, linear=core) if use_channel_attn else nn.Identity()
        self.spatial_attn: nn.Module = SpatialAttention() if use_spatial_attn else nn.Identity()
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial_attn(self.channel_attn(self.ffn(self.norm(self.conv(x)))))
        return x + self.drop_path(y)


class QuantFusion(nn.Module):
    """1x1 conv of the concatenated stage features plus a learned offset (`error_comp`)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.fusion_conv = nn.Conv2d(channels, out_channels, 1)
        self.error_comp = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # Upstream resizes features of other sizes to the first one; every stage keeps the input size.
        return self.fusion_conv(torch.cat(features, dim=1) + self.error_comp)


class AdaptiveUpsample(nn.Module):
    """conv to 4C + PixelShuffle(2) per factor of two, or conv to 9C + PixelShuffle(3); C = max(32, in // (s // 2))."""

    def __init__(self, scale: int, in_channels: int) -> None:
        super().__init__()
        self.out_channels = max(32, in_channels // max(1, scale // 2))
        oc = self.out_channels
        self.blocks = nn.ModuleList()
        if is_pow2(scale):
            for i in range(int(math.log2(scale))):
                self.blocks.extend([nn.Conv2d(in_channels if i == 0 else oc, 4 * oc, 3, 1, 1), nn.PixelShuffle(2)])
        elif scale == 3:
            self.blocks.extend([nn.Conv2d(in_channels, 9 * oc, 3, 1, 1), nn.PixelShuffle(3)])
        else:
            raise ValueError(f"Unsupported scale: {scale}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _AetherBase(nn.Module):
    CORE = False

    def __init__(
        self,
        *,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: tuple[int, ...] | list[int] = (4, 4, 4, 4),
        mlp_ratio: float = 2.0,
        drop: float = 0.0,
        drop_path_rate: float = 0.1,
        lk_kernel: int = 11,
        sk_kernel: int = 3,
        scale: int = 4,
        img_range: float = 1.0,
        fused_init: bool = False,
        quantize_residual: bool = True,
        use_channel_attn: bool = True,
        use_spatial_attn: bool = True,
        fused_norm: bool | None = None,
    ) -> None:
        super().__init__()
        if scale < 2:
            # upstream's head always upsamples at least x2 (scale 1 would build a x2 model)
            raise ValueError(f"Unsupported scale: {scale}")
        core = self.CORE
        depths = [int(d) for d in depths]
        stages = len(depths)
        self.img_range = img_range
        self.scale = scale
        self.fused_init = fused_init
        self.quantize_residual = quantize_residual  # only matters for upstream's quantised training
        fold = fused_init if fused_norm is None else fused_norm
        mean = [0.5] * 3 if in_chans == 3 else [0.0 if core else 0.5]
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1))
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.fusion_convs = nn.ModuleList()
        i = 0
        for depth in depths:
            self.stages.append(nn.Sequential(*[
                AetherBlock(embed_dim, mlp_ratio, drop, rates[i + j], lk_kernel, sk_kernel, fused_init, fold,
                            use_channel_attn, use_spatial_attn, core)
                for j in range(depth)
            ]))
            i += depth
            self.fusion_convs.append(nn.Conv2d(embed_dim, embed_dim // stages, 1))
        if core:
            self.quant_fusion_layer = QuantFusion(embed_dim * stages, embed_dim)
        else:
            self.quant_fusion_layer = QuantFusion(embed_dim, embed_dim)
        self.norm = DeploymentNorm(embed_dim, per_sample=core, fused=fold)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, embed_dim // 2, 3, 1, 1), nn.LeakyReLU())
        self.upsample = AdaptiveUpsample(scale, embed_dim // 2)
        self.conv_last = nn.Conv2d(self.upsample.out_channels, in_chans, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean: torch.Tensor = self.mean  # type: ignore[assignment]
        x = self.conv_first((x - mean) * self.img_range)
        shortcut = x
        features = []
        for stage, reduce in zip(self.stages, self.fusion_convs, strict=True):
            x = stage(x)
            features.append(x if self.CORE else reduce(x))  # aether_core never uses its fusion_convs
        x = self.quant_fusion_layer(features) + shortcut
        x = self.conv_after_body(self.norm(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x / self.img_range + mean

    def fuse_model(self) -> None:
        """Upstream's deployment fusion: fused large-kernel convs (new keys), folded norms; `fused_init` after."""
        if self.fused_init:
            return
        for m in list(self.modules()):
            if isinstance(m, ReparamLargeKernelConv):
                m.to_fused_layout()
            elif isinstance(m, DeploymentNorm):
                m.fuse()
        self.fused_init = True


class aether(_AetherBase):  # noqa: N801 (upstream class name)
    """AetherNet (neosr/aether_arch.py)."""


class aether_core(_AetherBase):  # noqa: N801 (upstream class `aether` of neosr/aether_core.py)
    """AetherNet core (neosr/aether_core.py): full-width fusion, Linear SE, per-sample training statistics."""

    CORE = True


# ---------------------------------------------------------------------------------------------------------------------
# Descriptor. The SE channel attention pools over the whole map ("global"); without it every operator is local
# (DeploymentNorm uses running statistics in eval), so tiles are exact with the receptive radius as margin:
# conv_first (1) + per block lk // 2 (+ 3 for the 7x7 spatial attention) + conv_after_body (1) + the conv before the
# upsampler (1) + one 3x3 per upsampling step (each at least 1 input pixel) + conv_last (1). Capped when global.
_CONTEXT_CAP = 128


def _context(kw: dict[str, Any]) -> int:
    scale = int(kw["scale"])
    steps = 1 if scale == 3 else max(1, int(math.log2(scale)))
    per_block = int(kw["lk_kernel"]) // 2 + (3 if kw["use_spatial_attn"] else 0)
    radius = 1 + sum(int(d) for d in kw["depths"]) * per_block + 1 + 1 + steps + 1
    return min(_CONTEXT_CAP, radius) if kw["use_channel_attn"] else radius


def _describe_for(id_: str) -> Any:
    def describe(kw: dict[str, Any]) -> ArchSpec:
        return ArchSpec(
            id=id_,
            family="Aether",
            upstream_class="aether",
            tasks=("upscale",),
            scale=int(kw["scale"]),
            in_channels=int(kw["in_chans"]),
            out_channels=int(kw["in_chans"]),
            # Upstream exports fp16 ONNX/TensorRT; the gate divides by a small temperature (x14 at init).
            fp16=True,
            bf16=True,
            tiling="global" if kw["use_channel_attn"] else "safe",
            context=_context(kw),
            code_license="MIT",
        )
    return describe


# ---------------------------------------------------------------------------------------------------------------------
# Detectors: widths from conv_first, depths by counting, kernels from the first block's convs (fused or not), the
# attentions from their keys, the scale from the upsampler's convs; the version from the fusion layer's width (full
# width = aether_core). Then a meta rebuild. With a single stage both versions have the same keys and shapes: both
# detectors accept, and the loader reports the ambiguity.

_B0 = "stages.0.0."


def _detect_for(core: bool) -> Any:
    cls = aether_core if core else aether

    def detect(sd: StateDict) -> dict[str, Any] | None:
        need = ("mean", "conv_first.weight", "quant_fusion_layer.fusion_conv.weight", "conv_after_body.weight",
                "upsample.blocks.0.weight", "conv_last.weight", _B0 + "ffn.conv_gate.weight")
        if any(k not in sd for k in need):
            return None
        dim, in_chans = (int(n) for n in sd["conv_first.weight"].shape[:2])
        depths = [count_indexed(sd, f"stages.{s}.{{}}.") for s in range(count_indexed(sd, "stages.{}.0."))]
        fused = _B0 + "conv.fused_conv.weight" in sd
        if fused:
            lk, sk = int(sd[_B0 + "conv.fused_conv.weight"].shape[-1]), 3
        elif _B0 + "conv.lk_conv.weight" in sd and _B0 + "conv.sk_conv.weight" in sd:
            lk, sk = int(sd[_B0 + "conv.lk_conv.weight"].shape[-1]), int(sd[_B0 + "conv.sk_conv.weight"].shape[-1])
        else:
            return None
        hidden = int(sd[_B0 + "ffn.conv_gate.weight"].shape[0])
        up_convs = [k for k in sd if k.startswith("upsample.blocks.") and k.endswith(".weight")]
        oc = int(sd["conv_last.weight"].shape[1])
        first = pixel_shuffle_scale(int(sd["upsample.blocks.0.weight"].shape[0]), oc)
        if first == 3 and len(up_convs) == 1:
            scale = 3
        elif first == 2:
            scale = 2 ** len(up_convs)
        else:
            return None
        kwargs: dict[str, Any] = {
            "in_chans": in_chans, "embed_dim": dim, "depths": depths,
            "mlp_ratio": 2.0 if hidden == 2 * dim else ratio_for(hidden, dim),
            "lk_kernel": lk, "sk_kernel": sk, "scale": scale, "fused_init": fused,
            "use_channel_attn": _B0 + "channel_attn.fc.0.weight" in sd,
            "use_spatial_attn": _B0 + "spatial_attn.conv.weight" in sd,
        }
        return kwargs if same_keys_and_shapes(lambda: cls(**kwargs), sd) else None

    return detect


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="aether", family="Aether", cls=aether, describe=_describe_for("aether"), detect=_detect_for(False)),
    ArchEntry(id="aether_core", family="Aether", cls=aether_core, describe=_describe_for("aether_core"),
              detect=_detect_for(True)),
)
