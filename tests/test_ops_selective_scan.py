"""Selective scan (archs.ops.selective_scan): the chunked PyTorch reference against a naive float64 recurrence,
the dispatcher's CPU fallback, and (on a GPU) the compiled kernel against the reference and, when installed,
mamba_ssm's own kernel."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from archs.ops import _build
from archs.ops.selective_scan import mamba_ssm_kernel, selective_scan, selective_scan_ref
from tests.util import rel_l2

Inputs = dict[str, Any]  # keyword arguments of selective_scan


def _naive(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
           D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
           delta_softplus: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence written out step by step and state by state, in float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    n = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.where(delta <= 20, torch.log1p(torch.exp(delta)), delta)

    def coef(m: torch.Tensor, b: int, d: int, t: int) -> torch.Tensor:  # (N,) for batch b, channel d, step t
        if m.dim() == 2:
            return m[d]
        if m.dim() == 3:
            return m[b, :, t]
        return m[b, d // (dim // m.shape[1]), :, t]

    y = torch.zeros(batch, dim, length, dtype=torch.float64)
    last = torch.zeros(batch, dim, n, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            h = torch.zeros(n, dtype=torch.float64)
            for t in range(length):
                h = torch.exp(delta[b, d, t] * A[d]) * h + delta[b, d, t] * u[b, d, t] * coef(B, b, d, t)
                y[b, d, t] = (h * coef(C, b, d, t)).sum()
            last[b, d] = h
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, last


def _inputs(batch: int, dim: int, length: int, n: int, groups: int | None, *, form: str = "grouped",
            device: str = "cpu", extras: bool = True, seed: int = 0) -> Inputs:
    """Random inputs in the range SS2D produces: delta ~ softplus(N(0, 1) + bias), A = -exp(N(0, 0.5))."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device)

    if form == "grouped":
        bc_shape: tuple[int, ...] = (batch, groups or 1, n, length)
    elif form == "shared":
        bc_shape = (batch, n, length)
    else:  # constant
        bc_shape = (dim, n)
    delta = rnd(batch, dim, length, scale=0.5)
    if not extras:
        # Without softplus the caller passes a step size that is already positive, as Mamba does; a negative one
        # makes the state grow like exp(L) and both sides overflow (inf - inf), which tests nothing.
        delta = torch.nn.functional.softplus(delta)
    return {
        "u": rnd(batch, dim, length), "delta": delta,
        "A": -torch.exp(rnd(dim, n, scale=0.5)), "B": rnd(*bc_shape), "C": rnd(*bc_shape),
        "D": rnd(dim) if extras else None, "z": rnd(batch, dim, length) if extras else None,
        "delta_bias": rnd(dim, scale=0.5) if extras else None, "delta_softplus": extras,
    }


# -- reference (CPU) -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("batch", "dim", "length", "n", "groups", "form"), [
    (2, 8, 37, 4, 2, "grouped"),   # SS2D-like grouping, odd L
    (1, 6, 1, 3, 3, "grouped"),    # one step
    (1, 4, 2, 16, 1, "grouped"),
    (2, 3, 50, 5, None, "shared"),
    (1, 5, 23, 2, None, "constant"),
    (1, 4, 101, 1, 4, "grouped"),  # N = 1, a group per channel
])
@pytest.mark.parametrize("extras", [True, False])
def test_reference_matches_naive_float64(batch: int, dim: int, length: int, n: int, groups: int | None, form: str,
                                         extras: bool) -> None:
    x = _inputs(batch, dim, length, n, groups, form=form, extras=extras)
    want, want_last = _naive(**x)
    got, last = selective_scan_ref(**x, return_last_state=True)
    assert got.dtype == torch.float32 and got.shape == (batch, dim, length)
    assert rel_l2(got, want) < 2e-6
    assert rel_l2(last, want_last) < 2e-6


def test_reference_float64_stays_float64() -> None:
    x: Inputs = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in _inputs(1, 4, 29, 4, 2).items()}
    got = selective_scan_ref(**x)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    want, _ = _naive(**x)
    assert rel_l2(got, want) < 1e-12


def test_reference_mixed_b_c_forms() -> None:
    x = _inputs(2, 6, 19, 3, 3)
    x["B"] = torch.randn(6, 3)  # constant B with grouped C
    want, _ = _naive(**x)
    assert rel_l2(selective_scan_ref(**x), want) < 2e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_half_inputs_return_half(dtype: torch.dtype) -> None:
    x = _inputs(1, 4, 33, 4, 2)
    half: Inputs = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") and isinstance(v, torch.Tensor) else v)
            for k, v in x.items()}
    got = selective_scan_ref(**half)
    assert isinstance(got, torch.Tensor) and got.dtype == dtype
    want, _ = _naive(**half)  # same rounded inputs: only the output rounding differs
    assert rel_l2(got, want) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_reference_long_decay_is_stable() -> None:
    # Large delta * |A| (the state forgets within a step) and tiny ones (it remembers across the whole sequence).
    x = _inputs(1, 4, 400, 4, 1, extras=False)
    x["delta"] = torch.tensor([30.0, 1e-4, 1.0, 5.0])[None, :, None].expand(1, 4, 400).contiguous()
    got = selective_scan_ref(**x)
    want, _ = _naive(**x)
    assert torch.isfinite(got).all() and rel_l2(got, want) < 2e-6


