"""Train the bundled models concurrently on one GPU, then (optionally) score them; everything lands in one folder.

    PYTHONPATH=. python -m restore_cli.training.train_all TRAIN_DIR OUT_DIR [--minutes 7.5] [--eval-dir VAL_DIR]

OUT_DIR afterwards:
    <preset>.safetensors   the float16 exports (one per preset)
    train.log              the combined log: every run's lines as they happened, tracebacks, evaluation, summary
    summary.json           per preset: file, sha256, bytes, params, iterations, validation PSNR, evaluation scores
    runs/<preset>/         scratch: per-run JSON-lines log, fp32 checkpoint, stdout (not worth keeping)

Each run gets a wall-clock budget (`--minutes`, after which it stops and exports by itself); the driver sends
SIGTERM 45 s after the budget and SIGKILL 30 s later to anything still running. Exit status 0 iff every export exists.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from . import configs
from .eval_weights import TASK_EVALS

REPO_ROOT = Path(__file__).resolve().parents[2]


class CombinedLog:
    """Lines from several processes into one file (and stdout), each prefixed, in arrival order."""

    def __init__(self, path: Path) -> None:
        self.f = path.open("a")
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            self.f.write(text + "\n")
            self.f.flush()
            print(text, flush=True)

    def pump(self, prefix: str, stream: IO[str], copy: Path) -> threading.Thread:
        def run() -> None:
            with copy.open("a") as c:
                for raw in stream:
                    line = raw.rstrip("\n")
                    c.write(line + "\n")
                    c.flush()
                    # the trainer's own lines already name the run; others (warnings, tracebacks) get a prefix
                    self.line(line if line.startswith("[") and f"] {prefix}:" in line else f"{prefix}| {line}")

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _last_event(jsonl: Path, kind: str) -> dict[str, Any] | None:
    if not jsonl.is_file():
        return None
    found = None
    for line in jsonl.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == kind:
            found = rec
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m restore_cli.training.train_all", description=__doc__.split("\n")[0])
    ap.add_argument("train_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--minutes", type=float, default=7.5, help="training budget per run (they run concurrently)")
    ap.add_argument("--presets", nargs="+", default=list(configs.BUNDLED), choices=list(configs.PRESETS))
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per run (default cores / runs)")
    ap.add_argument("--eval-dir", default=None, help="clean validation images (Kodak24) to score the exports on")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig override passed to every run (e.g. a CPU smoke test: --set batch=2)")
    ap.add_argument("--init-dir", default=None,
                    help="continue each run from <init-dir>/<preset>.ckpt.safetensors (an earlier run's checkpoint "
                         "or exported weights)")
    ap.add_argument("--eval-limit", type=int, default=None, help="score only the first N images")
    ap.add_argument("--eval-crop", type=int, default=None, help="centre-crop evaluation images to N x N")
    args = ap.parse_args(argv)

    out = Path(args.out_dir).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    train_dir = str(Path(args.train_dir).resolve())
    threads = args.threads or max(1, (os.cpu_count() or 4) // len(args.presets))
    log = CombinedLog(out / "train.log")
    t0 = time.time()
    log.line(f"== train_all: {len(args.presets)} runs x {args.minutes} min, {threads} CPU threads each, "
             f"train {train_dir}, out {out}")

    procs: dict[str, subprocess.Popen[str]] = {}
    pumps = []
    for name in args.presets:
        run_dir = out / "runs" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-u", "-m", "restore_cli.training.train", "--preset", name, "--train-dir", train_dir,
               "--out", str(run_dir), "--export", str(out / f"{name}.safetensors"), "--minutes", str(args.minutes),
               "--threads", str(threads)]
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        for item in args.set:
            cmd += ["--set", item]
        if args.init_dir and (Path(args.init_dir) / f"{name}.ckpt.safetensors").is_file():
            cmd += ["--set", f"init={(Path(args.init_dir) / f'{name}.ckpt.safetensors').resolve()}"]
        log.line(f"== start {name}: {' '.join(cmd[2:])}")
        p = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(threads), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
        procs[name] = p
        assert p.stdout is not None
        pumps.append(log.pump(name, p.stdout, run_dir / "stdout.log"))

    term_at = t0 + args.minutes * 60 + 45
    kill_at = term_at + 30
    termed: set[str] = set()
    killed: set[str] = set()

    def forward(signum: int, frame: Any) -> None:
        # stopped from outside: let every run stop cleanly and export what it has
        nonlocal term_at, kill_at
        log.line(f"== train_all got {signal.Signals(signum).name}: stopping the runs (they export first)")
        term_at, kill_at = time.time(), time.time() + 30

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while any(p.poll() is None for p in procs.values()):
        now = time.time()
        for name, p in procs.items():
            if p.poll() is not None:
                continue
            if now >= kill_at and name not in killed:
                killed.add(name)
                log.line(f"== {name}: still running after SIGTERM, SIGKILL")
                p.kill()
            elif now >= term_at and name not in termed:
                termed.add(name)
                log.line(f"== {name}: over budget, SIGTERM (it exports on SIGTERM)")
                p.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    for t in pumps:
        t.join(timeout=5)

    summary: dict[str, Any] = {"minutes": args.minutes, "wall_seconds": round(time.time() - t0, 1), "models": {}}
    ok = True
    for name, p in procs.items():
        export = _last_event(out / "runs" / name / "log.jsonl", "export")
        start = _last_event(out / "runs" / name / "log.jsonl", "start")
        path = out / f"{name}.safetensors"
        good = p.returncode == 0 and export is not None and path.is_file()
        ok &= good
        summary["models"][name] = {
            "status": "ok" if good else f"failed (exit {p.returncode})",
            "file": path.name if path.is_file() else None,
            **({k: export[k] for k in ("sha256", "bytes", "params", "iterations", "schedule_iters", "val_psnr",
                                       "val_psnr_input") if k in export} if export else {}),
            "config": {k: v for k, v in ((start or {}).get("config") or {}).items()
                       if k in ("arch", "arch_kwargs", "task", "scale", "degradation", "crop", "batch", "lr", "seed")},
        }
        log.line(f"== {name}: {summary['models'][name]['status']}"
                 + (f", {export['iterations']} it, val {export.get('val_psnr', float('nan')):.2f} dB "
                    f"(input {export.get('val_psnr_input', float('nan')):.2f}), sha256 {export['sha256']}"
                    if export else ""))

    if args.eval_dir:
        evals = []
        for name in args.presets:
            path = out / f"{name}.safetensors"
            if not path.is_file():
                continue
            cfg = configs.PRESETS[name]
            jpath = out / "runs" / name / "eval.json"
            cmd = [sys.executable, "-u", "-m", "restore_cli.training.eval_weights", str(path), "--folder",
                   str(Path(args.eval_dir).resolve()), "--json", str(jpath)]
            for d in TASK_EVALS[cfg.task][cfg.scale]:
                cmd += ["--degradation", d]
            if args.eval_limit:
                cmd += ["--limit", str(args.eval_limit)]
            if args.eval_crop:
                cmd += ["--crop", str(args.eval_crop)]
            p = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(threads), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1)
            assert p.stdout is not None
            evals.append((name, p, jpath, log.pump(f"eval {name}", p.stdout, out / "runs" / name / "eval.log")))
        for name, p, jpath, t in evals:
            p.wait()
            t.join(timeout=5)
            if p.returncode == 0 and jpath.is_file():
                summary["models"][name]["eval"] = [
                    {"degradation": r["degradation"], "folder": r["folder"], **r["summary"]}
                    for r in json.loads(jpath.read_text())
                ]
            else:
                summary["models"][name]["eval"] = f"failed (exit {p.returncode})"

    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.line(f"== done in {(time.time() - t0) / 60:.1f} min: {'all exported' if ok else 'SOME RUNS FAILED'}; "
             f"keep *.safetensors, train.log, summary.json; runs/ is scratch")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
