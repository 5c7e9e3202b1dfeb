"""How far Restore-RWKV's upstream Bi-WKV CUDA forward is from the formula it implements (see the .md beside this).

Without upstream code: the forward's thread/warp logic is emulated in PyTorch, per (b, c) row, 64 "token threads",
in one of two lane models for its `__shfl_sync(0xffffffff, var, i)` reads of thread i's chunk sums:
  ideal   the read reaches thread i of the row (what a 64-wide exchange, e.g. shared memory, would give);
  warp32  the read reaches lane i mod 32 of the caller's own 32-thread warp, all lanes converged (what the CUDA
          shuffle does for srcLane >= width). Real hardware adds undefined values from divergent lanes on top.
Both are compared with the intended formula (the golden files' convention, archs.ops.bi_wkv), with its |t-i|
decay variant, and, on a GPU, with our kernel. With --upstream-dir pointing at a local copy of upstream's cuda/
folder (bi_wkv.cpp, bi_wkv_kernel.cu), the real upstream forward is also built (in a temporary folder, for the
running GPU, `k.type()` -> `k.scalar_type()`, nothing fetched) and measured.

    PYTHONPATH=. python bench/bi_wkv_upstream_check.py                # CPU is enough for the emulation
    PYTHONPATH=. python bench/bi_wkv_upstream_check.py --upstream-dir /path/to/Restore-RWKV/model/cuda
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archs.ops.bi_wkv import bi_wkv, bi_wkv_reference

TOKEN_SPLIT = 64  # upstream: threads per (b, c) row, each owning ceil(T / 64) consecutive tokens
MIN_VALUE = -1e38  # upstream's "empty" log-scale
EPS = 1e-6  # upstream adds it to the max-rescaled denominator


def _source_lanes(mode: str) -> torch.Tensor:
    """[tid, i] -> the thread whose value `__shfl_sync(0xffffffff, var, i)` returns to thread tid."""
    tid = torch.arange(TOKEN_SPLIT).view(-1, 1)
    i = torch.arange(TOKEN_SPLIT).view(1, -1)
    if mode == "ideal":
        return i.expand(TOKEN_SPLIT, TOKEN_SPLIT)
    if mode == "warp32":
        return (tid // 32) * 32 + i % 32  # blockDim (64, 8): threads 0-31 and 32-63 of a row are separate warps
    raise ValueError(mode)


def upstream_forward_emulated(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                              lanes: str = "warp32", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """upstream bi_wkv_cuda_forward_kernel, all 64 threads of every (b, c) row at once, in `dtype`."""
    B, T, C = k.shape
    rows = B * C
    kk = k.permute(0, 2, 1).reshape(rows, T).to(dtype)
    vv = v.permute(0, 2, 1).reshape(rows, T).to(dtype)
    ww = w.to(dtype).repeat(B).view(rows, 1)
    uu = u.to(dtype).repeat(B).view(rows, 1)
    S = TOKEN_SPLIT
    chunk = -(-T // S)  # _T
    tid = torch.arange(S)
    start = chunk * tid  # _t
    length = torch.clamp(T - start, max=chunk)  # _tokenLength; <= 0 for threads past the end
    src = _source_lanes(lanes)

    def at(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # x[:, idx] with idx clamped (inactive lanes)
        return x[:, idx.clamp(0, T - 1)]

    def full(value: float) -> torch.Tensor:
        return torch.full((rows, S), value, dtype=dtype)

    # 1. chunk-local sums: c, d (o1) weight k_i - w (i - _t), anchored at the chunk start; a, b (o2) weight
    #    k_i - w (end - i), anchored one past the chunk end.
    a, b, c, d = full(0.0), full(0.0), full(0.0), full(0.0)
    o1, o2 = full(MIN_VALUE), full(MIN_VALUE)
    for s in range(chunk):
        on = s < length
        i = start + s
        x = at(kk, i) - ww * s
        no = torch.maximum(o1, x)
        e1, e3 = torch.exp(o1 - no), torch.exp(x - no)
        c = torch.where(on, e1 * c + e3 * at(vv, i), c)
        d = torch.where(on, e1 * d + e3, d)
        o1 = torch.where(on, no, o1)
        ni = start + length - 1 - s  # 2 _t + len - 1 - i; exp_w = _t + len - ni = s + 1
        x = at(kk, ni) - ww * (s + 1)
        no = torch.maximum(o2, x)
        e2, e3 = torch.exp(o2 - no), torch.exp(x - no)
        a = torch.where(on, e2 * a + e3 * at(vv, ni), a)
        b = torch.where(on, e2 * b + e3, b)
        o2 = torch.where(on, no, o2)

    # 2. merge over threads through the shuffle: a2, b2 (o4) from threads i < tid, weights w (tid - i - 1) _T;
    #    c2, d2 (o3) from threads i >= tid, weights w (i - tid) _T. Values read are the phase-1 values.
    a2, b2, c2, d2 = full(0.0), full(0.0), full(0.0), full(0.0)
    o3, o4 = full(MIN_VALUE), full(MIN_VALUE)
    for lane_i in range(S):
        lane = src[:, lane_i]
        before, after = lane_i < tid, lane_i >= tid
        x = o2[:, lane] - ww * ((tid - lane_i - 1) * chunk)
        no = torch.maximum(x, o4)
        a2n = a2 * torch.exp(o4 - no) + a[:, lane] * torch.exp(x - no)
        b2n = b2 * torch.exp(o4 - no) + b[:, lane] * torch.exp(x - no)
        a2, b2, o4 = torch.where(before, a2n, a2), torch.where(before, b2n, b2), torch.where(before, no, o4)
        x = o1[:, lane] - ww * ((lane_i - tid) * chunk)
        no = torch.maximum(x, o3)
        c2n = c2 * torch.exp(o3 - no) + c[:, lane] * torch.exp(x - no)
        d2n = d2 * torch.exp(o3 - no) + d[:, lane] * torch.exp(x - no)
        c2, d2, o3 = torch.where(after, c2n, c2), torch.where(after, d2n, d2), torch.where(after, no, o3)
    kt, vt = at(kk, start), at(vv, start)
    c = c2 - torch.exp(kt - o3) * vt  # drop the thread's first token: c, d = sum over i > _t, weight w (i - _t)
    d = d2 - torch.exp(kt - o3)
    a, b, o1, o2 = a2, b2, o3, o4

    # 3. sweep the chunk: y_i, then a, b <- e^{-w} (a, b) + e^{k_i} (v_i, 1); c, d <- e^{w} ((c, d) - e^{k_i+1} ...)
    y = torch.zeros(rows, T, dtype=dtype)
    for s in range(chunk):
        on = s < length
        i = start + s
        ki, vi = at(kk, i), at(vv, i)
        no = torch.maximum(torch.maximum(o1, uu + ki), o2)
        e1, e2, e3 = torch.exp(o1 - no), torch.exp(o2 - no), torch.exp(uu + ki - no)
        yi = (c * e1 + a * e2 + e3 * vi) / (d * e1 + b * e2 + e3 + EPS)
        y[:, i[on]] = yi[:, on]
        no = torch.maximum(o2 - ww, ki)
        e2, e3 = torch.exp(o2 - ww - no), torch.exp(ki - no)
        a, b, o2 = (torch.where(on, e2 * a + e3 * vi, a), torch.where(on, e2 * b + e3, b),
                    torch.where(on, no, o2))
        i2 = (i + 1) % T
        k2, v2 = at(kk, i2), at(vv, i2)
        no = torch.maximum(o1 + ww, k2 + ww)
        e1, e3 = torch.exp(o1 + ww - no), torch.exp(k2 + ww - no)
        c, d, o1 = (torch.where(on, e1 * c - e3 * v2, c), torch.where(on, e1 * d - e3, d),
                    torch.where(on, no, o1))
    return y.view(B, C, T).permute(0, 2, 1)


def formula_abs_distance(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The |t-i| variant: exp(-|t-i| w + k_i) for i != t (float64 softmax per row; small T only)."""
    T = k.shape[1]
    pos = torch.arange(T)
    dist = (pos.view(T, 1) - pos.view(1, T)).abs().double()
    w_, u_, k_, v_ = (x.double().cpu() for x in (w, u, k, v))
    logits = -dist.view(1, 1, T, T) * w_.view(1, -1, 1, 1) + k_.transpose(1, 2).unsqueeze(2)
    eye = torch.eye(T, dtype=torch.bool)
    logits = torch.where(eye, (u_.view(1, -1, 1) + k_.transpose(1, 2)).unsqueeze(3), logits)
    return torch.einsum("bcti,bci->btc", torch.softmax(logits, dim=-1), v_.transpose(1, 2))


