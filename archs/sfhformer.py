"""SFHformer: "When Fast Fourier Transform Meets Transformer for Image Restoration" (Jiang et al., ECCV 2024).

Semantics follow deng-ai-lab/SFHformer@1f79941 (MIT), as copied into korvin2000/arch_research:
`Backbone` (SFHformer/SFHformer.py; the SFHformer_t/s/m/l presets) and `Backbone_new`
(SFHformer/sfhformer_motion_blur.py; the GoPro motion-deblurring model, and also the class of the dehazing model
`sfhformer_haze`, which has the same layers). Keyword names, defaults and state-dict keys match upstream, so
checkpoints load strictly.

Both are 3-level U-Nets of blocks that mix a local path (depthwise 3x3 convs, one dilated) with a global path (a
Fourier unit: ortho rFFT2 over the WHOLE feature map, layers on the spectrum, inverse rFFT2), followed by a
squeeze-excitation over the globally pooled map. `Backbone_new`'s `local_size` is stored by upstream but never
used by any layer, so there are no local windows: every output pixel depends on the whole image.

Differences from upstream, none of which changes an output upstream can produce:
* upstream `OurBlock.__init__` passes `flag=flag` to `OurMixer` with `flag` undefined, a NameError at
  construction; `OurMixer` only stored that flag (default None) and never read it, so it is dropped here.
* the spectral path runs in float32 whatever the model dtype (see `layers/fft.py`), so bf16/fp16 inference works.
* forward reflect-pads H and W to multiples of 4 and crops back; upstream needs multiples of 4 and fails otherwise.
* configurations whose channels cannot fit together (upstream fails in forward) are refused at construction.
* `Backbone_new` defaults to the published motion-blur configuration (upstream's defaults cannot be built).
* `Backbone_new`'s unused class-valued arguments (act_layer, norm_layer, norm_layer_transformer) default to None
  instead of nn.ReLU / nn.BatchNorm2d / nn.LayerNorm, so the keyword set stays JSON-serialisable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, same_keys_and_shapes
from .layers.fft import irfft2_interleaved, rfft2_interleaved
from .layers.norm import RestormerLayerNorm
from .layers.padding import pad_to_multiple
from .layers.precision import batch_norm32, conv32, float32_region
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "Backbone", "Backbone_new", "SFHformer_l", "SFHformer_m", "SFHformer_s", "SFHformer_t",
           "sfhformer_motion_blur"]

_MULTIPLE = 4  # two stride-2 downsamplings


# ---------------------------------------------------------------------------------------------------------------
# layers shared by both classes


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, kernel_size: int | None = None):
        super().__init__()
        k = patch_size if kernel_size is None else kernel_size
        self.proj = nn.Conv2d(in_chans, embed_dim, k, stride=patch_size, padding=(k - patch_size + 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchUnEmbed(nn.Module):
    def __init__(self, patch_size: int = 4, out_chans: int = 3, embed_dim: int = 96, kernel_size: int | None = None):
        super().__init__()
        k = 1 if kernel_size is None else kernel_size
        self.proj = nn.Sequential(nn.Conv2d(embed_dim, out_chans, k, padding=k // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchUnEmbed_for_upsample(nn.Module):  # noqa: N801 (upstream name)
    """1x1 conv to out_dim * p^2 channels (no bias), then pixel shuffle by p."""

    def __init__(self, patch_size: int = 4, embed_dim: int = 96, out_dim: int = 64):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(embed_dim, out_dim * patch_size**2, 1, bias=False),
                                  nn.PixelShuffle(patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DownSample(nn.Module):
    """2x2 stride-2 conv that doubles the channels (upstream ignores output_dim and any kernel size argument)."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(input_dim, input_dim * 2, kernel_size=2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class FFN(nn.Module):
    """1x1 to 2*dim, then depthwise 3/5/7 convs on the 2nd/3rd/4th chunk of dim//2 channels, GELU, 1x1 back."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim_sp = dim // 2
        sp = self.dim_sp
        self.conv_init = nn.Sequential(nn.Conv2d(dim, dim * 2, 1))
        self.conv1_1 = nn.Sequential(nn.Conv2d(sp, sp, 3, padding=1, groups=sp))
        self.conv1_2 = nn.Sequential(nn.Conv2d(sp, sp, 5, padding=2, groups=sp))
        self.conv1_3 = nn.Sequential(nn.Conv2d(sp, sp, 7, padding=3, groups=sp))
        self.gelu = nn.GELU()
        self.conv_fina = nn.Sequential(nn.Conv2d(dim * 2, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(torch.split(self.conv_init(x), self.dim_sp, dim=1))
        parts[1] = self.conv1_1(parts[1])
        parts[2] = self.conv1_2(parts[2])
        parts[3] = self.conv1_3(parts[3])
        return self.conv_fina(self.gelu(torch.cat(parts, dim=1)))


class TokenMixer_For_Local(nn.Module):  # noqa: N801 (upstream name)
    """Depthwise 3x3 on the first half of the channels, dilated (d=2) depthwise 3x3 on the second half."""

    def __init__(self, dim: int):
        super().__init__()
        sp = dim // 2
        self.CDilated_1 = nn.Conv2d(sp, sp, 3, padding=1, dilation=1, groups=sp)
        self.CDilated_2 = nn.Conv2d(sp, sp, 3, padding=2, dilation=2, groups=sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return torch.cat([self.CDilated_1(x1), self.CDilated_2(x2)], dim=1)


class Mixer(nn.Module):
    """1x1 to 2*dim; local mixer on one half, global (Fourier) mixer on the other; GELU; squeeze-excitation over
    the globally pooled map; 1x1 back to dim."""

    def __init__(self, dim: int, global_mixer: nn.Module):
        super().__init__()
        self.dim = dim
        self.mixer_local = TokenMixer_For_Local(dim)
        self.mixer_gloal = global_mixer  # upstream spelling
        self.ca_conv = nn.Sequential(nn.Conv2d(2 * dim, dim, 1))
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),  # whole-image statistics
            nn.Conv2d(2 * dim, dim, 1),
            nn.ReLU(),
            nn.Conv2d(dim, 2 * dim, 1),
            nn.Sigmoid(),
        )
        self.gelu = nn.GELU()
        self.conv_init = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_local, x_global = torch.split(self.conv_init(x), self.dim, dim=1)
        x = self.gelu(torch.cat([self.mixer_local(x_local), self.mixer_gloal(x_global)], dim=1))
        return self.ca_conv(self.ca(x) * x)


class Block(nn.Module):
    """BatchNorm -> mixer, scaled by beta; BatchNorm -> FFN, scaled by gamma; both residual (beta/gamma start at 0)."""

    def __init__(self, dim: int, global_mixer: nn.Module):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mixer = Mixer(dim, global_mixer)
        self.ffn = FFN(dim)
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mixer(self.norm1(x)) * self.beta + x
        return self.ffn(self.norm2(x)) * self.gamma + x


class Stage(nn.Module):
    def __init__(self, depth: int, dim: int, global_mixer: Callable[[int], nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim, global_mixer(dim)) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class _UNet(nn.Module):
    """The 3-level U-Net both classes share; `dims`/`depths` are (layer1, layer2, layer3, layer8, layer9)."""

    def __init__(self, in_chans: int, out_chans: int, patch_size: int, dims: Sequence[int], depths: Sequence[int],
                 embed_kernel_size: int, global_mixer: Callable[[int], nn.Module]):
        super().__init__()
        d0, d1, d2, d3, d4 = (int(d) for d in dims)
        n1, n2, n3, n8, n9 = (int(n) for n in depths)
        if patch_size != 1:
            raise ValueError(f"patch_size={patch_size}: only 1 works (the output is added to the full-size input)")
        if embed_kernel_size % 2 == 0:
            raise ValueError(f"embed_kernel_size={embed_kernel_size} must be odd to keep the image size")
        # DownSample always doubles the channels and the skips concatenate, so the widths are tied together.
        if not (d1 == 2 * d0 and d2 == 2 * d1 and d3 == d1 and d4 == d0) or d0 < 2:
            raise ValueError(f"the used embed_dim entries {[d0, d1, d2, d3, d4]} must be [c, 2c, 4c, 2c, c], c >= 2")
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, d0, embed_kernel_size)
        self.layer1 = Stage(n1, d0, global_mixer)
        self.skip1 = nn.Conv2d(d1, d0, 1)
        self.downsample1 = DownSample(d0, d1)
        self.layer2 = Stage(n2, d1, global_mixer)
        self.skip2 = nn.Conv2d(d2, d1, 1)
        self.downsample2 = DownSample(d1, d2)
        self.layer3 = Stage(n3, d2, global_mixer)
        self.upsample3 = PatchUnEmbed_for_upsample(2, d2, d3)
        self.layer8 = Stage(n8, d3, global_mixer)
        self.upsample4 = PatchUnEmbed_for_upsample(2, d3, d4)
        self.layer9 = Stage(n9, d4, global_mixer)
        self.patch_unembed = PatchUnEmbed(patch_size, out_chans, d4, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # Upstream requires multiples of 4; pad (reflect where the image is large enough) and crop back.
        inp = pad_to_multiple(x, _MULTIPLE, mode="reflect_or_replicate")
        f1 = self.layer1(self.patch_embed(inp))
        f2 = self.layer2(self.downsample1(f1))
        y = self.upsample3(self.layer3(self.downsample2(f2)))
        y = self.upsample4(self.layer8(self.skip2(torch.cat([y, f2], dim=1))))
        y = self.patch_unembed(self.layer9(self.skip1(torch.cat([y, f1], dim=1))))
        return (inp + y)[..., :h, :w]


# ---------------------------------------------------------------------------------------------------------------
# Backbone (SFHformer.py)


class FourierUnit(nn.Module):
    """Backbone's spectral layer: rFFT2 -> BN -> depthwise 3x3 "frequency positional encoding" (+residual) ->
    1x1 conv per group mixed by softmax weights over groups -> GELU -> inverse rFFT2.

    Spectrum channels are interleaved (Re c, Im c). With groups=1 (the only value upstream uses) the softmax weight
    is exactly 1. The spectral path runs in float32 (see `layers/fft.py`).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.bn = nn.BatchNorm2d(out_channels * 2)
        self.fdc = nn.Conv2d(in_channels * 2, out_channels * 2 * groups, 1, groups=groups)
        self.weight = nn.Sequential(nn.Conv2d(in_channels * 2, groups, 1), nn.Softmax(dim=1))
        self.fpe = nn.Conv2d(in_channels * 2, in_channels * 2, 3, padding=1, groups=in_channels * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        with float32_region(x):
            f = batch_norm32(self.bn, rfft2_interleaved(x))
            f = conv32(self.fpe, f) + f
            mix = torch.softmax(conv32(self.weight[0], f), dim=1)  # (B, groups, H, W')
            y = conv32(self.fdc, f).view(b, self.groups, -1, h, f.shape[-1])
            y = F.gelu((y * mix.unsqueeze(2)).sum(dim=1))
            out = irfft2_interleaved(y, (h, w))
        return out.to(x.dtype)


class TokenMixer_For_Gloal(nn.Module):  # noqa: N801 (upstream name and spelling)
    """1x1 to 2*dim + GELU, Fourier unit with a residual, 1x1 back + GELU."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_init = nn.Sequential(nn.Conv2d(dim, dim * 2, 1), nn.GELU())
        self.conv_fina = nn.Sequential(nn.Conv2d(dim * 2, dim, 1), nn.GELU())
        self.FFC = FourierUnit(dim * 2, dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_init(x)
        return self.conv_fina(self.FFC(x) + x)


class Backbone(_UNet):
    """SFHformer (upstream `Backbone`): presets SFHformer_t/s/m/l are embed_dim=[32,64,128,64,32] with depth
    [1,1,2,1,1] / [2,2,4,2,2] / [4,4,8,4,4] / [6,6,10,6,6].

    Only the pattern embed_dim = [c, 2c, 4c, 2c, c] can run (upstream fails in forward otherwise), and
    patch_size must be 1. Any H, W are accepted (padded to multiples of 4 internally). BatchNorm layers use their
    running statistics in eval. No runtime options.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        out_chans: int = 3,
        patch_size: int = 1,
        embed_dim: Sequence[int] = (48, 96, 192, 96, 48),
        depth: Sequence[int] = (2, 2, 2, 2, 2),
        embed_kernel_size: int = 3,
    ) -> None:
        if len(embed_dim) < 5 or len(depth) < 5:
            raise ValueError("embed_dim and depth need 5 entries (enc1, enc2, bottom, dec2, dec1)")
        super().__init__(in_chans, out_chans, patch_size, embed_dim[:5], depth[:5], embed_kernel_size,
                         TokenMixer_For_Gloal)


