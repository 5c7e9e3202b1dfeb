"""StyleGAN2 generators (Karras et al., CVPR 2020) as BasicSR ports them: the GAN prior of GFPGAN-style restoration.

Semantics, keyword names and state-dict keys follow BasicSR (Apache-2.0) `basicsr/archs/stylegan2_arch.py`
(`StyleGAN2Generator`) and `stylegan2_bilinear_arch.py` (`StyleGAN2GeneratorBilinear`), vendored in
korvin2000/arch_research as `others/stylegan2_arch.py` / `others/stylegan2_bilinear_arch.py`, so BasicSR's converted
FFHQ weights and GFPGAN's StyleGAN2 prior load strictly.

Differences from upstream, all for inference:

* `forward(z)` takes the style code (B, num_style_feat) and returns only the image, (B, 3, out_size, out_size) in
  [-1, 1]. It uses the registered `noises.noise{i}` buffers, so it is deterministic; upstream's default
  (`randomize_noise=True`, fresh normal noise every call) is available through the `randomize_noise` attribute or
  argument. The upstream call, `forward(styles, input_is_latent, noise, randomize_noise, ...)` returning
  (image, latent or None), is `forward_styles`, with upstream's defaults.
* The style MLP, the modulation and the demodulation run in float32 whatever the model dtype (the demodulation's
  sum of squares and its 1e-8 epsilon are not half-precision friendly); convolutions run in the model's dtype.
* The BasicSR CUDA ops (fused_act, upfirdn2d) are replaced by archs.ops.upfirdn2d: our own CUDA kernels on the GPU,
  the PyTorch reference (= BasicSR's upfirdn2d_native and the formula) elsewhere.
* Two-style mixing without an inject_index draws it with torch's generator instead of Python's `random`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, same_keys_and_shapes
from .ops.upfirdn2d import fused_leaky_relu, upfirdn2d
from .spec import ArchEntry, ArchSpec, StateDict

_RESOLUTIONS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _channels(channel_multiplier: float, narrow: float) -> dict[int, int]:
    """Feature channels per resolution, as upstream's `channels` dict (int() truncation included)."""
    return {
        4: int(512 * narrow), 8: int(512 * narrow), 16: int(512 * narrow), 32: int(512 * narrow),
        64: int(256 * channel_multiplier * narrow), 128: int(128 * channel_multiplier * narrow),
        256: int(64 * channel_multiplier * narrow), 512: int(32 * channel_multiplier * narrow),
        1024: int(16 * channel_multiplier * narrow),
    }


def make_resample_kernel(k: Sequence[float]) -> torch.Tensor:
    """2-D FIR kernel: the outer product of a 1-D kernel with itself, normalised to sum 1."""
    t = torch.tensor(list(k), dtype=torch.float32)
    if t.ndim == 1:
        t = t[None, :] * t[:, None]
    return t / t.sum()


class NormStyleCode(nn.Module):
    """Pixel norm of the style code: x / sqrt(mean(x^2) + 1e-8) over dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class UpFirDnUpsample(nn.Module):
    """x`factor` upsampling by zero insertion and the FIR kernel (times factor^2 to keep the DC gain)."""

    kernel: torch.Tensor

    def __init__(self, resample_kernel: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        # Not persistent: upstream keeps it as a plain attribute, out of the state dict.
        self.register_buffer("kernel", make_resample_kernel(resample_kernel) * factor**2, persistent=False)
        self.factor = factor
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class UpFirDnSmooth(nn.Module):
    """The FIR blur that accompanies a stride-2 (transposed) convolution in ModulatedConv2d."""

    kernel: torch.Tensor

    def __init__(self, resample_kernel: Sequence[float], upsample_factor: int = 1, downsample_factor: int = 1,
                 kernel_size: int = 1) -> None:
        super().__init__()
        kernel = make_resample_kernel(resample_kernel)
        if upsample_factor > 1:
            kernel = kernel * upsample_factor**2
        self.register_buffer("kernel", kernel, persistent=False)
        k = kernel.shape[0]
        if upsample_factor > 1:
            p = (k - upsample_factor) - (kernel_size - 1)
            self.pad = ((p + 1) // 2 + upsample_factor - 1, p // 2 + 1)
        elif downsample_factor > 1:
            p = (k - downsample_factor) + (kernel_size - 1)
            self.pad = ((p + 1) // 2, p // 2)
        else:
            raise ValueError("UpFirDnSmooth needs upsample_factor > 1 or downsample_factor > 1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=1, down=1, pad=self.pad)


class Interpolate(nn.Module):
    """The bilinear variant's resampling: F.interpolate by 2 (or 1/2), align_corners=False unless nearest."""

    def __init__(self, scale_factor: float, mode: str) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        align = None if self.mode == "nearest" else False
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=align)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weight * lr_mul / sqrt(in), bias * lr_mul; optional fused lrelu.

    Runs in the input's dtype (the generator feeds it float32 style codes whatever the parameters' dtype).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, bias_init_val: float = 0,
                 lr_mul: float = 1, activation: str | None = None) -> None:
        super().__init__()
        if activation not in ("fused_lrelu", None):
            raise ValueError(f"EqualLinear: activation must be 'fused_lrelu' or None, got {activation!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.lr_mul = lr_mul
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_channels,), float(bias_init_val))) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.scale
        bias = None if self.bias is None else self.bias.to(x.dtype) * self.lr_mul
        if self.activation == "fused_lrelu":
            return fused_leaky_relu(F.linear(x, weight), bias)
        return F.linear(x, weight, bias)


