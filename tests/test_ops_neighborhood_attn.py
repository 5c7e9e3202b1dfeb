"""archs.ops.neighborhood_attn: the PyTorch reference against a loop transcription of NATTEN 0.17's CPU kernels,
and (on a GPU) the compiled kernels against the reference."""

from __future__ import annotations

import itertools
import math
from types import ModuleType

import pytest
import torch

from archs.ops import _build
from archs.ops.neighborhood_attn import (
    na2d,
    na2d_av,
    na2d_av_reference,
    na2d_qk,
    na2d_qk_reference,
    na2d_reference,
    window_indices,
)
from tests.util import rel_l2

# ---------------------------------------------------------------------------------------------------------------------
# naive NATTEN: natten/cpu/naive/natten_cpu_commons.h (v0.17.5), written out as NATTEN states it, case by case


def _natten_window_start(index: int, length: int, kernel: int, dilation: int) -> int:
    nb = kernel // 2
    dilation_idx = index % dilation
    index_pdp = index // dilation
    length_pdp = (length + dilation - 1) // dilation
    num_padded = length_pdp * dilation - length
    length_pdp -= 1 if dilation_idx >= dilation - num_padded else 0
    start_idx = max(index_pdp - nb, 0) + (index_pdp + nb >= length_pdp) * (length_pdp - index_pdp - nb - 1)
    return start_idx * dilation + dilation_idx


def _natten_pb_start(index: int, length: int, kernel: int, dilation: int) -> int:
    nb = kernel // 2
    if dilation <= 1:
        return nb + (index < nb) * (nb - index) + (index + nb >= length) * (length - index - 1 - nb)
    if index - nb * dilation < 0:
        return kernel - 1 - index // dilation
    if index + nb * dilation >= length:
        return (length - index - 1) // dilation
    return nb


def _naive_qk(q: torch.Tensor, k: torch.Tensor, kernel: tuple[int, int], dil: tuple[int, int],
              rpb: torch.Tensor | None) -> torch.Tensor:
    """Float64 loops over pixels and neighbours, vectorised only over (B, heads, D)."""
    q, k = q.double(), k.double()
    b, heads, h, w, _ = q.shape
    out = torch.empty(b, heads, h, w, kernel[0] * kernel[1], dtype=torch.float64)
    for i, j in itertools.product(range(h), range(w)):
        ni, nj = _natten_window_start(i, h, kernel[0], dil[0]), _natten_window_start(j, w, kernel[1], dil[1])
        pi, pj = _natten_pb_start(i, h, kernel[0], dil[0]), _natten_pb_start(j, w, kernel[1], dil[1])
        for a, c in itertools.product(range(kernel[0]), range(kernel[1])):
            v = (q[:, :, i, j] * k[:, :, ni + a * dil[0], nj + c * dil[1]]).sum(-1)
            if rpb is not None:
                v = v + rpb.double()[:, pi + a, pj + c]
            out[:, :, i, j, a * kernel[1] + c] = v
    return out


def _naive_av(attn: torch.Tensor, v: torch.Tensor, kernel: tuple[int, int], dil: tuple[int, int]) -> torch.Tensor:
    attn, v = attn.double(), v.double()
    _, _, h, w, _ = v.shape
    out = torch.zeros_like(v)
    for i, j in itertools.product(range(h), range(w)):
        ni, nj = _natten_window_start(i, h, kernel[0], dil[0]), _natten_window_start(j, w, kernel[1], dil[1])
        for a, c in itertools.product(range(kernel[0]), range(kernel[1])):
            out[:, :, i, j] += attn[:, :, i, j, a * kernel[1] + c, None] * v[:, :, ni + a * dil[0], nj + c * dil[1]]
    return out


def _inputs(shape: tuple[int, ...], kernel: tuple[int, int], dtype: torch.dtype = torch.float64,
            device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(shape[1], 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, rpb))


# (B, heads, H, W, D), kernel, dilation: odd sizes, sizes equal to kernel x dilation, per-axis parameters
CASES = [
    ((1, 2, 7, 9, 4), (3, 3), (1, 1)),
    ((2, 1, 6, 11, 3), (3, 3), (2, 2)),
    ((1, 2, 5, 8, 5), (5, 5), (1, 1)),
    ((1, 1, 13, 10, 2), (3, 5), (4, 2)),
    ((1, 1, 15, 9, 3), (5, 3), (3, 3)),
    ((1, 3, 9, 7, 1), (7, 3), (1, 2)),
]


