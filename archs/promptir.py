"""Restormer, PromptIR and DFPIR: Restormer-style U-Net transformers for image restoration.

* `Restormer` (Zamir et al., CVPR 2022; swz30/Restormer, Academic Public License): deraining, motion and defocus
  deblurring, Gaussian and real denoising, one checkpoint per task.
* `PromptIR` (Potlapalli et al., NeurIPS 2023; va1shn9v/PromptIR, Academic Public License): all-in-one blind
  restoration (noise, rain, haze). Learned prompts, mixed per image from its pooled features, condition the
  decoder. Only `decoder=True` runs (see the class), and it is what every upstream script and checkpoint uses.
* `ChannelShuffle_skip_textguaid` (DFPIR, Tian et al., CVPR 2025; TxpHome/DFPIR, no licence file): Restormer whose
  skip connections and latent are re-ordered ("shuffled") and re-attended under a text embedding. It is not blind:
  it needs the OpenAI-CLIP ViT-B/32 `encode_text` output (float32, not normalised, 512 values) of a degradation
  description such as "Gaussian noise with a standard deviation of 15" or "Rain degradation with rain lines".
  We do not bundle CLIP; the caller supplies that tensor (`model.text_embedding` or `forward(x, text_embedding=)`).

Semantics follow the seed korvin2000/arch_research `DFPIR/dfpir_arch.py` (= TxpHome/DFPIR@b9ba223 `net/model.py`,
whose PromptIR equals va1shn9v/PromptIR@106159a). Keyword names, defaults and state-dict keys match upstream, so
checkpoints load strictly (Lightning checkpoints carry a `net.` prefix that the loader strips).

All three need H and W to be multiples of 8 (three 2x downsamplings); upstream pads outside the model, we reflect-pad
inside and crop, which is the same on multiples of 8. MDTA attention couples every pixel with the whole image (the
per-channel q.k products run over all pixels), and PromptIR's prompts are resized to the whole feature map, so tiles
do not reproduce a whole-image run exactly: tiling hint "global".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.detect import list_length, same_keys_and_shapes
from .layers.norm import RestormerLayerNorm
from .layers.padding import pad_to_multiple
from .layers.restormer import (
    GLOBAL_CONTEXT_CAP,
    FeedForward,
    RestormerUNet,
    TransformerBlock,
    Upsample,
    channel_attention,
    ffn_factor,
    transformer_stage,
    unet_radius,
)
from .spec import ArchEntry, ArchSpec, StateDict, Task

__all__ = ["ARCHS", "ChannelShuffle_skip_textguaid", "PromptGenBlock", "PromptIR", "Restormer"]

_MULTIPLE = RestormerUNet.UNET_MULTIPLE
_APL = "Academic Public License (non-commercial)"


def _check_levels(num_blocks: Sequence[int], heads: Sequence[int]) -> None:
    if len(num_blocks) != 4 or len(heads) != 4:
        raise ValueError(f"num_blocks and heads need 4 entries (3 encoder levels + latent), got {num_blocks}, {heads}")


def _stages(heads: Sequence[int], ffn: float, bias: bool, ln: str) -> Callable[[int, int, int], nn.Module]:
    """Restormer's stage factory: `n` MDTA/GDFN blocks with the heads of their level."""
    return lambda n, level, width: transformer_stage(n, width, heads[level], ffn, bias, ln)


