"""Evaluate an exported weights file (our float16 safetensors with `arch`/`kwargs` metadata) with `evaluate()`.

    python -m restore_cli.training.eval_weights WEIGHTS --folder /work/shared/data/val --degradation noise25 \
        [--json out.json] [--device cuda] [--limit N] [--crop N]

Whole images go through the model at once (no tiling), in float32; NAFNet/UFPNet run as their TLC (*Local)
variants with the training crop as `train_size`, as the CLI would. This is the training-side check only: the CLI's
`restore eval` uses the engine instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from ..evaluate import EvalResult, RestoreFn, evaluate

# what each task is scored on after training
TASK_EVALS: dict[str, dict[int, tuple[str, ...]]] = {
    "deblur": {1: ("deblur_camera", "deblur_motion", "deblur_defocus")},
    "denoise": {1: ("noise25", "noise50")},
    "upscale": {2: ("sr_x2", "sr_real_x2"), 4: ("sr_x4", "sr_real_x4")},
}


def load_exported(
    path: str | Path, device: torch.device | str = "cpu", *, tlc: bool = True
) -> tuple[nn.Module, dict[str, str]]:
    """Build the model a weights file describes and load it strictly (float32)."""
    import archs

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    if "arch" not in meta or "kwargs" not in meta:
        raise ValueError(f"{path}: no arch/kwargs metadata (not a restore-cli export)")
    kwargs: dict[str, Any] = json.loads(meta["kwargs"])
    arch = meta["arch"]
    local = archs.entry(arch).local_variant
    if tlc and local is not None:
        crop = int(json.loads(meta.get("training_config", "{}")).get("crop", 256))
        arch, kwargs = local, {**kwargs, "train_size": [1, 3, crop, crop]}
    model = archs.build(arch, **kwargs)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return model.to(device).eval(), meta


def restore_fn_for(model: nn.Module, device: torch.device | str) -> RestoreFn:
    dev = torch.device(device)

    @torch.no_grad()
    def run(img: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(dev)
        y = model(x)
        y = y[-1] if isinstance(y, list | tuple) else y
        return y[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()

    return run


def eval_weights(path: str | Path, folder: str | Path, degradation: str, *, device: str | None = None,
                 seed: int = 0, limit: int | None = None, crop: int | None = None,
                 json_path: str | Path | None = None) -> EvalResult:
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_exported(path, dev)
    return evaluate(restore_fn_for(model, dev), folder, degradation, seed=seed, limit=limit, crop=crop,
                    json_path=json_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m restore_cli.training.eval_weights", description=__doc__.split("\n")[0])
    ap.add_argument("weights")
    ap.add_argument("--folder", required=True, help="clean images (e.g. Kodak24)")
    ap.add_argument("--degradation", action="append", help="repeatable; default: the task's standard ones")
    ap.add_argument("--json", default=None, help="write all results here (a list)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--crop", type=int, default=None)
    args = ap.parse_args(argv)
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_exported(args.weights, dev)
    names = args.degradation or list(TASK_EVALS[meta["task"]][int(meta.get("scale", "1"))])
    results = []
    for name in names:
        res = evaluate(restore_fn_for(model, dev), args.folder, name, seed=args.seed, limit=args.limit, crop=args.crop)
        print(f"{meta.get('name', Path(args.weights).stem)} {name}: {res.summary()}", flush=True)
        results.append({"weights": str(args.weights), **res.to_dict()})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