# ---------------------------------------------------------------------------------------------------------------------
# reference (CPU)


def test_window_rules_match_natten() -> None:
    for length, kernel, dilation in itertools.product(range(3, 30), (3, 5, 7, 9), (1, 2, 3, 4)):
        if length < kernel * dilation:
            continue
        keys, bias = window_indices(length, kernel, dilation)
        for i in range(length):
            start = _natten_window_start(i, length, kernel, dilation)
            pb = _natten_pb_start(i, length, kernel, dilation)
            assert keys[i].tolist() == [start + n * dilation for n in range(kernel)], (length, kernel, dilation, i)
            assert bias[i].tolist() == [pb + n for n in range(kernel)], (length, kernel, dilation, i)
            assert i in keys[i].tolist()  # a query always sees itself


@pytest.mark.parametrize(("shape", "kernel", "dil"), CASES)
def test_reference_matches_naive(shape: tuple[int, ...], kernel: tuple[int, int], dil: tuple[int, int]) -> None:
    q, k, v, rpb = _inputs(shape, kernel)
    want = _naive_qk(q, k, kernel, dil, rpb)
    assert rel_l2(na2d_qk_reference(q, k, kernel, dil, rpb), want) < 1e-12
    assert rel_l2(na2d_qk_reference(q, k, kernel, dil), _naive_qk(q, k, kernel, dil, None)) < 1e-12
    attn = want.softmax(-1)
    assert rel_l2(na2d_av_reference(attn, v, kernel, dil), _naive_av(attn, v, kernel, dil)) < 1e-12
    scale = 0.37
    fused = _naive_av(_naive_qk(q * scale, k, kernel, dil, rpb).softmax(-1), v, kernel, dil)
    assert rel_l2(na2d_reference(q, k, v, kernel, dil, rpb, scale), fused) < 1e-12
    # the default scale is head_dim ** -0.5, as NATTEN's
    fused_default = _naive_av(_naive_qk(q * shape[-1] ** -0.5, k, kernel, dil, None).softmax(-1), v, kernel, dil)
    assert rel_l2(na2d_reference(q, k, v, kernel, dil), fused_default) < 1e-12


def test_reference_low_precision() -> None:
    """float32 and half inputs are computed in float32 and returned in their own dtype."""
    shape, kernel, dil = (2, 3, 10, 12, 8), (3, 3), (2, 1)
    q, k, v, rpb = _inputs(shape, kernel)
    want = na2d_reference(q, k, v, kernel, dil, rpb)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2), (torch.float16, 3e-3)):
        got = na2d_reference(q.to(dtype), k.to(dtype), v.to(dtype), kernel, dil, rpb.to(dtype))
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert rel_l2(got, want) < tol, dtype


def test_int_and_pair_arguments_agree() -> None:
    q, k, v, rpb = _inputs((1, 2, 8, 8, 4), (3, 3))
    assert torch.equal(na2d_qk_reference(q, k, 3, 2, rpb), na2d_qk_reference(q, k, (3, 3), (2, 2), rpb))
    assert torch.equal(na2d_reference(q, k, v, 3, 1, rpb, 0.5), na2d_reference(q, k, v, [3, 3], [1, 1], rpb, 0.5))


def test_argument_errors() -> None:
    q, k, v, rpb = _inputs((1, 2, 8, 8, 4), (3, 3))
    with pytest.raises(ValueError, match="smaller than kernel size x dilation"):
        na2d_qk(q, k, 3, 3)  # 8 < 3 x 3
    with pytest.raises(ValueError, match="odd"):
        na2d_qk(q, k, 4)
    with pytest.raises(ValueError, match="odd"):
        na2d_av(q[..., :1].expand(1, 2, 8, 8, 1), v, 1)
    with pytest.raises(ValueError, match="rpb must have shape"):
        na2d_qk(q, k, 5, 1, rpb)
    with pytest.raises(ValueError, match=r"\(B, heads, H, W, D\)"):
        na2d(q[0], k[0], v[0], 3)
    with pytest.raises(ValueError, match="attn shape"):
        na2d_av(torch.zeros(1, 2, 8, 8, 8, dtype=q.dtype), v, 3)