class Restormer(RestormerUNet):
    """Restormer: 4-level U-Net of MDTA/GDFN transformer blocks, refinement at full size, global residual.

    `dual_pixel_task=True` (dual-pixel defocus deblurring, inp_channels=6) adds a 1x1 skip from the embedding and
    drops the global residual, as upstream.
    """

    def __init__(
        self,
        *,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",
        dual_pixel_task: bool = False,
    ) -> None:
        super().__init__()
        _check_levels(num_blocks, heads)
        self._build_unet(inp_channels=inp_channels, dim=dim, num_blocks=num_blocks,
                         num_refinement_blocks=num_refinement_blocks,
                         stage=_stages(heads, ffn_expansion_factor, bias, LayerNorm_type), bias=bias)
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        inp = pad_to_multiple(x, _MULTIPLE, mode="reflect_or_replicate")
        emb = self.patch_embed(inp)
        dec1 = self._run_unet(emb)
        if self.dual_pixel_task:  # no global residual on this path
            return self.output(dec1 + self.skip_conv(emb))[..., :h, :w]
        return (self.output(dec1) + inp)[..., :h, :w]


class PromptGenBlock(nn.Module):
    """Prompt generation: softmax(Linear(GAP(x))) mixes `prompt_len` learned prompts, which are resized to the map
    (bilinear, align_corners=False) and passed through a 3x3 conv."""

    def __init__(self, prompt_dim: int = 128, prompt_len: int = 5, prompt_size: int = 96, lin_dim: int = 192):
        super().__init__()
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        weights = F.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)  # (B, prompt_len)
        prompt = torch.einsum("bl,lchw->bchw", weights, self.prompt_param[0].to(weights.dtype))
        prompt = F.interpolate(prompt, (h, w), mode="bilinear", align_corners=False)
        return self.conv3x3(prompt)


