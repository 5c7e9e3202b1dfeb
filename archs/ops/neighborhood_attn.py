"""2-D neighbourhood attention with NATTEN 0.17 semantics: `na2d_qk`, `na2d_av` and a fused `na2d`.

Layout as NATTEN 0.17's unfused ops: query, key, value (B, heads, H, W, D); attention weights (B, heads, H, W, kh*kw),
neighbours in row-major order. Our fused `na2d` takes the same heads-first layout (NATTEN's own fused `na2d` takes
(B, H, W, heads, D)); it is softmax(na2d_qk(q * scale, k, rpb)) followed by na2d_av.

Window rules (NATTEN `natten_cpu_commons.h`: get_window_start / get_pb_start), per axis, for position i of an axis
of length L, odd kernel k and dilation d: i belongs to the sub-grid of positions with residue r = i % d, which holds
Lr = ceil((L - r) / d) positions; on it i sits at ip = i // d. The window is k consecutive sub-grid positions,
centred on ip but shifted to stay inside: s = clamp(ip - k//2, 0, Lr - k), so keys are (s + n) * d + r for n < k
(never zero-padded). Relative position bias rpb (heads, 2*kh-1, 2*kw-1) is read at (s + n) - ip + k - 1 per axis,
i.e. the key's sub-grid offset from the query plus k - 1. NATTEN needs L >= k * d on both axes (so Lr >= k) and
kernel > 1; we also need odd kernels (NATTEN requires them with rpb, and the family only uses odd ones).

Backends: the compiled kernel (csrc/neighborhood_attn) for CUDA tensors when the build succeeded and no gradient is
needed; otherwise the PyTorch reference below (float32 math for half inputs, float64 stays float64).
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import _build

__all__ = ["na2d", "na2d_av", "na2d_av_reference", "na2d_qk", "na2d_qk_reference", "na2d_reference",
           "window_indices"]

_build.register("neighborhood_attn", ["neighborhood_attn/neighborhood_attn.cpp",
                                      "neighborhood_attn/neighborhood_attn.cu"])

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# the fused kernel's fallback (team) variant keeps D / 32 values per thread in registers; larger D goes unfused. Common
# head dims (8, 16, 24, 32, 48, 64 in float32/16, bfloat16) take its one-thread-per-query variant instead.
_FUSED_MAX_HEAD_DIM = 256


def _pair(v: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (t[0], t[1])


def _check(shape: torch.Size, kernel: tuple[int, int], dilation: tuple[int, int], what: str) -> None:
    if len(shape) != 5:
        raise ValueError(f"{what} must be (B, heads, H, W, D), got shape {tuple(shape)}")
    for k, d, n, axis in zip(kernel, dilation, shape[2:4], ("H", "W"), strict=True):
        if k < 3 or k % 2 == 0:
            raise ValueError(f"kernel size must be odd and > 1, got {k}")
        if d < 1:
            raise ValueError(f"dilation must be >= 1, got {d}")
        if n < k * d:
            raise ValueError(f"{axis}={n} is smaller than kernel size x dilation = {k}x{d} (NATTEN needs >= {k * d})")


def _check_rpb(rpb: torch.Tensor, heads: int, kernel: tuple[int, int]) -> None:
    want = (heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1)
    if tuple(rpb.shape) != want:
        raise ValueError(f"rpb must have shape {want}, got {tuple(rpb.shape)}")


def window_indices(length: int, kernel: int, dilation: int,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, bias_rows), both (length, kernel) int64: each position's neighbour indices along one axis and the
    matching rpb indices along that axis, by NATTEN's rules (see the module docstring)."""
    i = torch.arange(length, device=device)
    r, ip = i % dilation, i // dilation
    lr = (length - r + dilation - 1) // dilation
    start = torch.minimum((ip - kernel // 2).clamp(min=0), lr - kernel)
    n = torch.arange(kernel, device=device)
    keys = (start[:, None] + n) * dilation + r[:, None]
    bias_rows = start[:, None] + n - ip[:, None] + kernel - 1
    return keys, bias_rows


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def na2d_qk_reference(query: torch.Tensor, key: torch.Tensor, kernel_size: int | tuple[int, int],
                      dilation: int | tuple[int, int] = 1, rpb: torch.Tensor | None = None) -> torch.Tensor:
    """attn[b, h, i, j, a*kw + c] = q[b, h, i, j] . k[b, h, rows[i, a], cols[j, c]] + rpb[h, brow[i, a], bcol[j, c]]."""
    kernel, dil = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    _check(query.shape, kernel, dil, "query")
    if key.shape != query.shape:
        raise ValueError(f"key shape {tuple(key.shape)} differs from query shape {tuple(query.shape)}")
    b, heads, h, w, _ = query.shape
    ct = _compute_dtype(query)
    q, k = query.to(ct), key.to(ct)
    rows, brows = window_indices(h, kernel[0], dil[0], query.device)
    cols, bcols = window_indices(w, kernel[1], dil[1], query.device)
    attn = q.new_empty(b, heads, h, w, kernel[0] * kernel[1])
    # one (B, heads, H, W, D) gather per neighbour keeps memory at a few copies of k, whatever the kernel size
    for a in range(kernel[0]):
        k_rows = k.index_select(2, rows[:, a])
        for c in range(kernel[1]):
            attn[..., a * kernel[1] + c] = (q * k_rows.index_select(3, cols[:, c])).sum(-1)
    if rpb is not None:
        _check_rpb(rpb, heads, kernel)
        # NATTEN casts the bias to the key's dtype before adding it
        bias = rpb.to(key.dtype).to(ct)[:, brows[:, None, :, None], bcols[None, :, None, :]]  # (heads, H, W, kh, kw)
        attn = attn + bias.reshape(heads, h, w, -1)
    return attn.to(query.dtype)


def na2d_av_reference(attn: torch.Tensor, value: torch.Tensor, kernel_size: int | tuple[int, int],
                      dilation: int | tuple[int, int] = 1) -> torch.Tensor:
    """out[b, h, i, j] = sum over (a, c) of attn[b, h, i, j, a*kw + c] * v[b, h, rows[i, a], cols[j, c]]."""
    kernel, dil = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    _check(value.shape, kernel, dil, "value")
    if tuple(attn.shape) != (*value.shape[:4], kernel[0] * kernel[1]):
        raise ValueError(f"attn shape {tuple(attn.shape)} does not fit value {tuple(value.shape)} "
                         f"and kernel {kernel}")
    _, _, h, w, _ = value.shape
    ct = _compute_dtype(value)
    a_, v = attn.to(ct), value.to(ct)
    rows, _ = window_indices(h, kernel[0], dil[0], value.device)
    cols, _ = window_indices(w, kernel[1], dil[1], value.device)
    out = torch.zeros_like(v)
    for a in range(kernel[0]):
        v_rows = v.index_select(2, rows[:, a])
        for c in range(kernel[1]):
            n = a * kernel[1] + c
            out += a_[..., n : n + 1] * v_rows.index_select(3, cols[:, c])
    return out.to(value.dtype)


def na2d_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: int | tuple[int, int],
                   dilation: int | tuple[int, int] = 1, rpb: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """softmax over the neighbours of (q * scale) . k + rpb, applied to v; rounded to the input dtype at the end."""
    if value.shape != query.shape:
        raise ValueError(f"value shape {tuple(value.shape)} differs from query shape {tuple(query.shape)}")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    ct = _compute_dtype(query)
    attn = na2d_qk_reference(query.to(ct) * scale, key.to(ct), kernel_size, dilation, rpb)
    return na2d_av_reference(attn.softmax(-1), value.to(ct), kernel_size, dilation).to(query.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# dispatchers


def _kernel_module(*tensors: torch.Tensor | None) -> ModuleType | None:
    ts = [t for t in tensors if t is not None]
    if not all(t.is_cuda for t in ts) or ts[0].dtype not in _KERNEL_DTYPES:
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return None  # forward-only kernels: autograd goes through the reference
    return _build.load("neighborhood_attn")


def na2d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size: int | tuple[int, int],
            dilation: int | tuple[int, int] = 1, rpb: torch.Tensor | None = None) -> torch.Tensor:
    """NATTEN 0.17 `na2d_qk`: (B, heads, H, W, D) x2 -> attention logits (B, heads, H, W, kh*kw), with rpb added."""
    mod = _kernel_module(query, key, rpb)
    if mod is None:
        return na2d_qk_reference(query, key, kernel_size, dilation, rpb)
    kernel, dil = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    _check(query.shape, kernel, dil, "query")
    if rpb is not None:
        _check_rpb(rpb, query.shape[1], kernel)
        rpb = rpb.to(query.dtype).contiguous()
    return mod.qk(query.contiguous(), key.to(query.dtype).contiguous(), rpb, *kernel, *dil)


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: int | tuple[int, int],
            dilation: int | tuple[int, int] = 1) -> torch.Tensor:
    """NATTEN 0.17 `na2d_av`: weights (B, heads, H, W, kh*kw) and values (B, heads, H, W, D) -> (B, heads, H, W, D)."""
    mod = _kernel_module(value, attn)
    if mod is None:
        return na2d_av_reference(attn, value, kernel_size, dilation)
    kernel, dil = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    _check(value.shape, kernel, dil, "value")
    return mod.av(attn.to(value.dtype).contiguous(), value.contiguous(), *kernel, *dil)


def na2d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: int | tuple[int, int],
         dilation: int | tuple[int, int] = 1, rpb: torch.Tensor | None = None,
         scale: float | None = None) -> torch.Tensor:
    """Fused neighbourhood attention, heads-first layout: na2d_av(softmax(na2d_qk(q * scale, k, rpb)), v).

    `scale` defaults to D ** -0.5. On CUDA one kernel does it all (online softmax, float32 accumulation), without
    materialising the attention weights.
    """
    mod = _kernel_module(query, key, value, rpb)
    if mod is None:
        return na2d_reference(query, key, value, kernel_size, dilation, rpb, scale)
    kernel, dil = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    _check(query.shape, kernel, dil, "query")
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError(f"query, key and value shapes differ: {tuple(query.shape)}, {tuple(key.shape)}, "
                         f"{tuple(value.shape)}")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if rpb is not None:
        _check_rpb(rpb, query.shape[1], kernel)
        rpb = rpb.to(query.dtype).contiguous()
    q, k, v = query.contiguous(), key.to(query.dtype).contiguous(), value.to(query.dtype).contiguous()
    if query.shape[-1] > _FUSED_MAX_HEAD_DIM:
        attn = mod.qk((q * scale).contiguous(), k, rpb, *kernel, *dil)
        return mod.av(attn.float().softmax(-1).to(q.dtype), v, *kernel, *dil)
    return mod.fused(q, k, v, rpb, float(scale), *kernel, *dil)