def test_shape_errors() -> None:
    x = _inputs(2, 6, 10, 4, 3)
    with pytest.raises(ValueError, match="G dividing"):
        selective_scan_ref(**{**x, "B": torch.randn(2, 4, 4, 10)})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_ref(**{**x, "A": torch.randn(5, 4)})
    with pytest.raises(ValueError, match="z must"):
        selective_scan_ref(**{**x, "z": torch.randn(2, 6, 9)})
    with pytest.raises(NotImplementedError):
        selective_scan_ref(**{**x, "A": torch.randn(6, 4, dtype=torch.complex64)})


def test_dispatcher_uses_reference_on_cpu() -> None:
    x = _inputs(2, 8, 45, 4, 4)
    got, last = selective_scan(**x, return_last_state=True)
    ref, ref_last = selective_scan_ref(**x, return_last_state=True)
    assert torch.equal(got, ref) and torch.equal(last, ref_last)
    if not torch.cuda.is_available():
        assert _build.load("selective_scan") is None


def test_dispatcher_keeps_autograd_on_cpu() -> None:
    x = _inputs(1, 4, 12, 4, 2)
    u = x["u"]
    assert isinstance(u, torch.Tensor)
    u.requires_grad_(True)
    y = selective_scan(**x)
    assert isinstance(y, torch.Tensor)
    y.sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


# -- compiled kernel (GPU) -------------------------------------------------------------------------------------

def _cuda(x: Inputs, dtype: torch.dtype = torch.float32) -> Inputs:
    out: Inputs = {}
    for k, v in x.items():
        if isinstance(v, torch.Tensor):
            v = v.cuda()
            if k in ("u", "delta", "B", "C", "z"):
                v = v.to(dtype)
        out[k] = v
    return out


@pytest.mark.cuda
def test_kernel_builds() -> None:
    assert _build.load("selective_scan") is not None, _build._ERRORS.get("selective_scan")


KERNEL_SHAPES = [
    # batch, dim, L, N, groups, form
    (1, 1, 1, 1, 1, "grouped"),
    (2, 12, 37, 4, 3, "grouped"),       # odd L, partial warp tiles (4 channels per group)
    (1, 20, 257, 8, 2, "grouped"),      # one step past a 256-step segment; 10 channels per group
    (3, 10, 1000, 20, 2, "grouped"),    # N > 16: two state tiles
    (2, 768, 4096, 16, 4, "grouped"),   # SS2D on a 64x64 tile (embed 96, K = 4)
    (1, 16, 70_001, 16, 4, "grouped"),  # few sequences, long L: split into parallel parts
    (2, 9, 300, 5, None, "shared"),
    (2, 7, 300, 3, None, "constant"),   # one group per channel
]


@pytest.mark.cuda
@pytest.mark.parametrize(("batch", "dim", "length", "n", "groups", "form"), KERNEL_SHAPES)
@pytest.mark.parametrize("extras", [True, False])
def test_kernel_matches_reference_fp32(batch: int, dim: int, length: int, n: int, groups: int | None, form: str,
                                       extras: bool) -> None:
    assert _build.load("selective_scan") is not None
    x = _cuda(_inputs(batch, dim, length, n, groups, form=form, extras=extras))
    with torch.no_grad():
        got, last = selective_scan(**x, return_last_state=True, backend="restore")
        ref, ref_last = selective_scan_ref(**x, return_last_state=True)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert not torch.isnan(got).any()
    assert rel_l2(got, ref) < 5e-5
    assert rel_l2(last, ref_last) < 5e-5


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("batch", "dim", "length", "n", "groups"), [(2, 12, 37, 4, 3), (2, 768, 4096, 16, 4),
                                                                      (1, 8, 50_000, 16, 2)])
