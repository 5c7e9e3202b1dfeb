"""PFT: Progressive Focused Transformer for single-image super-resolution (Long et al., CVPR 2025;
LabShuHangGU/PFT-SR, Apache-2.0).

Semantics follow korvin2000/arch_research `PFT-SR/pft_arch.py` (identical to LabShuHangGU/PFT-SR@7d4a6874
`basicsr/archs/pft_arch.py`); keyword names, defaults and state-dict keys match, so the official checkpoints load
strictly. A SwinIR-style body whose window attention is progressively focused: every layer multiplies its attention
map by the previous layer's (of the same shift parity; renormalised, eps 1e-20) and, when num_topk[layer] is smaller
than the window's token count, keeps only the top-k keys per query; later layers then compute attention at those
keys only. Values also get a depthwise-conv positional term (LePE); the feed-forward is ConvFFN.

Upstream computes the sparse products with a CUDA extension (smm_cuda): QmK C[b,n,k] = q[b,n] . k[b, idx[b,n,k]] and
AmV C[b,n] = sum_k A[b,n,k] v[b, idx[b,n,k]]. Here both are PyTorch: QmK gathers the dense q k^T at the indices and
AmV scatters the sparse weights into a dense map before the product with v. That needs the same memory as the dense
layers (window^2 per query), never the window x top-k x head-width of a literal gather, and runs on any device. The
order of torch.topk's values does not matter (values and indices stay paired); eval is deterministic.

The shifted layers of the sparse stage get no shift mask (upstream adds it only on the dense path). Input padding:
upstream's mirror concatenation (x then flip(x)) to the window multiple, repeated here for inputs under half a window
(where upstream fails); the output is cropped.

Differences from upstream, none changing float32 outputs: `mean` is a non-persistent buffer; `norm_layer`/`act_layer`
are not arguments; nothing is done in place (upstream's in-place softmax is an eval-only memory saving);
unknown `upsampler`/`resi_connection` values are errors; half-precision models keep the attention maps and their
focusing in float32. Windows are anchored at the padded image origin and the
attention map travels through the whole network: tiling "global".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .layers.detect import count_indexed, ratio_for, read_swinir_head, same_keys_and_shapes
from .layers.upsample import add_swinir_head, swinir_head
from .layers.window import relative_position_index, shifted_window_mask, window_partition, window_reverse
from .spec import ArchEntry, ArchSpec, StateDict

__all__ = ["ARCHS", "PFT", "smm_amv", "smm_qmk"]

_UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
_RGB_MEAN = (0.4488, 0.4371, 0.4040)
_DEFAULT_TOPK = (256, 256, 128, 128, 128, 128, 64, 64, 64, 64, 64, 64, 32, 32, 32, 32, 32, 32,
                 16, 16, 16, 16, 16, 16)
_EPS = 1e-20

# (values, indices) per shift parity: the focused attention one layer hands to the next of the same parity
_Focus = tuple[list[torch.Tensor | None], list[torch.Tensor | None]]


def smm_qmk(q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Sparse Q K^T: (.., n, d), (.., m, d), (.., n, t) indices -> (.., n, t) with C[n, t] = q[n] . k[index[n, t]]."""
    return torch.gather(q @ k.transpose(-2, -1), -1, index)


