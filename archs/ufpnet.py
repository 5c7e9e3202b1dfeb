"""UFPNet (Fang et al., "Self-supervised Non-uniform Kernel Estimation with Flow-based Motion Prior for Blind Image
Deblurring", CVPR 2023): a NAFNet whose single-block encoder levels are gated by a per-pixel blur-kernel map.

The kernel map comes from a small U-Net (`code_extra_mean_var`) that predicts a latent kernel code per pixel plus
an uncertainty, pushed through a RealNVP flow prior (`KernelPrior`, hard-wired to 19x19 kernels) to kernels.

Reimplemented from the semantics of Fangzhenxuan/UFPDeblur@b43d867 (no LICENSE file; the code is derived from
megvii-research/NAFNet, MIT, and BasicSR, Apache-2.0). Parameter names match upstream, including its typo
`kernel_atttion`, so its checkpoints load with strict=True.

Differences from upstream, all deliberate:
* `forward(x)` returns only the deblurred image; `forward_with_kernel(x)` returns upstream's `[kernel, image]`.
* Upstream adds `randn_like(code) * sigma` to the kernel code even in eval, so its output is random. Here that noise
  is drawn only in training mode; in eval the code is `code * sqrt(1 - sigma**2)`, the noise's expected value, and
  the output is deterministic.
* Kernel-code statistics and the flow run in float32 whatever the model dtype (see `_estimate_kernel`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import (
    NAFBlock,
    pad_to_multiple,
    same_keys_and_shapes,
    unet_context,
    unet_layout,
    unet_levels,
)
from ._tlc import default_base_size, localize
from .spec import ArchEntry, ArchSpec, StateDict, TilingHint

__all__ = [
    "ARCHS",
    "KernelPrior",
    "NAFBlock_kernel",
    "UFPNet_code_uncertainty",
    "UFPNet_code_uncertainty_Local",
    "code_extra_mean_var",
    "kernel_attention",
]

FLOW_KERNEL_SIZE = 19  # the flow prior's kernel side; upstream builds it with 19 regardless of `kernel_size`

# ---------------------------------------------------------------------------------------------------------------------
# kernel-code estimator (upstream my_module.py)


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _EncodingBlock(nn.Module):
    """Conv + two residual blocks; returns (stride-2 downsampled, full-resolution skip)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.Conv_head = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.ResBlock1 = _ResBlock(out_ch)
        self.ResBlock2 = _ResBlock(out_ch)
        self.downsample = nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.act(self.ResBlock2(self.ResBlock1(self.Conv_head(x))))
        return self.downsample(skip), skip


class _ConvMid(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _DecodingBlock(nn.Module):
    """Transposed-conv upsample to the skip's exact size (odd sizes included), concat skip, conv + residual blocks."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.Conv_t = nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1)
        self.Conv_head = nn.Conv2d(out_ch * 2, out_ch, 3, padding=1)
        self.ResBlock1 = _ResBlock(out_ch)
        self.ResBlock2 = _ResBlock(out_ch)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.Conv_t(x, output_size=list(skip.shape[-2:]))
        x = self.Conv_head(torch.cat([x, skip], dim=1))
        return self.act(self.ResBlock2(self.ResBlock1(x)))


class _CodeTail(nn.Module):
    """Per-pixel kernel code (softmax over the k*k channels) and its scalar uncertainty sigma in (0, 1)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=1), nn.ReLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.var = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.Sigmoid(),
        )
        self.kernel_size = math.isqrt(out_ch)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(code (B, k*k, H, W), sigma (B, 1, H, W)), float32, channel c of the code being kernel entry c."""
        # softmax over 361 channels and the statistics after it are kept in fp32 for half-precision models
        return torch.softmax(self.mean(x).float(), dim=1), self.var(x).float().mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(code, sigma), both (B, H*W, k, k) float32; sigma is constant over each k x k (upstream repeats it)."""
        b, _, h, w = x.shape
        k = self.kernel_size
        code, sigma = self.maps(x)
        code = code.reshape(b, k, k, h * w).permute(0, 3, 1, 2)
        sigma = sigma.reshape(b, h * w, 1, 1).expand(-1, -1, k, k)
        return code, sigma


