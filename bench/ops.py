"""Custom CUDA kernels against their PyTorch references at realistic sizes.

Each bench/ops_<op>.py gives `cases()`: (label, run_kernel, run_reference) closures on CUDA tensors. Writes
bench/results/ops.{json,md} (or --out) with both times and the speed-up.

    PYTHONPATH=. python bench/ops.py --out bench/results
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, time_cuda, write_results

OPS = ["selective_scan", "bi_wkv", "neighborhood_attn", "upfirdn2d"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--only", nargs="*", choices=OPS, default=OPS, help="time these ops only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/ops.py needs a CUDA GPU")
    rows = []
    for op in args.only:
        try:
            mod = importlib.import_module(f"bench.ops_{op}")
            cases = mod.cases()
        except Exception as e:
            rows.append({"op": op, "note": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
            continue
        for label, kernel, reference in cases:
            row: dict = {"op": op, "case": label}
            try:
                with torch.inference_mode():
                    tk = time_cuda(kernel, warmup=3, repeat=10)
                    tr = time_cuda(reference, warmup=1, repeat=3)
                row.update(kernel_ms=round(tk * 1000, 3), reference_ms=round(tr * 1000, 3),
                           speedup=round(tr / tk, 1))
            except Exception as e:
                row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            print(row, flush=True)
            rows.append(row)
            torch.cuda.empty_cache()
    write_results(args.out, "ops", environment(), rows, ["op", "case", "kernel_ms", "reference_ms", "speedup", "note"])


if __name__ == "__main__":
    main()