def test_kernel_matches_reference_half(dtype: torch.dtype, batch: int, dim: int, length: int, n: int,
                                       groups: int) -> None:
    x = _cuda(_inputs(batch, dim, length, n, groups), dtype)
    with torch.no_grad():
        got = selective_scan(**x, backend="restore")
        ref = selective_scan_ref(**x)  # float32 math on the same rounded inputs
    assert isinstance(got, torch.Tensor) and got.dtype == dtype
    assert not torch.isnan(got).any()
    assert rel_l2(got, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


@pytest.mark.cuda
def test_kernel_mixed_dtypes_and_views() -> None:
    # Half u with float32 B/C/delta, B and C as strided views of one projection (as SS2D passes them).
    x = _cuda(_inputs(2, 8, 333, 4, 4))
    proj = torch.randn(2, 4, 2 + 2 * 4, 333, device="cuda")
    _, B, C = torch.split(proj, [2, 4, 4], dim=2)
    x.update(B=B, C=C, u=x["u"].half())
    with torch.no_grad():
        got = selective_scan(**x, backend="restore")
        ref = selective_scan_ref(**x)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float16
    assert rel_l2(got, ref) < 2e-3


@pytest.mark.cuda
def test_kernel_falls_back_when_grad_is_wanted() -> None:
    x = _cuda(_inputs(1, 4, 40, 4, 2))
    u = x["u"]
    assert isinstance(u, torch.Tensor)
    u.requires_grad_(True)
    y = selective_scan(**x)
    assert isinstance(y, torch.Tensor) and y.grad_fn is not None


# -- mamba-ssm as the third backend --------------------------------------------------------------------------

class FakeMambaExt:
    """Stands in for mamba-ssm's `selective_scan_cuda` on the CPU: enforces the argument contract its C++ `fwd`
    checks (dtypes, 4-D varying B/C, float32 A/D/bias), computes with our reference, and answers in its layout
    (out, chunk states (batch, dim, chunks, 2N) with the last state in the odd entries of the last chunk, divided
    by B when B is constant, as the H200 showed its kernel does[, out_z])."""

    def fwd(self, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
            softplus: bool) -> list[torch.Tensor]:
        io = u.dtype
        assert delta.dtype == io and A.dtype == torch.float32
        for m in (B, C):
            assert (m.dim() == 2 and m.dtype == torch.float32) or (m.dim() == 4 and m.dtype == io), (m.shape, m.dtype)
        assert all(t is None or t.dtype == torch.float32 for t in (D, delta_bias))
        assert z is None or z.dtype == io
        out, last = selective_scan_ref(u, delta, A, B, C, None, None, delta_bias, softplus, return_last_state=True)
        if D is not None:
            out = out + u.float() * D[:, None]
        chunks = torch.zeros(*last.shape[:2], 2, 2 * last.shape[2])
        chunks[:, :, -1, 1::2] = last / B[None] if B.dim() == 2 else last  # constant B: scanned without B
        res = [out.to(io), chunks]
        if z is not None:
            res.append((out * F.silu(z.float())).to(io))
        return res


@pytest.mark.parametrize("form", ["grouped", "shared", "constant"])
@pytest.mark.parametrize("extras", [True, False])
def test_mamba_ssm_adapter(form: str, extras: bool) -> None:
    from archs.ops.selective_scan import mamba_ssm_forward

    x = _inputs(2, 6, 50, 4, 3 if form == "grouped" else None, form=form, extras=extras)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus")]
    got, last = mamba_ssm_forward(FakeMambaExt(), *args, return_last_state=True)
    ref, ref_last = selective_scan_ref(**x, return_last_state=True)
    assert rel_l2(got, ref) < 1e-6 and rel_l2(last, ref_last) < 1e-6
    assert isinstance(mamba_ssm_forward(FakeMambaExt(), *args, return_last_state=False), torch.Tensor)


def test_backend_choice() -> None:
    x = _inputs(1, 4, 20, 4, 2)
    with pytest.raises(ValueError, match="unknown selective_scan backend 'fast'"):
        selective_scan(**x, backend="fast")
    # On CPU tensors every backend computes the reference.
    ref = selective_scan_ref(**x)
    for backend in ("auto", "restore", "mamba_ssm", "reference"):
        assert torch.equal(selective_scan(**x, backend=backend), ref)


@pytest.mark.cuda
@pytest.mark.skipif(mamba_ssm_kernel() is None, reason="mamba-ssm's selective_scan_cuda is not importable")
@pytest.mark.parametrize(("batch", "dim", "length", "n", "groups", "form"), KERNEL_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_three_backends_agree(batch: int, dim: int, length: int, n: int, groups: int | None, form: str,
                              dtype: torch.dtype) -> None:
    """Ours, mamba-ssm's kernel and the reference on the same inputs (float32 state in all three)."""
    x = _cuda(_inputs(batch, dim, length, n, groups, form=form), dtype)
    with torch.no_grad():
        ours, ours_last = selective_scan(**x, return_last_state=True, backend="restore")
        theirs, theirs_last = selective_scan(**x, return_last_state=True, backend="mamba_ssm")
        ref, ref_last = selective_scan(**x, return_last_state=True, backend="reference")
    assert ours.dtype == theirs.dtype == ref.dtype == dtype
    bound = 5e-5 if dtype == torch.float32 else 1e-2  # bf16: one output rounding, differently ordered sums
    assert rel_l2(theirs, ref) < bound and rel_l2(ours, ref) < bound
    assert rel_l2(ours, theirs) < bound
    assert rel_l2(ours_last, ref_last) < 5e-5 and rel_l2(theirs_last, ref_last) < 5e-5