class code_extra_mean_var(nn.Module):  # noqa: N801 - upstream name
    """Two-level U-Net (3 input channels, widths w/2w/4w) predicting the kernel code and sigma.

    Upstream hard-wires w = 64 (5.6 M parameters whatever the deblurring width); `width` is our addition so that
    small models (the bundled ufpnet-s) keep the kernel estimator at a proportionate size.
    """

    def __init__(self, kernel_size: int, width: int = 64) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.Encoding_Block1 = _EncodingBlock(3, width)
        self.Encoding_Block2 = _EncodingBlock(width, 2 * width)
        self.Conv_mid = _ConvMid(2 * width, 4 * width)
        self.Decoding_Block1 = _DecodingBlock(4 * width, 2 * width)
        self.Decoding_Block2 = _DecodingBlock(2 * width, width)
        self.Conv_tail = _CodeTail(width, kernel_size * kernel_size)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x, skip1 = self.Encoding_Block1(x)
        x, skip2 = self.Encoding_Block2(x)
        x = self.Conv_mid(x)
        x = self.Decoding_Block1(x, skip2)
        return self.Decoding_Block2(x, skip1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(code, sigma), both (B, H*W, k, k): upstream's layout."""
        return self.Conv_tail(self._trunk(x))

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(code (B, k*k, H, W), sigma (B, 1, H, W)): the same values as image-shaped maps, no transposes."""
        return self.Conv_tail.maps(self._trunk(x))


# ---------------------------------------------------------------------------------------------------------------------
# flow-based kernel prior (upstream Flow_arch.py, from FKP: RealNVP couplings + batch norms)


def _dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A linear layer over dim 1: rows (N, F) or feature maps (B, F, L), the latter as a batched matrix product
    (about twice as fast on a CPU as the equivalent 1x1 convolution for these thin, long maps)."""
    if x.ndim == 2:
        return F.linear(x, weight, bias)
    w = weight.unsqueeze(0).expand(x.shape[0], -1, -1)
    if bias is None:
        return torch.bmm(w, x)
    return torch.baddbmm(bias.view(1, -1, 1), w, x)


def _linear_fp32(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        bias = None if layer.bias is None else layer.bias.float()
        return _dense(x, layer.weight.float(), bias)
    return layer(x)


def _per_feature(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-feature vector shaped to broadcast over dim 1 of rows or feature maps."""
    return v.view(-1, *([1] * (x.ndim - 2)))


class LinearMaskedCoupling(nn.Module):
    """RealNVP affine coupling: the masked half conditions a scale (tanh MLP) and shift (ReLU MLP) of the other."""

    def __init__(self, input_size: int, hidden_size: int, n_hidden: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.s_net = self._mlp(input_size, hidden_size, n_hidden, nn.Tanh)
        self.t_net = self._mlp(input_size, hidden_size, n_hidden, nn.ReLU)

    @staticmethod
    def _mlp(input_size: int, hidden_size: int, n_hidden: int, act: Callable[[], nn.Module]) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Linear(input_size, hidden_size)]
        for _ in range(n_hidden):
            layers += [act(), nn.Linear(hidden_size, hidden_size)]
        layers += [act(), nn.Linear(hidden_size, input_size)]
        return nn.Sequential(*layers)

    def inverse_split(self, kept: torch.Tensor, moved: torch.Tensor, kept_idx: torch.Tensor,
                      moved_idx: torch.Tensor) -> torch.Tensor:
        """Upstream's `inverse` (latent -> data, float32) on the two halves of the entries: `kept` (mask 1,
        passed through and conditioning) and `moved` (mask 0, scaled by exp(s) and shifted by t); returns the new
        `moved`. Upstream multiplies full-width inputs by the mask; the masked-out half only adds zeros, so it is
        left out of the first layers' inputs and the last layers' outputs.
        """
        # both first layers in one product: `kept` is read once
        w = torch.cat([self.s_net[0].weight.float()[:, kept_idx], self.t_net[0].weight.float()[:, kept_idx]])
        b = torch.cat([self.s_net[0].bias.float(), self.t_net[0].bias.float()])
        hs = _dense(kept, w, b).split(self.s_net[0].out_features, dim=1)
        outs = []
        for net, h in zip((self.s_net, self.t_net), hs, strict=True):
            for layer in list(net)[1:-1]:
                h = _linear_fp32(layer, h)
            last = net[-1]
            outs.append(_dense(h, last.weight.float()[moved_idx], last.bias.float()[moved_idx]))
        log_s, t = outs
        return torch.addcmul(t, moved, log_s.exp())


class BatchNorm(nn.Module):
    """The flow's batch norm (log-scale parameterised). Inference only: uses the running statistics."""

    def __init__(self, input_size: int, momentum: float = 0.9, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(input_size))
        self.beta = nn.Parameter(torch.zeros(input_size))
        self.register_buffer("running_mean", torch.zeros(input_size))
        self.register_buffer("running_var", torch.ones(input_size))

    def inverse_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream's `inverse`, (y - beta) * exp(-log_gamma) * sqrt(running_var + eps) + running_mean, as
        y * a + b per entry, so it costs one fused pass."""
        a = torch.exp(-self.log_gamma.float()) * torch.sqrt(self.running_var.float() + self.eps)
        return a, self.running_mean.float() - self.beta.float() * a


class KernelPrior(nn.Module):
    """Normalising-flow prior over blur kernels: maps latent codes (N, k*k) to kernels (N, 1, k, k).

    Only the sampling direction UFPNet needs is implemented (upstream `inverse` + `post_process`, i.e. its
    `generate_k`), always in float32: five exp() scalings of an unbounded code overflow half precision easily.
    """

    def __init__(
        self,
        n_blocks: int = 5,
        input_size: int = FLOW_KERNEL_SIZE**2,
        hidden_size: int = 25,
        n_hidden: int = 1,
        kernel_size: int = FLOW_KERNEL_SIZE,
        alpha: float = 1e-6,
        normalization: float = 1.0,
    ) -> None:
        super().__init__()
        self.side = kernel_size
        # stored in upstream checkpoints; alpha and normalization are read back from them
        self.register_buffer("kernel_size", torch.ones(1) * kernel_size)
        self.register_buffer("alpha", torch.ones(1) * alpha)
        self.register_buffer("normalization", torch.ones(1) * normalization)
        self.register_buffer("base_dist_mean", torch.zeros(input_size))
        self.register_buffer("base_dist_var", torch.ones(input_size))
        layers: list[nn.Module] = []
        mask = torch.arange(input_size).float() % 2
        for _ in range(n_blocks):
            layers += [LinearMaskedCoupling(input_size, hidden_size, n_hidden, mask), BatchNorm(input_size)]
            mask = 1 - mask  # alternate which half is transformed
        self.net = nn.Sequential(*layers)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Codes (N, k*k) -> kernels (N, 1, k, k)."""
        x = self._sample(u.float())
        return x.view(x.shape[0], 1, self.side, self.side)

    def maps(self, u: torch.Tensor) -> torch.Tensor:
        """Code maps (B, k*k, H, W) -> kernel maps of the same shape (channel c = kernel entry c)."""
        b, n, h, w = u.shape
        return self._sample(u.float().reshape(b, n, h * w)).view(b, n, h, w)

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        """The flow's inverse and post-processing on entries along dim 1 of (N, F) or (B, F, L), float32.

        The couplings alternate between the odd and even entries, so the flow runs on the two halves apart:
        half the matrix work and one pass per batch norm, instead of full-width masked products (UFPNet runs
        this at every pixel: it was most of the bundled ufpnet-s's CPU time).
        """
        # parity -> that half's entries, contiguous; a coupling keeps the half where its mask is 1
        halves = {1: x[:, 1::2].contiguous(), 0: x[:, 0::2].contiguous()}
        n = x.shape[1]
        idx = {1: torch.arange(1, n, 2, device=x.device), 0: torch.arange(0, n, 2, device=x.device)}
        for layer in reversed(self.net):
            if isinstance(layer, BatchNorm):
                a, b = layer.inverse_affine()
                halves = {k: torch.addcmul(_per_feature(b[idx[k]], v), v, _per_feature(a[idx[k]], v))
                          for k, v in halves.items()}
            else:
                keep = int(layer.mask[1].item())  # entry 1's mask value: which parity this coupling keeps
                halves[1 - keep] = layer.inverse_split(halves[keep], halves[1 - keep], idx[keep], idx[1 - keep])
        out = torch.empty_like(x)
        # undo the dataloader's logit pre-processing of kernels, half by half, into place
        alpha = self.alpha.float()
        gain = self.normalization.float() / (1 - 2 * alpha)
        for parity, part in halves.items():
            out[:, parity::2] = (torch.sigmoid(part) - alpha) * gain
        return out


# ---------------------------------------------------------------------------------------------------------------------
# kernel-conditioned blocks and the network


class kernel_attention(nn.Module):  # noqa: N801 - upstream name
    """Gate features by a sigmoid attention computed from them and the (k*k)-channel kernel map; residual."""

    def __init__(self, kernel_size: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv_1 = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.GELU())
        self.conv_kernel = nn.Sequential(
            nn.Conv2d(kernel_size * kernel_size, out_ch, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.GELU(),
        )
        self.conv_2 = nn.Sequential(nn.Conv2d(out_ch * 2, out_ch, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        feat = self.conv_1(x)
        att = self.conv_2(torch.cat([feat, self.conv_kernel(kernel)], dim=1))
        return feat * att + x


class NAFBlock_kernel(NAFBlock):  # noqa: N801 - upstream name
    """NAFBlock whose first branch sees the kernel-gated input; the residual still adds the ungated input."""

    def __init__(
        self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2, drop_out_rate: float = 0.0, kernel_size: int = 21
    ) -> None:
        super().__init__(c, DW_Expand, FFN_Expand, drop_out_rate)
        self.kernel_atttion = kernel_attention(kernel_size, in_ch=c, out_ch=c)  # sic: upstream key name

    def forward(self, inp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.mix(inp, self.kernel_atttion(inp, kernel))


class UFPNet_code_uncertainty(nn.Module):  # noqa: N801 - upstream name
    """UFPNet deblurring network. Encoder levels with exactly one block use `NAFBlock_kernel`, others NAFBlocks.

    `img_channel` must be 3 and `kernel_size` 19: the kernel estimator takes RGB and the flow prior is built for
    19x19 kernels, so upstream accepts other values but cannot run them. `estimator_width` (not upstream; default
    64 = upstream) sets the kernel estimator's width.
    """

    def __init__(
        self,
        *,
        img_channel: int = 3,
        width: int = 64,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        kernel_size: int = 19,
        estimator_width: int = 64,
    ) -> None:
        super().__init__()
        if kernel_size != FLOW_KERNEL_SIZE:
            raise ValueError(f"UFPNet's flow prior is hard-wired to {FLOW_KERNEL_SIZE}x{FLOW_KERNEL_SIZE} kernels")
        if img_channel != 3:
            raise ValueError("UFPNet's kernel estimator is hard-wired to 3 input channels")
        self.kernel_size = kernel_size
        self.kernel_extra = code_extra_mean_var(kernel_size, estimator_width)
        self.flow = KernelPrior(n_blocks=5, input_size=FLOW_KERNEL_SIZE**2, hidden_size=25, n_hidden=1)
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.middle_blks = nn.Sequential()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.kernel_down = nn.ModuleList()
        kk = kernel_size * kernel_size
        chan = width
        for num in enc_blk_nums:
            if num == 1:
                self.encoders.append(nn.Sequential(NAFBlock_kernel(chan, kernel_size=kernel_size)))
            else:
                self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            # one per level, though only levels with a NAFBlock_kernel use (and downsample) the kernel map
            self.kernel_down.append(nn.Conv2d(kk, kk, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    def _estimate_kernel(self, inp: torch.Tensor) -> torch.Tensor:
        """Per-pixel blur kernels of the padded input as maps (B, k*k, H, W): channel c is kernel entry c.

        Upstream runs this without gradients (the estimator is trained separately) and samples the code noise in
        eval too; the noise is drawn here only in training mode (see the module docstring).
        """
        with torch.no_grad():
            code, sigma = self.kernel_extra.maps(inp)
            with torch.autocast(inp.device.type, enabled=False):
                # standardise each pixel's code over its k*k entries (unbiased std, as torch.std)
                std, mean = torch.std_mean(code, dim=1, keepdim=True)
                code = (code - mean) * (torch.sqrt(1 - sigma.square()) / std)
                if self.training:
                    code = code + torch.randn_like(code) * sigma
                kernel = self.flow.maps(code)
        return kernel.to(inp.dtype)

    def forward_with_kernel(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(kernels (B, Hp*Wp, 19, 19) estimated on the reflect-padded input, deblurred image clamped to [0, 1])."""
        B, _, H, W = inp.shape
        # reflect, not zeros: the kernel estimator would read a zero border as blur structure
        inp = pad_to_multiple(inp, self.padder_size, mode="reflect")
        kernel = self._estimate_kernel(inp)
        hp, wp = inp.shape[-2:]
        k = self.kernel_size
        # upstream's layout of the same values; forward() never reads it, so the view costs nothing there
        kernel_blur = kernel.reshape(B, k * k, hp * wp).transpose(1, 2).reshape(B, hp * wp, k, k)

        x = self.intro(inp)
        skips = []
        kernel_levels = [i for i, e in enumerate(self.encoders) if len(e) == 1 and isinstance(e[0], NAFBlock_kernel)]
        for i, (encoder, down, kernel_down) in enumerate(zip(self.encoders, self.downs, self.kernel_down, strict=True)):
            if i in kernel_levels:
                x = encoder[0](x, kernel)
                # upstream also downsamples after the last kernel level; nothing reads that result
                if i < kernel_levels[-1]:
                    kernel = kernel_down(kernel)
            else:
                x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        # strict: only configs with as many decoder as encoder levels give a full-size output
        for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1], strict=True):
            x = decoder(up(x) + skip)
        x = torch.clamp(self.ending(x) + inp, 0.0, 1.0)
        return kernel_blur, x[..., :H, :W]

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.forward_with_kernel(inp)[1]


class UFPNet_code_uncertainty_Local(UFPNet_code_uncertainty):  # noqa: N801 - upstream name
    """UFPNet with TLC (upstream `UFPNet_code_uncertainty_Local`, the class of the official GoPro config).

    `base_size` (default 1.5 x train H/W, as upstream) is an addition to upstream's keywords.
    """

    def __init__(
        self,
        *,
        img_channel: int = 3,
        width: int = 64,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        kernel_size: int = 19,
        estimator_width: int = 64,
        train_size: Sequence[int] = (1, 3, 256, 256),
        fast_imp: bool = False,
        base_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            img_channel=img_channel,
            width=width,
            middle_blk_num=middle_blk_num,
            enc_blk_nums=enc_blk_nums,
            dec_blk_nums=dec_blk_nums,
            kernel_size=kernel_size,
            estimator_width=estimator_width,
        )
        localize(
            unet_levels(self.encoders, self.middle_blks, self.decoders),
            train_size=train_size,
            base_size=default_base_size(train_size, base_size),
            fast_imp=fast_imp,
            multiple_of=self.padder_size,
        )


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describer(arch_id: str, upstream_class: str, tiling: TilingHint) -> Callable[[dict[str, Any]], ArchSpec]:
    def describe(kw: dict[str, Any]) -> ArchSpec:
        levels = len(kw["enc_blk_nums"])
        window = max(default_base_size(kw["train_size"], kw["base_size"])) if tiling == "tlc" else 0
        return ArchSpec(
            id=arch_id,
            family="UFPNet",
            upstream_class=upstream_class,
            tasks=("deblur",),
            scale=1,
            in_channels=kw["img_channel"],
            out_channels=kw["img_channel"],
            # reflect padding needs the pad (< multiple) to be smaller than the input side
            min_size=2**levels,
            multiple_of=2**levels,
            # the flow and kernel-code statistics always run in fp32 internally; the conv trunks are fp16-safe
            fp16=True,
            bf16=True,
            tiling=tiling,
            context=unet_context(levels, window),
            compile_mode="inductor",  # by analogy with NAFNet (the same blocks); to be measured
            code_license="unspecified (no LICENSE upstream; derived from NAFNet MIT / BasicSR Apache-2.0)",
        )

    return describe


def _detect_ufpnet(sd: StateDict) -> dict[str, Any] | None:
    tail = sd.get("kernel_extra.Conv_tail.mean.2.weight")
    if tail is None or "flow.net.0.mask" not in sd:
        return None
    kw = unet_layout(sd)
    if kw is None:
        return None
    kk = int(tail.shape[0])
    kw["kernel_size"] = math.isqrt(kk)
    est = sd.get("kernel_extra.Encoding_Block1.Conv_head.weight")
    if est is not None and int(est.shape[0]) != 64:
        kw["estimator_width"] = int(est.shape[0])
    if kw["kernel_size"] ** 2 != kk or not same_keys_and_shapes(lambda: UFPNet_code_uncertainty(**kw), sd):
        return None
    return kw


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(
        id="ufpnet",
        family="UFPNet",
        cls=UFPNet_code_uncertainty,
        describe=_describer("ufpnet", "UFPNet_code_uncertainty", "global"),
        detect=_detect_ufpnet,
        aliases=("ufpdeblur",),
        local_variant="ufpnet_local",
    ),
    # same state dict as ufpnet, so no detector of its own
    ArchEntry(
        id="ufpnet_local",
        family="UFPNet",
        cls=UFPNet_code_uncertainty_Local,
        describe=_describer("ufpnet_local", "UFPNet_code_uncertainty_Local", "tlc"),
        aliases=("ufpdeblur_local",),
    ),
)
