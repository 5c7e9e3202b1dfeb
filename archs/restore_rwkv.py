"""Restore-RWKV: efficient and effective medical image restoration with RWKV (Yang et al., IEEE JBHI).

Semantics follow Yaziwel/Restore-RWKV@27dc8de `model/Restore_RWKV.py` (Apache-2.0), as vendored in the seed
korvin2000/arch_research `Restore-RWKV/Restore_RWKV.py`. Keyword names, defaults and state-dict keys match upstream's
`Restore_RWKV`, so its checkpoints load strictly (none are published; upstream's test script loads a self-trained
`Generator_best.pth`).

A Restormer-style 4-level U-Net of RWKV blocks on one channel (PET, CT, MRI), output = conv(features) + input.
Each block: LayerNorm -> spatial mix (OmniShift, i.e. one depthwise 5x5 in eval; K, V, R projections; the
bidirectional WKV over the raster scan, then over the transposed scan; sigmoid(R) * V; projection), and LayerNorm ->
channel mix (OmniShift; squared-ReLU FFN gated by sigmoid(R)); both residual, scaled per channel by gamma1/gamma2.

Differences from upstream:
* The Bi-WKV is `archs.ops.bi_wkv`: the intended formula (the golden files' convention), computed by our kernel on
  CUDA and a float64 reference elsewhere. Upstream's CUDA forward deviates from that formula on real GPUs (see
  bench/bi_wkv_upstream_check.md) and only builds for sm_86; no published weights depend on it.
* w = spatial_decay / T and u = spatial_first / T are computed in float32 even for a half-precision model (upstream
  divides in the parameter dtype, which in float16 rounds w away at large T).
* OmniShift fuses its branches into `conv5x5_reparam` on `.eval()` and after every `load_state_dict` (upstream: on
  the first eval forward), so stored `conv5x5_reparam` values never matter, as upstream; the fusion runs in float64.
* Inputs whose sides are not multiples of 8 are reflect-padded and the output cropped (upstream raises).
* Upstream's training-only `loss_fun` argument and `forward(x, label)` (which returns the loss) are left out:
  `forward(x)` returns the image. Nothing in the forward is random.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .layers.detect import list_length, same_keys_and_shapes
from .layers.padding import pad_to_multiple
from .layers.reparam import Reparameterizable, fusion_dtype, set_fused
from .layers.restormer import GLOBAL_CONTEXT_CAP, RestormerUNet, unet_radius
from .ops.bi_wkv import bi_wkv
from .spec import ArchEntry, ArchSpec, StateDict

_MULTIPLE = RestormerUNet.UNET_MULTIPLE


class OmniShift(Reparameterizable):
    """alpha0 * x + alpha1 * dw1x1(x) + alpha2 * dw3x3(x) + alpha3 * dw5x5(x) in training; one dw5x5 in eval.

    All branches are bias-free, "same"-padded depthwise convs, so their sum is exactly one depthwise 5x5 with the
    smaller kernels zero-padded and alpha0 added at the centre tap (`conv5x5_reparam`). alpha is one scalar per
    branch, shared by all channels (unlike RHA's OmniShift, which has per-channel alphas and biases).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(dim, dim, 1, groups=dim, bias=False)
        self.conv3x3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.conv5x5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)
        self.alpha = nn.Parameter(torch.randn(4))
        self.conv5x5_reparam = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        return a[0] * x + a[1] * self.conv1x1(x) + a[2] * self.conv3x3(x) + a[3] * self.conv5x5(x)

    def fuse(self) -> None:
        """Write the depthwise 5x5 equal to the four branches into conv5x5_reparam."""
        w5 = self.conv5x5.weight
        dt = fusion_dtype(w5.device)
        with torch.inference_mode(False), torch.no_grad():
            a = self.alpha.to(dt)
            weight = a[3] * w5.to(dt)
            weight[:, :, 1:4, 1:4] += a[2] * self.conv3x3.weight.to(dt)
            weight[:, :, 2:3, 2:3] += a[1] * self.conv1x1.weight.to(dt) + a[0]
            set_fused(self.conv5x5_reparam.weight, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x) if self.training else self.conv5x5_reparam(x)


def _to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) tokens in raster order -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) tokens in raster order."""
    return x.flatten(2).transpose(1, 2)


def _swap_scan(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Tokens of a rows x cols map from row-major to column-major order (or back, with rows/cols swapped)."""
    b, t, c = x.shape
    return x.view(b, rows, cols, c).transpose(1, 2).reshape(b, t, c)