def build_upstream(folder: Path) -> ModuleType:
    """Upstream's extension from a local copy, built in a temporary folder for the running GPU only."""
    from torch.utils.cpp_extension import load

    tmp = Path(tempfile.mkdtemp(prefix="bi_wkv_upstream_"))
    for name in ("bi_wkv.cpp", "bi_wkv_kernel.cu"):
        shutil.copy(folder / name, tmp / name)
    cu = tmp / "bi_wkv_kernel.cu"
    cu.write_text(cu.read_text().replace("k.type()", "k.scalar_type()"))  # removed in recent torch
    major, minor = torch.cuda.get_device_capability()
    arch = f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"
    return load(name="bi_wkv_upstream", sources=[str(tmp / "bi_wkv.cpp"), str(cu)], build_directory=str(tmp),
                extra_cuda_cflags=["-O3", "--use_fast_math", arch], verbose=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="*", default=[1, 16, 32, 33, 64, 65, 100, 256, 1024, 4096])
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--C", type=int, default=16)
    ap.add_argument("--decay", type=float, default=5.0, help="w = rand * decay / T (the research notes' setting)")
    ap.add_argument("--strong", action="store_true", help="w, u = randn * 70 / T (the __strongwkv golden's range)")
    ap.add_argument("--upstream-dir", type=Path, help="local folder with upstream bi_wkv.cpp, bi_wkv_kernel.cu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    upstream = build_upstream(args.upstream_dir) if args.upstream_dir else None
    if upstream is not None and not cuda:
        sys.exit("--upstream-dir needs a CUDA GPU")

    cols = ["T", "ideal", "warp32", "ideal vs \\|t-i\\|", "warp32 vs \\|t-i\\|"]
    cols += ["our kernel"] if cuda else []
    cols += ["upstream CUDA", "upstream vs warp32"] if upstream is not None else []
    inputs = "w, u = randn*70/T" if args.strong else f"w = rand*{args.decay}/T, u = randn/T"
    print(f"max |y - formula| (formula: exp(-(|t-i|-1) w + k_i), float64), B={args.B} C={args.C}, {inputs}")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for T in args.T:
        g = torch.Generator().manual_seed(args.seed + T)
        if args.strong:
            w = torch.randn(args.C, generator=g) * 70 / T
            u = torch.randn(args.C, generator=g) * 70 / T
        else:
            w = torch.rand(args.C, generator=g) * args.decay / T
            u = torch.randn(args.C, generator=g) / T
        k = torch.randn(args.B, T, args.C, generator=g)
        v = torch.randn(args.B, T, args.C, generator=g)
        want = bi_wkv_reference(w, u, k.double(), v.double())
        ideal = upstream_forward_emulated(w, u, k, v, lanes="ideal")
        warp = upstream_forward_emulated(w, u, k, v, lanes="warp32")
        row = [str(T), *(f"{float((x.double() - want).abs().max()):.3g}" for x in (ideal, warp))]
        if T <= 1024:
            variant = formula_abs_distance(w, u, k, v)
            row += [f"{float((x.double() - variant).abs().max()):.3g}" for x in (ideal, warp)]
        else:
            row += ["-", "-"]
        if cuda:
            ours = bi_wkv(w.cuda(), u.cuda(), k.cuda(), v.cuda()).cpu()
            row.append(f"{float((ours.double() - want).abs().max()):.3g}")
        if upstream is not None:
            if (args.B * args.C) % 8 or args.C < 8:
                row += ["B*C % 8 != 0", "-"]
            else:
                got = upstream.bi_wkv_forward(w.cuda(), u.cuda(), k.cuda().contiguous(), v.cuda().contiguous())
                got = got.cpu().double()
                row += [f"{float((got - want).abs().max()):.3g}", f"{float((got - warp.double()).abs().max()):.3g}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
