"""umzi's `UniUpsample`: the upsampler menu of the MambaOut-style SR families (MoSRv2, MoESR, ESCRealM, RHA), with
its `MetaUpsample` record, and a reader that recovers its configuration from a state dict.

Layer indices follow upstream's nn.Sequential so checkpoints load strictly. `MetaUpsample` is a uint8 buffer
[version, method index, scale, in_dim, out_dim, mid_dim, group]. Version 1 (MoESR) feeds DySample the input
width directly; version 2 (MoSRv2, ESC-Real-M, RHA) puts a conv to `mid_dim` in front when the widths differ.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .detect import StateDict, buffer_value, scale_and_out_channels
from .upsample import DySample, is_pow2, unsupported_scale

SAMPLE_MODS: tuple[str, ...] = ("conv", "pixelshuffledirect", "pixelshuffle", "nearest+conv", "dysample")


class UniUpsample(nn.Sequential):
    """conv / pixelshuffledirect / pixelshuffle / nearest+conv / dysample head (scale 1 is always one conv).

    `keep_own_meta`: loading replaces the checkpoint's MetaUpsample by this model's own (and supplies it when the
    checkpoint has none), as the load_state_dict overrides of MoSRv2 and ESCRealM do.
    """

    def __init__(self, upsample: str, scale: int = 2, in_dim: int = 64, out_dim: int = 3, mid_dim: int = 64,
                 group: int = 4, *, version: int = 2, keep_own_meta: bool = False) -> None:
        if upsample not in SAMPLE_MODS:
            raise ValueError(f"unknown upsampler {upsample!r}; choose one of {SAMPLE_MODS}")
        m: list[nn.Module] = []
        if scale == 1 or upsample == "conv":
            m.append(nn.Conv2d(in_dim, out_dim, 3, 1, 1))
        elif upsample == "pixelshuffledirect":
            m += [nn.Conv2d(in_dim, out_dim * scale**2, 3, 1, 1), nn.PixelShuffle(scale)]
        elif upsample == "pixelshuffle":
            m += [nn.Conv2d(in_dim, mid_dim, 3, 1, 1), nn.LeakyReLU(inplace=True)]
            if is_pow2(scale):
                for _ in range(int(math.log2(scale))):
                    m += [nn.Conv2d(mid_dim, 4 * mid_dim, 3, 1, 1), nn.PixelShuffle(2)]
            elif scale == 3:
                m += [nn.Conv2d(mid_dim, 9 * mid_dim, 3, 1, 1), nn.PixelShuffle(3)]
            else:
                raise unsupported_scale(scale)
            m.append(nn.Conv2d(mid_dim, out_dim, 3, 1, 1))
        elif upsample == "nearest+conv":
            if is_pow2(scale):
                for _ in range(int(math.log2(scale))):
                    m += [nn.Conv2d(in_dim, in_dim, 3, 1, 1), nn.Upsample(scale_factor=2), nn.LeakyReLU(0.2, True)]
            elif scale == 3:
                m += [nn.Conv2d(in_dim, in_dim, 3, 1, 1), nn.Upsample(scale_factor=3), nn.LeakyReLU(0.2, True)]
            else:
                raise unsupported_scale(scale)
            m += [nn.Conv2d(in_dim, in_dim, 3, 1, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(in_dim, out_dim, 3, 1, 1)]
        else:  # dysample
            dys_dim = in_dim
            if version >= 2 and mid_dim != in_dim:
                m += [nn.Conv2d(in_dim, mid_dim, 3, 1, 1), nn.LeakyReLU(inplace=True)]
                dys_dim = mid_dim
            m.append(DySample(dys_dim, out_dim, scale, group))
        super().__init__(*m)
        self.keep_own_meta = keep_own_meta
        record = [version, SAMPLE_MODS.index(upsample), scale, in_dim, out_dim, mid_dim, group]
        self.register_buffer("MetaUpsample", torch.tensor([v % 256 for v in record], dtype=torch.uint8))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if self.keep_own_meta:  # load_state_dict hands every module the same private copy of the caller's dict
            meta: torch.Tensor = self.MetaUpsample  # type: ignore[assignment]
            state_dict[prefix + "MetaUpsample"] = meta.clone()
        super()._load_from_state_dict(state_dict, prefix, *args)


def uniupsample_radius(upsample: str, scale: int) -> int:
    """Receptive-field radius of the head in its input pixels: one 3x3 for conv / pixelshuffledirect; for the
    staged heads a 3x3 before and after every stage at growing resolution (< 3 in all); DySample's 2 px are a
    heuristic bound on its learned offsets."""
    if scale == 1 or upsample in ("conv", "pixelshuffledirect"):
        return 1
    return 3


def dysample_groups_ok(channels: int, group: int) -> bool:
    """umzi's/spandrel's DySample refuses channels <= group (neosr's and ESC's only fewer)."""
    return channels > group and channels % group == 0


def read_uniupsample(sd: StateDict, prefix: str, in_dim: int) -> list[dict[str, Any]]:
    """Candidate UniUpsample kwargs {upsample, scale, out_dim, mid_dim} for the layers under `prefix` (e.g.
    "to_img."), best first. A readable MetaUpsample record decides (the candidate says `record: True`); without
    one (meta tensors) the shapes give the layout, and DySample's `mid_dim` is its input width. nearest+conv x2 and
    x3 have the same layers: both are returned, x2 first."""
    meta = sd.get(prefix + "MetaUpsample")
    if meta is not None and meta.numel() == 7 and buffer_value(meta[0]) is not None:
        _, idx, scale, _, out_dim, mid_dim, _ = (int(v) for v in meta.tolist())
        if idx < len(SAMPLE_MODS):
            return [{"upsample": SAMPLE_MODS[idx], "scale": scale, "out_dim": out_dim, "mid_dim": mid_dim,
                     "record": True}]
    convs: dict[int, tuple[int, ...]] = {}
    for k, v in sd.items():
        rest = k[len(prefix):] if k.startswith(prefix) else None
        if rest is not None and rest.count(".") == 1 and rest.endswith(".weight") and rest.split(".")[0].isdigit():
            convs[int(rest.split(".")[0])] = tuple(v.shape)
    dys = next((k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix) and k.endswith(".offset.weight")),
               None)
    if dys is not None:
        off = tuple(sd[f"{prefix}{dys}.offset.weight"].shape)
        group_scale2 = off[0] // 2
        out_dim = int(sd[f"{prefix}{dys}.end_conv.weight"].shape[0])
        mid = int(off[1])
        found = []
        for group in (4, 3, 2, 1, 8):
            s = math.isqrt(group_scale2 // group) if group_scale2 % group == 0 else 0
            if s >= 1 and group * s * s == group_scale2:
                found.append({"upsample": "dysample", "scale": s, "out_dim": out_dim, "mid_dim": mid, "group": group})
        return found
    order = [convs[i] for i in sorted(convs)]
    if not order:
        return []
    if len(order) == 1:
        n = order[0][0]
        hits: list[dict[str, Any]] = []
        ps = scale_and_out_channels(n)
        if ps is not None and ps[0] > 1:
            hits.append({"upsample": "pixelshuffledirect", "scale": ps[0], "out_dim": ps[1]})
        hits.append({"upsample": "conv", "scale": 1, "out_dim": n})
        return hits
    first = order[0]
    if len(order) >= 3 and order[1][1] == first[0] and order[1][0] in (4 * first[0], 9 * first[0]):
        s = 3 if order[1][0] == 9 * first[0] else 2 ** (len(order) - 2)
        return [{"upsample": "pixelshuffle", "scale": s, "out_dim": order[-1][0], "mid_dim": first[0]}]
    if len(order) >= 3 and all(c[:2] == (in_dim, in_dim) for c in order[:-1]):
        n = len(order) - 2
        out = [{"upsample": "nearest+conv", "scale": 2**n, "out_dim": order[-1][0]}]
        if n == 1:
            out.append({"upsample": "nearest+conv", "scale": 3, "out_dim": order[-1][0]})
        return out
    return []