class VRWKV_SpatialMix(nn.Module):  # noqa: N801 (upstream name)
    """OmniShift, then K, V, R; V goes through the Bi-WKV on the raster scan, then on the transposed scan."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.n_embd = n_embd
        self.recurrence = 2
        self.omni_shift = OmniShift(n_embd)
        self.key = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(n_embd, n_embd, bias=False)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.output = nn.Linear(n_embd, n_embd, bias=False)
        self.spatial_decay = nn.Parameter(torch.randn(self.recurrence, n_embd))
        self.spatial_first = nn.Parameter(torch.randn(self.recurrence, n_embd))

    def forward(self, x: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
        h, w = resolution
        T = x.shape[1]
        x = _to_tokens(self.omni_shift(_to_map(x, h, w)))
        k, v = self.key(x), self.value(x)
        sr = torch.sigmoid(self.receptance(x))
        for j in range(self.recurrence):
            # decay and bonus scale with 1/T: the attention spans the whole map whatever its size
            decay, first = self.spatial_decay[j].float() / T, self.spatial_first[j].float() / T
            if j % 2 == 0:
                v = bi_wkv(decay, first, k, v)
            else:
                v = _swap_scan(bi_wkv(decay, first, _swap_scan(k, h, w), _swap_scan(v, h, w)), w, h)
        return self.output(sr * v)


class VRWKV_ChannelMix(nn.Module):  # noqa: N801 (upstream name)
    """OmniShift, then sigmoid(R(x)) * V(relu(K(x))^2)."""

    def __init__(self, n_embd: int, hidden_rate: int = 4) -> None:
        super().__init__()
        self.n_embd = n_embd
        hidden = int(hidden_rate * n_embd)
        self.key = nn.Linear(n_embd, hidden, bias=False)
        self.omni_shift = OmniShift(n_embd)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
        h, w = resolution
        x = _to_tokens(self.omni_shift(_to_map(x, h, w)))
        kv = self.value(torch.square(torch.relu(self.key(x))))
        return torch.sigmoid(self.receptance(x)) * kv


class Block(nn.Module):
    """x + gamma1 * SpatialMix(LN(x)), then x + gamma2 * ChannelMix(LN(x)), on (B, C, H, W) maps."""

    def __init__(self, n_embd: int, hidden_rate: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.att = VRWKV_SpatialMix(n_embd)
        self.ffn = VRWKV_ChannelMix(n_embd, hidden_rate)
        self.gamma1 = nn.Parameter(torch.ones(n_embd))
        self.gamma2 = nn.Parameter(torch.ones(n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = _to_tokens(x)
        x = x + self.gamma1 * self.att(self.ln1(x), (h, w))
        x = x + self.gamma2 * self.ffn(self.ln2(x), (h, w))
        return _to_map(x, h, w)


def _blocks(n: int, dim: int) -> nn.Sequential:
    return nn.Sequential(*[Block(dim) for _ in range(n)])


class Restore_RWKV(RestormerUNet):  # noqa: N801 (upstream name)
    """4-level U-Net of RWKV blocks (dim, 2 dim, 4 dim, 8 dim); level 1 decodes and refines at 2 dim."""

    def __init__(
        self,
        *,
        inp_channels: int = 1,
        out_channels: int = 1,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
    ) -> None:
        super().__init__()
        self._build_unet(
            inp_channels=inp_channels, dim=dim, num_blocks=num_blocks, num_refinement_blocks=num_refinement_blocks,
            stage=lambda n, level, width: _blocks(n, width),
            bias=True,
            replace={"patch_embed": lambda: nn.Conv2d(inp_channels, dim, 3, padding=1)},
        )
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        inp = pad_to_multiple(x, _MULTIPLE, mode="reflect_or_replicate")
        return (self.output(self._run_unet(self.patch_embed(inp))) + inp)[..., :h, :w]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _context(kw: dict[str, Any]) -> int:
    """Local receptive-field radius (see `unet_radius`): each block has two OmniShift 5x5 convs (radius 4 in its
    level's pixels); level 1 holds the encoder, decoder and refinement blocks, levels 2-3 an encoder and a decoder
    stage, the latent one stage. Capped like the other global U-Nets: the Bi-WKV couples the whole tile anyway."""
    nb, nr = kw["num_blocks"], kw["num_refinement_blocks"]
    blocks = (2 * nb[0] + nr, 2 * nb[1], 2 * nb[2], nb[3])
    return min(unet_radius([4 * n for n in blocks], resamples=3), GLOBAL_CONTEXT_CAP)


def _describe(kw: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        id="restore_rwkv",
        family="Restore_RWKV",
        upstream_class="Restore_RWKV",
        # medical all-in-one: PET synthesis (low-dose), CT denoising, MRI super-resolution at the same size
        tasks=("restore", "denoise"),
        scale=1,
        in_channels=int(kw["inp_channels"]),
        out_channels=int(kw["out_channels"]),
        min_size=_MULTIPLE,
        multiple_of=_MULTIPLE,
        # The Bi-WKV accumulates in float32 (kernel) or float64 (reference), so half inputs are safe there. But the
        # channel mix squares a ReLU and projects 4x the width back, which can pass float16's 65504, and with no
        # published weights nobody can check the activation range: bf16 (float32's range) only.
        fp16=False,
        bf16=True,
        channels_last=False,  # every block works on (B, H*W, C) tokens
        # The Bi-WKV mixes every token of the map with every other (decay scaled by 1/T): whole-tile coupling.
        tiling="global",
        context=_context(kw),
        code_license="Apache-2.0",
    )


_LEVELS = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Channels and width from the first and last convs, block counts from the encoder and latent lists; the
    decoder reuses the encoder counts upstream, and the meta-device rebuild checks every key and shape."""
    embed, out = sd.get("patch_embed.weight"), sd.get("output.weight")
    if embed is None or out is None or embed.ndim != 4 or out.ndim != 4:
        return None
    if not any(k.endswith(".att.spatial_decay") for k in sd):
        return None
    kwargs: dict[str, Any] = {
        "inp_channels": int(embed.shape[1]),
        "out_channels": int(out.shape[0]),
        "dim": int(embed.shape[0]),
        "num_blocks": [list_length(sd, p) for p in _LEVELS],
        "num_refinement_blocks": list_length(sd, "refinement"),
    }
    return kwargs if same_keys_and_shapes(lambda: Restore_RWKV(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="restore_rwkv", family="Restore_RWKV", cls=Restore_RWKV, describe=_describe, detect=_detect,
              aliases=("Restore-RWKV",)),
)
