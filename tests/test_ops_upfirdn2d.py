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


# The tiled kernels of csrc/upfirdn2d/upfirdn2d_kernel.cu: the host's choice (launch_tiled_any / launch_tiled) and
# the device loops (tile origin, input window, vector-aligned first column, fill, per-row first tap, the fir kernel's
# sliding strip), with the capacity bounds and "only filled samples are read" asserted.
TILED_THREADS, MAX_TILED_TAPS, SMEM_BUDGET = 256, 8, 48 * 1024


def _round_up(a: int, m: int) -> int:
    return (a + m - 1) // m * m


def _tile_stride(tile_w: int, down_x: int, kw: int, up_x: int, vec: int) -> int:
    return _round_up(((tile_w - 1) * down_x + kw - 1) // up_x + 1 + vec - 1, vec)


def _tile_rows(tile_h: int, down_y: int, kh: int, up_y: int) -> int:
    return ((tile_h - 1) * down_y + kh - 1) // up_y + 1


def tiled_plan(out_h: int, out_w: int, ks: tuple[int, int], up: tuple[int, int], down: tuple[int, int],
               vec: int) -> tuple[str, int, int, int, int, int] | None:
    """(kind, tile_w, tile_h, rows_per_thread, sw, sh) as the host picks them, None for the fallback kernel."""
    (ux, uy), (dx, dy), (kh, kw) = up, down, ks
    if ux == uy == 1 and kh == kw == 4 and dx == dy and dx in (1, 2):
        bx, m = (64, 16) if dx == 1 else (32, 4 if vec == 1 else 8)  # down 2: taller tiles with vectors
        th = TILED_THREADS // bx * m
        sw, sh = _tile_stride(bx, dx, 4, 1, vec), _tile_rows(th, dx, 4, 1)
        assert sw * sh * 4 <= SMEM_BUDGET  # float tile; 16-bit inputs keep their own type in the vector tile
        return "fir", bx, th, m, sw, sh
    if kh > MAX_TILED_TAPS or kw > MAX_TILED_TAPS:
        return None
    for bx in (64, 32) if dx == 1 and out_w > 32 else (32,):
        by, m = TILED_THREADS // bx, 8
        while m > 1 and by * (m // 2) >= out_h:
            m //= 2
        while m >= 1:
            th = by * m
            sw, sh = _tile_stride(bx, dx, kw, ux, vec), _tile_rows(th, dy, kh, uy)
            if (_round_up(sw * sh, 4) + kh * kw + 2 * th) * 4 <= SMEM_BUDGET:
                return "tiled", bx, th, m, sw, sh
            m //= 2
    return None


def emulate_tiled(x: torch.Tensor, k: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                  pad: tuple[int, int, int, int], vec: int) -> torch.Tensor | None:
    """The tiled kernels sample by sample in float64 (None where the host picks the fallback)."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    kh, kw = k.shape
    out_h, out_w = (h * uy + py0 + py1 - kh) // dy + 1, (w * ux + px0 + px1 - kw) // dx + 1
    plan = tiled_plan(out_h, out_w, (kh, kw), up, down, vec)
    if plan is None:
        return None
    kind, tw, th, rpt, sw, sh = plan
    by = TILED_THREADS // tw
    taps = k.double().flatten().flip(0).reshape(kh, kw).tolist()  # flipped
    xs = x.double().reshape(n * c, h, w).tolist()
    out = [[[None] * out_w for _ in range(out_h)] for _ in range(n * c)]

    for p in range(n * c):
        for oy0 in range(0, out_h, th):
            for ox0 in range(0, out_w, tw):
                ow, oh = min(tw, out_w - ox0), min(th, out_h - oy0)
                if kind == "tiled":
                    ix_lo, ix_hi = -((-(ox0 * dx - px0)) // ux), ((ox0 + ow - 1) * dx - px0 + kw - 1) // ux
                    iy_lo, iy_hi = -((-(oy0 * dy - py0)) // uy), ((oy0 + oh - 1) * dy - py0 + kh - 1) // uy
                    rows = max(0, iy_hi - iy_lo + 1)
                else:
                    ix_lo, ix_hi = ox0 * dx - px0, (ox0 + ow - 1) * dx - px0 + kw - 1
                    iy_lo, rows = oy0 * dy - py0, (oh - 1) * dy + kh
                sx0 = ix_lo if vec == 1 else ix_lo // vec * vec
                cols = _round_up(max(0, ix_hi - sx0 + 1), vec)
                assert 0 <= rows <= sh and 0 <= cols <= sw and sx0 % vec == 0 and sw % vec == 0
                tile: list[list[float | None]] = [[None] * sw for _ in range(sh)]
                if kind == "fir" and vec == 1:  # fill_tile_fir writes the whole capacity, zeros past rows / cols
                    assert sw == tw * dx + 4 - dx and sh == (th - 1) * dy + 4
                    tile = [[0.0] * sw for _ in range(sh)]
                for r in range(rows):
                    for cc in range(0, cols, vec):
                        gy, gx = iy_lo + r, sx0 + cc
                        inside = 0 <= gy < h and 0 <= gx < w
                        assert not inside or gx + vec <= w  # a vector is wholly in or out
                        for e in range(vec):
                            tile[r][cc + e] = xs[p][gy][gx + e] if inside else 0.0
                for tyi in range(by):
                    for txi in range(min(tw, ow)):
                        if kind == "tiled":
                            ox = ox0 + txi
                            uxx = ox * dx - px0
                            kx0 = (-uxx) % ux
                            lx = (uxx + kx0) // ux - sx0  # exact, so C's division agrees
                            for i in range(tyi * rpt, min(oh, (tyi + 1) * rpt)):
                                uyy = (oy0 + i) * dy - py0
                                k0 = (-uyy) % uy
                                assert (uxx + kx0) % ux == 0 and (uyy + k0) % uy == 0
                                ly = (uyy + k0) // uy - iy_lo
                                acc, ky = 0.0, k0
                                while ky < kh:
                                    kx, j = kx0, 0
                                    while kx < kw:
                                        v = tile[ly][lx + j]
                                        assert v is not None and ly < rows and lx + j < cols
                                        acc += v * taps[ky][kx]
                                        kx, j = kx + ux, j + 1
                                    ky, ly = ky + uy, ly + 1
                                assert out[p][oy0 + i][ox] is None
                                out[p][oy0 + i][ox] = acc
                        else:
                            m0 = tyi * rpt
                            n_out = min(rpt, oh - m0)
                            if n_out <= 0:
                                continue
                            col = txi * dx + (ix_lo - sx0)
                            avail = (rpt - 1) * dy + kh if vec == 1 else rows - m0 * dy
                            accs = [0.0] * rpt
                            for r in range((rpt - 1) * dy + kh):
                                if r < avail:
                                    v = [tile[m0 * dy + r][col + kx] for kx in range(kw)]
                                    assert None not in v and col + kw <= (sw if vec == 1 else cols)
                                    assert m0 * dy + r < sh
                                else:
                                    v = [0.0] * kw
                                for m in range(rpt):
                                    ky = r - m * dy
                                    if 0 <= ky < kh:
                                        accs[m] += sum(v[kx] * taps[ky][kx] for kx in range(kw))
                            for m in range(n_out):
                                assert out[p][oy0 + m0 + m][ox0 + txi] is None
                                out[p][oy0 + m0 + m][ox0 + txi] = accs[m]
    assert all(v is not None for plane in out for row in plane for v in row)
    return torch.tensor(out, dtype=torch.float64).reshape(n, c, out_h, out_w)


TILED_CONFIGS: list[Config] = [
    *CONFIGS,
    ((1, 1), (1, 1), (-2, 3, 2, -1), (4, 4)),  # fir kernel, crops and pads
    ((1, 1), (2, 2), (0, -1, -2, 3), (4, 4)),  # fir kernel, down 2
    ((1, 1), (2, 1), (1, 1, 1, 1), (4, 4)),  # down_x != down_y: general
    ((1, 2), (1, 1), (1, 2, 2, 1), (4, 4)),  # up only along y: general
    ((1, 1), (4, 4), (2, 2, -1, 1), (5, 5)),
    ((2, 2), (2, 2), (1, 1, 1, 1), (3, 3)),
    ((1, 1), (1, 1), (3, 4, 4, 3), (8, 8)),  # the largest general filter
    ((1, 1), (1, 1), (5, 6, 6, 5), (12, 12)),  # fallback
]


@pytest.mark.parametrize("cfg", TILED_CONFIGS, ids=str)
def test_tiled_kernel_index_math_matches_reference(cfg: Config) -> None:
    up, down, pad, ks = cfg
    (ux, uy), (dx, dy) = up, down
    # small, then several tiles in each direction (the fir blur tile is 64 x 64 outputs)
    shapes = [(1, 2, 6, 5), (1, 1, max(1, 70 * dy // uy), max(1, 136 * dx // ux))]
    for i, shape in enumerate(shapes):
        if not _fits(shape, cfg):
            continue
        x, k = _inputs(shape, ks, seed=7 + i)
        want = upfirdn2d_reference(x.double(), k.double(), up, down, pad)
        for vec in (1, 4, 8):
            if shape[-1] % vec:
                continue
            got = emulate_tiled(x, k, up, down, pad, vec)
            if got is None:
                assert max(ks) > MAX_TILED_TAPS
                continue
            assert got.shape == want.shape
            assert (got - want).abs().max() < 1e-10


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


# ---------------------------------------------------------------------------------- CUDA: tiled kernels and paths

# (up, down, pad, kernel): the fir kernel (up 1, 4x4, down 1 or 2), the general tiled kernel (up/down 1/2/4, 1x1 to
# 8x8 filters, pads of both signs) and the fallback (12x12)
PATH_CONFIGS: list[Config] = [
    ((1, 1), (1, 1), (1, 1, 1, 1), (4, 4)),  # fir: StyleGAN2 blur
    ((1, 1), (1, 1), (-2, 3, 2, -1), (4, 4)),  # fir: crop and pad
    ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)),  # fir: FIR downsample
    ((1, 1), (2, 2), (0, -1, -2, 3), (4, 4)),  # fir: down 2, crop and pad
    ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),  # tiled: StyleGAN2 FIR upsample
    ((4, 4), (1, 1), (3, -2, -1, 4), (5, 5)),  # tiled: up 4, mixed pads
    ((1, 1), (4, 4), (2, 2, -1, 1), (5, 5)),  # tiled: down 4
    ((2, 1), (1, 2), (1, 2, 0, -1), (3, 3)),  # tiled: per-axis factors
    ((2, 2), (2, 2), (1, 1, 1, 1), (3, 3)),
    ((1, 1), (2, 1), (1, 1, 1, 1), (4, 4)),  # tiled: 4x4 but down_x != down_y
    ((1, 2), (1, 1), (1, 2, 2, 1), (4, 4)),  # tiled: 4x4 but up along y
    ((1, 1), (1, 1), (1, 1, 2, 1), (4, 3)),  # tiled: non-square
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),  # tiled: identity
    ((1, 1), (1, 1), (3, 4, 4, 3), (8, 8)),  # tiled: largest filter
    ((1, 1), (1, 1), (5, 6, 6, 5), (12, 12)),  # fallback
    ((4, 2), (2, 4), (6, 5, 5, 6), (12, 12)),  # fallback with factors
]
# 1x1, odd, tile boundaries of the fir blur (64 x 64 outputs) and general tiles (32/64 wide), widths that allow
# 16-byte loads (multiples of 8) and widths that do not
PATH_SHAPES = [(1, 1, 1, 1), (1, 2, 7, 13), (2, 3, 33, 65), (1, 1, 64, 64), (1, 1, 65, 129), (1, 2, 63, 31),
               (1, 1, 67, 67), (1, 1, 130, 8)]
HALF_EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # one ulp: twice the rounding bound


def _check_upfirdn2d(x: torch.Tensor, k: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                     pad: tuple[int, int, int, int]) -> None:
    """The kernel vs the float64 reference on the same (rounded) input: float32 accumulation and one rounding."""
    with torch.no_grad():
        got = upfirdn2d(x, k, up=up, down=down, pad=pad)
    want = upfirdn2d_reference(x.double(), k.double(), up, down, pad)
    assert got.dtype == x.dtype and got.shape == want.shape and not got.isnan().any()
    err = (got.double() - want).abs()
    scale = want.abs().max().clamp_min(1)
    if x.dtype == torch.float32:
        assert err.max() <= 1e-5 * scale
    else:
        assert (err <= HALF_EPS[x.dtype] * want.abs() + 1e-5 * scale).all()


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", PATH_CONFIGS, ids=str)
@pytest.mark.parametrize("shape", PATH_SHAPES, ids=str)
def test_cuda_upfirdn2d_paths_match_reference(cfg: Config, shape: tuple[int, int, int, int]) -> None:
    up, down, pad, ks = cfg
    if not _fits(shape, cfg):
        pytest.skip("padded signal shorter than the kernel")
    for i, dtype in enumerate((torch.float32, torch.float16, torch.bfloat16)):
        x, k = _cuda_inputs(shape, ks, seed=sum(shape) + i, dtype=dtype)
        _check_upfirdn2d(x, k, up, down, pad)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_upfirdn2d_large_images(dtype: torch.dtype) -> None:
    """The benchmark's calls at one or two planes: blur 1025 -> 1024, FIR x2 up, FIR x2 down of 1080p."""
    k4 = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k4 = (k4[:, None] * k4[None, :]) / 64
    x = torch.randn(1, 2, 1025, 1025, device="cuda").to(dtype)
    _check_upfirdn2d(x, k4 * 4, (1, 1), (1, 1), (1, 1, 1, 1))
    _check_upfirdn2d(x, torch.rand(4, 4) + 0.1, (1, 1), (1, 1), (2, 1, 1, 2))  # non-separable taps
    x = torch.randn(1, 3, 512, 512, device="cuda").to(dtype)
    _check_upfirdn2d(x, k4 * 4, (2, 2), (1, 1), (2, 1, 2, 1))
    x = torch.randn(1, 1, 1080, 1920, device="cuda").to(dtype)
    _check_upfirdn2d(x, k4, (1, 1), (2, 2), (1, 1, 1, 1))


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", [PATH_CONFIGS[i] for i in (0, 2, 4, 5, 14)], ids=str)
def test_cuda_upfirdn2d_many_and_single_planes(cfg: Config) -> None:
    """70000 planes of 4x4 (more than one grid dimension holds) and a single plane, every path."""
    up, down, pad, ks = cfg
    for shape in ((1, 70_000, 4, 4), (2, 35_000, 4, 4), (1, 1, 4, 4)):
        if not _fits(shape, cfg):
            continue
        x, k = _cuda_inputs(shape, ks, seed=11, dtype=torch.float32)
        _check_upfirdn2d(x, k, up, down, pad)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_upfirdn2d_unaligned_input(dtype: torch.dtype) -> None:
    """A width that allows 16-byte loads but a storage offset that does not: the scalar loads must be chosen."""
    k = torch.rand(4, 4) + 0.1
    base = torch.randn(1 + 2 * 3 * 40 * 64, device="cuda").to(dtype)
    x = base[1:].view(2, 3, 40, 64)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    for up, down, pad in (((1, 1), (1, 1), (1, 1, 1, 1)), ((1, 1), (2, 2), (1, 1, 1, 1)),
                          ((2, 2), (1, 1), (2, 1, 2, 1))):
        _check_upfirdn2d(x, k, up, down, pad)


@pytest.mark.cuda
def test_cuda_upfirdn2d_float64_uses_reference() -> None:
    x = torch.randn(1, 2, 9, 11, device="cuda", dtype=torch.float64)
    k = torch.rand(4, 4, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        got = upfirdn2d(x, k, up=2, pad=(2, 1))
    assert got.dtype == torch.float64
    assert (got - upfirdn2d_reference(x, k, (2, 2), (1, 1), (2, 1, 2, 1))).abs().max() < 1e-12


def _act_float32(x: torch.Tensor, bias: torch.Tensor | None, slope: float, scale: float) -> torch.Tensor:
    """The kernel's arithmetic in PyTorch: float32 x + bias (+0 without one), leaky ReLU, scale, one rounding."""
    v = x.float()
    v = v + (bias.float().reshape(1, -1, *([1] * (x.ndim - 2))) if bias is not None else 0.0)
    v = torch.where(v > 0, v, v * torch.tensor(slope, dtype=torch.float32))
    return (v * torch.tensor(scale, dtype=torch.float32)).to(x.dtype)


# inner = 1 ((B, C) linear outputs), inner < 8 (vectors across rows), odd inners (unaligned rows), 2-D to 5-D, many
# channels, a tensor large enough for several grid-stride rounds
ACT_SHAPES = [(5, 3), (4, 1000), (3, 4, 2), (2, 7, 33), (2, 3, 7, 5), (2, 5, 37, 53), (1, 2, 1, 1, 3),
              (2, 3, 1500, 1001)]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", ACT_SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_cuda_fused_leaky_relu_is_the_float32_formula(shape: tuple[int, ...], with_bias: bool) -> None:
    """Bit-identical to the float32 formula, for every dtype, aligned and misaligned (storage offset) inputs."""
    g = torch.Generator().manual_seed(sum(shape))
    numel = math.prod(shape)
    bias = torch.randn(shape[1], generator=g).cuda() if with_bias else None
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        base = torch.randn(numel + 1, generator=g).to(dtype).cuda()
        for x in (base[:numel].view(shape), base[1:].view(shape)):  # 16-byte aligned, then offset by one element
            for slope, scale in ((0.2, math.sqrt(2)), (0.05, 3.0)):
                with torch.no_grad():
                    got = fused_leaky_relu(x, bias, slope, scale)
                assert got.dtype == dtype and got.shape == x.shape
                assert torch.equal(got, _act_float32(x, bias, slope, scale))


@pytest.mark.cuda
def test_cuda_fused_leaky_relu_one_dim_and_float64() -> None:
    x = torch.randn(1_000_003, device="cuda")
    with torch.no_grad():
        assert torch.equal(fused_leaky_relu(x, None), _act_float32(x, None, 0.2, math.sqrt(2)))
        x64 = torch.randn(3, 5, 7, device="cuda", dtype=torch.float64)
        b = torch.randn(5, device="cuda", dtype=torch.float64)
        got = fused_leaky_relu(x64, b)  # not a kernel dtype: the reference, in float64
    assert got.dtype == torch.float64 and torch.equal(got, fused_leaky_relu_reference(x64, b))
