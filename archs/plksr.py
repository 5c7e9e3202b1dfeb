"""PLKSR and RealPLKSR: partial large-kernel CNNs for efficient super-resolution (arXiv:2404.11848).

Semantics follow dslisleedh/PLKSR (MIT) as carried by neosr: `plksr` (with num_in_ch/num_out_ch) and
`realplksr` (GroupNorm, Mish, optional DySample upsampler). Keyword names, defaults and state-dict keys match
those classes, including the upstream `channe_mixer` typo in PLKSR, so checkpoints load strictly.
neosr reads the default `upscaling_factor` from its CLI options at import time; here the default is 4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from .layers.detect import pixel_shuffle_scale, same_keys_and_shapes
from .layers.upsample import DySample
from .spec import ArchEntry, ArchSpec, StateDict

_CCM_TYPES = ("CCM", "ICCM", "DCCM")
_LK_TYPES = ("PLK", "SparsePLK", "RectSparsePLK")


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _replace_head(x: torch.Tensor, head: torch.Tensor, inplace: bool) -> torch.Tensor:
    """x with channels [:head.shape[1]] replaced by head.

    Upstream writes in place in eval; we do so only when asked (the caller passes its own intermediate) and when
    autograd is not tracking, since overwriting a conv input breaks backward.
    """
    pdim = head.shape[1]
    if inplace and not _needs_grad(x, head):
        x[:, :pdim] = head
        return x
    return torch.cat([head, x[:, pdim:]], dim=1)


def _channel_mixer(dim: int, ccm_type: str, act: Callable[[], nn.Module]) -> nn.Sequential:
    # CCM: 3x3 then 1x1; ICCM: 1x1 then 3x3; DCCM: two 3x3 (the official configs).
    if ccm_type not in _CCM_TYPES:
        raise ValueError(f"unknown ccm_type {ccm_type!r}; expected one of {_CCM_TYPES}")
    k0 = 1 if ccm_type == "ICCM" else 3
    k2 = 1 if ccm_type == "CCM" else 3
    mixer = nn.Sequential(
        nn.Conv2d(dim, dim * 2, k0, 1, k0 // 2),
        act(),
        nn.Conv2d(dim * 2, dim, k2, 1, k2 // 2),
    )
    trunc_normal_(mixer[2].weight, std=0.02)
    return mixer


class PLKConv2d(nn.Module):
    """Large-kernel conv applied to the first `dim` channels only; the rest pass through."""

    def __init__(self, dim: int, kernel_size: int, with_idt: bool = False) -> None:
        super().__init__()
        self.idx = dim
        self.with_idt = with_idt
        self.conv = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2)
        trunc_normal_(self.conv.weight, std=0.02)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        x1 = x[:, : self.idx]
        head = self.conv(x1)
        if self.with_idt:
            head = head + x1
        return _replace_head(x, head, inplace)


class SparsePLKConv2d(nn.Module):
    """Partial large kernel as a sum of dilated small kernels (+ optional full kernel), RepLKNet-style ablation.

    Upstream's `convert()` folds the branches into one conv whose checkpoint then looks like a `PLK` one
    (`lk.conv`), and loads as lk_type="PLK" with the same output; this class keeps the unfused form.
    """

    def __init__(
        self,
        dim: int,
        max_kernel_size: int,
        sub_kernel_sizes: Sequence[int],
        dilations: Sequence[int],
        use_max_kernel: bool,
        with_idt: bool,
    ) -> None:
        super().__init__()
        self.idx = dim
        self.with_idt = with_idt
        # Upstream zips without strict, so surplus entries of the longer list are ignored.
        pairs = list(zip(sub_kernel_sizes, dilations, strict=False))
        self.max_kernel_size = max([max_kernel_size] + [(k - 1) * d + 1 for k, d in pairs])
        convs = [nn.Conv2d(dim, dim, k, 1, (k // 2) * d, dilation=d) for k, d in pairs]
        if use_max_kernel:
            convs.append(nn.Conv2d(dim, dim, self.max_kernel_size, 1, self.max_kernel_size // 2))
        self.convs = nn.ModuleList(convs)
        for m in self.convs:
            trunc_normal_(m.weight, std=0.02)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        x1 = x[:, : self.idx]
        head = x1 if self.with_idt else None
        for conv in self.convs:
            y = conv(x1)
            head = y if head is None else head + y
        if head is None:  # no branches at all: upstream adds nothing to 0.0
            head = torch.zeros_like(x1)
        return _replace_head(x, head, inplace)


class RectSparsePLKConv2d(nn.Module):
    """Partial large kernel as m x n + n x m + n x n convs (SLaK-style ablation; n = m // 3)."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.idx = dim
        m, n = kernel_size, kernel_size // 3
        self.mn_conv = nn.Conv2d(dim, dim, (m, n), 1, (m // 2, n // 2))
        self.nm_conv = nn.Conv2d(dim, dim, (n, m), 1, (n // 2, m // 2))
        self.nn_conv = nn.Conv2d(dim, dim, (n, n), 1, (n // 2, n // 2))
        for conv in (self.mn_conv, self.nm_conv, self.nn_conv):
            trunc_normal_(conv.weight, std=0.02)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        x1 = x[:, : self.idx]
        head = self.mn_conv(x1) + self.nm_conv(x1) + self.nn_conv(x1)
        return _replace_head(x, head, inplace)


class EA(nn.Module):
    """Element-wise attention: x * sigmoid(conv3x3(x))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1), nn.Sigmoid())
        trunc_normal_(self.f[0].weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f(x)


class PLKBlock(nn.Module):
    """Channel mixer -> partial large kernel -> element-wise attention -> 1x1 refine, plus the skip."""

    def __init__(
        self,
        dim: int,
        ccm_type: str,
        max_kernel_size: int,
        split_ratio: float,
        lk_type: str = "PLK",
        use_max_kernel: bool = False,
        sparse_kernels: Sequence[int] = (5, 5, 5, 5),
        sparse_dilations: Sequence[int] = (1, 2, 3, 4),
        with_idt: bool = False,
        use_ea: bool = True,
    ) -> None:
        super().__init__()
        self.channe_mixer = _channel_mixer(dim, ccm_type, nn.GELU)  # sic: upstream key name
        pdim = int(dim * split_ratio)
        self.lk: nn.Module
        if lk_type == "PLK":
            self.lk = PLKConv2d(pdim, max_kernel_size, with_idt)
        elif lk_type == "SparsePLK":
            self.lk = SparsePLKConv2d(pdim, max_kernel_size, sparse_kernels, sparse_dilations, use_max_kernel, with_idt)
        elif lk_type == "RectSparsePLK":
            self.lk = RectSparsePLKConv2d(pdim, max_kernel_size)
        else:
            raise ValueError(f"unknown lk_type {lk_type!r}; expected one of {_LK_TYPES}")
        self.attn = EA(dim) if use_ea else nn.Identity()
        self.refine = nn.Conv2d(dim, dim, 1, 1, 0)
        trunc_normal_(self.refine.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mixer's output is this block's own tensor, so the large-kernel head may overwrite it in place.
        y = self.lk(self.channe_mixer(x), inplace=True)
        return self.refine(self.attn(y)) + x


class PLKSR(nn.Module):
    """PLKSR (neosr `plksr`): conv -> n_blocks PLKBlocks -> conv to out*s^2 channels, plus the nearest-upsampled
    input (repeat_interleave before the pixel shuffle), then pixel shuffle.

    `is_coreml` only selected an export-friendly repeat in upstream; the result is the same, so it is ignored.
    """

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        dim: int = 64,
        n_blocks: int = 28,
        upscaling_factor: int = 4,
        ccm_type: str = "DCCM",
        kernel_size: int = 17,
        split_ratio: float = 0.25,
        lk_type: str = "PLK",
        use_max_kernel: bool = False,
        sparse_kernels: Sequence[int] = (5, 5, 5, 5),
        sparse_dilations: Sequence[int] = (1, 2, 3, 4),
        with_idt: bool = False,
        use_ea: bool = True,
        is_coreml: bool = False,
    ) -> None:
        super().__init__()
        self.upscaling_factor = upscaling_factor
        self.feats = nn.Sequential(
            nn.Conv2d(num_in_ch, dim, 3, 1, 1),
            *[
                PLKBlock(
                    dim,
                    ccm_type,
                    kernel_size,
                    split_ratio,
                    lk_type,
                    use_max_kernel,
                    sparse_kernels,
                    sparse_dilations,
                    with_idt,
                    use_ea,
                )
                for _ in range(n_blocks)
            ],
            nn.Conv2d(dim, num_out_ch * upscaling_factor**2, 3, 1, 1),
        )
        trunc_normal_(self.feats[0].weight, std=0.02)
        trunc_normal_(self.feats[-1].weight, std=0.02)
        self.to_img = nn.PixelShuffle(upscaling_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each input channel repeated s^2 times lands, after the shuffle, on its s x s output cell.
        base = torch.repeat_interleave(x, self.upscaling_factor**2, dim=1)
        return self.to_img(self.feats(x) + base)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and keys) whose statistics on a GPU are spread over the whole device.

    PyTorch's GroupNorm kernel reduces each (sample, group) in one thread block: at batch 1 RealPLKSR's 4 groups of a
    64-channel 960x540 map are 4 blocks, a few percent of the SMs, 28 times per frame (what made it 3.7x slower
    eager than compiled, issue 13). A general reduction splits each group over many blocks; the statistics and
    the normalisation run in float32 as PyTorch's kernel does. The CPU keeps PyTorch's kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return super().forward(x)
        return group_norm_wide(x, self.num_groups, self.weight, self.bias, self.eps)


def group_norm_wide(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    eps: float) -> torch.Tensor:
    """F.group_norm's function with the reductions done by var_mean (parallel over each group's elements)."""
    n, c = x.shape[:2]
    xf = x.float()
    var, mean = torch.var_mean(xf.reshape(n, groups, -1), dim=-1, correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)  # (n, groups, 1)
    scale = rstd.expand(n, groups, c // groups).reshape(n, c)
    shift = (-mean * rstd).expand(n, groups, c // groups).reshape(n, c)
    if weight is not None:
        scale = scale * weight.float()
        shift = shift * weight.float()
    if bias is not None:
        shift = shift + bias.float()
    view = (n, c) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.view(view), xf, scale.view(view)).to(x.dtype)


class RealPLKBlock(nn.Module):
    """RealPLKSR block: Mish DCCM -> partial large kernel -> EA -> 1x1 refine -> GroupNorm, plus the skip."""

    def __init__(self, dim: int, kernel_size: int, split_ratio: float, norm_groups: int, use_ea: bool = True):
        super().__init__()
        self.channel_mixer = _channel_mixer(dim, "DCCM", nn.Mish)
        self.lk = PLKConv2d(int(dim * split_ratio), kernel_size)
        self.attn = EA(dim) if use_ea else nn.Identity()
        self.refine = nn.Conv2d(dim, dim, 1, 1, 0)
        trunc_normal_(self.refine.weight, std=0.02)
        self.norm = GroupNorm(norm_groups, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lk(self.channel_mixer(x), inplace=True)  # own intermediate, see PLKBlock
        return self.norm(self.refine(self.attn(y))) + x


class RealPLKSR(nn.Module):
    """RealPLKSR (neosr `realplksr`): PLKSR with GroupNorm in every block, Mish, a Dropout2d before the tail
    conv (identity in eval; it only shifts the tail to index n_blocks + 2) and an optional DySample upsampler.

    Extra keyword arguments are accepted and ignored, as upstream's `**kwargs` does.
    """

    def __init__(
        self,
        *,
        in_ch: int = 3,
        out_ch: int = 3,
        dim: int = 64,
        n_blocks: int = 28,
        upscaling_factor: int = 4,
        kernel_size: int = 17,
        split_ratio: float = 0.25,
        use_ea: bool = True,
        norm_groups: int = 4,
        dropout: float = 0,
        dysample: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.upscaling_factor = upscaling_factor
        self.feats = nn.Sequential(
            nn.Conv2d(in_ch, dim, 3, 1, 1),
            *[RealPLKBlock(dim, kernel_size, split_ratio, norm_groups, use_ea) for _ in range(n_blocks)],
            nn.Dropout2d(dropout),
            nn.Conv2d(dim, out_ch * upscaling_factor**2, 3, 1, 1),
        )
        trunc_normal_(self.feats[0].weight, std=0.02)
        trunc_normal_(self.feats[-1].weight, std=0.02)
        self.to_img: nn.Module
        if dysample and upscaling_factor != 1:
            # Upstream sizes DySample by in_ch (equal to out_ch whenever the model can run at all).
            groups = out_ch if upscaling_factor % 2 else 4
            self.to_img = DySample(in_ch * upscaling_factor**2, out_ch, upscaling_factor, groups=groups)
        else:
            self.to_img = nn.PixelShuffle(upscaling_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = torch.repeat_interleave(x, self.upscaling_factor**2, dim=1)
        return self.to_img(self.feats(x) + base)


# Upstream (neosr) class names.
plksr = PLKSR
realplksr = RealPLKSR


# ---------------------------------------------------------------------------------------------------------------
# Descriptors.
#
# Context = receptive-field radius in input pixels, summed over the convolution chain (tiles carrying this margin
# are exact): head 3x3 (1) + per block [channel mixer (DCCM 2, CCM/ICCM 1) + large kernel (k // 2) + EA 3x3 (1)]
# + tail 3x3 (1). Official PLKSR/RealPLKSR (28 blocks, k=17, EA, DCCM): 1 + 28 * 11 + 1 = 310;
# the tiny/_s presets (12 blocks, k=13, no EA): 1 + 12 * 8 + 1 = 98. This is the theoretical bound; the effective
# field of trained weights is much smaller, but a smaller margin is no longer exact.


def _lk_radius(kw: dict[str, Any]) -> int:
    ks = int(kw["kernel_size"])
    if kw.get("lk_type", "PLK") == "SparsePLK":
        pairs = list(zip(kw["sparse_kernels"], kw["sparse_dilations"], strict=False))
        radii = [((k - 1) * d) // 2 for k, d in pairs]
        if kw["use_max_kernel"]:
            radii.append(max([ks] + [(k - 1) * d + 1 for k, d in pairs]) // 2)
        return max(radii, default=0)
    return ks // 2  # PLK, and RectSparsePLK's long side


def _plksr_context(kw: dict[str, Any], ccm_type: str) -> int:
    ccm = 2 if ccm_type == "DCCM" else 1
    per_block = ccm + _lk_radius(kw) + (1 if kw["use_ea"] else 0)
    return 1 + int(kw["n_blocks"]) * per_block + 1


def _describe_plksr(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="plksr",
        family="PLKSR",
        upstream_class="plksr",
        tasks=("upscale",),
        scale=int(kw["upscaling_factor"]),
        in_channels=int(kw["num_in_ch"]),
        out_channels=int(kw["num_out_ch"]),
        # spandrel marks PLKSR supports_half=False; we follow it (not checked here with trained weights).
        # bf16 has float32's range.
        fp16=False,
        bf16=True,
        channels_last=True,  # 1.25x on an H200 (torch 2.11, fp16/bf16/fp32, 4x3x256x256, x4)
        compile_mode="inductor",  # 960x540 x4 on an H100: 73.6 -> 60.9 ms
        tiling="safe",
        context=_plksr_context(kw, str(kw["ccm_type"])),
        code_license="MIT",
    )


def _describe_realplksr(kw: dict[str, Any]) -> ArchSpec:
    context = _plksr_context({**kw, "lk_type": "PLK"}, "DCCM")
    if kw["dysample"] and kw["upscaling_factor"] != 1:
        # DySample samples bilinearly around each pixel (initial offsets within half a pixel); learned offsets are
        # unbounded in principle, so these 2 px are a heuristic. The tiling is "global" anyway.
        context += 2
    return ArchSpec(
        id="realplksr",
        family="RealPLKSR",
        upstream_class="realplksr",
        tasks=("upscale",),
        scale=int(kw["upscaling_factor"]),
        in_channels=int(kw["in_ch"]),
        out_channels=int(kw["out_ch"]),
        # spandrel: supports_half=False; traiNNer-redux trains RealPLKSR in bf16 by default.
        fp16=False,
        bf16=True,
        # Measured on an H200 (torch 2.11, 4x3x256x256, x4): channels_last is 0.91x in bf16 and 1.06x in float32;
        # GroupNorm is slow in NHWC. Plain PLKSR gains 1.25x, SPAN 1.5x.
        channels_last=False,
        compile_mode="inductor",  # 960x540 x4 on an H100: 273 -> 74 ms (inductor splits GroupNorm's reduction)
        # GroupNorm normalises with whole-image statistics: tiles see different statistics than the full frame.
        tiling="global",
        context=context,
        code_license="MIT",
    )


# ---------------------------------------------------------------------------------------------------------------
# Detectors. Both read the hyperparameters off the tensor shapes, then rebuild the model on the meta device and
# accept only if its keys and shapes equal the state dict's, so a detection always loads strictly.
# PLKSR and RealPLKSR never both match: PLKSR blocks have `channe_mixer` (upstream typo), RealPLKSR `channel_mixer`
# and `norm`. Not stored in tensors, so left at their defaults: with_idt (False), is_coreml, norm_groups (4),
# dropout; SparsePLK's dilations (see _detect_sparse).


def _count_blocks(sd: StateDict, marker: str) -> int:
    n = 0
    while f"feats.{n + 1}.{marker}" in sd:
        n += 1
    return n


def _split_ratio(pdim: int, dim: int) -> float:
    ratio = pdim / dim
    if int(dim * ratio) != pdim:  # guard against float rounding below pdim
        ratio = (pdim + 0.5) / dim
    return ratio


def _detect_sparse(sd: StateDict, prefix: str) -> dict[str, Any] | None:
    """SparsePLK (an ablation, no released weights): only the default branch layout is recognised.

    Dilations are not stored and the extra full-size kernel of use_max_kernel looks like another branch, so we
    accept the defaults (5,5,5,5) with dilations (1,2,3,4), with or without the max kernel, and refuse the rest.
    """
    sizes = []
    while f"{prefix}.convs.{len(sizes)}.weight" in sd:
        sizes.append(int(sd[f"{prefix}.convs.{len(sizes)}.weight"].shape[-1]))
    if sizes == [5, 5, 5, 5]:
        return {"lk_type": "SparsePLK", "use_max_kernel": False}
    if sizes[:4] == [5, 5, 5, 5] and len(sizes) == 5 and sizes[4] >= 17:
        # max kernel = max(kernel_size, 17): kernel_size is recoverable only when it exceeds 17.
        return {"lk_type": "SparsePLK", "use_max_kernel": True, "kernel_size": sizes[4]}
    return None


def _detect_plksr(sd: StateDict) -> dict[str, Any] | None:
    if "feats.0.weight" not in sd or "feats.1.channe_mixer.0.weight" not in sd:
        return None
    n_blocks = _count_blocks(sd, "channe_mixer.0.weight")
    head = sd["feats.0.weight"]
    tail = sd.get(f"feats.{n_blocks + 1}.weight")
    if head.ndim != 4 or tail is None or tail.ndim != 4:
        return None
    dim, in_ch = int(head.shape[0]), int(head.shape[1])
    # The input skip (repeat_interleave) is added to the tail's output, so out channels = in channels.
    scale = pixel_shuffle_scale(int(tail.shape[0]), in_ch)
    if scale is None:
        return None
    k0 = int(sd["feats.1.channe_mixer.0.weight"].shape[-1])
    k2 = int(sd["feats.1.channe_mixer.2.weight"].shape[-1])
    ccm_type = {(3, 1): "CCM", (1, 3): "ICCM", (3, 3): "DCCM"}.get((k0, k2))
    if ccm_type is None:
        return None
    kwargs: dict[str, Any] = {
        "num_in_ch": in_ch,
        "num_out_ch": in_ch,
        "dim": dim,
        "n_blocks": n_blocks,
        "upscaling_factor": scale,
        "ccm_type": ccm_type,
        "use_ea": "feats.1.attn.f.0.weight" in sd,
    }
    lk = "feats.1.lk"
    if f"{lk}.conv.weight" in sd:
        w = sd[f"{lk}.conv.weight"]
        kwargs.update(lk_type="PLK", kernel_size=int(w.shape[-1]))
    elif f"{lk}.mn_conv.weight" in sd:
        w = sd[f"{lk}.mn_conv.weight"]
        kwargs.update(lk_type="RectSparsePLK", kernel_size=int(w.shape[-2]))
    elif f"{lk}.convs.0.weight" in sd:
        w = sd[f"{lk}.convs.0.weight"]
        sparse = _detect_sparse(sd, lk)
        if sparse is None:
            return None
        kwargs.update(sparse)
    else:
        return None
    kwargs["split_ratio"] = _split_ratio(int(w.shape[0]), dim)
    return kwargs if same_keys_and_shapes(lambda: PLKSR(**kwargs), sd) else None


def _detect_realplksr(sd: StateDict) -> dict[str, Any] | None:
    if "feats.0.weight" not in sd or "feats.1.channel_mixer.0.weight" not in sd or "feats.1.norm.weight" not in sd:
        return None
    n_blocks = _count_blocks(sd, "channel_mixer.0.weight")
    head = sd["feats.0.weight"]
    tail = sd.get(f"feats.{n_blocks + 2}.weight")  # feats.{n_blocks + 1} is the Dropout2d
    lk = sd.get("feats.1.lk.conv.weight")
    if head.ndim != 4 or tail is None or tail.ndim != 4 or lk is None:
        return None
    dim, in_ch = int(head.shape[0]), int(head.shape[1])
    dysample = "to_img.offset.weight" in sd
    out_ch = int(sd["to_img.end_conv.weight"].shape[0]) if "to_img.end_conv.weight" in sd else in_ch
    scale = pixel_shuffle_scale(int(tail.shape[0]), out_ch)
    if scale is None:
        return None
    kwargs: dict[str, Any] = {
        "in_ch": in_ch,
        "out_ch": out_ch,
        "dim": dim,
        "n_blocks": n_blocks,
        "upscaling_factor": scale,
        "kernel_size": int(lk.shape[-1]),
        "split_ratio": _split_ratio(int(lk.shape[0]), dim),
        "use_ea": "feats.1.attn.f.0.weight" in sd,
        "dysample": dysample,
    }
    return kwargs if same_keys_and_shapes(lambda: RealPLKSR(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="plksr", family="PLKSR", cls=PLKSR, describe=_describe_plksr, detect=_detect_plksr),
    ArchEntry(
        id="realplksr", family="RealPLKSR", cls=RealPLKSR, describe=_describe_realplksr, detect=_detect_realplksr
    ),
)
