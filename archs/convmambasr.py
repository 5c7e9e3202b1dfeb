"""ConvMambaSR: convolution + state-space (Mamba) super-resolution for remote sensing (Remote Sens. 2024).

Semantics follow Doswin/ConvMambaSR (Apache-2.0) `basicsr/archs/ConvMambaSR_arch.py`, identical to
korvin2000/arch_research `ConvMambaSR/ConvMambaSR_arch.py`; class names, keyword names, defaults and state-dict
keys match, so its checkpoints load strictly. Two branches run side by side in every stage: a Mamba branch
(residual state-space groups of VSSBlocks, each an SS2D 2-D selective scan plus a channel-attention conv block) and
a convolution branch (residual blocks); a global-detail reconstruction module fuses them.

SS2D scans the feature map in four orders (row-major, column-major and both reversed) with mamba's selective scan;
here that is `archs.ops.selective_scan` (a compiled kernel on CUDA, else the PyTorch reference) in place of the
`mamba_ssm` extension. The scan and the per-image SimAM statistics see the whole feature map, so the model is not
tile-exact: tiling hint "global".

Differences from upstream, none changing float32 outputs: `mean` is a non-persistent buffer (upstream keeps a
plain attribute, so it is not in the state dict either way); DropPath/Dropout are identity in eval (nothing random
in an eval forward); half-precision models run the scan and SimAM statistics in float32 and feed the scan output back
in the model's dtype (upstream's float32 scan output would fail its half-precision LayerNorm); `use_checkpoint`
passes the feature size that upstream's checkpoint call forgets; unknown `upsampler`/`resi_connection` values are
errors instead of a silent denoising head / AttributeError; `norm_layer=None` means upstream's nn.LayerNorm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import nn

from .layers.detect import count_indexed, pixel_shuffle_scale, same_keys_and_shapes
from .layers.drop import DropPath
from .layers.ss2d import SS2D
from .layers.upsample import Upsample, UpsampleOneStep
from .spec import ArchEntry, ArchSpec, StateDict

_UPSAMPLERS = ("", "pixelshuffle", "pixelshuffledirect")


class StarReLU(nn.Module):
    """s * relu(x)^2 + b with learnable scalars s and b."""

    def __init__(self, *, scale_value: float = 1.0, bias_value: float = 0.0, scale_learnable: bool = True,
                 bias_learnable: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale_value)), requires_grad=scale_learnable)
        self.bias = nn.Parameter(torch.full((1,), float(bias_value)), requires_grad=bias_learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x) ** 2 + self.bias


class ChannelAttention(nn.Module):
    """RCAN channel attention with StarReLU: x * sigmoid(conv(starrelu(conv(avgpool(x)))))."""

    def __init__(self, num_feat: int, squeeze_factor: int = 16) -> None:
        super().__init__()
        mid = num_feat // squeeze_factor
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, mid, 1), StarReLU(), nn.Conv2d(mid, num_feat, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel-attention block: 3x3 conv down by compress_ratio (6 for light SR), StarReLU, 3x3 conv up, attention."""

    def __init__(self, num_feat: int, is_light_sr: bool = False, compress_ratio: int = 3,
                 squeeze_factor: int = 30) -> None:
        super().__init__()
        if is_light_sr:
            compress_ratio = 6
        mid = num_feat // compress_ratio
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, mid, 3, 1, 1), StarReLU(), nn.Conv2d(mid, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class simam_module(nn.Module):  # noqa: N801 (upstream class name)
    """SimAM parameter-free attention: x * sigmoid(energy) from each channel's spatial mean and variance.

    Statistics are taken in float32 (a half-precision sum of squares over a large map overflows). Needs H*W > 1.
    """

    def __init__(self, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.activaton = nn.Sigmoid()  # upstream spelling
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        n = x.shape[2] * x.shape[3] - 1
        sq = (xf - xf.mean(dim=(2, 3), keepdim=True)).pow(2)
        y = sq / (4 * (sq.sum(dim=(2, 3), keepdim=True) / n + self.e_lambda)) + 0.5
        return x * self.activaton(y).to(x.dtype)


class MSSA(nn.Module):
    """Multi-scale strip attention: depthwise 3x3, then 1xk / kx1 depthwise strips (k = 7, 13, 17) summed,
    a 1x1 conv, multiplied with the input. (Upstream derives from mmengine's BaseModule; no parameters there.)"""

    def __init__(
        self,
        channels: int,
        kernel_sizes: Sequence[Any] = (3, (1, 7), (1, 13), (1, 17)),
        paddings: Sequence[Any] = (1, (0, 3), (0, 6), (0, 8)),
    ) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=kernel_sizes[0], padding=paddings[0], groups=channels)
        for i, (k, p) in enumerate(zip(kernel_sizes[1:], paddings[1:], strict=True)):
            # each strip is a 1 x k conv followed by its k x 1 transpose
            self.add_module(f"conv{i}_1", nn.Conv2d(channels, channels, tuple(k), padding=tuple(p), groups=channels))
            self.add_module(f"conv{i}_2", nn.Conv2d(channels, channels, tuple(k[::-1]), padding=tuple(p[::-1]),
                                                    groups=channels))
        self.strips = len(kernel_sizes) - 1
        self.conv3 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(x)
        total = attn
        for i in range(self.strips):
            total = total + getattr(self, f"conv{i}_2")(getattr(self, f"conv{i}_1")(attn))
        return self.conv3(total) * x


class GlobalDetailReconstructionModule(nn.Module):
    """Fuses the two branches: conv1(MSSA(conv branch)) + conv2(SimAM(Mamba branch))."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.mamba_chan_attn = simam_module()
        self.conv_spat_attn = MSSA(in_ch)
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_ch, in_ch, 3, 1, 1)

    def forward(self, conv_x: torch.Tensor, mamba_x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.conv_spat_attn(conv_x)) + self.conv2(self.mamba_chan_attn(mamba_x))


class VSSBlock(nn.Module):
    """x = x * skip_scale + SS2D(LN(x)); x = x * skip_scale2 + CAB(LN(x)). Tokens (B, L, C) in and out."""

    def __init__(
        self,
        *,
        hidden_dim: int = 0,
        drop_path: float = 0.0,
        attn_drop_rate: float = 0.0,
        d_state: int = 16,
        expand: float = 2.0,
        is_light_sr: bool = False,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(d_model=hidden_dim, d_state=d_state, expand=expand, dropout=attn_drop_rate)
        self.drop_path = DropPath(drop_path)
        self.skip_scale = nn.Parameter(torch.ones(hidden_dim))
        self.conv_blk = CAB(hidden_dim, is_light_sr)
        self.ln_2 = nn.LayerNorm(hidden_dim)
        self.skip_scale2 = nn.Parameter(torch.ones(hidden_dim))

    def forward(self, tokens: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        b, _, c = tokens.shape
        x = tokens.reshape(b, *x_size, c)
        x = x * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x)))
        conv = self.conv_blk(self.ln_2(x).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
        x = x * self.skip_scale2 + conv
        return x.reshape(b, -1, c)


class BasicLayer(nn.Module):
    """A sequence of VSSBlocks (upstream's `downsample` is always None in ConvMambaSR and is not kept)."""

    def __init__(self, *, dim: int, depth: int, drop_path: float | Sequence[float] = 0.0, d_state: int = 16,
                 mlp_ratio: float = 2.0, use_checkpoint: bool = False, is_light_sr: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        rates = list(drop_path) if isinstance(drop_path, Sequence) else [float(drop_path)] * depth
        self.blocks = nn.ModuleList(
            VSSBlock(hidden_dim=dim, drop_path=rates[i], attn_drop_rate=0.0, d_state=d_state, expand=mlp_ratio,
                     is_light_sr=is_light_sr)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint.checkpoint(blk, x, x_size, use_reentrant=False)
            else:
                x = blk(x, x_size)
        return x


class ResidualBlockNoBN(nn.Module):
    """BasicSR's residual block without BN: x + conv2(relu(conv1(x))) * res_scale."""

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x))) * self.res_scale


class ResidualGroup(nn.Module):
    """Residual state-space group: tokens -> VSSBlocks -> back to a map -> conv -> tokens, plus the input."""

    def __init__(self, *, dim: int, depth: int, d_state: int = 16, mlp_ratio: float = 4.0,
                 drop_path: float | Sequence[float] = 0.0, use_checkpoint: bool = False,
                 resi_connection: str = "1conv", is_light_sr: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.residual_group = BasicLayer(dim=dim, depth=depth, drop_path=drop_path, d_state=d_state,
                                         mlp_ratio=mlp_ratio, use_checkpoint=use_checkpoint, is_light_sr=is_light_sr)
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        y = self.residual_group(x, x_size)
        b, _, c = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, *x_size))
        return y.flatten(2).transpose(1, 2) + x


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


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> tokens (B, H*W, C), optionally normalised. Patch size is nominal: nothing is patched."""

    def __init__(self, *, embed_dim: int = 96, norm_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


class PatchUnEmbed(nn.Module):
    """Tokens (B, H*W, C) -> (B, C, H, W)."""

    def __init__(self, *, embed_dim: int = 96) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *x_size)


class ConvMambaSR(nn.Module):
    """ConvMambaSR. `upsampler`: 'pixelshuffle' (classical SR), 'pixelshuffledirect' (light SR, CAB compress 6)
    or '' (same-size output with a global residual, upstream's "denoising" head). `img_size` and `patch_size` only
    describe training crops upstream and change nothing; drop rates only act while training.

    The input is normalised as (x - rgb_mean) * img_range (rgb_mean for 3 channels, else 0) and the output mapped
    back. Any H, W with H*W >= 2 works (SimAM divides by H*W - 1).
    """

    def __init__(
        self,
        *,
        img_size: int = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        RCG_num: int = 12,
        drop_rate: float = 0.0,
        d_state: int = 16,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        norm_layer: type[nn.Module] | None = None,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
    ) -> None:
        super().__init__()
        if upsampler not in _UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, not {upsampler!r}")
        norm = nn.LayerNorm if norm_layer is None else norm_layer
        num_feat = 64
        self.img_size = img_size
        self.patch_size = patch_size
        self.img_range = float(img_range)
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.upscale = upscale
        self.upsampler = upsampler
        self.mlp_ratio = mlp_ratio
        self.RCG_num = RCG_num
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)

        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.patch_norm = patch_norm
        self.num_features = embed_dim
        self.patch_embed = PatchEmbed(embed_dim=embed_dim, norm_layer=norm if patch_norm else None)
        self.patch_unembed = PatchUnEmbed(embed_dim=embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.is_light_sr = upsampler == "pixelshuffledirect"
        total = sum(depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]  # torch.linspace

        self.RSSG_layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.RSSG_layers.append(ResidualGroup(
                dim=embed_dim, depth=depth, d_state=d_state, mlp_ratio=mlp_ratio,
                drop_path=dpr[start:start + depth], use_checkpoint=use_checkpoint,
                resi_connection=resi_connection, is_light_sr=self.is_light_sr,
            ))
        self.norm = norm(self.num_features)
        self.layers_after_RSSG = nn.ModuleList(nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) for _ in depths)
        self.RCG_Layers = nn.ModuleList(
            nn.Sequential(nn.Sequential(*(ResidualBlockNoBN(num_feat=embed_dim) for _ in range(RCG_num))))
            for _ in depths
        )
        self.layers_after_RCG = nn.ModuleList(nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) for _ in depths)
        self.GDRM_Layers = nn.ModuleList(GlobalDetailReconstructionModule(embed_dim) for _ in depths)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)

        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
            self.upsample: nn.Module = Upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = UpsampleOneStep(upscale, embed_dim, in_chans)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        tokens = self.pos_drop(self.patch_embed(x))
        for i in range(self.num_layers):
            # The Mamba branch runs on its own token stream; the conv branch consumes the fused map.
            tokens = self.RSSG_layers[i](tokens, x_size)
            mamba = self.layers_after_RSSG[i](self.patch_unembed(self.norm(tokens), x_size))
            conv = self.layers_after_RCG[i](self.RCG_Layers[i](x))
            x = self.GDRM_Layers[i](conv, mamba)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_buf: torch.Tensor = self.mean  # type: ignore[assignment]
        mean = mean_buf.to(x.dtype)
        x = (x - mean) * self.img_range
        if self.upsampler == "pixelshuffle":
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        elif self.upsampler == "pixelshuffledirect":
            x = self.conv_first(x)
            x = self.upsample(self.conv_after_body(self.forward_features(x)) + x)
        else:
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        return x / self.img_range + mean


# Receptive-field radius (input pixels) of the convolutions; the scans themselves reach the whole map.
_CONTEXT_CAP = 128


def _receptive_radius(kw: dict[str, Any]) -> int:
    """conv_first 1; per stage the conv branch adds 2 per residual block + 1 (after RCG) + 9 (MSSA: 3x3 then
    1x17) + 1 (GDRM conv1); the Mamba token stream adds 3 per VSSBlock (SS2D dwconv, CAB's two 3x3) + 1 (group
    conv), and reaches the fused map through two more 3x3 convs; then conv_after_body and the head (~2)."""
    r_conv = r_mamba = 0
    for depth in kw["depths"]:
        r_mamba += 3 * int(depth) + 1
        r_conv = max(r_conv + 2 * int(kw["RCG_num"]) + 11, r_mamba + 2)
    return 1 + r_conv + 1 + 2


def _describe(kw: dict[str, Any]) -> ArchSpec:
    upscaled = kw["upsampler"] in ("pixelshuffle", "pixelshuffledirect")
    return ArchSpec(
        id="convmambasr",
        family="ConvMambaSR",
        upstream_class="ConvMambaSR",
        tasks=("upscale",) if upscaled else ("denoise", "restore"),
        scale=int(kw["upscale"]) if upscaled else 1,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=2,  # SimAM divides by H*W - 1
        multiple_of=1,
        # The scan and SimAM statistics run in float32 whatever the model dtype; see tests/test_convmambasr.py
        # for the half-precision error measured on the golden (recipe) weights. No trained weights exist to check.
        fp16=True,
        bf16=True,
        channels_last=False,  # token reshapes and scans want contiguous NCHW / NHWC
        tiling="global",
        context=min(_CONTEXT_CAP, _receptive_radius(kw)),
        code_license="Apache-2.0",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Widths, depths, d_state, expansion, RCG_num, head and residual connection from the keys and shapes; the
    rebuilt model must match every key and shape. img_size, img_range and drop rates are not stored (defaults)."""
    key = "RSSG_layers.0.residual_group.blocks.0.self_attention.A_logs"
    if "conv_first.weight" not in sd or key not in sd:
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    layers = count_indexed(sd, "RSSG_layers.{}.residual_group.blocks.0.ln_1.weight")
    depths = [count_indexed(sd, f"RSSG_layers.{i}.residual_group.blocks.{{}}.ln_1.weight") for i in range(layers)]
    d_state = int(sd[key].shape[1])
    d_inner = int(sd["RSSG_layers.0.residual_group.blocks.0.self_attention.in_proj.weight"].shape[0]) // 2
    mlp_ratio: float = d_inner // embed_dim if d_inner % embed_dim == 0 else d_inner / embed_dim
    kwargs: dict[str, Any] = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": depths,
        "RCG_num": count_indexed(sd, "RCG_Layers.0.0.{}.conv1.weight"),
        "d_state": d_state,
        "mlp_ratio": mlp_ratio,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "resi_connection": "3conv" if "conv_after_body.0.weight" in sd else "1conv",
    }
    if "conv_before_upsample.0.weight" in sd:
        convs = [k for k in sd if k.startswith("upsample.") and k.endswith(".weight")]
        first = int(sd["upsample.0.weight"].shape[0]) if "upsample.0.weight" in sd else 0
        num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
        kwargs.update(upsampler="pixelshuffle", upscale=3 if first == 9 * num_feat else 2 ** len(convs))
    elif "upsample.0.weight" in sd:
        scale = pixel_shuffle_scale(int(sd["upsample.0.weight"].shape[0]), in_chans)
        if scale is None:
            return None
        kwargs.update(upsampler="pixelshuffledirect", upscale=scale)
    else:
        kwargs.update(upsampler="", upscale=1)
    return kwargs if same_keys_and_shapes(lambda: ConvMambaSR(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="convmambasr", family="ConvMambaSR", cls=ConvMambaSR, describe=_describe, detect=_detect),
)
