"""Engine throughput vs whole-frame eager, per family, on one frame.

Each family runs an official-size configuration with random weights (speed does not depend on the values):
the engine (auto tile, batching, pinned transfers, blending) against one eager forward of the whole frame
on the GPU, same precision. Writes bench/results/engine.{json,md} (or --out).

    PYTHONPATH=. python bench/engine.py --out bench/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import archs
from bench.common import environment, time_cuda, write_results
from restore_cli.engine.runner import Runner, pick_dtype
from restore_cli.engine.tiles import pad_reflect, round_up

# (label, arch, kwargs, input height, input width): 1080p frames for scale-1 models, 540p input for x4 (-> 4K out)
CASES = [
    ("NAFNet-GoPro-w32 (Local)", "NAFNetLocal",
     {"width": 32, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}, 1080, 1920),
    ("UFPNet-GoPro (Local)", "UFPNet_code_uncertainty_Local",
     {"width": 64, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}, 1080, 1920),
    ("PLKSR x4", "plksr", {"upscaling_factor": 4}, 540, 960),
    ("RealPLKSR x4", "realplksr", {"upscaling_factor": 4}, 540, 960),
    ("SPAN x4 ch48", "SPAN", {"feature_channels": 48, "upscale": 4}, 540, 960),
]


def bench_case(label: str, arch: str, kwargs: dict, h: int, w: int, dev: torch.device, precision: str) -> dict:
    torch.manual_seed(0)
    model = archs.build(arch, **kwargs).eval()
    spec = archs.spec(arch, **kwargs)
    dtype = pick_dtype(precision, spec, dev)
    frame = torch.rand(3, h, w)
    row: dict = {"model": label, "arch": spec.id, "frame": f"{w}x{h}", "out": f"{w * spec.scale}x{h * spec.scale}",
                 "precision": str(dtype).removeprefix("torch."),
                 "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    runner = Runner(model, spec, device=dev, dtype=dtype, tile=None, overlap=16, batch=4)
    # What the CLI hands the engine: 8-bit pixels in, 8-bit pixels out (quantised on the device).
    frame8 = (frame * 255).round().to(torch.uint8)
    _, stats = runner.run(frame8, quantize=255)  # warm-up and auto tile choice
    t_engine = time_cuda(lambda: runner.run(frame8, quantize=255), warmup=1, repeat=3)
    row.update(engine_ms=round(t_engine * 1000, 1), tile=stats.tile, tiles=stats.tiles,
               engine_mp_s=round(h * w / 1e6 / t_engine, 3))
    # Forced tiling (512 px cores, the context margin, 16 px overlap): the cost of seamless tiles.
    tiled = Runner(runner.model, spec, device=dev, dtype=dtype, tile=512, overlap=16, batch=4)
    _, tstats = tiled.run(frame8, quantize=255)
    t_tiled = time_cuda(lambda: tiled.run(frame8, quantize=255), warmup=1, repeat=3)
    row.update(tiled512_ms=round(t_tiled * 1000, 1), tiled512_tiles=tstats.tiles,
               tiled512_mp_s=round(h * w / 1e6 / t_tiled, 3))
    # Whole-frame eager: the frame already on the GPU, one forward, output kept on the GPU.
    x = pad_reflect(frame[None], 0, round_up(w, spec.multiple_of) - w, 0, round_up(h, spec.multiple_of) - h)
    x = x.to(dev, dtype)
    if runner.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def eager() -> None:
        with torch.inference_mode():
            runner.model(x)

    try:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_whole = time_cuda(eager, warmup=1, repeat=3)
        row.update(whole_ms=round(t_whole * 1000, 1), whole_mp_s=round(h * w / 1e6 / t_whole, 3),
                   engine_vs_whole=round(t_whole / t_engine, 2))
        if dev.type == "cuda":
            row["whole_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except torch.cuda.OutOfMemoryError:
        row.update(whole_ms="OOM")
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for label, arch, kwargs, h, w in CASES:
        if args.only and args.only.lower() not in label.lower():
            continue
        try:
            row = bench_case(label, arch, kwargs, h, w, dev, args.precision)
        except Exception as e:  # one family failing must not lose the others' numbers
            row = {"model": label, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print(row, flush=True)
        rows.append(row)
    write_results(args.out, "engine", environment(), rows,
                  ["model", "frame", "out", "precision", "params_M", "tile", "tiles", "engine_ms", "engine_mp_s",
                   "tiled512_tiles", "tiled512_ms", "tiled512_mp_s", "whole_ms", "whole_mp_s", "engine_vs_whole",
                   "whole_peak_gib", "error"])


if __name__ == "__main__":
    main()