def test_dispatcher_falls_back_on_cpu() -> None:
    q, k, v, rpb = _inputs((1, 3, 9, 10, 6), (3, 3), dtype=torch.float32)
    assert torch.equal(na2d_qk(q, k, 3, 2, rpb), na2d_qk_reference(q, k, 3, 2, rpb))
    attn = na2d_qk(q, k, 3, 2, rpb).softmax(-1)
    assert torch.equal(na2d_av(attn, v, 3, 2), na2d_av_reference(attn, v, 3, 2))
    assert torch.equal(na2d(q, k, v, 3, 2, rpb, 0.3), na2d_reference(q, k, v, 3, 2, rpb, 0.3))
    if not torch.cuda.is_available():
        assert _build.load("neighborhood_attn") is None  # never raises, just no kernel


def test_reference_is_differentiable() -> None:
    """Training (or any autograd use) goes through the reference, whose gradient is the plain torch one."""
    q, k, v, rpb = (t.requires_grad_() for t in _inputs((1, 3, 6, 7, 2), (3, 3), seed=1))
    assert torch.autograd.gradcheck(lambda q, k, v, r: na2d(q, k, v, 3, (2, 1), r, 0.7), (q, k, v, rpb),
                                     fast_mode=True)


# ---------------------------------------------------------------------------------------------------------------------
# compiled kernels (H200 run)

CUDA_SHAPES = [
    # (B, heads, H, W, D), kernel, dilation; fused: D in (8, 16, 24, 32, 48, 64) takes the row kernel, others the team
    ((2, 3, 33, 47, 16), (3, 3), (1, 1)),
    ((1, 2, 31, 29, 16), (3, 3), (2, 2)),
    ((2, 1, 23, 37, 32), (5, 5), (1, 1)),
    ((1, 4, 18, 25, 3), (5, 3), (3, 2)),  # D not a power of two, per-axis windows (team kernel)
    ((1, 1, 9, 9, 1), (3, 3), (3, 3)),  # H = W = kernel x dilation, D = 1
    ((1, 2, 40, 21, 48), (7, 7), (1, 3)),  # row kernel, 16x16 tiles
    ((3, 1, 17, 64, 100), (3, 5), (1, 1)),  # team kernel: four slots, ragged
    ((1, 1, 12, 13, 256), (3, 3), (1, 2)),  # the largest fused head dim
    ((1, 1, 11, 10, 300), (3, 3), (1, 1)),  # past it: qk + softmax + av kernels
    ((4, 6, 64, 96, 16), (5, 5), (1, 1)),  # many blocks
]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _cuda_module() -> ModuleType:
    mod = _build.load("neighborhood_attn")
    assert mod is not None, f"neighborhood_attn did not build: {_build._ERRORS.get('neighborhood_attn')}"
    return mod


@pytest.mark.cuda
def test_kernel_builds() -> None:
    _cuda_module()
    st = {s.name: s for s in _build.status()}["neighborhood_attn"]
    assert st.backend == "cuda", st


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("shape", "kernel", "dil"), CUDA_SHAPES)
def test_cuda_matches_reference(shape: tuple[int, ...], kernel: tuple[int, int], dil: tuple[int, int],
                                dtype: torch.dtype) -> None:
    _cuda_module()
    q, k, v, rpb = _inputs(shape, kernel, dtype=dtype, device="cuda", seed=sum(shape))
    tol = TOL[dtype]
    scale = shape[-1] ** -0.5
    with torch.no_grad():
        # logits, with and without bias; the reference sees the same rounded inputs, in float64
        for bias in (rpb, None):
            got = na2d_qk(q, k, kernel, dil, bias)
            want = na2d_qk_reference(q.double(), k.double(), kernel, dil, None if bias is None else bias.double())
            assert got.dtype == dtype and torch.isfinite(got).all()
            assert rel_l2(got, want) < tol, ("qk", bias is None)
        attn = want.softmax(-1).to(dtype)
        got = na2d_av(attn, v, kernel, dil)
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert rel_l2(got, na2d_av_reference(attn.double(), v.double(), kernel, dil)) < tol, "av"
        for bias in (rpb, None):
            got = na2d(q, k, v, kernel, dil, bias, scale)
            want = na2d_reference(q.double(), k.double(), v.double(), kernel, dil,
                                  None if bias is None else bias.double(), scale)
            assert got.dtype == dtype and torch.isfinite(got).all()
            assert rel_l2(got, want) < tol, ("fused", bias is None)


