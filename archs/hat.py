"""HAT family: Hybrid Attention Transformer (Chen et al., "Activating More Pixels in Image Super-Resolution
Transformer", CVPR 2023) as the NTIRE team18_XiaomiMM entry ships it, in three classes:

* `HAT` (team18 `model_2.py`): residual hybrid attention groups (RHAG) of hybrid attention blocks (HAB: shifted
  window self-attention + conv_scale * channel-attention conv block, then an MLP), each group closed by an
  overlapping cross-attention block (OCAB) and a 3x3 conv;
* `HATM` (`model_3.py`): HAT whose HABs replace the window attention by VMamba's SS2D selective scan;
* `HATIQCMix` (`model_1.py`): 10 shared RHAGs, then 10 branches (two per image-quality statistic: brightness,
  contrast, sharpness, noise, saturation); per statistic the input picks the branch `2 i + (stat > margin)`; the
  output is the mean of the 5 chosen branches.

Semantics follow korvin2000/arch_research@5108929 `team18_XiaomiMM/model_{1,2,3}.py`; keyword names, defaults and
state-dict keys match, so its checkpoints load strictly (the relative position indexes are persistent buffers there,
and here). The blocks (HAB, AttenBlocks, RHAG with window attention, OCAB, CAB, SS2D) live in archs.layers.swin.

Size rule (upstream): no padding inside, H and W must be multiples of `window_size` (the descriptor's multiple_of;
the engine pads). The channel attention pools the whole map, so tiles are not exact: tiling "global".

Differences from upstream, none changing float32 outputs: attention runs through scaled_dot_product_attention; the
image statistics of HATIQCMix are computed here (kornia's rgb_to_grayscale, Sobel spatial_gradient with replicate
border, normalised 3x3 Laplacian with reflect border, HSV saturation with eps 1e-8) and the branch is chosen per
image (upstream only runs batch 1); `upsampler` other than "pixelshuffle" (upstream: no head, the input comes back)
and a map smaller than the window (upstream: index errors) are refused at construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import count_indexed, ratio_for, same_keys_and_shapes
from .layers.swin import RHAG, PatchEmbed, oca_relative_position_index, patch_unembed, resi_conv
from .layers.upsample import Upsample
from .layers.window import relative_position_index, shifted_window_mask
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "HAT", "HATM", "HATIQCMix", "image_statistics"]

_LICENSE = "unspecified (NTIRE team18_XiaomiMM code in korvin2000/arch_research, GPL-3.0 collection)"
_RGB_MEAN = (0.4488, 0.4371, 0.4040)
_NUM_FEAT = 64


class _HATBase(nn.Module):
    """What the three classes share: mean shift, conv_first, token embedding, RHAG construction, buffers."""

    _mamba = False

    def __init__(self, *, img_size: int | Sequence[int], patch_size: int | Sequence[int], in_chans: int,
                 embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                 compress_ratio: int, squeeze_factor: int, conv_scale: float, overlap_ratio: float, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop_rate: float, attn_drop_rate: float,
                 drop_path_rate: float, norm_layer: Any, ape: bool, patch_norm: bool, use_checkpoint: bool,
                 upscale: int, img_range: float, upsampler: str, resi_connection: str) -> None:
        super().__init__()
        if norm_layer not in (None, nn.LayerNorm):
            raise ValueError("only nn.LayerNorm is supported as norm_layer")
        if upsampler != "pixelshuffle":
            raise ValueError(f"upsampler {upsampler!r}: only 'pixelshuffle' has a reconstruction head upstream")
        if len(num_heads) < len(depths):
            raise ValueError(f"num_heads has {len(num_heads)} entries for {len(depths)} groups")
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        self.patches_resolution = (int(img[0]) // int(patch[0]), int(img[1]) // int(patch[1]))
        if min(self.patches_resolution) < window_size:
            raise ValueError(f"img_size // patch_size {self.patches_resolution} is smaller than the window "
                             f"{window_size} (upstream's index tables then do not fit)")
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.overlap_ratio = overlap_ratio
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.use_checkpoint = use_checkpoint
        self.register_buffer("mean", torch.tensor(_RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3
                             else torch.zeros(1, 1, 1, 1), persistent=False)
        overlap_win = window_size + int(overlap_ratio * window_size)
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        self.register_buffer("relative_position_index_OCA", oca_relative_position_index(window_size, overlap_win))
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.ape = ape
        if ape:
            num_patches = self.patches_resolution[0] * self.patches_resolution[1]
            self.absolute_pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, num_patches, embed_dim),
                                                                         std=0.02))
        self.pos_drop = nn.Dropout(drop_rate)
        n = sum(depths)  # stochastic depth rates rise linearly over all blocks (python floats: meta-safe)
        self._dpr = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self._group_kwargs = {
            "dim": embed_dim, "input_resolution": self.patches_resolution, "window_size": window_size,
            "compress_ratio": compress_ratio, "squeeze_factor": squeeze_factor, "conv_scale": conv_scale,
            "overlap_ratio": overlap_ratio, "mlp_ratio": mlp_ratio, "qkv_bias": qkv_bias, "qk_scale": qk_scale,
            "drop": drop_rate, "resi_connection": resi_connection, "mamba": self._mamba,
        }
        self._depths, self._heads = list(depths), list(num_heads)
        del attn_drop_rate  # attention dropout is not applied in eval; upstream passes it to the attention only

    def _group(self, i: int) -> RHAG:
        start = sum(self._depths[:i])
        return RHAG(depth=self._depths[i], num_heads=self._heads[i],
                    drop_path=self._dpr[start:start + self._depths[i]], **self._group_kwargs)

    def _head(self, num_out_ch: int) -> tuple[nn.Module, nn.Module, nn.Module]:
        return (nn.Sequential(nn.Conv2d(self.embed_dim, _NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True)),
                Upsample(self.upscale, _NUM_FEAT), nn.Conv2d(_NUM_FEAT, num_out_ch, 3, 1, 1))

    def _check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % self.window_size or w % self.window_size:
            raise ValueError(f"{type(self).__name__}: input {h}x{w} is not a multiple of the window "
                             f"{self.window_size} (pad first)")

    def _params(self, x_size: tuple[int, int], device: torch.device) -> dict[str, Any]:
        mask = None
        if min(self.patches_resolution) > self.window_size:  # some block shifts
            mask = shifted_window_mask(x_size, self.window_size, self.shift_size, device=device)
        return {"attn_mask": mask, "rpi_sa": self.relative_position_index_SA,
                "rpi_oca": self.relative_position_index_OCA}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        return self.pos_drop(x)

    def _run(self, layers: nn.ModuleList, x: torch.Tensor, x_size: tuple[int, int],
             params: dict[str, Any]) -> torch.Tensor:
        for layer in layers:
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, x_size, params, use_reentrant=False)
            else:
                x = layer(x, x_size, params)
        return x


class HAT(_HATBase):
    """Hybrid Attention Transformer (pixel-shuffle head)."""

    def __init__(self, *, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 1, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 7, compress_ratio: int = 3, squeeze_factor: int = 30, conv_scale: float = 0.01,
                 overlap_ratio: float = 0.5, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, norm_layer: Any = None, ape: bool = False, patch_norm: bool = True,
                 use_checkpoint: bool = False, upscale: int = 2, img_range: float = 1.0, upsampler: str = "",
                 resi_connection: str = "1conv") -> None:
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.num_layers = len(depths)
        self.layers = nn.ModuleList(self._group(i) for i in range(self.num_layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = resi_conv(embed_dim, resi_connection)
        self.conv_before_upsample, self.upsample, self.conv_last = self._head(in_chans)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        params = self._params(x_size, x.device)
        x = self._run(self.layers, self._embed(x), x_size, params)
        return patch_unembed(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x)
        mean = self.mean.to(x.dtype)
        x = self.conv_first((x - mean) * self.img_range)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x / self.img_range + mean


class HATM(HAT):
    """HAT whose hybrid attention blocks use VMamba's SS2D in place of window attention."""

    _mamba = True


