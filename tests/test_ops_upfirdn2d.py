"""The StyleGAN2 ops (archs/ops/upfirdn2d.py, csrc/upfirdn2d): references vs naive float64 loops, the CUDA kernel's
tap-skipping index math emulated on the CPU, the dispatcher, and (on a GPU) the compiled kernels vs the references."""

from __future__ import annotations

import math

import pytest
import torch

from archs.ops import _build
from archs.ops.upfirdn2d import fused_leaky_relu, fused_leaky_relu_reference, upfirdn2d, upfirdn2d_reference

Config = tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], tuple[int, int]]

# (up (x, y), down (x, y), pad (x0, x1, y0, y1), kernel (kh, kw))
CONFIGS: list[Config] = [
    ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),  # StyleGAN2 ToRGB skip upsample
    ((1, 1), (1, 1), (1, 1, 1, 1), (4, 4)),  # blur after the stride-2 transposed conv
    ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)),  # FIR downsample
    ((1, 1), (1, 1), (2, 2, 2, 2), (4, 4)),  # blur before a stride-2 3x3 conv
    ((2, 3), (1, 2), (1, -1, 3, 0), (3, 5)),  # separate x/y factors, a crop, a non-square kernel
    ((4, 4), (3, 3), (-2, 1, -2, 1), (5, 5)),  # negative pads crop the zero-inserted signal
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),  # identity
    ((3, 1), (2, 1), (0, 4, 2, -1), (2, 3)),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def naive_upfirdn2d(x: torch.Tensor, k: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                    pad: tuple[int, int, int, int]) -> torch.Tensor:
    """The definition sample by sample in float64: padded signal P[r] = zero-inserted[r - pad0] (a negative pad0
    crops), out[o] = sum_t P[o * down + t] * k[K - 1 - t] (a true convolution)."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    kh, kw = k.shape
    out_h = (h * uy + py0 + py1 - kh) // dy + 1
    out_w = (w * ux + px0 + px1 - kw) // dx + 1
    xs, ks = x.double().tolist(), k.double().tolist()

    def sample(b: int, ch: int, r: int, s: int) -> float:
        u, v = r - py0, s - px0
        if not (0 <= u < h * uy and 0 <= v < w * ux) or u % uy or v % ux:
            return 0.0
        return xs[b][ch][u // uy][v // ux]

    out = torch.zeros(n, c, out_h, out_w, dtype=torch.float64)
    for b in range(n):
        for ch in range(c):
            for oy in range(out_h):
                for ox in range(out_w):
                    out[b, ch, oy, ox] = sum(sample(b, ch, oy * dy + i, ox * dx + j) * ks[kh - 1 - i][kw - 1 - j]
                                             for i in range(kh) for j in range(kw))
    return out


def emulate_kernel(x: torch.Tensor, k: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                   pad: tuple[int, int, int, int]) -> torch.Tensor:
    """csrc/upfirdn2d/upfirdn2d_kernel.cu's loops with C integer semantics: the reversed taps, the first useful tap
    (floor_mod), steps of `up`, truncating division (exact there) and the bounds skips."""
    (ux, uy), (dx, dy), (px0, _, py0, _) = up, down, pad
    h, w = x.shape[-2:]
    kh, kw = k.shape
    flipped = k.flatten().flip(0).tolist()  # flipped[i] = taps[n - 1 - i]
    xs = x.double().tolist()
    ref = upfirdn2d_reference(x.double(), k.double(), up, down, pad)
    out = torch.zeros_like(ref)

    def c_div(a: int, b: int) -> int:  # C's truncation toward zero
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b > 0) else -q

    def c_mod(a: int, b: int) -> int:
        return a - c_div(a, b) * b

    def floor_mod(a: int, m: int) -> int:
        r = c_mod(a, m)
        return r + m if r < 0 else r

    for b in range(x.shape[0]):
        for ch in range(x.shape[1]):
            for oy in range(ref.shape[2]):
                for ox in range(ref.shape[3]):
                    uy0, ux0 = oy * dy - py0, ox * dx - px0
                    acc = 0.0
                    for ky in range(floor_mod(-uy0, uy), kh, uy):
                        iy = c_div(uy0 + ky, uy)
                        assert (uy0 + ky) % uy == 0
                        if iy < 0 or iy >= h:
                            continue
                        for kx in range(floor_mod(-ux0, ux), kw, ux):
                            ix = c_div(ux0 + kx, ux)
                            if ix < 0 or ix >= w:
                                continue
                            acc += xs[b][ch][iy][ix] * flipped[ky * kw + kx]
                    out[b, ch, oy, ox] = acc
    return out


def _inputs(shape: tuple[int, ...], ksize: tuple[int, int], seed: int = 0,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    k = torch.rand(ksize, generator=g) + 0.1  # asymmetric, so a missing flip shows
    return x, k


def _fits(shape: tuple[int, ...], cfg: Config) -> bool:
    (ux, uy), _, (px0, px1, py0, py1), (kh, kw) = cfg
    return shape[-2] * uy + py0 + py1 >= kh and shape[-1] * ux + px0 + px1 >= kw


# ------------------------------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 4, 3), (1, 1, 9, 2)])
def test_reference_matches_naive(cfg: Config, shape: tuple[int, int, int, int]) -> None:
    up, down, pad, ks = cfg
    if not _fits(shape, cfg):
        pytest.skip("padded signal shorter than the kernel")
    x, k = _inputs(shape, ks, seed=sum(shape))
    want = naive_upfirdn2d(x, k, up, down, pad)
    got64 = upfirdn2d_reference(x.double(), k.double(), up, down, pad)
    assert got64.shape == want.shape
    assert (got64 - want).abs().max() < 1e-12
    got32 = upfirdn2d_reference(x, k, up, down, pad)
    assert got32.dtype == torch.float32 and rel(got32, want) < 1e-6


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_kernel_index_math_matches_reference(cfg: Config) -> None:
    up, down, pad, ks = cfg
    x, k = _inputs((1, 2, 6, 5), ks, seed=3)
    want = upfirdn2d_reference(x.double(), k.double(), up, down, pad)
    assert (emulate_kernel(x, k, up, down, pad) - want).abs().max() < 1e-12


def test_dispatcher_argument_forms() -> None:
    """int / (x, y) factors; (p0, p1) pads both axes as BasicSR, four values are (x0, x1, y0, y1)."""
    x, k = _inputs((1, 2, 6, 9), (4, 4), seed=1)
    a = upfirdn2d(x, k, up=2, down=1, pad=(2, 1))
    assert torch.equal(a, upfirdn2d_reference(x, k, (2, 2), (1, 1), (2, 1, 2, 1)))
    assert a.shape == (1, 2, 12, 18)
    b = upfirdn2d(x, k, up=(2, 1), down=(1, 2), pad=(2, 1, 0, 3))
    assert torch.equal(b, upfirdn2d_reference(x, k, (2, 1), (1, 2), (2, 1, 0, 3)))
    assert b.shape == (1, 2, (6 + 3 - 4) // 2 + 1, 9 * 2 + 3 - 4 + 1)


def test_dispatcher_on_cpu_is_the_reference_and_keeps_autograd() -> None:
    x, k = _inputs((2, 3, 7, 5), (4, 4), seed=2)
    x.requires_grad_(True)
    y = upfirdn2d(x, k, up=2, pad=(2, 1))
    assert torch.equal(y, upfirdn2d_reference(x, k, (2, 2), (1, 1), (2, 1, 2, 1)))
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    bf = upfirdn2d(x.detach().bfloat16(), k, down=2, pad=(1, 1))
    assert bf.dtype == torch.bfloat16 and bf.shape == (2, 3, 3, 2)


def test_upfirdn2d_rejects_bad_arguments() -> None:
    x, k = _inputs((1, 1, 4, 4), (4, 4))
    with pytest.raises(ValueError, match="pad"):
        upfirdn2d(x, k, pad=(1, 1, 1))
    with pytest.raises(ValueError, match="up"):
        upfirdn2d(x, k, up=0)
    with pytest.raises(ValueError, match="shorter than the kernel"):
        upfirdn2d(x, k, pad=(-1, 0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        upfirdn2d(x[0], k)


# ------------------------------------------------------------------------------------------------ fused leaky ReLU


def naive_fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, slope: float, scale: float) -> torch.Tensor:
    flat = x.double().reshape(x.shape[0], x.shape[1], -1) if x.ndim >= 2 else x.double().reshape(1, 1, -1)
    out = torch.empty_like(flat)
    for b in range(flat.shape[0]):
        for c in range(flat.shape[1]):
            for i in range(flat.shape[2]):
                v = float(flat[b, c, i]) + (float(bias[c]) if bias is not None else 0.0)
                out[b, c, i] = (v if v > 0 else v * slope) * scale
    return out.reshape(x.shape)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 7), (2, 4, 3, 5), (1, 2, 1, 1, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_reference_matches_naive(shape: tuple[int, ...], with_bias: bool) -> None:
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=g)
    bias = torch.randn(shape[1], generator=g) if with_bias else None
    want = naive_fused_leaky_relu(x, bias, 0.2, math.sqrt(2))
    assert (fused_leaky_relu_reference(x.double(), bias, 0.2, math.sqrt(2)) - want).abs().max() < 1e-12
    got = fused_leaky_relu(x, bias)  # defaults: slope 0.2, scale sqrt(2)
    assert got.dtype == torch.float32 and rel(got, want) < 1e-6
    other = fused_leaky_relu(x, bias, negative_slope=0.05, scale=3.0)
    assert rel(other, naive_fused_leaky_relu(x, bias, 0.05, 3.0)) < 1e-6


def test_fused_leaky_relu_dtype_and_errors() -> None:
    x = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    bias = torch.randn(3)  # float32 bias with a bf16 input: the output keeps the input dtype
    assert fused_leaky_relu(x, bias).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bias"):
        fused_leaky_relu(x, torch.randn(4))


# ------------------------------------------------------------------------------------------------------------ CUDA


def _cuda_inputs(shape: tuple[int, ...], ks: tuple[int, int], seed: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x, k = _inputs(shape, ks, seed=seed, dtype=dtype)
    return x.cuda(), k.cuda()


@pytest.mark.cuda
def test_cuda_kernel_builds() -> None:
    assert _build.load("upfirdn2d") is not None, _build.status()


CUDA_SHAPES = [(2, 3, 37, 53), (1, 5, 1, 67), (3, 2, 130, 9), (1, 64, 128, 128)]


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
def test_cuda_upfirdn2d_fp32_matches_reference(cfg: Config, shape: tuple[int, int, int, int]) -> None:
    up, down, pad, ks = cfg
    if not _fits(shape, cfg):
        pytest.skip("padded signal shorter than the kernel")
    x, k = _cuda_inputs(shape, ks, seed=sum(shape), dtype=torch.float32)
    with torch.no_grad():
        got = upfirdn2d(x, k, up=up, down=down, pad=pad)
    want = upfirdn2d_reference(x.double(), k.double(), up, down, pad)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert not got.isnan().any()
    assert rel(got, want) < 1e-6
    assert (got.double() - want).abs().max() < 1e-5 * want.abs().max().clamp_min(1)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cfg", CONFIGS[:5], ids=str)
def test_cuda_upfirdn2d_half_matches_reference(dtype: torch.dtype, cfg: Config) -> None:
    up, down, pad, ks = cfg
    x, k = _cuda_inputs((2, 7, 45, 71), ks, seed=5, dtype=dtype)
    with torch.no_grad():
        got = upfirdn2d(x, k, up=up, down=down, pad=pad)
    want = upfirdn2d_reference(x.double(), k.double(), up, down, pad)  # exact math on the rounded input
    assert got.dtype == dtype and not got.isnan().any()
    # float32 accumulation, one rounding to the output: half an ulp per value
    assert rel(got, want) < (1e-3 if dtype == torch.float16 else 8e-3)


@pytest.mark.cuda
def test_cuda_upfirdn2d_layouts_planes_and_streams() -> None:
    k = torch.rand(4, 4) + 0.1  # on the CPU: the front moves it
    x = torch.randn(2, 8, 33, 40, device="cuda")
    with torch.no_grad():
        want = upfirdn2d_reference(x.double(), k.double(), (2, 2), (1, 1), (2, 1, 2, 1))
        cl = upfirdn2d(x.to(memory_format=torch.channels_last), k, up=2, pad=(2, 1))
        sliced = upfirdn2d(torch.randn(2, 8, 33, 80, device="cuda")[..., ::2], k, up=2, pad=(2, 1))
        assert rel(cl, want) < 1e-6 and sliced.shape == want.shape and not sliced.isnan().any()
        many = torch.randn(1, 70_001, 3, 5, device="cuda")  # more planes than one grid's z extent
        assert rel(upfirdn2d(many, k, pad=(2, 1)), upfirdn2d_reference(many.double(), k.double(), (1, 1), (1, 1),
                                                                        (2, 1, 2, 1))) < 1e-6
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            side = upfirdn2d(x, k, up=2, pad=(2, 1))
        torch.cuda.current_stream().wait_stream(stream)
        assert rel(side, want) < 1e-6


@pytest.mark.cuda
def test_cuda_grad_falls_back_to_reference() -> None:
    x = torch.randn(1, 3, 9, 11, device="cuda", requires_grad=True)
    k = torch.rand(4, 4, device="cuda")
    y = upfirdn2d(x, k, up=2, pad=(2, 1))
    assert y.grad_fn is not None  # the reference ran, autograd intact
    y.sum().backward()
    assert x.grad is not None
    b = torch.zeros(3, device="cuda", requires_grad=True)
    z = fused_leaky_relu(x, b)
    assert z.grad_fn is not None


FUSED_SHAPES = [(5, 3), (2, 7, 33), (2, 5, 37, 53), (70_001, 3), (1, 2, 1, 1_100_003)]  # long rows, many rows


@pytest.mark.cuda
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cuda_fused_leaky_relu_matches_reference(shape: tuple[int, ...], dtype: torch.dtype,
                                                 with_bias: bool) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(dtype).cuda()
    bias = torch.randn(shape[1], generator=g).cuda() if with_bias else None
    with torch.no_grad():
        got = fused_leaky_relu(x, bias, 0.2, math.sqrt(2))
    want = fused_leaky_relu_reference(x.double(), bias, 0.2, math.sqrt(2))
    assert got.dtype == dtype and got.shape == x.shape and not got.isnan().any()
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert rel(got, want) < tol


@pytest.mark.cuda
def test_cuda_fused_leaky_relu_half_bias_and_noncontiguous() -> None:
    x = torch.randn(2, 6, 17, 19, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    bias = torch.randn(6, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        got = fused_leaky_relu(x, bias)
    assert rel(got, fused_leaky_relu_reference(x.double(), bias.double())) < 1e-3
