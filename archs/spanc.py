"""SpanC ("SpanPP"): SPAN with richer re-parameterisation and an IGConv multi-scale upsampler (x1-x4 in one model).

Semantics follow umzi2/spanpp (MIT) `traiNNer/arch/spanpp.py` (`SpanC`), itself built on SPAN (hongyuanyu/SPAN,
Apache-2.0) and IGConv (dslisleedh/IGConv, MIT). Keyword names, defaults and state-dict keys match upstream so its
checkpoints load strictly. No published SpanC weights are known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import same_keys_and_shapes
from .layers.reparam import Conv3XC, Reparameterizable, fusion_dtype, set_fused
from .spec import ArchEntry, ArchSpec, StateDict


def _derived(*params: torch.Tensor) -> None:
    # Fused eval weights are recomputed from the branches; the optimiser must not train them.
    for p in params:
        p.requires_grad_(False)


class SeqConv3x3(nn.Module):
    """1x1 conv (to `depth_multiplier * out` channels) then an unpadded 3x3, on the zero-padded input.

    Upstream pads the 1x1 output and writes the 1x1 bias into the border; that equals the 1x1 conv of the
    zero-padded input, which is what we compute. Parameters are named k0/b0/k1/b1 as upstream.
    """

    def __init__(self, inp_planes: int, out_planes: int, depth_multiplier: int) -> None:
        super().__init__()
        mid = int(out_planes * depth_multiplier)
        conv0 = nn.Conv2d(inp_planes, mid, 1)
        conv1 = nn.Conv2d(mid, out_planes, 3)
        assert conv0.bias is not None and conv1.bias is not None
        # Parameters taken from fresh convs so they get PyTorch's default conv initialisation, as upstream.
        self.k0, self.b0 = conv0.weight, conv0.bias
        self.k1, self.b1 = conv1.weight, conv1.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.k0, self.b0)
        return F.conv2d(y, self.k1, self.b1)

    def fused(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the single padded 3x3 conv equal to this module."""
        k0 = self.k0.to(dtype)[:, :, 0, 0]  # (mid, in)
        k1 = self.k1.to(dtype)  # (out, mid, 3, 3)
        weight = (k1.permute(0, 2, 3, 1) @ k0).permute(0, 3, 1, 2)
        bias = k1.sum(dim=(2, 3)) @ self.b0.to(dtype) + self.b1.to(dtype)
        return weight, bias