class FusedLeakyReLU(nn.Module):
    """leaky_relu(x + bias, 0.2) * sqrt(2) with a learned per-channel bias (BasicSR's `activate` modules)."""

    def __init__(self, channel: int, negative_slope: float = 0.2, scale: float = math.sqrt(2)) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class ModulatedConv2d(nn.Module):
    """Conv whose weight is scaled per sample by the style (modulation) and normalised per output (demodulation).

    sample_mode 'upsample' is a stride-2 transposed conv followed by the FIR blur (StyleGAN2), or, when
    `interpolation_mode` is set (the bilinear variant), F.interpolate x2 followed by a plain conv; 'downsample'
    mirrors it. No bias (StyleConv's activation and ToRGB carry it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_style_feat: int,
                 demodulate: bool = True, sample_mode: str | None = None,
                 resample_kernel: Sequence[float] = (1, 3, 3, 1), eps: float = 1e-8,
                 interpolation_mode: str | None = None) -> None:
        super().__init__()
        if sample_mode not in ("upsample", "downsample", None):
            raise ValueError(f"ModulatedConv2d: sample_mode must be 'upsample', 'downsample' or None, "
                             f"got {sample_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.sample_mode = sample_mode
        self.eps = eps
        self.interpolation_mode = interpolation_mode
        self.resample: nn.Module | None = None
        if sample_mode is not None and interpolation_mode is not None:
            self.resample = Interpolate(2.0 if sample_mode == "upsample" else 0.5, interpolation_mode)
        elif sample_mode == "upsample":
            self.smooth = UpFirDnSmooth(resample_kernel, upsample_factor=2, kernel_size=kernel_size)
        elif sample_mode == "downsample":
            self.smooth = UpFirDnSmooth(resample_kernel, downsample_factor=2, kernel_size=kernel_size)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.modulation = EqualLinear(num_style_feat, in_channels, bias=True, bias_init_val=1, lr_mul=1)
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.padding = kernel_size // 2

    def modulated_weight(self, style: torch.Tensor) -> torch.Tensor:
        """(B, out, in, k, k) per-sample weights, computed in float32."""
        b = style.shape[0]
        s = self.modulation(style.float()).view(b, 1, self.in_channels, 1, 1)
        weight = self.scale * self.weight.float() * s
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4], keepdim=True) + self.eps)
        return weight

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.kernel_size
        weight = self.modulated_weight(style).to(x.dtype)
        # One grouped conv over the batch folded into channels applies each sample's own weights.
        if self.resample is None and self.sample_mode == "upsample":
            wt = weight.transpose(1, 2).reshape(b * c, self.out_channels, k, k)
            out = F.conv_transpose2d(x.reshape(1, b * c, h, w), wt, stride=2, groups=b)
            return self.smooth(out.view(b, self.out_channels, *out.shape[2:]))
        if self.resample is None and self.sample_mode == "downsample":
            x = self.smooth(x)
            out = F.conv2d(x.reshape(1, b * c, *x.shape[2:]), weight.view(b * self.out_channels, c, k, k),
                           stride=2, groups=b)
            return out.view(b, self.out_channels, *out.shape[2:])
        if self.resample is not None:
            x = self.resample(x)
        out = F.conv2d(x.reshape(1, b * c, *x.shape[2:]), weight.view(b * self.out_channels, c, k, k),
                       padding=self.padding, groups=b)
        return out.view(b, self.out_channels, *out.shape[2:])


class StyleConv(nn.Module):
    """Modulated conv, scaled noise injection (learned scalar `weight`), fused bias + leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_style_feat: int,
                 demodulate: bool = True, sample_mode: str | None = None,
                 resample_kernel: Sequence[float] = (1, 3, 3, 1), interpolation_mode: str | None = None) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, kernel_size, num_style_feat,
                                              demodulate=demodulate, sample_mode=sample_mode,
                                              resample_kernel=resample_kernel, interpolation_mode=interpolation_mode)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style)
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        out = out + (self.weight * noise).to(out.dtype)
        return self.activate(out)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB plus bias, added to the upsampled RGB of the previous scale."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True,
                 resample_kernel: Sequence[float] = (1, 3, 3, 1), interpolation_mode: str | None = None) -> None:
        super().__init__()
        self.upsample: nn.Module | None = None
        if upsample:
            self.upsample = (UpFirDnUpsample(resample_kernel, factor=2) if interpolation_mode is None
                             else Interpolate(2.0, interpolation_mode))
        self.modulated_conv = ModulatedConv2d(in_channels, 3, kernel_size=1, num_style_feat=num_style_feat,
                                              demodulate=False, sample_mode=None,
                                              interpolation_mode=interpolation_mode)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample is not None:
                skip = self.upsample(skip)
            out = out + skip
        return out


