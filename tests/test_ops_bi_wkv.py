"""The bidirectional WKV op (archs/ops/bi_wkv.py, csrc/bi_wkv): reference vs naive loops, the kernel's chunked
algorithm emulated on the CPU, the dispatcher, and (on a GPU) the compiled kernel vs the reference."""

from __future__ import annotations

import math

import pytest
import torch

from archs.ops import _build
from archs.ops.bi_wkv import bi_wkv, bi_wkv_reference, bi_wkv_reference_quadratic


def naive(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The formula term by term with Python floats (max-subtracted softmax)."""
    B, T, C = k.shape
    w, u, k, v = (x.double() for x in (w, u, k, v))
    y = torch.zeros(B, T, C, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            for t in range(T):
                logits = [float(u[c] + k[b, t, c]) if i == t else float(-(abs(t - i) - 1) * w[c] + k[b, i, c])
                          for i in range(T)]
                top = max(logits)
                e = [math.exp(x - top) for x in logits]
                y[b, t, c] = sum(a * float(v[b, i, c]) for i, a in enumerate(e)) / sum(e)
    return y


def inputs(B: int, T: int, C: int, *, scale: float = 1.0, seed: int = 0,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Restore-RWKV-like inputs: w, u = randn * scale / T (either sign), k ~ 3 randn, v ~ randn."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, generator=g) * scale / max(T, 1)
    u = torch.randn(C, generator=g) * scale / max(T, 1)
    k = 3 * torch.randn(B, T, C, generator=g)
    v = torch.randn(B, T, C, generator=g)
    return w, u, k.to(dtype), v.to(dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 3), (2, 5, 3), (1, 17, 2), (2, 40, 1)])
@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_reference_matches_naive(shape: tuple[int, int, int], scale: float) -> None:
    w, u, k, v = inputs(*shape, scale=scale)
    want = naive(w, u, k, v)
    assert (bi_wkv_reference(w, u, k, v).double() - want).abs().max() < 1e-5  # float32 output
    assert (bi_wkv_reference(w, u, k.double(), v.double()) - want).abs().max() < 1e-12
    assert (bi_wkv_reference_quadratic(w, u, k.double(), v.double()) - want).abs().max() < 1e-12


def test_reference_large_logits_and_negative_decay() -> None:
    """Logits far beyond float32 exp range (|w| T ~ 200, |k| ~ 90) and w < 0 (far tokens weigh more)."""
    B, T, C = 2, 300, 4
    w, u, k, v = inputs(B, T, C, scale=200.0, seed=3)
    w[0] = -abs(w[0])
    k = k * 30
    got = bi_wkv_reference(w, u, k.double(), v.double())
    assert torch.isfinite(got).all()
    assert (got - bi_wkv_reference_quadratic(w, u, k.double(), v.double())).abs().max() < 1e-9


def test_reference_is_a_convex_combination() -> None:
    """y is a weighted mean of v: constant v gives that constant; y stays within [min v, max v] per (b, c)."""
    w, u, k, v = inputs(2, 50, 3, scale=10.0, seed=4)
    y = bi_wkv_reference(w, u, k.double(), torch.full_like(v, 2.5).double())
    assert torch.allclose(y, torch.full_like(y, 2.5), atol=1e-12)
    y = bi_wkv_reference(w, u, k.double(), v.double())
    lo, hi = v.double().amin(1, keepdim=True), v.double().amax(1, keepdim=True)
    assert (y <= hi + 1e-12).all() and (y >= lo - 1e-12).all()


def test_reference_dtypes_and_empty() -> None:
    w, u, k, v = inputs(1, 9, 3)
    assert bi_wkv_reference(w, u, k.half(), v.half()).dtype == torch.float16
    assert bi_wkv_reference(w, u, k.bfloat16(), v.bfloat16()).dtype == torch.bfloat16
    assert bi_wkv_reference(w, u, k, v.double()).dtype == torch.float64
    assert bi_wkv_reference(w, u, k[:, :0], v[:, :0]).shape == (1, 0, 3)


def test_reference_gradients() -> None:
    """float64 autograd through the reference (training path) agrees with finite differences, incl. v = 0, v < 0."""
    w, u, k, v = (x.double() for x in inputs(2, 6, 3, scale=5.0, seed=5))
    v[0, 2, 1] = 0.0
    args = tuple(x.clone().requires_grad_() for x in (w, u, k, v))
    assert torch.autograd.gradcheck(bi_wkv_reference, args)


def test_shape_errors() -> None:
    w, u, k, v = inputs(1, 4, 3)
    with pytest.raises(ValueError, match="B, T, C"):
        bi_wkv(w, u, k[0], v[0])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        bi_wkv(w[:2], u, k, v)


def test_dispatcher_falls_back_on_cpu() -> None:
    w, u, k, v = inputs(2, 33, 5)
    assert torch.equal(bi_wkv(w, u, k, v), bi_wkv_reference(w, u, k, v))
    k.requires_grad_()
    y = bi_wkv(w, u, k, v)
    y.sum().backward()
    assert k.grad is not None and torch.isfinite(k.grad).all()


# ------------------------------------------------------------------------- the kernel's algorithm, on the CPU


_EMPTY = -1e30
Sum = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (num, den, log-scale), as the kernel's struct Sum


def _push(s: Sum, shift: torch.Tensor, logit: torch.Tensor, val: torch.Tensor) -> Sum:
    num, den, p = s
    old = p + shift
    top = torch.maximum(old, logit)
    a, b = torch.exp(old - top), torch.exp(logit - top)
    return num * a + val * b, den * a + b, top


def _merge(s: Sum, shift: torch.Tensor, t: Sum) -> Sum:
    old = s[2] + shift
    top = torch.maximum(old, t[2])
    a, b = torch.exp(old - top), torch.exp(t[2] - top)
    return s[0] * a + t[0] * b, s[1] * a + t[1] * b, top


def _chunk_length(B: int, T: int, C: int) -> int:
    want = max(1, -(-(1 << 17) // (B * C)))
    return min(max(-(-T // want), math.ceil(math.sqrt(T)), 32), T)


def kernel_emulation(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     L: int | None = None) -> torch.Tensor:
    """csrc/bi_wkv/bi_wkv_kernel.cu step by step in float32, vectorised over (b, c): chunk sums, chunk scan,
    per-chunk suffix sweep (stored as ratio, log-den) and prefix sweep. Checks the anchors and chunk bookkeeping."""
    B, T, C = k.shape
    L = L or _chunk_length(B, T, C)
    n = -(-T // L)
    k, v = k.float(), v.float()
    decay = -w.float().view(1, C)
    empty: Sum = (torch.zeros(B, C), torch.zeros(B, C), torch.full((B, C), _EMPTY))
    bounds = [(j * L, min(T, (j + 1) * L)) for j in range(n)]
    sums_f: list[Sum] = []
    sums_b: list[Sum] = []
    for t0, t1 in bounds:  # 1. chunk_summary
        f, r = empty, empty
        for t in range(t0, t1):
            f = _push(f, decay, k[:, t], v[:, t])
        for t in range(t1 - 1, t0 - 1, -1):
            r = _push(r, decay, k[:, t], v[:, t])
        sums_f.append(f)
        sums_b.append(r)
    in_f, in_b = [empty] * n, [empty] * n
    carry = empty
    for j in range(n):  # 2. chunk_scan, prefix: left to right
        in_f[j] = carry
        carry = _merge(carry, decay * (bounds[j][1] - bounds[j][0]), sums_f[j])
    carry = empty
    for j in reversed(range(n)):  # 2. chunk_scan, suffix: right to left
        in_b[j] = carry
        carry = _merge(carry, decay * (bounds[j][1] - bounds[j][0]), sums_b[j])
    y = torch.empty(B, T, C)
    bonus = u.float().view(1, C)
    for j, (t0, t1) in enumerate(bounds):  # 3. chunk_output
        ratio, log_den = {}, {}
        s = in_b[j]
        for t in range(t1 - 1, t0 - 1, -1):
            some = s[1] > 0
            ratio[t] = torch.where(some, s[0] / s[1].clamp_min(1e-30), 0.0)
            log_den[t] = torch.where(some, s[2] + torch.log(s[1].clamp_min(1e-30)), _EMPTY)
            s = _push(s, decay, k[:, t], v[:, t])
        p = in_f[j]
        for t in range(t0, t1):
            here = bonus + k[:, t]
            top = torch.maximum(torch.maximum(p[2], log_den[t]), here)
            ep, es, eh = torch.exp(p[2] - top), torch.exp(log_den[t] - top), torch.exp(here - top)
            y[:, t] = (p[0] * ep + ratio[t] * es + v[:, t] * eh) / (p[1] * ep + es + eh)
            p = _push(p, decay, k[:, t], v[:, t])
    return y


@pytest.mark.parametrize(("T", "L"), [(1, None), (5, None), (40, 7), (40, 40), (41, 8), (64, 1), (100, 33)])
def test_kernel_algorithm_emulated(T: int, L: int | None) -> None:
    w, u, k, v = inputs(2, T, 3, scale=40.0, seed=T)
    w[1] = -abs(w[1])
    got = kernel_emulation(w, u, k, v, L)
    want = bi_wkv_reference(w, u, k.double(), v.double())
    assert torch.isfinite(got).all()
    assert (got.double() - want).abs().max() < 2e-5


def test_chunk_length_choice() -> None:
    assert _chunk_length(1, 1, 48) == 1
    assert _chunk_length(1, 31, 48) == 31
    assert _chunk_length(1, 65536, 48) == 256  # sqrt(T) bound: 256 chunks of 256
    assert _chunk_length(1, 1920 * 1080, 48) == 1440  # ~sqrt(T): 1440 chunks, 69k threads
    assert _chunk_length(16, 32768, 384) == 1490  # many (b, c): 22 chunks suffice


# ------------------------------------------------------------------------------------------------------------ CUDA


# float32 accumulation over up to 65k tokens; the CPU emulation of the kernel's arithmetic (exact exp) reaches
# 1.8e-5 at T = 65543 and 2.7e-5 with log-scales of ~450, and --use_fast_math's __expf adds a little.
FP32_TOL = 1e-4
CUDA_SHAPES = [(1, 1, 1), (1, 2, 3), (2, 7, 5), (3, 33, 37), (1, 1000, 48), (2, 4099, 19), (1, 65536 + 7, 3),
               (2, 16384, 96)]


@pytest.mark.cuda
def test_cuda_kernel_builds() -> None:
    assert _build.load("bi_wkv") is not None, _build.status()


@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_cuda_fp32_matches_reference(shape: tuple[int, int, int], scale: float) -> None:
    w, u, k, v = (x.cuda() for x in inputs(*shape, scale=scale, seed=sum(shape)))
    w[: shape[2] // 2] *= -1
    got = bi_wkv(w, u, k, v)
    want = bi_wkv_reference(w, u, k, v)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert rel(got, want) < FP32_TOL, rel(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 5), (3, 33, 37), (2, 4099, 19)], ids=str)
def test_cuda_half_matches_reference(dtype: torch.dtype, shape: tuple[int, int, int]) -> None:
    w, u, k, v = (x.cuda() for x in inputs(*shape, scale=20.0, seed=7, dtype=dtype))
    got = bi_wkv(w, u, k, v)
    want = bi_wkv_reference(w, u, k, v)  # same half inputs, float64 math
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert rel(got, want) < (2e-3 if dtype == torch.float16 else 1.6e-2), rel(got, want)


@pytest.mark.cuda
def test_cuda_large_logits_and_noncontiguous() -> None:
    w, u, k, v = (x.cuda() for x in inputs(2, 3000, 8, scale=300.0, seed=11))
    k = (k * 25).transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous (B, T, C) view
    w[::2] *= -1
    assert not k.is_contiguous()
    got = bi_wkv(w, u, k, v)
    assert torch.isfinite(got).all()
    assert rel(got, bi_wkv_reference(w, u, k, v)) < 3 * FP32_TOL  # log-scales up to ~450: float32 ulp 3e-5


@pytest.mark.cuda
def test_cuda_side_stream_and_grad_fallback() -> None:
    w, u, k, v = (x.cuda() for x in inputs(2, 500, 16, seed=12))
    want = bi_wkv_reference(w, u, k, v)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = bi_wkv(w, u, k, v)
    stream.synchronize()
    assert rel(got, want) < FP32_TOL
    k.requires_grad_()
    y = bi_wkv(w, u, k, v)  # autograd wanted: the differentiable reference runs
    assert y.grad_fn is not None
