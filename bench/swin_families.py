"""Half precision and whole-frame memory of the window-attention SR families (HAT, HATM, HATIQCMix, DRCT, ATD, HMA).

Two tables, for setting the descriptors' fp16/bf16 flags and checking the 1080p requirement on the GPU:
* swin_precision: every dev golden of these families in fp32, fp16 and bf16 (relative L2 to the upstream output,
  finiteness); then each family's heaviest official config with its upstream-initialised random weights on a
  128x128 input (relative L2 of fp16/bf16 to fp32, finiteness).
* swin_1080p: HAT-L (team18 HAT) and DRCT-L through the tiled engine on a 1920x1080 frame (auto tile), fp32 and
  bf16: seconds, tiles, peak GPU memory.

    PYTHONPATH=. RESTORE_SHARED=../shared python bench/swin_families.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.goldens import read_golden, recipe_state_dict, rel_l2

import archs
from bench.common import environment, write_results
from restore_cli.engine.runner import Runner

FAMILIES = ("HAT", "DRCT", "ATD", "HMA")
HEAVY = {"HAT": "HAT__team18_hatl_x4", "HATM": "HAT__team18_hatm_x4", "HATIQCMix": "HAT__team18_iqcmix_x4",
         "DRCT": "DRCT__DRCT-L_SRx4", "ATD": "ATD__ATD_SRx4", "HMA": "HMA__hma_large_x4"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _manifest(golden: Path, stem: str) -> dict:
    with lzma.open(golden / f"{stem}.keys.json.xz", "rt") as f:
        return json.load(f)


def precision_rows(golden: Path, dev: torch.device) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(p for f in FAMILIES for p in golden.glob(f"{f}__*.safetensors")):
        t, meta = read_golden(path)
        model = archs.build(meta["class"], **json.loads(meta["kwargs"]))
        model.load_state_dict(recipe_state_dict(t, meta), strict=True)
        for name, dtype in DTYPES.items():
            with torch.inference_mode():
                out = model.to(dev, dtype).eval()(t["input"].to(dev, dtype)).float().cpu()
            rows.append({"case": path.stem, "precision": name, "rel_l2": f"{rel_l2(out, t['output']):.2e}",
                         "finite": bool(torch.isfinite(out).all())})
    for stem in HEAVY.values():
        doc = _manifest(golden, stem)
        torch.manual_seed(0)
        model = archs.build(doc["class"], **doc["kwargs"]).eval().to(dev)
        x = torch.rand(1, 3, 128, 128, device=dev)
        with torch.inference_mode():
            ref = model(x).float()
            for name, dtype in DTYPES.items():
                out = model.to(dtype)(x.to(dtype)).float()
                rows.append({"case": f"{stem} (random weights, 128px)", "precision": name,
                             "rel_l2": f"{rel_l2(out, ref):.2e}", "finite": bool(torch.isfinite(out).all())})
        del model
        torch.cuda.empty_cache()
    return rows


def frame_rows(golden: Path, dev: torch.device) -> list[dict]:
    rows: list[dict] = []
    frame = torch.rand(3, 1080, 1920)
    for stem in ("HAT__team18_hatl_x4", "DRCT__DRCT-L_SRx4"):
        doc = _manifest(golden, stem)
        spec = archs.spec(doc["class"], **doc["kwargs"])
        for name in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = archs.build(doc["class"], **doc["kwargs"])
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            runner = Runner(model, spec, device=dev, dtype=DTYPES[name])
            start = time.perf_counter()
            with torch.inference_mode():
                out, stats = runner.run(frame)
            torch.cuda.synchronize()
            seconds = round(time.perf_counter() - start, 2)
            rows.append({"case": f"{stem} 1920x1080", "precision": name, "seconds": seconds,
                         "tile": stats.tile, "tiles": stats.tiles, "retries": stats.retries,
                         "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                         "finite": bool(torch.isfinite(out).all())})
            del model, runner
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--golden", type=Path, default=Path(os.environ.get("RESTORE_SHARED", "../shared")) / "golden")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/swin_families.py needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    env = environment()
    rows = precision_rows(args.golden, dev)
    write_results(args.out, "swin_precision", env, rows, ["case", "precision", "rel_l2", "finite"])
    rows = frame_rows(args.golden, dev)
    write_results(args.out, "swin_1080p", env, rows,
                  ["case", "precision", "seconds", "tile", "tiles", "retries", "peak_gib", "finite"])


if __name__ == "__main__":
    main()
