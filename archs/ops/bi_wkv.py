"""Bidirectional WKV (Vision-RWKV / Restore-RWKV): global attention over a token sequence with a linear decay.

For each batch b and channel c, over the T tokens of k, v (B, T, C), with w, u (C,):

    y_t = [sum_{i != t} exp(-(|t-i| - 1) w + k_i) v_i + exp(u + k_t) v_t]
          / [sum_{i != t} exp(-(|t-i| - 1) w + k_i)     + exp(u + k_t)]

w and u are used as given: Restore-RWKV passes spatial_decay / T and spatial_first / T (no exp, no sign change), and
w may be negative (then far tokens weigh more). This is the intended formula of upstream's CUDA extension and the
convention of the golden files; upstream's own forward kernel deviates from it (see
bench/bi_wkv_upstream_check.md), and its 1e-6 denominator epsilon is left out, as in the goldens.

The sums are split into an exclusive prefix (i < t) and suffix (i > t); each obeys a one-step recurrence
(S_{t+1} = e^{-w} S_t + e^{k_t} v_t), so the whole map costs O(T). Everything is evaluated in log space (a running
maximum), since the logits reach |w| T + |k|, far beyond float32's exp range.

`bi_wkv` runs the compiled kernel (csrc/bi_wkv) for CUDA tensors when it built, else `bi_wkv_reference`.
"""

from __future__ import annotations

import torch

from . import _build

_build.register("bi_wkv", ["bi_wkv/bi_wkv.cpp", "bi_wkv/bi_wkv_kernel.cu"])

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if k.ndim != 3 or v.shape != k.shape:
        raise ValueError(f"bi_wkv: k and v must both be (B, T, C), got {tuple(k.shape)} and {tuple(v.shape)}")
    c = k.shape[2]
    if w.shape != (c,) or u.shape != (c,):
        raise ValueError(f"bi_wkv: w and u must be ({c},), got {tuple(w.shape)} and {tuple(u.shape)}")


def _math_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _empty(dtype: torch.dtype) -> float:
    """Log of an empty sum: exp() of it is 0, and unlike -inf it keeps logcumsumexp's gradient free of NaN."""
    return torch.finfo(dtype).min / 4


def _exclusive_logcumsumexp(x: torch.Tensor) -> torch.Tensor:
    """log sum_{i<t} exp(x_i) along dim 1; `_empty` where the sum is empty."""
    empty = torch.full_like(x[:, :1], _empty(x.dtype))
    return torch.cat([empty, torch.logcumsumexp(x, dim=1)[:, :-1]], dim=1)


def _exclusive_suffix(x: torch.Tensor) -> torch.Tensor:
    """log sum_{i>t} exp(x_i) along dim 1."""
    return _exclusive_logcumsumexp(x.flip(1)).flip(1)


def bi_wkv_reference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """O(T) vectorised reference in float64 (float32 on MPS); returns the promoted dtype of k and v.

    The prefix is exp(-t w) * sum_{i<t} exp(k_i + (i+1) w) v_i and the suffix exp(t w) * sum_{i>t} exp(k_i - (i-1) w)
    v_i: exclusive log-cumulative-sums of per-token logits. y is a weighted mean of v, so v is first shifted to be
    >= 1 per (b, c) (its log is then finite) and the shift is added back. Differentiable (float64 autograd), so
    training can run through it where the kernel cannot.
    """
    _check(w, u, k, v)
    out_dtype = torch.promote_types(k.dtype, v.dtype)
    dt = _math_dtype(k.device)
    B, T, C = k.shape
    if T == 0:
        return torch.empty(B, T, C, dtype=out_dtype, device=k.device)
    w_, u_, k_, v_ = (x.to(dt) for x in (w, u, k, v))
    shift = v_.detach().amin(dim=1, keepdim=True) - 1
    log_v = torch.log(v_ - shift)
    t = torch.arange(T, device=k.device, dtype=dt).view(1, T, 1)
    tw = t * w_
    past = k_ + (t + 1) * w_
    future = k_ - (t - 1) * w_
    here = u_ + k_

    den_p = _exclusive_logcumsumexp(past) - tw
    num_p = _exclusive_logcumsumexp(past + log_v) - tw
    den_f = _exclusive_suffix(future) + tw
    num_f = _exclusive_suffix(future + log_v) + tw
    top = torch.maximum(torch.maximum(den_p, den_f), here)  # `here` is finite, so top is too
    num = torch.exp(num_p - top) + torch.exp(num_f - top) + (v_ - shift) * torch.exp(here - top)
    den = torch.exp(den_p - top) + torch.exp(den_f - top) + torch.exp(here - top)
    return (num / den + shift).to(out_dtype)


def bi_wkv_reference_quadratic(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The formula as a (T x T) softmax per (b, c), in float64: O(B C T^2) memory, for checks at small T."""
    _check(w, u, k, v)
    dt = _math_dtype(k.device)
    T = k.shape[1]
    w_, u_, k_, v_ = (x.to(dt) for x in (w, u, k, v))
    pos = torch.arange(T, device=k.device)
    dist = (pos.view(T, 1) - pos.view(1, T)).abs().to(dt)  # [t, i]
    logits = -(dist - 1).view(1, 1, T, T) * w_.view(1, -1, 1, 1) + k_.transpose(1, 2).unsqueeze(2)  # (B, C, t, i)
    eye = torch.eye(T, dtype=torch.bool, device=k.device)
    logits = torch.where(eye, (u_.view(1, -1, 1) + k_.transpose(1, 2)).unsqueeze(3), logits)
    y = torch.einsum("bcti,bci->btc", torch.softmax(logits, dim=-1), v_.transpose(1, 2))
    return y.to(torch.promote_types(k.dtype, v.dtype))


def bi_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bi-WKV of k, v (B, T, C) with decay w and bonus u (C,): compiled kernel on CUDA, else the reference.

    The kernel is forward-only: when autograd needs a graph through any input, the reference runs instead.
    Returns the promoted dtype of k and v (the kernel accumulates in float32 for half inputs).
    """
    _check(w, u, k, v)
    dtype = torch.promote_types(k.dtype, v.dtype)
    wants_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (w, u, k, v))
    if k.is_cuda and dtype in _KERNEL_DTYPES and not wants_grad:
        module = _build.load("bi_wkv")
        if module is not None:
            return module.forward(w.float().contiguous(), u.float().contiguous(), k.to(dtype).contiguous(),
                                  v.to(dtype).contiguous())
    return bi_wkv_reference(w, u, k, v)


__all__ = ["bi_wkv", "bi_wkv_reference", "bi_wkv_reference_quadratic"]