# ---------------------------------------------------------------------------------------------------------------------
# HATIQCMix: image-quality statistics of the raw input (kornia's definitions), thresholds from upstream

_MARGINS = (("brightness", 109.04), ("contrast", 55.82), ("sharpness", 11.46), ("noise", 43.95),
            ("saturation", 33.91))
_SHARED_LAYERS = 10


def _gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _filter3(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), kernel.to(x)[:, None])


def image_statistics(img: torch.Tensor) -> torch.Tensor:
    """(B, 5) brightness, contrast, sharpness, noise, saturation of RGB images in [0, 1] (HATIQCMix's indicators):
    grey mean and std (x 255), mean Sobel gradient magnitude (x 255; kernels / 8, replicate border), variance of the
    normalised 3x3 Laplacian (x 255^2; kernel / 16, reflect border), mean HSV saturation (x 100)."""
    img = img.float()
    gray = _gray(img)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    grads = _filter3(gray, torch.stack([sobel, sobel.t()]), "replicate")
    lap = torch.ones(3, 3)
    lap[1, 1] = -8.0
    lap = _filter3(gray, (lap / 16)[None], "reflect")
    mx, mn = img.max(1).values, img.min(1).values
    return torch.stack([
        gray.mean(dim=(1, 2, 3)) * 255,
        gray.std(dim=(1, 2, 3)) * 255,
        grads.square().sum(1).sqrt().mean(dim=(1, 2)) * 255,
        lap.var(dim=(1, 2, 3)) * 255**2,
        ((mx - mn) / (mx + 1e-8)).mean(dim=(1, 2)) * 100,
    ], dim=1)


