"""Shared bits of the benchmarks: environment record, CUDA timing, result files."""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   cudnn=torch.backends.cudnn.version())
    return env


def time_cuda(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 5) -> float:
    """Median wall seconds of fn(), synchronised; on the CPU plain perf_counter."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def write_results(out_dir: Path, name: str, env: dict[str, Any], rows: list[dict[str, Any]],
                  columns: list[str]) -> None:
    """OUT/name.json (environment, columns, rows) and the Markdown table made from it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"environment": env, "columns": columns, "rows": rows}, indent=2))
    write_markdown(path)


def write_markdown(json_path: Path) -> None:
    """name.md beside name.json (the device run returns only the JSON; the tables are made here)."""
    data = json.loads(json_path.read_text())
    rows = data["rows"]
    columns = data.get("columns") or list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"# {json_path.stem}", "", "Environment: " + ", ".join(f"{k} {v}" for k, v in data["environment"].items()),
             "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    json_path.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:  # python bench/common.py bench/results/*.json
        write_markdown(Path(arg))
