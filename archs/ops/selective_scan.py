"""Mamba's selective scan (S6), forward only: the semantics of state-spaces/mamba `selective_scan_fn`.

For every batch b and channel d, with a diagonal state of size N (d_state) kept in float32:

    delta_t = softplus(delta_t + delta_bias_d)      (bias and softplus optional)
    h_t     = exp(delta_t * A_d) * h_{t-1} + delta_t * B_t * u_t      (elementwise over the N states)
    y_t     = <C_t, h_t> + D_d * u_t,   then y_t *= silu(z_t) when z is given

Shapes: u, delta, z (batch, dim, L); A (dim, N) real; D, delta_bias (dim,). B and C are each either constant
(dim, N), shared by every channel (batch, N, L), or grouped (batch, G, N, L) where channel d uses group
d // (dim // G), as in mamba. The result has u's dtype; all arithmetic is float32 (float64 inputs stay float64 in
the reference).

Backends (`backend=` or RESTORE_SELECTIVE_SCAN): "restore", our compiled kernel (csrc/selective_scan/); "mamba_ssm",
the `selective_scan_cuda` extension that the mamba-ssm package installs (its forward, called directly: importing
mamba_ssm itself pulls in transformers and Triton kernels we do not need); "reference", `selective_scan_ref`; and
"auto" (default): mamba-ssm's when importable (faster on the H200), else ours, else the reference. Kernels run for
CUDA tensors when no gradient is wanted; everything else takes the reference.

The reference is vectorised: L is cut into chunks that are all scanned at once from a zero state, then the chunk
end-states are chained, then every chunk is scanned again from its true entry state (about 3*sqrt(L) small steps
instead of L), the same decomposition our kernel uses.
"""

from __future__ import annotations

import importlib
import math
import os
from types import ModuleType
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F

from . import _build

_build.register("selective_scan", ["selective_scan/selective_scan.cpp", "selective_scan/selective_scan_kernel.cu"])

_HALF = (torch.float16, torch.bfloat16)
BACKENDS = ("auto", "restore", "mamba_ssm", "reference")
_MAMBA: list[ModuleType | None] = []  # memo of the mamba-ssm extension lookup


def mamba_ssm_kernel() -> ModuleType | None:
    """mamba-ssm's compiled `selective_scan_cuda` module, or None when it is not installed (or fails to load)."""
    if not _MAMBA:
        try:
            _MAMBA.append(importlib.import_module("selective_scan_cuda"))
        except (ImportError, OSError):  # OSError: a build for another torch (undefined symbols)
            _MAMBA.append(None)
    return _MAMBA[0]


def _grouped(m: torch.Tensor, batch: int, dim: int, length: int, name: str) -> torch.Tensor:
    """B or C as a (batch or 1, G, 1, N, L or 1) view: channel group g, broadcast over the channels in it."""
    if m.dim() == 2:  # constant (dim, N): one "group" per channel, same for every batch and step
        if m.shape[0] != dim:
            raise ValueError(f"{name} has shape {tuple(m.shape)}; constant {name} must be (dim={dim}, N)")
        return m[None, :, None, :, None]
    if m.dim() == 3:  # (batch, N, L): one group
        m = m[:, None]
    if m.dim() != 4 or m.shape[0] != batch or m.shape[-1] != length or dim % m.shape[1] != 0:
        raise ValueError(f"{name} has shape {tuple(m.shape)}; expected (dim, N), (batch={batch}, N, L={length}) "
                         f"or (batch, G, N, L) with G dividing dim={dim}")
    return m[:, :, None]


def _check(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, z: torch.Tensor | None) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    if A.is_complex():
        raise NotImplementedError("complex A is not supported (real diagonal A only)")
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"A must be (dim={u.shape[1]}, N); got {tuple(A.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}; got {tuple(z.shape)}")


