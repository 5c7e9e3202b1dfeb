"""CPU speed of every bundled model: one 256x256 photo crop through the public API on 2 threads.

    python -m bench.cpu_bundled [--threads 2] [--size 256] [--repeat 5] [--out bench/results]

Each row is the median of `repeat` timed calls of `restore_image` (uint8 in, uint8 out: conversions count) after one
warm-up call, with the whole image as one tile (as the CLI runs a 256px image), plus the user CPU seconds the
median call used (less sensitive to other load on the machine than wall time). The issue's target: under 3 s each.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import environment, write_results


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from restore_cli import load_model, restore_image
    from restore_cli import presets as P
    from restore_cli.io import read_image

    sample = read_image(Path("samples/blurry/kodim24.png")).pixels if Path("samples/blurry").is_dir() else None
    rng = np.random.default_rng(0)
    rows = []
    for name, preset in P.all_presets().items():
        if preset.source.kind != "bundled":
            continue
        lr_side = args.size // preset.scale
        if sample is not None and min(sample.shape[:2]) >= lr_side:
            img = np.ascontiguousarray(sample[:lr_side, :lr_side, :3])
        else:
            img = rng.integers(0, 256, (lr_side, lr_side, 3), dtype=np.uint8)
        model = load_model(name, device="cpu", tile=0)
        restore_image(model, img)
        walls, cpus = [], []
        for _ in range(args.repeat):
            c0, t0 = _cpu_seconds(), time.perf_counter()
            restore_image(model, img)
            walls.append(time.perf_counter() - t0)
            cpus.append(_cpu_seconds() - c0)
        order = np.argsort(walls)
        mid = int(order[len(order) // 2])
        rows.append({"model": name, "arch": preset.arch, "input": f"{lr_side}x{lr_side}",
                     "output": f"{lr_side * preset.scale}x{lr_side * preset.scale}",
                     "params_M": round(model.params / 1e6, 2), "wall_s": round(walls[mid], 3),
                     "cpu_s": round(cpus[mid], 3), "under_3s": walls[mid] < 3.0})
        print(rows[-1], flush=True)
    env = environment() | {"threads": args.threads, "cores": os.cpu_count()}
    write_results(Path(args.out), "cpu_bundled", env, rows,
                  ["model", "arch", "input", "output", "params_M", "wall_s", "cpu_s", "under_3s"])


if __name__ == "__main__":
    main()
