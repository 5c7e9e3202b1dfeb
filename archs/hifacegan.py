"""HiFaceGAN: face renovation via collaborative suppression and replenishment (ACM MM 2020, arXiv:2005.05005).

Semantics follow BasicSR's re-implementation (`basicsr/archs/hifacegan_arch.py` + `hifacegan_util.py`, identical to
korvin2000/arch_research `others/hifacegan_*.py`), itself a port of Lotayou/Face-Renovation's `LIPSPADEGenerator`.
Keyword names, defaults and state-dict keys match BasicSR's `HiFaceGAN`, including torch's spectral-norm keys
(`weight_orig`, `weight_u`, `weight_v`).

The generator is a SPADE decoder driven by the image itself: a LIP encoder (five local-importance poolings) takes a
512x512 face down to 16x16, and SPADE residual blocks grow it back to full size, each normalisation modulated by
convolutions of the (resized) input image.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import same_keys_and_shapes
from .layers.precision import LOW_PRECISION
from .spec import ArchEntry, ArchSpec, StateDict

_SPADE_RE = re.compile(r"spade(\D+)(\d)x\d")


class SpectralNormConv2d(nn.Module):
    """A Conv2d under torch's `spectral_norm` (dim 0, one power iteration, eps 1e-12), with the same state keys.

    weight = weight_orig / sigma, sigma = u . (W v) with W = weight_orig flattened to (out, in * kh * kw). While
    training, one power iteration updates the u/v buffers first (as torch does); in eval the stored u and v are
    used as they are, without iterating, so eval is deterministic and matches a checkpoint exactly. sigma is
    computed in float32 for half weights.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.padding = padding
        # Registration order as torch's spectral_norm leaves it: bias, weight_orig, then the u/v buffers.
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_orig = nn.Parameter(torch.empty(c_out, c_in, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)  # nn.Conv2d's default init
        u = torch.randn(c_out)
        v = torch.randn(c_in * kernel_size * kernel_size)
        self.register_buffer("weight_u", F.normalize(u, dim=0, eps=1e-12))
        self.register_buffer("weight_v", F.normalize(v, dim=0, eps=1e-12))
        self.eps = 1e-12

    def weight(self) -> torch.Tensor:
        w = self.weight_orig
        mat = w.flatten(1)
        u: torch.Tensor = self.weight_u  # type: ignore[assignment]
        v: torch.Tensor = self.weight_v  # type: ignore[assignment]
        if self.training:
            with torch.no_grad():
                v.copy_(F.normalize(mat.t().float() @ u.float(), dim=0, eps=self.eps).to(v.dtype))
                u.copy_(F.normalize(mat.float() @ v.float(), dim=0, eps=self.eps).to(u.dtype))
            u, v = u.clone(), v.clone()
        sigma = torch.dot(u.float(), mat.float() @ v.float()) if w.dtype in LOW_PRECISION else torch.dot(u, mat @ v)
        return w / sigma.to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


def _conv(c_in: int, c_out: int, k: int, padding: int, bias: bool, spectral: bool) -> nn.Module:
    if spectral:
        return SpectralNormConv2d(c_in, c_out, k, padding, bias)
    return nn.Conv2d(c_in, c_out, k, padding=padding, bias=bias)


class SPADE(nn.Module):
    """Parameter-free norm of x, then scale and shift predicted by 3x3 convs of the segmap (here: the input image).

    `config_text` is "spade<norm><k>x<k>": norm "instance", "syncbatch" (InstanceNorm2d: BasicSR falls back to it
    on one GPU) or "batch" (BatchNorm2d without affine, running statistics in eval). out = norm(x) * gamma + beta.
    """

    def __init__(self, config_text: str, norm_nc: int, label_nc: int) -> None:
        super().__init__()
        parsed = _SPADE_RE.search(config_text)
        if not config_text.startswith("spade") or parsed is None:
            raise ValueError(f"{config_text!r} is not a SPADE config such as 'spadebatch3x3'")
        norm_type, ks = parsed.group(1), int(parsed.group(2))
        if norm_type in ("instance", "syncbatch"):
            self.param_free_norm: nn.Module = nn.InstanceNorm2d(norm_nc)
        elif norm_type == "batch":
            self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        else:
            raise ValueError(f"{norm_type} is not a recognized param-free norm type in SPADE")
        nhidden = 128 if norm_nc > 128 else norm_nc  # fixed upstream
        pw = ks // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, ks, padding=pw), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(nhidden, norm_nc, ks, padding=pw, bias=False)
        self.mlp_beta = nn.Conv2d(nhidden, norm_nc, ks, padding=pw, bias=False)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(F.interpolate(segmap, size=x.shape[2:], mode="nearest"))
        return normalized * self.mlp_gamma(actv) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """SPADE -> LeakyReLU(0.2) -> conv, twice, plus a (SPADE -> 1x1) learned shortcut when fin != fout."""

    def __init__(self, fin: int, fout: int, norm_g: str = "spectralspadesyncbatch3x3", semantic_nc: int = 3) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        sn = "spectral" in norm_g
        self.conv_0 = _conv(fin, fmiddle, 3, 1, True, sn)
        self.conv_1 = _conv(fmiddle, fout, 3, 1, True, sn)
        if self.learned_shortcut:
            self.conv_s = _conv(fin, fout, 1, 0, False, sn)
        spade = norm_g.replace("spectral", "")
        self.norm_0 = SPADE(spade, fin, semantic_nc)
        self.norm_1 = SPADE(spade, fmiddle, semantic_nc)
        if self.learned_shortcut:
            self.norm_s = SPADE(spade, fin, semantic_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


class SoftGate(nn.Module):
    COEFF = 12.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * self.COEFF


class SimplifiedLIP(nn.Module):
    """Local importance pooling: a 3x3 stride-2 average weighted by exp(12 * sigmoid(logit)), logit from conv + IN.

    The weights reach e^12 ~ 1.6e5, beyond float16's range, so the pooling runs in float32 for half inputs.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.logit = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
            SoftGate(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.logit(x)
        dtype = x.dtype
        if dtype in LOW_PRECISION:
            x, logit = x.float(), logit.float()
        weight = logit.exp()
        out = F.avg_pool2d(x * weight, 3, 2, 1) / F.avg_pool2d(weight, 3, 2, 1)
        return out.to(dtype)


class LIPEncoder(nn.Module):
    """conv -> IN -> ReLU, then n_2xdown x (LIP pooling, conv doubling channels up to 16 * ngf, IN, ReLU but last)."""

    def __init__(self, input_nc: int, ngf: int, sw: int, sh: int, n_2xdown: int) -> None:
        super().__init__()
        self.sw = sw
        self.sh = sh
        self.max_ratio = 16
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ngf, 3, padding=1, bias=False),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(),
        ]
        cur = 1
        for i in range(n_2xdown):
            nxt = min(cur * 2, self.max_ratio)
            layers += [
                SimplifiedLIP(ngf * cur),
                nn.Conv2d(ngf * cur, ngf * nxt, 3, padding=1),
                nn.InstanceNorm2d(ngf * nxt),
            ]
            cur = nxt
            if i < n_2xdown - 1:
                layers.append(nn.ReLU())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class HiFaceGAN(nn.Module):
    """BasicSR's HiFaceGAN generator (SPADEGenerator with a LIP encoder).

    Input (B, num_in_ch, H, W) with H and W multiples of 32 (the encoder halves five times, the decoder doubles
    five times); trained on 512x512 aligned faces that were degraded and resized back to 512 (scale 1). Output:
    tanh, (B, 3, H, W). `fc` is built (its keys are in every checkpoint) but unused: the LIP encoder replaces it.
    With `is_train=True` only the first `init_train_phase + 1` up blocks run (progressive training); phase 3, the
    default, is the full generator, identical to `is_train=False`. Nothing in forward is random.

    Runtime option: `signed_io` (bool, default False). BasicSR trains on [0, 1] images and reads the tanh output as
    [0, 1] (clamped), which is what forward does by default. Lotayou/Face-Renovation's own checkpoints were trained
    on images normalised to [-1, 1]; with `signed_io = True` forward maps a [0, 1] input to [-1, 1] and the output
    back to [0, 1].
    """

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_feat: int = 64,
        use_vae: bool = False,
        z_dim: int = 256,
        crop_size: int = 512,
        norm_g: str = "spectralspadesyncbatch3x3",
        is_train: bool = True,
        init_train_phase: int = 3,
    ) -> None:
        super().__init__()
        if not 0 <= init_train_phase <= 3:
            raise ValueError(f"init_train_phase must be 0..3, got {init_train_phase}")
        nf = num_feat
        self.nf = nf
        self.input_nc = num_in_ch
        self.is_train = is_train
        self.train_phase = init_train_phase
        self.scale_ratio = 5  # fixed upstream: five 2x poolings
        self.sw = crop_size // 2**self.scale_ratio
        self.sh = self.sw
        self.signed_io = False
        if use_vae:
            self.fc: nn.Module = nn.Linear(z_dim, 16 * nf * self.sw * self.sh)
        else:
            self.fc = nn.Conv2d(num_in_ch, 16 * nf, 3, padding=1)
        # SPADE's segmap is the 3-channel input image (semantic_nc is fixed to 3 upstream)
        self.head_0 = SPADEResnetBlock(16 * nf, 16 * nf, norm_g)
        self.g_middle_0 = SPADEResnetBlock(16 * nf, 16 * nf, norm_g)
        self.g_middle_1 = SPADEResnetBlock(16 * nf, 16 * nf, norm_g)
        self.ups = nn.ModuleList([SPADEResnetBlock(m * nf, m // 2 * nf, norm_g) for m in (16, 8, 4, 2)])
        self.to_rgbs = nn.ModuleList([nn.Conv2d(m * nf, 3, 3, padding=1) for m in (8, 4, 2, 1)])
        self.up = nn.Upsample(scale_factor=2)
        self.lip_encoder = LIPEncoder(num_in_ch, nf, self.sw, self.sh, self.scale_ratio)

    @property
    def phase(self) -> int:
        return self.train_phase + 1 if self.is_train else len(self.to_rgbs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed_io:
            x = x * 2 - 1
        seg = x
        y = self.head_0(self.lip_encoder(x), seg)
        y = self.up(y)
        y = self.g_middle_1(self.g_middle_0(y, seg), seg)
        phase = self.phase
        for i in range(phase):
            y = self.ups[i](self.up(y), seg)
        y = torch.tanh(self.to_rgbs[phase - 1](F.leaky_relu(y, 0.2)))
        return (y + 1) / 2 if self.signed_io else y


def from_face_renovation(sd: StateDict) -> dict[str, torch.Tensor]:
    """Keys of a Lotayou/Face-Renovation `LIPSPADEGenerator` checkpoint (netG=lipspade) renamed to BasicSR's.

    The original names the middle blocks `G_middle_0/1`; everything else (fc, head_0, ups, to_rgbs, lip_encoder,
    spectral-norm and SyncBatchNorm running-stat keys) already matches HiFaceGAN(norm_g="spectralspadebatch3x3").
    Those checkpoints were trained on [-1, 1] images: set `model.signed_io = True`. Not verified against the
    released files (BaiduNetDisk/YandexDisk only), only against the original code.
    """
    return {("g_middle_" + k[len("G_middle_"):] if k.startswith("G_middle_") else k): v for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------------------------------
# descriptor


def _receptive_radius() -> int:
    """Theoretical receptive-field radius in input pixels of the main path (the SPADE segmap paths are shorter).

    LIP encoder: first conv 1; at each of the five levels l (stride 2**l): logit 3x3 conv 2**l + 3x3 pooling 2**l +
    the next conv at 2**(l+1), i.e. 4 * 2**l, 124 in all. Decoder: head_0 two 3x3 at /32 (64), g_middle two blocks
    at /16 (64), one block at /8, /4, /2, /1 (16 + 8 + 4 + 2), to_rgb 1, and up to 31 px of nearest-upsampling
    cell offsets: 1 + 124 + 64 + 64 + 30 + 1 + 31 = 315.
    """
    enc = 1 + sum(4 * 2**level for level in range(5))
    dec = 2 * 32 + 4 * 16 + 2 * (8 + 4 + 2 + 1) + 1
    return enc + dec + 31


def _describe(kw: dict[str, Any]) -> ArchSpec:
    if kw["is_train"] and int(kw["init_train_phase"]) != 3:
        raise ValueError("HiFaceGAN with is_train=True and init_train_phase < 3 outputs a downscaled image; "
                         "only the full generator (phase 3 or is_train=False) is supported for inference")
    return ArchSpec(
        id="hifacegan",
        family="HiFaceGAN",
        upstream_class="HiFaceGAN",
        tasks=("face",),
        scale=1,
        in_channels=int(kw["num_in_ch"]),
        out_channels=3,
        # Five stride-2 poolings then five 2x upsamplings: H, W multiples of 32. The 1/32 map needs more than one
        # pixel for InstanceNorm, so at least 64 on a side (64x32 works, 32x32 does not).
        min_size=64,
        multiple_of=32,
        # LIP pooling (exp up to e^12) and spectral-norm sigma run in float32 inside, but the official nf48 layout
        # still overflowed fp16 on the H200 (bench/results/archs.md: non-finite output); bf16 stays finite.
        fp16=False,
        bf16=True,
        channels_last=False,  # not measured
        # InstanceNorm in the encoder (and in SPADE unless norm_g is "…batch…") normalises with whole-image
        # statistics, and the receptive field (_receptive_radius, 315 px) already covers a 512 face: give the model
        # the whole face. Tiles of another size change the statistics.
        tiling="global",
        context=_receptive_radius(),
        code_license="Apache-2.0",  # BasicSR's port; the original Face-Renovation code is "academic use only"
    )


# ---------------------------------------------------------------------------------------------------------------------
# detector


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """num_in_ch and num_feat from the encoder's first conv; use_vae (and z_dim, crop_size) from `fc`; norm_g from
    the spectral-norm keys, BatchNorm running stats and the SPADE kernel size. is_train/init_train_phase do not show
    in the keys: the full generator (phase 3) is returned. Without running stats, "syncbatch" and "instance" are the
    same function (both InstanceNorm2d); we name it syncbatch, upstream's default."""
    need = ("lip_encoder.model.0.weight", "head_0.norm_0.mlp_shared.0.weight", "fc.weight", "to_rgbs.3.weight")
    if any(k not in sd for k in need):
        return None
    enc = sd["lip_encoder.model.0.weight"]
    if enc.dim() != 4:
        return None
    nf, in_ch = int(enc.shape[0]), int(enc.shape[1])
    kwargs: dict[str, Any] = {"num_in_ch": in_ch, "num_feat": nf, "use_vae": False, "z_dim": 256, "crop_size": 512}
    fc = sd["fc.weight"]
    if fc.dim() == 2:  # Linear(z_dim, 16 * nf * sw * sh)
        cells = int(fc.shape[0]) // (16 * nf)
        sw = round(cells**0.5)
        kwargs.update(use_vae=True, z_dim=int(fc.shape[1]), crop_size=sw * 32)
    spectral = "head_0.conv_0.weight_orig" in sd
    norm = "batch" if "head_0.norm_0.param_free_norm.running_mean" in sd else "syncbatch"
    ks = int(sd["head_0.norm_0.mlp_shared.0.weight"].shape[-1])
    kwargs["norm_g"] = f"{'spectral' if spectral else ''}spade{norm}{ks}x{ks}"
    kwargs.update(is_train=True, init_train_phase=3)
    return kwargs if same_keys_and_shapes(lambda: HiFaceGAN(**kwargs), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="hifacegan", family="HiFaceGAN", cls=HiFaceGAN, describe=_describe, detect=_detect),
)
