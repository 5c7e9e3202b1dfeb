"""UFPNet (Fang et al., "Self-supervised Non-uniform Kernel Estimation with Flow-based Motion Prior for Blind Image
Deblurring", CVPR 2023): a NAFNet whose single-block encoder levels are gated by a per-pixel blur-kernel map.

The kernel map comes from a small U-Net (`code_extra_mean_var`) that predicts a latent kernel code per pixel plus
an uncertainty, pushed through a RealNVP flow prior (`KernelPrior`, hard-wired to 19x19 kernels) to kernels; both
live in `layers/kernel_prior.py`, which AdaRevD's encoder shares.

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
from torch import nn

from .layers.detect import same_keys_and_shapes
from .layers.kernel_prior import FLOW_KERNEL_SIZE, KernelPrior, NAFBlock_kernel, code_extra_mean_var, kernel_maps
from .layers.naf import NAFBlock, unet_context, unet_layout, unet_levels
from .layers.padding import pad_to_multiple
from .layers.tlc import default_base_size, localize
from .spec import ArchEntry, ArchSpec, StateDict, TilingHint

__all__ = ["ARCHS", "UFPNet_code_uncertainty", "UFPNet_code_uncertainty_Local"]


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
        """Per-pixel blur kernels of the padded input as maps (B, k*k, H, W): channel c is kernel entry c."""
        return kernel_maps(self.kernel_extra, self.flow, inp, training=self.training)

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