class ConstantInput(nn.Module):
    """The learned 4x4 starting feature map, repeated over the batch."""

    def __init__(self, num_channel: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, num_channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.repeat(batch, 1, 1, 1)


class _StyleGAN2Base(nn.Module):
    """The generator body shared by both variants; `interpolation_mode` None means FIR (upfirdn2d) resampling."""

    def __init__(self, *, out_size: int, num_style_feat: int, num_mlp: int, channel_multiplier: float,
                 resample_kernel: Sequence[float], lr_mlp: float, narrow: float,
                 interpolation_mode: str | None) -> None:
        super().__init__()
        if out_size not in _RESOLUTIONS:
            raise ValueError(f"out_size must be a power of two from 4 to 1024, got {out_size}")
        channels = _channels(channel_multiplier, narrow)
        if min(channels[r] for r in _RESOLUTIONS if r <= out_size) < 1:
            raise ValueError(f"narrow={narrow}, channel_multiplier={channel_multiplier} leave a layer without channels")
        self.num_style_feat = num_style_feat
        self.channels = channels
        # Forward's noise: the stored buffers (deterministic) unless set True (upstream's default of fresh noise).
        self.randomize_noise = False
        self.style_mlp = nn.Sequential(NormStyleCode(), *(
            EqualLinear(num_style_feat, num_style_feat, bias=True, bias_init_val=0, lr_mul=lr_mlp,
                        activation="fused_lrelu") for _ in range(num_mlp)))

        conv_kw: dict[str, Any] = {"resample_kernel": resample_kernel, "interpolation_mode": interpolation_mode}
        self.constant_input = ConstantInput(channels[4], size=4)
        self.style_conv1 = StyleConv(channels[4], channels[4], 3, num_style_feat, sample_mode=None, **conv_kw)
        self.to_rgb1 = ToRGB(channels[4], num_style_feat, upsample=False, **conv_kw)

        self.log_size = int(math.log2(out_size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise{layer_idx}", torch.randn(1, 1, res, res))
        in_ch = channels[4]
        for i in range(3, self.log_size + 1):
            out_ch = channels[2**i]
            self.style_convs.append(StyleConv(in_ch, out_ch, 3, num_style_feat, sample_mode="upsample", **conv_kw))
            self.style_convs.append(StyleConv(out_ch, out_ch, 3, num_style_feat, sample_mode=None, **conv_kw))
            self.to_rgbs.append(ToRGB(out_ch, num_style_feat, upsample=True, **conv_kw))
            in_ch = out_ch

    def make_noise(self) -> list[torch.Tensor]:
        """Fresh noise maps, one per style conv layer (upstream helper)."""
        device = self.constant_input.weight.device
        noises = [torch.randn(1, 1, 4, 4, device=device)]
        for i in range(3, self.log_size + 1):
            noises += [torch.randn(1, 1, 2**i, 2**i, device=device) for _ in range(2)]
        return noises

    def get_latent(self, x: torch.Tensor) -> torch.Tensor:
        """W latent of style codes z, in float32."""
        return self.style_mlp(x.float())

    def mean_latent(self, num_latent: int) -> torch.Tensor:
        """Mean W over num_latent random codes (the truncation centre)."""
        z = torch.randn(num_latent, self.num_style_feat, device=self.constant_input.weight.device)
        return self.style_mlp(z).mean(0, keepdim=True)

    def forward_styles(
        self,
        styles: Sequence[torch.Tensor],
        input_is_latent: bool = False,
        noise: Sequence[torch.Tensor | None] | None = None,
        randomize_noise: bool = True,
        truncation: float = 1,
        truncation_latent: torch.Tensor | None = None,
        inject_index: int | None = None,
        return_latents: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Upstream's forward: one or two style codes (two = style mixing at inject_index) -> (image, latent|None).

        A style of shape (B, num_latent, C) gives one latent per layer (encoder outputs). Styles and latents are
        float32; the image comes out in the model's dtype.
        """
        if len(styles) not in (1, 2):
            raise ValueError(f"forward_styles takes one or two style tensors, got {len(styles)}")
        styles = [s.float() if input_is_latent else self.style_mlp(s.float()) for s in styles]
        if noise is None:
            noise = ([None] * self.num_layers if randomize_noise
                     else [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)])
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. mean_latent(4096))")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) == 1:
            latent = styles[0].unsqueeze(1).repeat(1, self.num_latent, 1) if styles[0].ndim < 3 else styles[0]
        else:
            if inject_index is None:
                inject_index = int(torch.randint(1, self.num_latent, ()).item())
            latent = torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                                styles[1].unsqueeze(1).repeat(1, self.num_latent - inject_index, 1)], 1)

        out = self.constant_input(latent.shape[0])
        out = self.style_conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.style_convs[::2], self.style_convs[1::2], noise[1::2],
                                                        noise[2::2], self.to_rgbs, strict=True):
            out = conv1(out, latent[:, i], noise=noise1)
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip, (latent if return_latents else None)

    def forward(self, x: torch.Tensor, *, input_is_latent: bool = False, randomize_noise: bool | None = None,
                truncation: float = 1, truncation_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Image (B, 3, out_size, out_size) in [-1, 1] from style codes z (B, num_style_feat), or from W latents
        (B, num_style_feat) / (B, num_latent, num_style_feat) when input_is_latent."""
        rand = self.randomize_noise if randomize_noise is None else randomize_noise
        image, _ = self.forward_styles([x], input_is_latent=input_is_latent, randomize_noise=rand,
                                       truncation=truncation, truncation_latent=truncation_latent)
        return image


class StyleGAN2Generator(_StyleGAN2Base):
    """StyleGAN2 generator with FIR (upfirdn2d) resampling: transposed conv + blur up, FIR-upsampled RGB skips.

    out_size is required upstream; here it defaults to 1024, the FFHQ config-f size the other defaults describe.
    """

    def __init__(self, *, out_size: int = 1024, num_style_feat: int = 512, num_mlp: int = 8,
                 channel_multiplier: float = 2, resample_kernel: Sequence[float] = (1, 3, 3, 1),
                 lr_mlp: float = 0.01, narrow: float = 1) -> None:
        super().__init__(out_size=out_size, num_style_feat=num_style_feat, num_mlp=num_mlp,
                         channel_multiplier=channel_multiplier, resample_kernel=tuple(resample_kernel),
                         lr_mlp=lr_mlp, narrow=narrow, interpolation_mode=None)


class StyleGAN2GeneratorBilinear(_StyleGAN2Base):
    """StyleGAN2 generator with F.interpolate resampling (bilinear by default) instead of upfirdn2d.

    Same state-dict keys and shapes as StyleGAN2Generator, so checkpoints cannot tell the two apart: this variant
    has no detector and is chosen by name. out_size defaults to 1024 as in StyleGAN2Generator.
    """

    def __init__(self, *, out_size: int = 1024, num_style_feat: int = 512, num_mlp: int = 8,
                 channel_multiplier: float = 2, lr_mlp: float = 0.01, narrow: float = 1,
                 interpolation_mode: str = "bilinear") -> None:
        if interpolation_mode not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(f"interpolation_mode must be 'bilinear', 'nearest' or 'bicubic', got "
                             f"{interpolation_mode!r}")
        super().__init__(out_size=out_size, num_style_feat=num_style_feat, num_mlp=num_mlp,
                         channel_multiplier=channel_multiplier, resample_kernel=(1, 3, 3, 1), lr_mlp=lr_mlp,
                         narrow=narrow, interpolation_mode=interpolation_mode)


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector
# ---------------------------------------------------------------------------------------------------------------------


def _describe(arch_id: str, upstream_class: str) -> Callable[[dict[str, Any]], ArchSpec]:
    def describe(kw: dict[str, Any]) -> ArchSpec:
        return ArchSpec(
            id=arch_id,
            family="StyleGAN2",
            upstream_class=upstream_class,
            tasks=("face",),
            # A generator, not an image-to-image model: its input is a style code (B, num_style_feat), its output a
            # (B, 3, out_size, out_size) face in [-1, 1]. ArchSpec describes images, so the channels are the RGB
            # the model produces, scale 1, and tiling "internal" (whole output, never tiled); the CLI special-cases
            # generators. min_size/multiple_of/context do not apply (no input image).
            scale=1,
            in_channels=3,
            out_channels=3,
            min_size=1,
            multiple_of=1,
            # Style MLP, modulation and demodulation run in float32 inside; the convolutions in fp16/bf16 stay close
            # (CPU, out_size 64 golden weights: relative L2 vs float32 6e-4 in fp16, 4e-3 in bf16).
            fp16=True,
            bf16=True,
            channels_last=False,  # grouped per-sample convs; not measured
            input_kind="latent",
            tiling="internal",
            context=0,
            # BasicSR's arch files (Apache-2.0, from rosinality's MIT port). BasicSR's CUDA ops carry the NVIDIA
            # Source Code License-NC; ours (csrc/upfirdn2d) are an independent implementation of the same math.
            code_license="Apache-2.0",
        )

    return describe


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Sizes from shapes: style width from a modulation, MLP depth from style_mlp.{i} (index 0 is the parameter-free
    NormStyleCode), resolution from the ToRGB count, narrow from the 4x4 constant (512 * narrow channels),
    channel_multiplier from the first 64x64 conv.

    lr_mlp and resample_kernel are not stored: upstream defaults (0.01, (1, 3, 3, 1)), which every published
    checkpoint uses. Only StyleGAN2Generator is detected: the bilinear variant has the same keys and shapes.
    """
    need = ("constant_input.weight", "style_conv1.modulated_conv.modulation.weight", "to_rgb1.modulated_conv.weight",
            "noises.noise0")
    if any(k not in sd for k in need) or len(sd["constant_input.weight"].shape) != 4:
        return None
    num_style_feat = int(sd["style_conv1.modulated_conv.modulation.weight"].shape[1])
    num_mlp = count_indexed(sd, "style_mlp.{}.weight", start=1)
    out_size = 2 ** (count_indexed(sd, "to_rgbs.{}.bias") + 2)
    ch4 = int(sd["constant_input.weight"].shape[1])
    narrow: float = 1 if ch4 == 512 else ch4 / 512
    channel_multiplier: float = 2
    if out_size >= 64 and "style_convs.6.modulated_conv.weight" in sd:
        ch64 = int(sd["style_convs.6.modulated_conv.weight"].shape[1])
        cm = ch64 / (256 * narrow)
        channel_multiplier = round(cm) if abs(cm - round(cm)) < 1e-6 else cm
    kwargs: dict[str, Any] = {
        "out_size": out_size, "num_style_feat": num_style_feat, "num_mlp": num_mlp,
        "channel_multiplier": channel_multiplier, "resample_kernel": (1, 3, 3, 1), "lr_mlp": 0.01, "narrow": narrow,
    }
    return kwargs if same_keys_and_shapes(lambda: StyleGAN2Generator(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="stylegan2", family="StyleGAN2", cls=StyleGAN2Generator,
              describe=_describe("stylegan2", "StyleGAN2Generator"), detect=_detect),
    ArchEntry(id="stylegan2_bilinear", family="StyleGAN2", cls=StyleGAN2GeneratorBilinear,
              describe=_describe("stylegan2_bilinear", "StyleGAN2GeneratorBilinear"), detect=None),
)