def _preset(depth: list[int]) -> Backbone:
    return Backbone(patch_size=1, embed_dim=[32, 64, 128, 64, 32], depth=depth, embed_kernel_size=3)


def SFHformer_t() -> Backbone:
    return _preset([1, 1, 2, 1, 1])


def SFHformer_s() -> Backbone:
    return _preset([2, 2, 4, 2, 2])


def SFHformer_m() -> Backbone:
    return _preset([4, 4, 8, 4, 4])


def SFHformer_l() -> Backbone:
    return _preset([6, 6, 10, 6, 6])


# ---------------------------------------------------------------------------------------------------------------
# Backbone_new (sfhformer_motion_blur.py)


class MotionFourierUnit(nn.Module):
    """Backbone_new's spectral layer (upstream `FourierUnit` of sfhformer_motion_blur.py): rFFT2 -> bn1 ->
    depthwise 3x3 (+residual) -> 1x1 + GELU -> inverse rFFT2.

    `conv_layer`, `bn2` and `norm1` are built by upstream (and stored in its checkpoints) but never used.
    Spectrum channels are interleaved (Re c, Im c); the spectral path runs in float32 (see `layers/fft.py`).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        c2_in, c2_out = in_channels * 2, out_channels * 2
        self.conv_layer = nn.Conv2d(c2_in, c2_out, 1, groups=groups, bias=False)  # unused upstream
        self.bn1 = nn.BatchNorm2d(c2_out)
        self.bn2 = nn.BatchNorm2d(c2_out)  # unused upstream
        self.norm1 = RestormerLayerNorm(c2_out, "WithBias")  # unused upstream
        self.conv_layer1 = nn.Sequential(nn.Conv2d(c2_in, c2_out, 1, groups=groups), nn.GELU())
        self.conv_layer2 = nn.Sequential(nn.Conv2d(c2_in, c2_in, 3, padding=1, groups=c2_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        with float32_region(x):
            f = batch_norm32(self.bn1, rfft2_interleaved(x))
            f = conv32(self.conv_layer2[0], f) + f
            f = F.gelu(conv32(self.conv_layer1[0], f))
            out = irfft2_interleaved(f, (h, w))
        return out.to(x.dtype)


class OurTokenMixer_For_Gloal(nn.Module):  # noqa: N801 (upstream name and spelling)
    """Fourier unit plus residual (upstream's conv_init/conv_fina are commented out in this variant)."""

    def __init__(self, dim: int):
        super().__init__()
        self.FFC = MotionFourierUnit(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.FFC(x) + x


class Backbone_new(_UNet):  # noqa: N801 (upstream name)
    """SFHformer motion-deblurring model (upstream `Backbone_new`, preset `sfhformer_motion_blur()`:
    embed_dim=[64,128,256,512,1024,512,256,128,64], depth=[6,6,12,0,0,0,0,6,6], local_size=[4]*5). The dehazing
    model `sfhformer_haze()` is the same class with embed_dim=[32,...,32], depth=[4,6,10,0,0,0,0,6,4].

    Of the 9-entry lists only embed_dim[0,1,2,6,7,8] and depth[0,1,2,7,8] are used, as upstream.
    `local_size` (5+ entries) is recorded per stage like upstream (layer1..layer9 get entries 0, 1, 1, 3, 4:
    upstream gives layer3 local_size[1]) but no layer reads it: the Fourier units always see the whole feature
    map. act_layer, norm_layer, norm_layer_transformer, downsample_kernel_size and upsample_kernel_size are
    accepted for compatibility and unused, as upstream. Upstream's defaults for embed_dim and depth are 5-entry
    lists that it cannot build (IndexError on embed_dim[6]); the defaults here are the sfhformer_motion_blur()
    configuration. No runtime options.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        out_chans: int = 3,
        patch_size: int = 1,
        embed_dim: Sequence[int] = (64, 128, 256, 512, 1024, 512, 256, 128, 64),
        depth: Sequence[int] = (6, 6, 12, 0, 0, 0, 0, 6, 6),
        local_size: Sequence[int] = (4, 4, 4, 4, 4),
        act_layer: type[nn.Module] | None = None,
        norm_layer: type[nn.Module] | None = None,
        norm_layer_transformer: type[nn.Module] | None = None,
        embed_kernel_size: int = 3,
        downsample_kernel_size: int | None = None,
        upsample_kernel_size: int | None = None,
    ) -> None:
        if len(embed_dim) < 9 or len(depth) < 9:
            raise ValueError("Backbone_new needs 9-entry embed_dim and depth (entries 3-5 / 3-6 are unused)")
        if len(local_size) < 5:
            raise ValueError("Backbone_new needs 5 local_size entries (upstream indexes local_size[4])")
        dims = [embed_dim[i] for i in (0, 1, 2, 7, 8)]
        if int(embed_dim[6]) != int(embed_dim[2]):
            raise ValueError(f"embed_dim[6]={embed_dim[6]} must equal embed_dim[2]={embed_dim[2]}")
        super().__init__(in_chans, out_chans, patch_size, dims, [depth[i] for i in (0, 1, 2, 7, 8)],
                         embed_kernel_size, OurTokenMixer_For_Gloal)
        self.local_size = tuple(int(s) for s in local_size)
        for name, i in zip(("layer1", "layer2", "layer3", "layer8", "layer9"), (0, 1, 1, 3, 4), strict=True):
            getattr(self, name).local_size = self.local_size[i]


def sfhformer_motion_blur() -> Backbone_new:
    return Backbone_new(patch_size=1, embed_dim=[64, 128, 256, 512, 1024, 512, 256, 128, 64],
                        depth=[6, 6, 12, 0, 0, 0, 0, 6, 6], local_size=[4, 4, 4, 4, 4], embed_kernel_size=3)


# ---------------------------------------------------------------------------------------------------------------
# Descriptors.
#
# Tiling: "global". Every Fourier unit transforms the whole feature map and every mixer's squeeze-excitation pools
# the whole map, so no finite margin makes tiles exact (Backbone_new's local_size is unused, see above).
# Context: the receptive-field radius of the local (convolutional) path, in input pixels. Per block at a level of
# stride s: dilated dw 3x3 (2) + FFN dw 7x7 (3) = 5*s; patch_embed and patch_unembed 3x3 add 1 each, the two 2x2
# downsamplings 1 and 2, the two pixel-shuffle upsamplings 2 and 1:
#     8 + 5 * (d_enc1 + d_dec1) + 10 * (d_enc2 + d_dec2) + 20 * d_bottom
# (SFHformer_t 78, _m 288, motion blur 428). We cap it at 128: beyond that the global statistics dominate the
# seams anyway, and upstream's own GoPro evaluation runs the motion-blur model on 128 px windows with no margin.
_CONTEXT_CAP = 128


def _context(depths: Sequence[int]) -> int:
    e1, e2, bottom, d2, d1 = (int(d) for d in depths)
    return min(_CONTEXT_CAP, 8 + 5 * (e1 + d1) + 10 * (e2 + d2) + 20 * bottom)


def _spec(arch_id: str, upstream_class: str, kw: dict[str, Any], depths: Sequence[int],
          tasks: tuple[Any, ...]) -> ArchSpec:
    return ArchSpec(
        id=arch_id,
        family="SFHformer",
        upstream_class=upstream_class,
        tasks=tasks,
        scale=1,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["out_chans"]),
        min_size=_MULTIPLE,
        multiple_of=_MULTIPLE,
        # The spectral path runs in float32 internally (torch.fft lacks bf16 kernels, and the ortho DC coefficient
        # grows with sqrt(H*W)); the rest is convs, BatchNorm with running stats, GELU. bf16 and fp16 forwards on the
        # CPU stay within 1e-2 of float32 with the golden weights (tests/test_sfhformer.py); not checked with
        # trained weights (none downloadable here), whose activations could still exceed fp16's range.
        fp16=True,
        bf16=True,
        channels_last=False,  # not measured
        tiling="global",
        context=_context(depths),
        code_license="MIT",
    )


def _describe_backbone(kw: dict[str, Any]) -> ArchSpec:
    return _spec("sfhformer", "Backbone", kw, list(kw["depth"])[:5], ("restore", "deblur"))


def _describe_backbone_new(kw: dict[str, Any]) -> ArchSpec:
    d = list(kw["depth"])
    return _spec("sfhformer_motionblur", "Backbone_new", kw, [d[0], d[1], d[2], d[7], d[8]], ("deblur", "restore"))


# ---------------------------------------------------------------------------------------------------------------
# Detectors: widths from the embedding/downsampling/upsampling convs, depths from the block counts, then an exact
# key-and-shape check of a meta-device rebuild. Backbone blocks have `FFC.fdc`, Backbone_new blocks
# `FFC.conv_layer1`; a checkpoint without any block could be either and is refused by both.


def _unet_kwargs(sd: StateDict) -> dict[str, Any] | None:
    keys = ("patch_embed.proj.weight", "downsample1.proj.0.weight", "downsample2.proj.0.weight",
            "upsample3.proj.0.weight", "upsample4.proj.0.weight", "patch_unembed.proj.0.weight", "skip1.weight")
    if any(k not in sd or sd[k].ndim != 4 for k in keys):
        return None
    emb = sd["patch_embed.proj.weight"]
    return {
        "in_chans": int(emb.shape[1]),
        "out_chans": int(sd["patch_unembed.proj.0.weight"].shape[0]),
        "patch_size": 1,
        "dims": [int(emb.shape[0]), int(sd["downsample1.proj.0.weight"].shape[0]),
                 int(sd["downsample2.proj.0.weight"].shape[0]), int(sd["upsample3.proj.0.weight"].shape[0]) // 4,
                 int(sd["upsample4.proj.0.weight"].shape[0]) // 4],
        "depths": [count_indexed(sd, f"{n}.blocks.{{}}.beta") for n in ("layer1", "layer2", "layer3", "layer8",
                                                                         "layer9")],
        "embed_kernel_size": int(emb.shape[-1]),
    }


def _has_block_with(sd: StateDict, suffix: str) -> bool:
    return any(k.endswith(suffix) for k in sd)


def _detect_backbone(sd: StateDict) -> dict[str, Any] | None:
    if not _has_block_with(sd, ".mixer.mixer_gloal.FFC.fdc.weight"):
        return None
    u = _unet_kwargs(sd)
    if u is None:
        return None
    kw: dict[str, Any] = {"in_chans": u["in_chans"], "out_chans": u["out_chans"], "patch_size": 1,
                          "embed_dim": u["dims"], "depth": u["depths"], "embed_kernel_size": u["embed_kernel_size"]}
    return kw if same_keys_and_shapes(lambda: Backbone(**kw), sd) else None


def _detect_backbone_new(sd: StateDict) -> dict[str, Any] | None:
    if not _has_block_with(sd, ".mixer.mixer_gloal.FFC.conv_layer1.0.weight"):
        return None
    u = _unet_kwargs(sd)
    if u is None:
        return None
    c0, c1, c2, c3, c4 = u["dims"]
    e1, e2, bottom, d2, d1 = u["depths"]
    # Unused entries 3-5 follow the official pattern (8c, 16c, 8c), depths 3-6 are 0; local_size has no weights.
    kw: dict[str, Any] = {
        "in_chans": u["in_chans"],
        "out_chans": u["out_chans"],
        "patch_size": 1,
        "embed_dim": [c0, c1, c2, 2 * c2, 4 * c2, 2 * c2, c2, c3, c4],
        "depth": [e1, e2, bottom, 0, 0, 0, 0, d2, d1],
        "local_size": [4, 4, 4, 4, 4],
        "embed_kernel_size": u["embed_kernel_size"],
    }
    return kw if same_keys_and_shapes(lambda: Backbone_new(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="sfhformer", family="SFHformer", cls=Backbone, describe=_describe_backbone,
              detect=_detect_backbone, aliases=("SFHformer",)),
    ArchEntry(id="sfhformer_motionblur", family="SFHformer", cls=Backbone_new, describe=_describe_backbone_new,
              detect=_detect_backbone_new, aliases=("sfhformer_motion_blur",)),
)