class HATIQCMix(_HATBase):
    """HAT with 10 shared groups and per-statistic branch pairs; the output is the mean of the 5 chosen branches."""

    def __init__(self, *, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 1, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 7, compress_ratio: int = 3, squeeze_factor: int = 30, conv_scale: float = 0.01,
                 overlap_ratio: float = 0.5, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, norm_layer: Any = None, ape: bool = False, patch_norm: bool = True,
                 use_checkpoint: bool = False, upscale: int = 2, img_range: float = 1.0, upsampler: str = "",
                 resi_connection: str = "1conv") -> None:
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if len(depths) < _SHARED_LAYERS:
            raise ValueError(f"HATIQCMix has {_SHARED_LAYERS} shared groups: depths needs at least that many entries")
        if in_chans != 3:
            raise ValueError("HATIQCMix chooses branches from RGB statistics: in_chans must be 3")
        self.num_layers = len(depths)
        self.num_branches = 2 * len(_MARGINS)
        self.register_buffer("margins", torch.tensor([m for _, m in _MARGINS]), persistent=False)
        self.layers = nn.ModuleList(self._group(i) for i in range(_SHARED_LAYERS))
        self.layers_branches = nn.ModuleList(
            nn.ModuleList(self._group(i) for i in range(_SHARED_LAYERS, self.num_layers))
            for _ in range(self.num_branches)
        )
        self.norm_branches = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(self.num_branches))
        self.conv_after_body_branches = nn.ModuleList(resi_conv(embed_dim, resi_connection)
                                                      for _ in range(self.num_branches))
        heads = [self._head(in_chans) for _ in range(self.num_branches)]
        self.conv_before_upsample_branches = nn.ModuleList(h[0] for h in heads)
        self.upsample_branches = nn.ModuleList(h[1] for h in heads)
        self.conv_last_branches = nn.ModuleList(h[2] for h in heads)

    def branch_choice(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 5) branch index per statistic: 2 i + (statistic_i > margin_i), from the raw input."""
        above = (image_statistics(x) > self.margins).long()
        return 2 * torch.arange(len(_MARGINS), device=x.device) + above

    def _branch(self, i: int, x: torch.Tensor, shortcut: torch.Tensor, x_size: tuple[int, int],
                params: dict[str, Any]) -> torch.Tensor:
        y = self._run(self.layers_branches[i], x, x_size, params)  # type: ignore[arg-type]
        y = self.conv_after_body_branches[i](patch_unembed(self.norm_branches[i](y), x_size)) + shortcut
        return self.conv_last_branches[i](self.upsample_branches[i](self.conv_before_upsample_branches[i](y)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x)
        choice = self.branch_choice(x)
        mean = self.mean.to(x.dtype)
        shortcut = self.conv_first((x - mean) * self.img_range)
        x_size = (shortcut.shape[2], shortcut.shape[3])
        params = self._params(x_size, x.device)
        feats = self._run(self.layers, self._embed(shortcut), x_size, params)
        out: torch.Tensor | None = None
        for k in range(len(_MARGINS)):
            for i in sorted(set(choice[:, k].tolist())):
                sel = (choice[:, k] == i).nonzero().flatten()
                y = self._branch(i, feats[sel], shortcut[sel], x_size, params)
                if out is None:
                    out = y.new_zeros((x.shape[0], *y.shape[1:]))
                out[sel] += y
        assert out is not None
        return (out / len(_MARGINS)) / self.img_range + mean


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _context(kw: dict[str, Any]) -> int:
    """Receptive-field radius, capped: each HAB reaches about a window (shifted windows, the CAB's two 3x3), the
    OCAB half its overlap window, each group's conv one pixel; the channel attention sees everything anyway."""
    ws = int(kw["window_size"])
    per_group = [int(d) * (ws + 2) + ws + 1 for d in kw["depths"]]
    return min(128, sum(per_group) + 3)


def _describe_for(cls_name: str) -> Any:
    def describe(kw: dict[str, Any]) -> ArchSpec:
        ws = int(kw["window_size"])
        return ArchSpec(
            id=cls_name.lower(),
            family="HAT",
            upstream_class=cls_name,
            tasks=("upscale",),
            scale=int(kw["upscale"]),
            in_channels=int(kw["in_chans"]),
            out_channels=int(kw["in_chans"]),
            min_size=ws,
            multiple_of=ws,
            # spandrel runs HAT in bf16, not fp16 (activations overflow); measured on the GPU by the lead
            fp16=False,
            bf16=True,
            channels_last=False,
            tiling="global",
            context=_context(kw),
            code_license=_LICENSE,
        )
    return describe


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _detect_for(cls: type[_HATBase]) -> Any:
    def detect(sd: StateDict) -> dict[str, Any] | None:
        """Everything that shapes the state dict is read off it; conv_scale, img_range, drop rates and qk_scale
        are not stored (upstream defaults / the published 0.01 conv_scale), img_size only with ape (else 64)."""
        iqc = "norm_branches.0.weight" in sd
        if (cls is HATIQCMix) != iqc or "relative_position_index_OCA" not in sd or "conv_first.weight" not in sd:
            return None
        b0 = "layers.0.residual_group.blocks.0."
        mamba = f"{b0}vmamba.A_logs" in sd
        if (cls is HATM) != mamba or (not mamba and f"{b0}attn.relative_position_bias_table" not in sd):
            return None
        embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
        rpi_sa, rpi_oca = sd["relative_position_index_SA"], sd["relative_position_index_OCA"]
        ws = math.isqrt(int(rpi_sa.shape[0]))
        ows = math.isqrt(int(rpi_oca.shape[1]))
        if ws * ws != rpi_sa.shape[0] or ows <= ws:
            return None
        shared = count_indexed(sd, "layers.{}.")
        branch = count_indexed(sd, "layers_branches.0.{}.") if iqc else 0
        prefixes = [f"layers.{i}." for i in range(shared)] + [f"layers_branches.0.{i}." for i in range(branch)]
        depths = [count_indexed(sd, p + "residual_group.blocks.{}.norm1.weight") for p in prefixes]
        heads = [int(sd[p + "residual_group.overlap_attn.relative_position_bias_table"].shape[1]) for p in prefixes]
        mid = int(sd[f"{b0}conv_block.cab.0.weight"].shape[0])
        squeezed = int(sd[f"{b0}conv_block.cab.3.attention.1.weight"].shape[0])
        hidden = int(sd[f"{b0}mlp.fc1.weight"].shape[0])
        up = "upsample_branches.0." if iqc else "upsample."
        first_up = sd.get(up + "0.weight")
        if first_up is None or mid == 0 or squeezed == 0:
            return None
        upscale = 3 if int(first_up.shape[0]) == 9 * _NUM_FEAT else 2 ** count_indexed_even(sd, up)
        pos = sd.get("absolute_pos_embed")
        side = math.isqrt(int(pos.shape[1])) if pos is not None else max(64, 2 * ws)
        kw: dict[str, Any] = {
            "img_size": side, "patch_size": 1, "in_chans": in_chans, "embed_dim": embed_dim, "depths": depths,
            "num_heads": heads, "window_size": ws, "compress_ratio": embed_dim // mid,
            "squeeze_factor": embed_dim // squeezed, "conv_scale": 0.01,
            "overlap_ratio": ratio_for(ows - ws, ws), "mlp_ratio": ratio_for(hidden, embed_dim),
            "qkv_bias": f"{prefixes[0]}residual_group.overlap_attn.qkv.bias" in sd, "ape": pos is not None,
            "patch_norm": "patch_embed.norm.weight" in sd, "upscale": upscale, "img_range": 1.0,
            "upsampler": "pixelshuffle",
            "resi_connection": "1conv" if "layers.0.conv.weight" in sd else "identity",
        }
        return kw if same_keys_and_shapes(lambda: cls(**kw), sd) else None
    return detect


def count_indexed_even(sd: StateDict, prefix: str) -> int:
    """Number of conv + PixelShuffle(2) pairs in a pixel-shuffle Upsample (convs at even indices)."""
    n = 0
    while f"{prefix}{2 * n}.weight" in sd:
        n += 1
    return n


ARCHS: tuple[ArchEntry, ...] = tuple(
    ArchEntry(id=c.__name__.lower(), family="HAT", cls=c, describe=_describe_for(c.__name__), detect=_detect_for(c))
    for c in (HAT, HATM, HATIQCMix)
)