class PromptIR(RestormerUNet):
    """PromptIR: Restormer whose decoder levels 3, 2, 1 concatenate a generated prompt and run one extra
    transformer block ("noise_level") on the widened map before reducing it back.

    Upstream hard-codes the prompt widths (64/128/320) and the widened block widths, which fit only dim=48 with
    decoder=True; with decoder=False its forward fails (the 8*dim latent meets a 4*dim Upsample). We refuse both at
    construction. The `chnl_reduce*` and `reduce_noise_channel_*` convs exist upstream but are never used; they are
    kept so checkpoints load strictly. All three noise_level blocks use heads[2], as upstream.
    """

    def __init__(
        self,
        *,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",
        decoder: bool = False,
    ) -> None:
        super().__init__()
        _check_levels(num_blocks, heads)
        if not decoder:
            raise ValueError("PromptIR(decoder=False) does not run upstream (channel mismatch at up4_3); "
                             "the published model and all upstream scripts use decoder=True")
        if dim != 48:
            raise ValueError(f"PromptIR's prompt and noise-level widths are hard-coded for dim=48, got dim={dim}")
        ffn, ln = ffn_expansion_factor, LayerNorm_type
        self.decoder = decoder

        def conv1x1(c_in: int, c_out: int) -> Callable[[], nn.Module]:
            return lambda: nn.Conv2d(c_in, c_out, 1, bias=bias)

        def noise_block(width: int) -> Callable[[], nn.Module]:
            return lambda: TransformerBlock(width, heads[2], ffn, bias, ln)  # heads[2] at every level, as upstream

        self._build_unet(
            inp_channels=inp_channels, dim=dim, num_blocks=num_blocks, num_refinement_blocks=num_refinement_blocks,
            stage=_stages(heads, ffn, bias, ln), bias=bias,
            replace={
                "up4_3": lambda: Upsample(dim * 4),  # after reduce_noise_level3 the latent has 4 * dim channels
                "reduce_chan_level3": conv1x1(dim * 2 + 192, dim * 4),
            },
            after={
                "patch_embed": {
                    "prompt1": lambda: PromptGenBlock(prompt_dim=64, prompt_len=5, prompt_size=64, lin_dim=96),
                    "prompt2": lambda: PromptGenBlock(prompt_dim=128, prompt_len=5, prompt_size=32, lin_dim=192),
                    "prompt3": lambda: PromptGenBlock(prompt_dim=320, prompt_len=5, prompt_size=16, lin_dim=384),
                    # unused upstream, present in its state dict
                    "chnl_reduce1": conv1x1(64, 64),
                    "chnl_reduce2": conv1x1(128, 128),
                    "chnl_reduce3": conv1x1(320, 256),
                    "reduce_noise_channel_1": conv1x1(dim + 64, dim),
                },
                "down1_2": {"reduce_noise_channel_2": conv1x1(dim * 2 + 128, dim * 2)},
                "down2_3": {"reduce_noise_channel_3": conv1x1(dim * 4 + 256, dim * 4)},
                "reduce_chan_level3": {"noise_level3": noise_block(dim * 4 + 512),
                                       "reduce_noise_level3": conv1x1(dim * 4 + 512, dim * 4)},
                "reduce_chan_level2": {"noise_level2": noise_block(dim * 2 + 224),
                                       "reduce_noise_level2": conv1x1(dim * 2 + 224, dim * 4)},
                "up2_1": {"noise_level1": noise_block(dim * 2 + 64),
                          "reduce_noise_level1": conv1x1(dim * 2 + 64, dim * 2)},
            },
        )
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def _prompted(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """The prompt of `level` concatenated to x, one transformer block, reduced back (upstream's noise_level)."""
        prompt = getattr(self, f"prompt{level}")
        block = getattr(self, f"noise_level{level}")
        reduce = getattr(self, f"reduce_noise_level{level}")
        return reduce(block(torch.cat([x, prompt(x)], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        inp = pad_to_multiple(x, _MULTIPLE, mode="reflect_or_replicate")
        dec1 = self._run_unet(
            self.patch_embed(inp),
            on_latent=lambda t: self._prompted(3, t),
            on_decoded=lambda level, t: self._prompted(level - 1, t),  # after decoder 3: prompt 2; after 2: 1
        )
        return (self.output(dec1) + inp)[..., :h, :w]


# ---------------------------------------------------------------------------------------------------------------------
# DFPIR


class TopMCrossAttention(nn.Module):
    """Upstream `Topm_CrossAttention_Restormer`: MDTA-style cross attention (q from one map, k/v from another)
    where each row keeps only its top 90% logits (int(C * 9/10) of the C channels per head) before the softmax,
    scaled by a learned scalar `attn4`."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        if dim % num_heads or dim // num_heads < 2:
            raise ValueError(f"{dim} channels must split into {num_heads} heads of at least 2 (top-90% mask)")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=bias)
        self.q = nn.Conv2d(dim, dim, 1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)
        self.attn4 = nn.Parameter(torch.tensor([0.2]))
        self.keep = int(dim // num_heads * 9 / 10)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        q = self.q_dwconv(self.q(x_q))
        k, v = self.kv_dwconv(self.kv(x_kv)).chunk(2, dim=1)
        out = channel_attention(q, k, v, self.temperature, self.num_heads, keep=self.keep)
        return self.project_out(out * self.attn4.to(out.dtype))


class TextChannelShuffle(nn.Module):
    """Upstream `ch_shuffle_high_text`, a text-guided channel shuffle: the text embedding, through two linears,
    ranks the 2C channels of a 1x1 expansion of the features; the expansion is re-ordered by that ranking, reduced
    back to C, and used as the query of a top-m cross attention over the original features, followed by a GDFN
    (no outer residual)."""

    def __init__(
        self,
        ch_dim: int,
        num_heads: int,
        LayerNorm_type: str,
        ffn_expansion_factor: float,
        bias: bool,
        lin_ch: int = 512,
    ) -> None:
        super().__init__()
        self.dim = ch_dim
        self.linear_layer1 = nn.Linear(lin_ch, lin_ch)
        self.linear_layer3 = nn.Linear(lin_ch, 2 * ch_dim)
        self.conv1x1 = nn.Conv2d(ch_dim, 2 * ch_dim, 1)
        self.conv_out = nn.Conv2d(2 * ch_dim, ch_dim, 1)
        self.norm1 = RestormerLayerNorm(ch_dim, LayerNorm_type)
        self.norm2 = RestormerLayerNorm(ch_dim, LayerNorm_type)
        self.norm3 = RestormerLayerNorm(ch_dim, LayerNorm_type)
        self.select_attn = TopMCrossAttention(ch_dim, num_heads, bias=False)
        self.ffn = FeedForward(ch_dim, ffn_expansion_factor, bias)

    def forward(self, feat: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # The ranking is a discrete choice: compute it in float32 so half precision cannot reorder near-ties.
        l1, l3 = self.linear_layer1, self.linear_layer3
        code = F.linear(F.linear(text.float(), l1.weight.float(), l1.bias.float()), l3.weight.float(), l3.bias.float())
        order = code.topk(2 * self.dim, dim=1).indices  # a full descending ranking, as upstream's top-k
        expanded = self.conv1x1(feat)
        rows = torch.arange(feat.shape[0], device=feat.device).unsqueeze(1)
        shuffled = expanded[rows, order]
        att = self.select_attn(self.norm1(self.conv_out(shuffled)), self.norm2(feat))
        return att + self.ffn(self.norm3(att))


class ChannelShuffle_skip_textguaid(RestormerUNet):  # noqa: N801 (upstream class name)
    """DFPIR: Restormer whose latent and three skip connections pass through text-guided channel shuffles.

    Runtime option: `model.text_embedding`, a float tensor of shape (512,), (1, 512) or (B, 512): the OpenAI-CLIP
    ViT-B/32 `encode_text` output of the degradation description the checkpoint was trained with (upstream casts it
    to float32 and does not normalise it). `forward(x, text_embedding=...)` overrides it for one call; one embedding
    is shared by every image of the batch. Without one, forward raises: the model is not blind.

    `device` (upstream default "cuda:1") is stored but never used upstream; it is accepted and ignored.
    `dual_pixel_task` is commented out upstream; only False is accepted.
    """

    TEXT_DIM = 512

    def __init__(
        self,
        *,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",
        device: str | None = None,
        dual_pixel_task: bool = False,
    ) -> None:
        super().__init__()
        _check_levels(num_blocks, heads)
        if dual_pixel_task:
            raise ValueError("DFPIR has no dual-pixel path (commented out upstream)")
        ffn, ln = ffn_expansion_factor, LayerNorm_type

        def shuffle(ch: int, nh: int) -> TextChannelShuffle:
            return TextChannelShuffle(ch_dim=ch, num_heads=nh, LayerNorm_type=ln, ffn_expansion_factor=ffn, bias=bias)

        self.text_embedding: torch.Tensor | None = None
        self._build_unet(
            inp_channels=inp_channels, dim=dim, num_blocks=num_blocks, num_refinement_blocks=num_refinement_blocks,
            stage=_stages(heads, ffn, bias, ln), bias=bias,
            after={
                "encoder_level1": {"encoder_shuffle_channel1": lambda: shuffle(dim, heads[0])},
                "encoder_level2": {"encoder_shuffle_channel2": lambda: shuffle(dim * 2, heads[1])},
                "encoder_level3": {"encoder_shuffle_channel3": lambda: shuffle(dim * 4, heads[2])},
                "latent": {"latent_shuffle_channel": lambda: shuffle(dim * 8, heads[3])},
            },
        )
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def _text(self, x: torch.Tensor, text_embedding: torch.Tensor | None) -> torch.Tensor:
        text = self.text_embedding if text_embedding is None else text_embedding
        if text is None:
            raise ValueError("DFPIR needs a text embedding: set model.text_embedding to the CLIP ViT-B/32 "
                             "encode_text output (512 floats) of the degradation description")
        text = text.reshape(-1, text.shape[-1]) if text.ndim else text
        if text.ndim != 2 or text.shape[-1] != self.TEXT_DIM or text.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"text embedding must have shape (512,), (1, 512) or ({x.shape[0]}, 512), "
                             f"got {tuple(text.shape)}")
        return text.to(device=x.device).expand(x.shape[0], -1)

    def forward(self, x: torch.Tensor, text_embedding: torch.Tensor | None = None) -> torch.Tensor:
        text = self._text(x, text_embedding)
        h, w = x.shape[-2:]
        inp = pad_to_multiple(x, _MULTIPLE, mode="reflect_or_replicate")
        dec1 = self._run_unet(
            self.patch_embed(inp),
            on_latent=lambda t: self.latent_shuffle_channel(t, text),
            on_skip=lambda level, t: getattr(self, f"encoder_shuffle_channel{level}")(t, text),
        )
        return (self.output(dec1) + inp)[..., :h, :w]


# ---------------------------------------------------------------------------------------------------------------------
# descriptors


def _levels_radius(kw: dict[str, Any], extra: Sequence[int] = (0, 0, 0, 0)) -> int:
    """Local receptive-field radius (see `unet_radius`): a transformer block has two depthwise 3x3 convs (qkv and
    GDFN), radius 2 in its level's pixels; level 1 has the encoder, decoder and refinement blocks, levels 2-3 an
    encoder and a decoder stage, the latent one stage. `extra`: further per-level radius (prompt/shuffle blocks).
    Capped at GLOBAL_CONTEXT_CAP (the official configs reach 333-375 px)."""
    nb, nr = kw["num_blocks"], kw["num_refinement_blocks"]
    blocks = (2 * nb[0] + nr, 2 * nb[1], 2 * nb[2], nb[3])
    radius = unet_radius([2 * n + e for n, e in zip(blocks, extra, strict=True)], resamples=3)
    return min(radius, GLOBAL_CONTEXT_CAP)


def _spec(arch_id: str, family: str, cls: str, tasks: tuple[Task, ...], kw: dict[str, Any], context: int,
          license_: str) -> ArchSpec:
    return ArchSpec(
        id=arch_id,
        family=family,
        upstream_class=cls,
        tasks=tasks,
        scale=1,
        in_channels=int(kw["inp_channels"]),
        out_channels=int(kw["out_channels"]),
        min_size=_MULTIPLE,
        multiple_of=_MULTIPLE,
        # Norm statistics and the attention matrices run in float32 inside (layers/); the rest is convs.
        fp16=True,
        bf16=True,
        channels_last=False,
        compile_mode="inductor",  # convs and norms between attention products: fusable; to be measured
        # MDTA's channel attention is computed over every pixel of the map: whole-image coupling.
        tiling="global",
        context=context,
        code_license=license_,
    )


def _describe_restormer(kw: dict[str, Any]) -> ArchSpec:
    # Upstream trained it per task: deraining (restore), motion/defocus deblurring, Gaussian/real denoising.
    return _spec("restormer", "Restormer", "Restormer", ("deblur", "denoise", "restore"), kw,
                 _levels_radius(kw), _APL)


def _describe_promptir(kw: dict[str, Any]) -> ArchSpec:
    # noise_level blocks (radius 2) and prompt 3x3 convs (radius 1) at decoder levels 2, 3 and the latent
    return _spec("promptir", "PromptIR", "PromptIR", ("restore",), kw, _levels_radius(kw, (0, 3, 3, 3)), _APL)


def _describe_dfpir(kw: dict[str, Any]) -> ArchSpec:
    # each shuffle block: depthwise 3x3 on q or kv, then the GDFN's depthwise 3x3
    return _spec("dfpir", "DFPIR", "ChannelShuffle_skip_textguaid", ("restore",), kw,
                 _levels_radius(kw, (2, 2, 2, 2)),
                 "unspecified (TxpHome/DFPIR has no licence file; its Restormer/PromptIR code is " + _APL + ")")


# ---------------------------------------------------------------------------------------------------------------------
# detectors


def _stage_info(sd: StateDict, prefixes: Sequence[str]) -> tuple[int, int | None, int | None]:
    """(block count of the first prefix, heads, GDFN hidden width) from the first block found under any prefix."""
    count = list_length(sd, prefixes[0])
    for p in prefixes:
        t = sd.get(f"{p}.0.attn.temperature")
        f = sd.get(f"{p}.0.ffn.project_out.weight")
        if t is not None and f is not None:
            return count, int(t.shape[0]), int(f.shape[1])
    return count, None, None


def _common(sd: StateDict, level_prefixes: Sequence[Sequence[str]], widths: Sequence[int]) -> dict[str, Any] | None:
    """kwargs shared by the three classes: channels, dim, depths, heads, ffn factor, bias, LayerNorm type."""
    embed, out = sd.get("patch_embed.proj.weight"), sd.get("output.weight")
    if embed is None or out is None or embed.ndim != 4 or out.ndim != 4:
        return None
    dim = int(embed.shape[0])
    counts, heads, pairs = [], [], []
    for prefixes, mult in zip(level_prefixes, widths, strict=True):
        n, nh, hidden = _stage_info(sd, prefixes)
        counts.append(n)
        heads.append(nh if nh is not None else 1)  # a level without blocks: heads are irrelevant
        if hidden is not None:
            pairs.append((dim * mult, hidden))
    factor = ffn_factor(pairs) if pairs else 2.66
    if factor is None:
        return None
    first = next((p for ps in level_prefixes for p in ps if f"{p}.0.norm1.body.weight" in sd), None)
    return {
        "inp_channels": int(embed.shape[1]),
        "out_channels": int(out.shape[0]),
        "dim": dim,
        "num_blocks": counts,
        "num_refinement_blocks": list_length(sd, "refinement"),
        "heads": heads,
        "ffn_expansion_factor": factor,
        "bias": "output.bias" in sd,
        "LayerNorm_type": "WithBias" if first is None or f"{first}.0.norm1.body.bias" in sd else "BiasFree",
    }


_LEVELS = (
    ("encoder_level1", "decoder_level1", "refinement"),
    ("encoder_level2", "decoder_level2"),
    ("encoder_level3", "decoder_level3"),
    ("latent",),
)
_WIDTHS = (1, 2, 4, 8)  # channels of each level's first prefix, in units of dim


def _detect_restormer(sd: StateDict) -> dict[str, Any] | None:
    if "encoder_level1.0.attn.qkv.weight" not in sd and "down1_2.body.0.weight" not in sd:
        return None
    kw = _common(sd, _LEVELS, _WIDTHS)
    if kw is None:
        return None
    kw["dual_pixel_task"] = "skip_conv.weight" in sd
    return kw if same_keys_and_shapes(lambda: Restormer(**kw), sd) else None


def _detect_promptir(sd: StateDict) -> dict[str, Any] | None:
    if "prompt1.prompt_param" not in sd:
        return None
    kw = _common(sd, _LEVELS, _WIDTHS)
    if kw is None:
        return None
    kw["decoder"] = True
    return kw if same_keys_and_shapes(lambda: PromptIR(**kw), sd) else None


def _detect_dfpir(sd: StateDict) -> dict[str, Any] | None:
    if "latent_shuffle_channel.linear_layer1.weight" not in sd:
        return None
    kw = _common(sd, _LEVELS, _WIDTHS)
    if kw is None:
        return None
    return kw if same_keys_and_shapes(lambda: ChannelShuffle_skip_textguaid(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="restormer", family="Restormer", cls=Restormer, describe=_describe_restormer,
              detect=_detect_restormer),
    ArchEntry(id="promptir", family="PromptIR", cls=PromptIR, describe=_describe_promptir, detect=_detect_promptir),
    ArchEntry(id="dfpir", family="DFPIR", cls=ChannelShuffle_skip_textguaid, describe=_describe_dfpir,
              detect=_detect_dfpir, aliases=("DFPIR",)),
)