@pytest.mark.cuda
def test_cuda_float64_and_non_contiguous_inputs() -> None:
    _cuda_module()
    q, k, v, rpb = _inputs((2, 6, 21, 19, 12), (3, 3), dtype=torch.float64, device="cuda")
    with torch.no_grad():
        assert rel_l2(na2d(q, k, v, 3, 2, rpb), na2d_reference(q, k, v, 3, 2, rpb)) < 1e-12
        # a head slice of a (B, heads, ...) tensor and a channels-first permute, as the model passes them
        qs, ks, vs = (t.float()[:, 2:4] for t in (q, k, v))
        assert not qs.is_contiguous()
        got = na2d(qs, ks, vs, 3, 1, rpb[2:4].float(), 0.25)
        assert rel_l2(got, na2d_reference(qs.double(), ks.double(), vs.double(), 3, 1, rpb[2:4], 0.25)) < 1e-5
        perm = q.float().permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2)
        assert rel_l2(na2d_qk(perm, perm, 5), na2d_qk_reference(perm.double(), perm.double(), 5)) < 1e-5


@pytest.mark.cuda
def test_cuda_autograd_falls_back_to_reference() -> None:
    q, k, v, rpb = (t.requires_grad_() for t in _inputs((1, 3, 8, 9, 4), (3, 3), dtype=torch.float32,
                                                         device="cuda"))
    out = na2d(q, k, v, 3, 1, rpb)
    out.square().sum().backward()
    assert q.grad is not None and rpb.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.cuda
def test_cuda_large_batch_no_nan() -> None:
    """A 1080p-tile-sized call (the family's first level): finite, and equal to the reference on a few rows."""
    _cuda_module()
    q, k, v, rpb = _inputs((1, 3, 256, 384, 16), (3, 3), dtype=torch.float16, device="cuda", seed=3)
    with torch.no_grad():
        out = na2d(q, k, v, 3, 2, rpb)
        assert torch.isfinite(out).all()
        want = na2d_reference(q.double(), k.double(), v.double(), 3, 2, rpb.double())
    assert rel_l2(out, want) < TOL[torch.float16]
    assert math.isfinite(float(out.float().abs().max()))


# the fused row kernel (one thread per query, D in registers): every head dim it is built for, on odd sizes, dilations
# 1-5, kernels 3/5/7, several heads and batches, and tile shapes 32x8 (wide), 16x16 and 8x32 (tall)
ROW_HEAD_DIMS = (8, 16, 24, 32, 48, 64)
ROW_GEOMETRIES = [
    # (B, heads, H, W), kernel, dilation
    ((2, 3, 37, 53), (3, 3), (1, 1)),
    ((2, 3, 37, 53), (5, 5), (2, 3)),
    ((1, 3, 29, 31), (7, 7), (3, 2)),
    ((2, 1, 21, 64), (7, 5), (3, 1)),  # H = kernel x dilation
    ((1, 2, 96, 7), (3, 3), (5, 2)),  # tall and thin: 8x32 tiles
    ((1, 1, 300, 9), (3, 3), (7, 3)),  # W = kernel x dilation, 16x16 tiles, H past a few tiles
    ((1, 1, 40, 33), (5, 3), (1, 2)),  # 16x16 tiles
]