def _check_kernel_args(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       z: torch.Tensor | None) -> None:
    """What the reference checks as it goes, checked up front for the kernels (which would fail less clearly)."""
    _check(u, delta, A, z)
    _grouped(B, u.shape[0], u.shape[1], u.shape[2], "B")
    _grouped(C, u.shape[0], u.shape[1], u.shape[2], "C")


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


@overload
def selective_scan_ref(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., return_last_state: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def selective_scan_ref(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., *, return_last_state: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def selective_scan_ref(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., return_last_state: bool = ...,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch reference (any device). Returns y (batch, dim, L), and the final state (batch, dim, N)."""
    _check(u, delta, A, z)
    batch, dim, length = u.shape
    n = A.shape[1]
    # float64 stays float64 (tests); everything else is computed in float32 as mamba does.
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    uf, dt = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bg = _grouped(B, batch, dim, length, "B").to(ct)
    Cg = _grouped(C, batch, dim, length, "C").to(ct)
    groups = Bg.shape[1]
    if Cg.shape[1] != groups:  # B and C grouped differently: give both one group per channel
        Bg = Bg.expand(-1, -1, dim // groups, -1, -1).reshape(Bg.shape[0], dim, 1, n, Bg.shape[-1])
        Cg = Cg.expand(-1, -1, dim // Cg.shape[1], -1, -1).reshape(Cg.shape[0], dim, 1, n, Cg.shape[-1])
        groups = dim
    per = dim // groups

    # Chunks of T steps; the tail is padded with delta = 0, u = 0 (the identity step: exp(0) h + 0).
    T = max(1, math.isqrt(length - 1) + 1) if length > 1 else 1
    nc = -(-length // T)
    pad = nc * T - length

    def chunked(x: torch.Tensor) -> torch.Tensor:  # (..., L) -> (..., nc, T); broadcast (L=1) stays as is
        if x.shape[-1] == 1:
            return x[..., None]
        return F.pad(x, (0, pad)).unflatten(-1, (nc, T))

    # (b, G, H, 1, nc, T): channels split into (group, channel in group), a state axis of size 1 to broadcast.
    dtc = chunked(dt.reshape(batch, groups, per, 1, length))
    uc = chunked(uf.reshape(batch, groups, per, 1, length))
    Bc, Cc = chunked(Bg), chunked(Cg)  # (b|1, G, 1, N, nc|1, T|1)
    Ac = A.to(ct).reshape(1, groups, per, n, 1)  # (1, G, H, N, 1): broadcast over nc
    dtu = dtc * uc

    def step(h: torch.Tensor, t: int) -> torch.Tensor:
        tb = 0 if Bc.shape[-1] == 1 else t
        return torch.exp(dtc[..., t] * Ac) * h + dtu[..., t] * Bc[..., tb]

    # 1) every chunk from a zero state: its end state, and its decay exp(A * sum(delta))
    h = torch.zeros(batch, groups, per, n, nc, dtype=ct, device=u.device)
    for t in range(T):
        h = step(h, t)
    decay = torch.exp(dtc.sum(-1) * Ac)
    # 2) chain the chunks: the state entering each chunk
    entry = torch.empty_like(h)
    carry = torch.zeros_like(h[..., 0])
    for c in range(nc):
        entry[..., c] = carry
        carry = decay[..., c] * carry + h[..., c]
    # 3) rescan every chunk from its entry state, reading y out at each step
    h = entry
    ys = []
    for t in range(T):
        h = step(h, t)
        tc = 0 if Cc.shape[-1] == 1 else t
        ys.append((h * Cc[..., tc]).sum(3))  # (b, G, H, nc)
    y = torch.stack(ys, -1).reshape(batch, dim, nc * T)[..., :length]
    if D is not None:
        y = y + uf * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(u.dtype)
    if return_last_state:
        return out, carry.reshape(batch, dim, n)
    return out


def _kernel_layout(m: torch.Tensor) -> int:
    """0: constant (dim, N), 1: shared (batch, N, L), 2: grouped (batch, G, N, L)."""
    return {2: 0, 3: 1, 4: 2}.get(m.dim(), -1)


@overload
def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., return_last_state: Literal[False] = ..., backend: str | None = ...,
) -> torch.Tensor: ...


@overload
def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., *, return_last_state: Literal[True], backend: str | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., return_last_state: bool = ..., backend: str | None = ...,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """mamba's selective_scan_fn (forward) on the chosen backend (module docstring); `auto` unless told."""
    choice = backend or os.environ.get("RESTORE_SELECTIVE_SCAN") or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"unknown selective_scan backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    args = (u, delta, A, B, C, D, z, delta_bias)
    tensors = [t for t in args if t is not None]
    use_kernel = (
        choice != "reference"
        and u.is_cuda
        and all(t.device == u.device for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))  # forward-only kernels
        and u.dtype in (torch.float32, *_HALF)
        and not A.is_complex()
        and _kernel_layout(B) >= 0
        and _kernel_layout(B) == _kernel_layout(C)  # mixed forms are rare: the reference handles them
        and (B.dim() != 4 or B.shape[1] == C.shape[1])
    )
    if use_kernel and choice in ("auto", "mamba_ssm"):
        # auto prefers mamba-ssm's kernel when it is installed: 1.1-3.1x faster than ours on the H200, same results
        # (bench/results/ops.md, tests/test_ops_selective_scan.py::test_three_backends_agree).
        theirs = mamba_ssm_kernel()
        if theirs is None and choice == "mamba_ssm":
            raise RuntimeError("selective_scan backend 'mamba_ssm' asked for, but mamba-ssm's selective_scan_cuda "
                               "extension is not importable")
        if theirs is not None:
            return mamba_ssm_forward(theirs, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    ours = _build.load("selective_scan") if use_kernel and choice in ("auto", "restore") else None
    if ours is None:
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    _check_kernel_args(u, delta, A, B, C, z)
    # One dtype for u/delta/z (u's, unless they differ: then float32), B/C in that dtype or float32.
    io = u.dtype if delta.dtype == u.dtype and (z is None or z.dtype == u.dtype) else torch.float32
    bc = io if B.dtype == io and C.dtype == io else torch.float32
    out, last = ours.fwd(
        u.to(io).contiguous(), delta.to(io).contiguous(), _f32(A), B.to(bc).contiguous(), C.to(bc).contiguous(),
        _f32(D), None if z is None else z.to(io).contiguous(), _f32(delta_bias), bool(delta_softplus),
        bool(return_last_state),
    )
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


def mamba_ssm_forward(ext: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                      delta_softplus: bool,
                      return_last_state: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Call mamba-ssm's `selective_scan_cuda.fwd` with the layouts and dtypes it insists on (what its
    selective_scan_fn wrapper prepares): u/delta/z and varying B/C in u's dtype, A/D/delta_bias and constant B/C in
    float32, (batch, N, L) B/C as one group. It returns (out, chunk states[, gated out]); the last state is the odd
    entries of the last chunk (times B when B is constant)."""
    _check_kernel_args(u, delta, A, B, C, z)
    io = u.dtype

    def bc(m: torch.Tensor) -> torch.Tensor:
        if m.dim() == 2:
            return m.to(torch.float32).contiguous()
        return (m[:, None] if m.dim() == 3 else m).to(io).contiguous()

    res = ext.fwd(u.contiguous(), delta.to(io).contiguous(), _f32(A), bc(B), bc(C), _f32(D),
                  None if z is None else z.to(io).contiguous(), _f32(delta_bias), bool(delta_softplus))
    out = res[2] if z is not None else res[0]
    if not return_last_state:
        return out
    last = res[1][:, :, -1, 1::2]
    # With a constant B mamba's kernel scans the state divided by B (B is folded into the output's C*B), so its
    # chunk states, and the last_state its own wrapper returns, lack that factor (H200: 1.6 relative off).
    return out, (last * B.to(last.dtype)[None] if B.dim() == 2 else last)


__all__ = ["BACKENDS", "mamba_ssm_forward", "mamba_ssm_kernel", "selective_scan", "selective_scan_ref"]