class RepConv(Reparameterizable):
    """alpha[0] * SeqConv3x3 + alpha[1] * 3x3 conv + alpha[2] * Conv3XC while training; one 3x3 (conv_3x3_rep) in eval.

    As upstream, the stored conv_3x3_rep values never matter: it is recomputed from the branches. Upstream fuses only
    on `.eval()` (so it must come after `load_state_dict`); we fuse on `.eval()` and after every load, so either
    order gives the same model.
    """

    def __init__(self, in_dim: int = 3, out_dim: int = 32) -> None:
        super().__init__()
        self.conv1 = SeqConv3x3(in_dim, out_dim, 2)
        self.conv2 = nn.Conv2d(in_dim, out_dim, 3, 1, 1)
        self.conv3 = Conv3XC(in_dim, out_dim)
        self.conv_3x3_rep = nn.Conv2d(in_dim, out_dim, 3, 1, 1)
        self.alpha = nn.Parameter(torch.ones(3))
        assert self.conv_3x3_rep.bias is not None
        _derived(self.conv_3x3_rep.weight, self.conv_3x3_rep.bias)
        # Fused on .eval() and after loads; until then conv_3x3_rep holds its (unused) initial values.

    def fuse(self) -> None:
        """Write sum_i alpha[i] * branch_i, as one 3x3 conv, into conv_3x3_rep."""
        self.conv3.fuse()
        w3, b3 = self.conv3.eval_conv.weight, self.conv3.eval_conv.bias
        w2, b2 = self.conv2.weight, self.conv2.bias
        assert b2 is not None and b3 is not None
        dt = fusion_dtype(w2.device)
        with torch.inference_mode(False), torch.no_grad():
            w1, b1 = self.conv1.fused(dt)
            a = self.alpha.to(dt)
            weight = a[0] * w1 + a[1] * w2.to(dt) + a[2] * w3.to(dt)
            bias = a[0] * b1 + a[1] * b2.to(dt) + a[2] * b3.to(dt)
            assert self.conv_3x3_rep.bias is not None
            set_fused(self.conv_3x3_rep.weight, weight.contiguous())
            set_fused(self.conv_3x3_rep.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.alpha[0] * self.conv1(x) + self.alpha[1] * self.conv2(x) + self.alpha[2] * self.conv3(x)
        return self.conv_3x3_rep(x)


class SPAB(nn.Module):
    """SPAN block with RepConvs: returns ((out3 + x) * (sigmoid(out3) - 0.5), SiLU(out1)).

    Upstream's in-place SiLU makes its second output the activated first conv; we return that tensor without mutation.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.c1_r = RepConv(in_channels, in_channels)
        self.c2_r = RepConv(in_channels, in_channels)
        self.c3_r = RepConv(in_channels, in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(out1)))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


def _coords(n: int, device: torch.device) -> torch.Tensor:
    """Pixel-centre coordinates of an n-cell grid over [-1, 1] (LIIF's make_coord along one axis)."""
    r = 1.0 / n
    return -1 + r + (2 * r) * torch.arange(n, device=device).float()


class IGConv(nn.Module):
    """Implicit-grid upsampler: a 3x3 conv whose (3 * s * s) output kernels are generated for scale s by a small MLP
    over Fourier features of the sub-pixel position, then a pixel shuffle by s.

    In eval the kernels of every scale in `scale_list` are computed once (on `.eval()` and after a load in eval
    mode) and kept as non-persistent buffers, so they follow `.to()` and stay out of the state dict, like upstream's
    `eval_convs` dict. A scale outside `scale_list` gets its kernel computed on each call (upstream: KeyError in eval;
    its training path accepts any integer scale, which is what we run).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        implicit_dim: int = 256,
        latent_layers: int = 4,
        scale_list: Sequence[int] = (1, 2, 3, 4),
        base_scale: int = 2,
    ) -> None:
        super().__init__()
        if implicit_dim % 2:
            raise ValueError(f"implicit_dim must be even, got {implicit_dim}")
        self.dim = dim
        self.kernel_size = kernel_size
        self.implicit_dim = implicit_dim
        self.latent_layers = latent_layers
        self.base_scale = base_scale
        self.scale_list = [int(s) for s in scale_list]
        self.max_s = max(self.scale_list)
        self.phase = nn.Conv2d(1, implicit_dim // 2, 1, 1)
        n = dim * kernel_size**2
        self.freq = nn.Parameter(torch.randn(n, implicit_dim, 1, 1) * 0.02)
        self.amplitude = nn.Parameter(torch.randn(n, implicit_dim, 1, 1) * 0.02)
        layers: list[nn.Module] = []
        for _ in range(latent_layers):
            layers += [nn.Conv2d(implicit_dim, implicit_dim, 1, 1, 0), nn.ReLU()]
        layers.append(nn.Conv2d(implicit_dim, 3, 1, 1, 0))
        self.query_kernel = nn.Sequential(*layers)
        for s in self.scale_list:
            self.register_buffer(self._buffer_name(s), None, persistent=False)
        self.register_load_state_dict_post_hook(_kernels_after_load)

    @staticmethod
    def _buffer_name(scale: int) -> str:
        return f"eval_kernel_x{scale}"

    def kernel(self, scale: int) -> torch.Tensor:
        """The (3 * scale^2, dim, k, k) conv kernel for `scale` (differentiable; upstream `resize`)."""
        dev = self.freq.device
        # float32 at least: cos/sin of the Fourier phases lose too much in half precision.
        dt = torch.promote_types(self.freq.dtype, torch.float32)
        s = int(scale)
        r = torch.ones(1, 1, s, s, device=dev, dtype=dt) / min(s, self.max_s) * 2  # LIIF/LTE cell size 2/s
        c = _coords(s, dev).to(dt)
        cx, cy = c.view(1, 1, 1, s), c.view(1, 1, s, 1)  # x varies along width, y along height
        f1, f2 = self.freq.to(dt).chunk(2, dim=1)
        freq = f1 * cx + f2 * cy
        phase_w, phase_b = self.phase.weight, self.phase.bias
        assert phase_b is not None
        freq = freq + F.conv2d(r, phase_w.to(dt), phase_b.to(dt))
        feat = torch.cat([torch.cos(math.pi * freq), torch.sin(math.pi * freq)], dim=1)
        k = self._query(feat * self.amplitude.to(dt), dt)  # (dim * k * k, 3, s, s)
        kk = self.kernel_size
        k = k.view(self.dim, kk, kk, 3, s, s).permute(3, 4, 5, 0, 1, 2)
        return k.reshape(3 * s * s, self.dim, kk, kk).to(self.freq.dtype)

    def _query(self, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        for layer in self.query_kernel:
            if isinstance(layer, nn.Conv2d):
                assert layer.bias is not None
                x = F.conv2d(x, layer.weight.to(dt), layer.bias.to(dt))
            else:
                x = layer(x)
        return x

    def compute_eval_kernels(self) -> None:
        with torch.inference_mode(False), torch.no_grad():
            for s in self.scale_list:
                setattr(self, self._buffer_name(s), self.kernel(s))

    def train(self, mode: bool = True) -> IGConv:
        super().train(mode)
        if mode:
            for s in self.scale_list:  # drop kernels that training would make stale
                setattr(self, self._buffer_name(s), None)
        else:
            self.compute_eval_kernels()
        return self

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        s = self.base_scale if scale is None else int(scale)
        weight: torch.Tensor | None = None
        if not self.training and s in self.scale_list:
            weight = getattr(self, self._buffer_name(s))
        if weight is None:
            weight = self.kernel(s)
        rgb = F.conv2d(x, weight.to(x.dtype), padding=self.kernel_size // 2)
        return F.pixel_shuffle(rgb, s)


def _kernels_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    assert isinstance(module, IGConv)
    if not module.training:
        module.compute_eval_kernels()


class SpanC(nn.Module):
    """SpanC: RepConv stem, six SPABs, RepConv, 1x1 fusion of four taps, IGConv multi-scale upsampler to RGB.

    `forward(x, scale=None)`: `scale` None uses `self.scale`, a plain runtime attribute (default `eval_base_scale`,
    the user's `--scale`). Any positive integer works; the scales of `scale_list` use kernels precomputed on `.eval()`.
    Upstream draws a random scale from `scale_list` when training with scale None; we never draw one (a training loop
    that wants multi-scale training passes the scale). `last_info` reports {"scale": s} of the last forward.

    The output always has 3 channels (upstream hard-wires IGConv to RGB). No input normalisation, as upstream.
    `MetaIGConv` (uint8 buffer, the de-duplicated scale_list) is kept as upstream: on load the model keeps its own
    value, whatever the file holds.
    """

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        feature_channels: int = 48,
        scale_list: Sequence[int] = (1, 2, 3, 4),
        eval_base_scale: int = 2,
        ig_kernel_size: int = 3,
        implicit_dim: int = 256,
        latent_layers: int = 4,
    ) -> None:
        super().__init__()
        # list(set(...)) as upstream, so MetaIGConv holds the same values in the same order.
        scales = list(set(int(s) for s in scale_list))
        if not scales or min(scales) < 1:
            raise ValueError(f"scale_list must hold positive integers, got {list(scale_list)}")
        if eval_base_scale < 1:
            raise ValueError(f"eval_base_scale must be a positive integer, got {eval_base_scale}")
        fc = feature_channels
        self.scale_list = scales
        self.scale = int(eval_base_scale)
        self.last_info: dict[str, Any] = {}
        self.conv0 = RepConv(num_in_ch, fc)
        self.block_1 = SPAB(fc)
        self.block_2 = SPAB(fc)
        self.block_3 = SPAB(fc)
        self.block_4 = SPAB(fc)
        self.block_5 = SPAB(fc)
        self.block_6 = SPAB(fc)
        self.conv_cat = nn.Conv2d(fc * 4, fc, 1)
        self.conv_2 = RepConv(fc, fc)
        self.upsampler = IGConv(fc, ig_kernel_size, implicit_dim, latent_layers, scales, eval_base_scale)
        self.register_buffer("MetaIGConv", torch.tensor(scales, dtype=torch.uint8))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Upstream overwrites the incoming MetaIGConv with its own value. torch hands us a copy of the caller's
        # dict. A fresh tensor (not our buffer) so that load(assign=True) into a meta-built model gets real data.
        key = prefix + "MetaIGConv"
        if key in state_dict:
            device = state_dict[key].device
            state_dict[key] = torch.tensor(self.scale_list, dtype=torch.uint8, device=device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        s = self.scale if scale is None else int(scale)
        if s < 1:
            raise ValueError(f"scale must be a positive integer, got {s}")
        feat = self.conv0(x)
        b1, _ = self.block_1(feat)
        b2, _ = self.block_2(b1)
        b3, _ = self.block_3(b2)
        b4, _ = self.block_4(b3)
        b5, _ = self.block_5(b4)
        b6, b6_first = self.block_6(b5)
        b6 = self.conv_2(b6)
        out = self.conv_cat(torch.cat([feat, b6, b1, b6_first], dim=1))
        self.last_info = {"scale": s}
        return self.upsampler(out, s)


# Context = receptive-field radius in input pixels: conv0 (1) + 6 SPABs x 3 RepConvs (18) + conv_2 (1)
# + conv_cat 1x1 (0) + IGConv k x k (k // 2) = 21 for k = 3. Every RepConv branch is an exact padded 3x3 (the train
# form too), so the bound is exact; it does not depend on the output scale.
def _context(kw: dict[str, Any]) -> int:
    return 1 + 6 * 3 + 1 + int(kw["ig_kernel_size"]) // 2


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="spanc",
        family="SpanC",
        upstream_class="SpanC",
        tasks=("upscale",),
        # The scale a plain forward(x) produces: eval_base_scale. The model's runtime `scale` attribute (--scale)
        # can pick any other; the caller then describes the run with that scale instead.
        scale=int(kw["eval_base_scale"]),
        in_channels=int(kw["num_in_ch"]),
        out_channels=3,
        # Same conv/SiLU/sigmoid structure as SPAN (spandrel: supports_half); kernels are generated in float32.
        fp16=True,
        bf16=True,
        channels_last=True,  # by analogy with SPAN (1.4-1.5x on an H200); not measured for SpanC itself
        compile_mode="graph",  # by analogy with SPAN; its scale is a runtime argument, a graph is cheap to redo
        tiling="safe",
        context=_context(kw),
        code_license="MIT",
    )


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Channels from conv0.conv2, kernel size and implicit width from upsampler.freq, MLP depth from query_kernel,
    scale_list from the MetaIGConv values (for tensors without data, e.g. on the meta device, 1..n stands in).
    eval_base_scale is not stored: 2 when in scale_list (upstream's default), else the smallest listed scale."""
    need = ("MetaIGConv", "conv0.conv2.weight", "conv0.conv1.k0", "upsampler.freq", "upsampler.phase.weight")
    if any(k not in sd for k in need):
        return None
    w = sd["conv0.conv2.weight"]
    freq = sd["upsampler.freq"]
    meta = sd["MetaIGConv"]
    if w.ndim != 4 or freq.ndim != 4 or meta.ndim != 1 or meta.numel() == 0:
        return None
    fc, in_ch = int(w.shape[0]), int(w.shape[1])
    k2, rem = divmod(int(freq.shape[0]), fc)
    k = math.isqrt(k2)
    if rem or k * k != k2:
        return None
    layers = 0
    while f"upsampler.query_kernel.{2 * (layers + 1)}.weight" in sd:
        layers += 1
    if meta.is_meta:
        scales = list(range(1, meta.numel() + 1))
    else:
        scales = [int(v) for v in meta.tolist()]
        if min(scales) < 1:
            return None
    kwargs: dict[str, Any] = {
        "num_in_ch": in_ch,
        "feature_channels": fc,
        "scale_list": scales,
        "eval_base_scale": 2 if 2 in scales else min(scales),
        "ig_kernel_size": k,
        "implicit_dim": int(freq.shape[1]),
        "latent_layers": layers,
    }
    return kwargs if same_keys_and_shapes(lambda: SpanC(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="spanc", family="SpanC", cls=SpanC, describe=_describe, detect=_detect, aliases=("SpanPP",)),
)