def _fused_vs_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor | None,
                        kernel: tuple[int, int], dil: tuple[int, int], scale: float, tol: float) -> torch.Tensor:
    with torch.no_grad():
        got = na2d(q, k, v, kernel, dil, rpb, scale)
        want = na2d_reference(q.double(), k.double(), v.double(), kernel, dil, None if rpb is None else rpb.double(),
                              scale)
    assert got.dtype == q.dtype and got.shape == q.shape and torch.isfinite(got).all()
    err = rel_l2(got, want)
    assert err < tol, (tuple(q.shape), kernel, dil, rpb is None, err)
    return got


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", ROW_HEAD_DIMS)
def test_cuda_row_kernel_matches_reference(head_dim: int, dtype: torch.dtype) -> None:
    _cuda_module()
    for n, (bhw, kernel, dil) in enumerate(ROW_GEOMETRIES):
        shape = (*bhw, head_dim)
        q, k, v, rpb = _inputs(shape, kernel, dtype=dtype, device="cuda", seed=head_dim + n)
        for bias in (rpb, None):
            _fused_vs_reference(q, k, v, bias, kernel, dil, 0.7 * head_dim ** -0.5, TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", ROW_HEAD_DIMS)
def test_cuda_av_row_kernel_matches_reference(head_dim: int, dtype: torch.dtype) -> None:
    """attn x v through av_row_kernel (these head dims, aligned) on the row-kernel geometries; the same data one
    element into a buffer (off a 16-byte boundary) goes through av_kernel and must agree."""
    _cuda_module()
    for n, (bhw, kernel, dil) in enumerate(ROW_GEOMETRIES):
        shape = (*bhw, head_dim)
        q, k, v, _ = _inputs(shape, kernel, dtype=dtype, device="cuda", seed=100 + head_dim + n)
        with torch.no_grad():
            attn = na2d_qk_reference(q.double(), k.double(), kernel, dil, None).softmax(-1).to(dtype)
            got = na2d_av(attn, v, kernel, dil)
            want = na2d_av_reference(attn.double(), v.double(), kernel, dil)
            assert got.dtype == dtype and torch.isfinite(got).all()
            assert rel_l2(got, want) < TOL[dtype], (shape, kernel, dil)
            if n == 0:
                buf = torch.empty(v.numel() + 1, device="cuda", dtype=dtype)
                shifted = buf[1:].view(v.shape)
                shifted.copy_(v)
                assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
                assert rel_l2(na2d_av(attn, shifted, kernel, dil), want) < TOL[dtype]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_row_kernel_large_logits(dtype: torch.dtype) -> None:
    """Logits of a few hundred: the online softmax must rescale instead of overflowing."""
    _cuda_module()
    shape, kernel = (1, 2, 20, 27, 16), (5, 5)
    q, k, v, rpb = _inputs(shape, kernel, dtype=dtype, device="cuda", seed=7)
    # (near one-hot weights: float32 rounding of logits in the hundreds moves them by more than the usual bound)
    _fused_vs_reference(q * 4, k * 4, v, rpb * 50, kernel, (1, 1), 1.0, max(TOL[dtype], 1e-4))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_fused_team_kernel_fallbacks(dtype: torch.dtype) -> None:
    """What the row kernel does not take goes to the team kernel: other head dims (12, 40: no instance; 4, 6),
    inputs that start off a 16-byte boundary; float64 is covered by test_cuda_float64_and_non_contiguous_inputs."""
    _cuda_module()
    for n, head_dim in enumerate((4, 6, 12, 40)):
        shape, kernel, dil = (2, 3, 19, 23, head_dim), (5, 3), (2, 3)
        q, k, v, rpb = _inputs(shape, kernel, dtype=dtype, device="cuda", seed=n)
        for bias in (rpb, None):
            _fused_vs_reference(q, k, v, bias, kernel, dil, head_dim ** -0.5, TOL[dtype])
    # the same data through both kernels: aligned (row kernel) and one element into a buffer (team kernel)
    shape, kernel, dil = (2, 3, 37, 53, 16), (5, 5), (2, 1)
    q, k, v, rpb = _inputs(shape, kernel, dtype=dtype, device="cuda", seed=11)

    def shifted(t: torch.Tensor) -> torch.Tensor:
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        out = buf[1:].view(t.shape)
        out.copy_(t)
        assert out.is_contiguous() and out.data_ptr() % 16 != 0
        return out

    row = _fused_vs_reference(q, k, v, rpb, kernel, dil, 0.25, TOL[dtype])
    team = _fused_vs_reference(shifted(q), shifted(k), shifted(v), rpb, kernel, dil, 0.25, TOL[dtype])
    assert rel_l2(row, team) < 2 * TOL[dtype]