def smm_amv(a: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Sparse A V: (.., n, t) weights at key indices (.., n, t), (.., m, d) values -> (.., n, d)."""
    dense = torch.zeros(*a.shape[:-1], v.shape[-2], dtype=a.dtype, device=a.device)
    return dense.scatter_add_(-1, index, a) @ v


def mirror_pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, C, H, W) padded at the bottom/right to a multiple by mirror concatenation (x then flip(x), so the edge
    repeats), as PFT; repeated while one mirror is not enough."""
    for dim in (2, 3):
        size = x.shape[dim]
        target = -(-size // multiple) * multiple
        while x.shape[dim] < target:
            x = torch.cat([x, torch.flip(x, [dim])], dim)
        x = x.narrow(dim, 0, target)
    return x


class dwconv(nn.Module):  # noqa: N801 (upstream class name)
    """Depthwise kxk conv + GELU on a token sequence."""

    def __init__(self, hidden_features: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.depthwise_conv = nn.Sequential(
            nn.Conv2d(hidden_features, hidden_features, kernel_size, 1, (kernel_size - 1) // 2,
                      groups=hidden_features),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        return self.depthwise_conv(x.transpose(1, 2).reshape(b, c, *x_size)).flatten(2).transpose(1, 2)


class ConvFFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.dwconv = dwconv(hidden_features, kernel_size)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x, x_size))


class WindowAttention(nn.Module):
    """Progressively focused window attention (one shared bias head when dim <= 100, as upstream)."""

    def __init__(self, dim: int, layer_id: int, window_size: int, num_heads: int, num_topk: Sequence[int]) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        table_heads = num_heads if dim > 100 else 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, table_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.topk = int(num_topk[layer_id])

    def forward(self, qkvp: torch.Tensor, focus: _Focus, rpi: torch.Tensor, mask: torch.Tensor | None,
                shift: int) -> torch.Tensor:
        b_, n, c4 = qkvp.shape
        c, heads = c4 // 4, self.num_heads
        q, k, v, v_lepe = qkvp.reshape(b_, n, 4, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * self.scale
        values, indices = focus
        index = indices[shift]
        bias = self.relative_position_bias_table[rpi.reshape(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if index is None:
            attn = q @ k.transpose(-2, -1) + bias
            if shift and mask is not None:
                nw = mask.shape[0]
                attn = (attn.view(b_ // nw, nw, heads, n, n) + mask.to(attn.dtype).unsqueeze(1)).view(b_, heads, n, n)
        else:
            attn = smm_qmk(q, k, index) + torch.gather(bias.expand(b_, heads, n, n), -1, index)
        # the focusing (softmax, product with the previous map, eps 1e-20 renormalisation, top-k) runs in float32:
        # in half precision eps is 0 and the products underflow to all-zero rows
        attn = attn.float().softmax(dim=-1)
        prev = values[shift]
        if prev is not None:
            attn = attn * prev + _EPS
            attn = attn / (attn.sum(dim=-1, keepdim=True) + _EPS)
        if self.topk < n:
            attn, top = torch.topk(attn, self.topk, dim=-1, largest=True, sorted=False)
            index = top if index is None else torch.gather(index, -1, top)
            indices[shift] = index
        values[shift] = attn
        weights = attn.to(v.dtype)
        out = weights @ v if index is None else smm_amv(weights, v, index)
        return self.proj((out + v_lepe).transpose(1, 2).reshape(b_, n, c))


class PFTransformerLayer(nn.Module):
    """x + W-MSA(LN(x)) (shifted on odd layers of a block), then x + ConvFFN(LN(x))."""

    def __init__(self, *, dim: int, layer_id: int, num_heads: int, num_topk: Sequence[int], window_size: int,
                 shift_size: int, convffn_kernel_size: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.wqkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.v_LePE = dwconv(dim, convffn_kernel_size)
        self.attn_win = WindowAttention(dim, layer_id, window_size, num_heads, num_topk)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), convffn_kernel_size)

    def forward(self, x: torch.Tensor, focus: _Focus, x_size: tuple[int, int], rpi: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        h, w = x_size
        b, n, c = x.shape
        ws, s = self.window_size, self.shift_size
        qkv = self.wqkv(self.norm1(x))
        qkvp = torch.cat([qkv, self.v_LePE(qkv[..., 2 * c:], x_size)], -1).reshape(b, h, w, 4 * c)
        if s:
            qkvp = torch.roll(qkvp, (-s, -s), (1, 2))
        windows = window_partition(qkvp, ws).reshape(-1, ws * ws, 4 * c)
        out = self.attn_win(windows, focus, rpi, mask, 1 if s else 0)
        out = window_reverse(out.view(-1, ws, ws, c), ws, h, w)
        if s:
            out = torch.roll(out, (s, s), (1, 2))
        x = x + out.reshape(b, n, c)
        return x + self.convffn(self.norm2(x), x_size)


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


class PFTB(nn.Module):
    """A block of PFT layers, its closing conv, plus the input (`residual_group.layers.*`, `conv`)."""

    def __init__(self, *, dim: int, layer_id: int, depth: int, window_size: int, resi_connection: str,
                 **layer_kw: Any) -> None:
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.layers = nn.ModuleList(
            PFTransformerLayer(dim=dim, layer_id=layer_id + i, window_size=window_size,
                               shift_size=0 if i % 2 == 0 else window_size // 2, **layer_kw)
            for i in range(depth)
        )
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, focus: _Focus, x_size: tuple[int, int], rpi: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        b, _, c = x.shape
        y = x
        for layer in self.residual_group.layers:
            y = layer(y, focus, x_size, rpi, mask)
        return self.conv(y.transpose(1, 2).reshape(b, c, *x_size)).flatten(2).transpose(1, 2) + x


class PFT(nn.Module):
    """PFT. `num_heads` is one int for every layer (as the option files); `num_topk` has one entry per layer over the
    whole network. `upsampler`: 'pixelshuffle', 'pixelshuffledirect' (PFT-light), 'nearest+conv' (x4) or ''."""

    def __init__(
        self,
        *,
        img_size: int = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 90,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: int = 6,
        num_topk: Sequence[int] = _DEFAULT_TOPK,
        window_size: int = 8,
        convffn_kernel_size: int = 5,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        ape: bool = False,
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
        if not isinstance(num_heads, int):
            raise ValueError(f"num_heads must be one int for every layer (as upstream's options), not {num_heads!r}")
        if len(num_topk) < sum(depths):
            raise ValueError(f"num_topk needs one entry per layer ({sum(depths)}), got {len(num_topk)}")
        if patch_size != 1:
            raise ValueError("PFT runs with patch_size 1 only (its patch embedding does not patch)")
        del use_checkpoint
        num_feat = 64
        self.img_range = float(img_range)
        self.register_buffer("mean", torch.tensor(_RGB_MEAN if in_chans == 3 else (0.0,)).view(1, -1, 1, 1),
                             persistent=False)
        self.upscale, self.upsampler, self.window_size = upscale, upsampler, window_size
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, img_size * img_size, embed_dim))
        self.patch_norm = patch_norm
        if patch_norm:
            self.patch_embed = nn.Module()
            self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        self.layers = nn.ModuleList()
        layer_id = 0
        for depth in depths:
            self.layers.append(PFTB(dim=embed_dim, layer_id=layer_id, depth=depth, window_size=window_size,
                                    resi_connection=resi_connection, num_heads=num_heads, num_topk=num_topk,
                                    convffn_kernel_size=convffn_kernel_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias))
            layer_id += depth
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)
        add_swinir_head(self, upsampler=upsampler, upscale=upscale, embed_dim=embed_dim, num_feat=num_feat,
                        out_chans=in_chans)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window_size
        mask = shifted_window_mask((h, w), ws, ws // 2, device=x.device) if ws // 2 else None
        rpi: torch.Tensor = self.relative_position_index_SA  # type: ignore[assignment]
        focus: _Focus = ([None, None], [None, None])
        t = x.flatten(2).transpose(1, 2)
        if self.patch_norm:
            t = self.patch_embed.norm(t)
        if self.ape:
            t = t + self.absolute_pos_embed
        for layer in self.layers:
            t = layer(t, focus, (h, w), rpi, mask)
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = mirror_pad_to(x, self.window_size)
        mean = self.mean.to(x.dtype)  # type: ignore[operator]
        x = (x - mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
            return (x / self.img_range + mean)[..., :h, :w]
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = swinir_head(self, x)
        return (x / self.img_range + mean)[..., : h * self.upscale, : w * self.upscale]


# ---------------------------------------------------------------------------------------------------------------------
# descriptor and detector


def _describe(kw: dict[str, Any]) -> ArchSpec:
    upscaled = bool(kw["upsampler"])
    return ArchSpec(
        id="pft",
        family="PFT",
        upstream_class="PFT",
        tasks=("upscale",) if upscaled else ("restore",),
        scale=int(kw["upscale"]) if upscaled else 1,
        in_channels=int(kw["in_chans"]),
        out_channels=int(kw["in_chans"]),
        min_size=1,
        multiple_of=1,  # mirror-padded to the window inside
        fp16=True,
        bf16=True,
        channels_last=False,
        tiling="global",
        context=2 * int(kw["window_size"]),
        code_license="Apache-2.0",
    )


# Published top-k schedules by total depth (the state dict does not store them).
_PUBLISHED_TOPK: dict[int, list[int]] = {
    30: [1024] * 4 + [256] * 4 + [128] * 4 + [64] * 6 + [32] * 6 + [16] * 6,  # PFT
    24: [1024] * 2 + [256] * 4 + [128] * 6 + [64] * 6 + [32] * 6,  # PFT-light
}


def _detect(sd: StateDict) -> dict[str, Any] | None:
    """Widths, depths, window (index buffer), heads (the bias table's heads when dim > 100; below that the table has
    one head and the count is not stored, see below), ConvFFN kernel and expansion, head and residual connection.
    num_topk is not stored: the published schedule for this total depth (PFT 30 layers, PFT-light 24), else all
    dense."""
    key = "layers.0.residual_group.layers.0.attn_win.relative_position_bias_table"
    needed = (key, "conv_first.weight", "relative_position_index_SA", "layers.0.residual_group.layers.0.wqkv.weight",
              "layers.0.residual_group.layers.0.v_LePE.depthwise_conv.0.weight",
              "layers.0.residual_group.layers.0.convffn.fc1.weight")
    if any(k not in sd for k in needed):
        return None
    embed_dim, in_chans = (int(s) for s in sd["conv_first.weight"].shape[:2])
    n_layers = count_indexed(sd, "layers.{}.residual_group.layers.0.norm1.weight")
    depths = [count_indexed(sd, f"layers.{i}.residual_group.layers.{{}}.norm1.weight") for i in range(n_layers)]
    window = int(sd["relative_position_index_SA"].shape[0]) ** 0.5
    window = round(window)
    table_heads = int(sd[key].shape[1])
    if embed_dim > 100:
        heads = table_heads
    else:  # one shared bias head: the published light config's 4 for width 52, else the first of 6, 4, 3, 2, 1
        heads = 4 if embed_dim == 52 else next(h for h in (6, 4, 3, 2, 1) if embed_dim % h == 0)
    total = sum(depths)
    topk = _PUBLISHED_TOPK.get(total, [window * window] * total)
    hidden = int(sd["layers.0.residual_group.layers.0.convffn.fc1.weight"].shape[0])
    kw: dict[str, Any] = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "num_topk": topk,
        "window_size": window,
        "convffn_kernel_size": int(sd["layers.0.residual_group.layers.0.v_LePE.depthwise_conv.0.weight"].shape[-1]),
        "mlp_ratio": ratio_for(hidden, embed_dim),
        "qkv_bias": "layers.0.residual_group.layers.0.wqkv.bias" in sd,
        "ape": "absolute_pos_embed" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "resi_connection": "3conv" if "conv_after_body.0.weight" in sd else "1conv",
    }
    head = read_swinir_head(sd, in_chans)
    if head is None:
        return None
    kw.update(upsampler=head[0], upscale=head[1])
    return kw if same_keys_and_shapes(lambda: PFT(**kw), sd) else None


ARCHS: tuple[ArchEntry, ...] = (
    ArchEntry(id="pft", family="PFT", cls=PFT, describe=_describe, detect=_detect),
)
