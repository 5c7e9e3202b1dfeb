"""Milliseconds per megapixel for every registered family, in each precision it supports, channels_last on/off.

Each family runs its official configuration (the first *.keys.json(.xz) manifest of the family in the golden folder,
else the constructor defaults) with random weights on a 256x256 input (512x512 for face models; a latent for
generators), batch 1, eager. A row also records whether the output was finite.

    PYTHONPATH=. RESTORE_SHARED=../shared python bench/archs.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import archs
from bench.common import environment, time_cuda, write_results

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def configs(golden: Path) -> list[tuple[str, str, dict]]:
    """(label, arch, kwargs): one official configuration per registered family."""
    seen: dict[str, tuple[str, str, dict]] = {}
    for path in sorted([*golden.glob("*.keys.json"), *golden.glob("*.keys.json.xz")]):
        text = lzma.decompress(path.read_bytes()).decode() if path.suffix == ".xz" else path.read_text()
        doc = json.loads(text)
        try:
            entry = archs.entry(doc["class"])
        except KeyError:
            continue
        seen.setdefault(entry.family, (path.name.split(".keys.json")[0], doc["class"], doc["kwargs"]))
    for name in archs.names():
        entry = archs.entry(name)
        if entry.family not in seen and entry.local_variant is None:
            try:
                archs.spec(name)
                seen[entry.family] = (f"{entry.family} (defaults)", name, {})
            except Exception:
                continue
    return list(seen.values())


def bench_one(label: str, arch: str, kwargs: dict, dev: torch.device) -> list[dict]:
    spec = archs.spec(arch, **kwargs)
    torch.manual_seed(0)
    base = archs.build(arch, **kwargs).eval()
    side = 512 if "face" in spec.tasks else 256
    generator = spec.tiling == "internal" and hasattr(base, "forward_styles")
    rows = []
    for pname, dtype in DTYPES.items():
        if (pname == "fp16" and not spec.fp16) or (pname == "bf16" and not spec.bf16):
            rows.append({"model": label, "precision": pname, "note": "not supported (descriptor)"})
            continue
        for cl in (False, True):
            row: dict = {"model": label, "arch": spec.id, "precision": pname, "channels_last": cl,
                         "params_M": round(sum(p.numel() for p in base.parameters()) / 1e6, 2)}
            try:
                model = base.to(dev, dtype)
                if generator:
                    x = torch.randn(1, kwargs.get("num_style_feat", 512), device=dev, dtype=dtype)
                else:
                    x = torch.rand(1, spec.in_channels, side, side, device=dev, dtype=dtype)
                    if cl:
                        model = model.to(memory_format=torch.channels_last)
                        x = x.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    y = model(x)
                    finite = bool(torch.isfinite(y.float()).all())
                    t = time_cuda(lambda m=model, x=x: m(x), warmup=2, repeat=5)
                mp = 1.0 if generator else side * side / 1e6
                row.update(input=("latent" if generator else f"{side}x{side}"), ms=round(t * 1000, 2),
                           ms_per_mp=round(t * 1000 / mp, 1), finite=finite)
            except Exception as e:  # a failing precision is a finding, not a crash
                row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            finally:
                base = base.float().to(memory_format=torch.contiguous_format)
            rows.append(row)
            if generator:
                break
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--golden", type=Path, default=Path(os.environ.get("RESTORE_SHARED", "../shared")) / "golden")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict] = []
    for label, arch, kwargs in configs(args.golden):
        if args.only and args.only.lower() not in label.lower():
            continue
        try:
            got = bench_one(label, arch, kwargs, dev)
        except Exception as e:
            got = [{"model": label, "note": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}]
        for r in got:
            print(r, flush=True)
        rows += got
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    write_results(args.out, "archs", environment(), rows,
                  ["model", "arch", "params_M", "input", "precision", "channels_last", "ms", "ms_per_mp", "finite",
                   "note"])


if __name__ == "__main__":
    main()
