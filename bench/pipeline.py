"""End-to-end pipeline time vs pure inference: a folder of 1080p PNGs (bundled deblur model) and a 1080p clip (bundled
SPAN x2), through the same `pipeline.run` the CLI uses, against the model's forward passes alone on the same frames.

    python3 -m bench.pipeline --out bench/results [--work /tmp/restore-bench] [--batch 4] [--small]

Inputs are generated under --work: 48 PNGs made from samples/ (upscaled, cropped to 1920x1080, light grain so they
compress like photos) and a 10 s 24 fps H.264 + AAC clip of a slow pan (encoded with PyAV). Both runs are warmed up
first (cuDNN, the auto tile probe), then timed:

- end to end: wall time of `pipeline.run` over the files: decode, inference, encode and writing, overlapped by the
  three stages (the outputs are written under --work);
- pure inference: the model's forward passes only, on the same frames already on the device in its precision, with
  the tiling and batch size the pipeline used, synchronised at the end.

Writes OUT/pipeline.json and OUT/pipeline.md (GPU, versions, date, CPU cores). `--small` is a CPU smoke test (a few
small pictures). The clip needs PyAV (`pip install av`, or the wheel you carry); `--no-video` skips it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import environment, write_results

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*/*.png"))


def _need_av() -> Any:
    try:
        import av
    except ImportError:
        sys.exit("bench.pipeline: the clip needs PyAV, which is not importable here. Install it "
                 "(pip install av, or pip install ./av-<version>-<platform>.whl) or pass --no-video.")
    return av


# --------------------------------------------------------------------------- inputs


def _canvas(index: int, height: int, width: int) -> np.ndarray:
    """Two samples side by side, upscaled to cover height x width (and more, for panning)."""
    import cv2
    from PIL import Image

    a, b = (np.asarray(Image.open(SAMPLES[(index + k) % len(SAMPLES)]).convert("RGB")) for k in (0, 1))
    side = max(height, (width + 1) // 2)
    a, b = (cv2.resize(x, (side, side), interpolation=cv2.INTER_CUBIC) for x in (a, b))
    return np.concatenate([a, b], axis=1)


def _grain(img: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def make_images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo{i:03d}.png"
        if not path.exists():
            canvas = _canvas(i, height, width)
            x = (i * 37) % max(1, canvas.shape[1] - width)
            Image.fromarray(_grain(canvas[:height, x:x + width], i)).save(path, compress_level=1)
        paths.append(path)
    return paths


def make_clip(path: Path, frames: int, height: int, width: int) -> Path:
    """An H.264 + AAC MP4: a slow pan over a sample canvas with moving grain."""
    av = _need_av()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = _canvas(0, height + frames, width + 2 * frames)
    tmp = path.with_name(".tmp-" + path.name)
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=24)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.options = {"preset": "veryfast", "crf": "20"}
        aus = out.add_stream("aac", rate=48000)
        aus.layout = "stereo"
        n = 48000 * frames // 24
        t = np.arange(n) / 48000
        tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
        samples = np.stack([tone, tone])
        for start in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="fltp", layout="stereo")
            af.sample_rate, af.pts = 48000, start
            for packet in aus.encode(af):
                out.mux(packet)
        for packet in aus.encode(None):
            out.mux(packet)
        for i in range(frames):
            crop = canvas[i:i + height, 2 * i:2 * i + width]
            vf = av.VideoFrame.from_ndarray(_grain(crop, 1000 + i), format="rgb24")
            vf = vf.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
            vf.pts, vf.time_base = i, Fraction(1, 24)
            for packet in vs.encode(vf):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- measuring


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pure_inference(loaded: Any, frames: list[np.ndarray], batch: int, tile: int) -> float:
    """Seconds of the model's forward passes alone over `frames` (H x W x 3 uint8): on the device, in the model's
    precision and memory format, cut into the windows the engine used (`tile` 0: whole frames), `batch` per pass."""
    from restore_cli.engine.tiles import pad_reflect, plan_tiles

    runner, spec = loaded.runner, loaded.spec
    h, w = frames[0].shape[:2]
    plan = plan_tiles(h, w, tile=tile, overlap=runner.overlap, margin=runner.margin, multiple_of=spec.multiple_of,
                      scale=spec.scale, min_size=spec.min_size)
    windows = []
    for f in frames:
        x = pad_reflect(torch.from_numpy(f).permute(2, 0, 1)[None].float().div_(255), *plan.pad)
        for _, _, y, x0 in plan.positions():
            wy, wx = plan.window_origin(y, x0)
            windows.append(x[:, :, wy:wy + plan.window_h, wx:wx + plan.window_w].to(runner.device, runner.dtype))
    stack = torch.cat(windows)
    if runner.channels_last:
        stack = stack.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        runner.call(runner.model, stack[:batch])  # warm-up
        _sync()
        t = time.perf_counter()
        for b in range(0, len(stack), batch):
            runner.call(runner.model, stack[b:b + batch])
        _sync()
        return time.perf_counter() - t


def end_to_end(loaded: Any, inputs: list[Path], out: Path, settings: Any) -> tuple[float, list[Any]]:
    from restore_cli import batch, pipeline

    shutil.rmtree(out, ignore_errors=True)
    jobs = []
    for path in inputs:
        jobs += batch.collect([str(path)], out, recursive=False)
    _sync()
    t = time.perf_counter()
    result = pipeline.run(jobs, loaded, settings)
    _sync()
    wall = time.perf_counter() - t
    bad = [r for r in result.records if r.status != "ok"]
    if bad:
        sys.exit(f"bench.pipeline: {bad[0].input}: {bad[0].status}: {bad[0].error}")
    return wall, result.records


def _row(case: str, loaded: Any, frames: int, size: tuple[int, int], batch: int, tile: int, wall: float,
         pure: float, records: list[Any], **extra: Any) -> dict[str, Any]:
    decode = sum(r.decode_ms for r in records) / 1000
    infer = sum(r.infer_ms for r in records) / 1000
    encode = sum(r.encode_ms for r in records) / 1000
    s = loaded.spec.scale
    return {
        "case": case, "model": loaded.name, "frames": frames, "size": f"{size[1]}x{size[0]}",
        "out": f"{size[1] * s}x{size[0] * s}", "precision": str(loaded.dtype).removeprefix("torch."),
        "batch": batch, "tile": tile or "whole", "end_to_end_s": round(wall, 3), "pure_inference_s": round(pure, 3),
        "overhead_pct": round(100 * (wall / pure - 1), 1), "end_to_end_fps": round(frames / wall, 1),
        "pure_fps": round(frames / pure, 1),
        # busy time of each stage, summed over its workers: what bounds the run when it is not the model
        "decode_busy_s": round(decode, 2), "infer_busy_s": round(infer, 2), "encode_busy_s": round(encode, 2),
        **extra,
    }


def bench_images(args: argparse.Namespace, work: Path, device: str) -> dict[str, Any]:
    from restore_cli import api, pipeline
    from restore_cli.io import images

    h, w = args.size
    paths = make_images(work / "photos", args.images, h, w)
    loaded = api.load_model("nafnet-s-deblur", device=device, batch=args.batch)
    warm = work / "photos_warm"
    end_to_end(loaded, paths[:max(2, args.batch)], warm, pipeline.Settings())
    wall, records = end_to_end(loaded, paths, work / "photos_restored", pipeline.Settings())
    tile = records[0].tile or 0
    frames = [images.read_image(p).pixels for p in paths]
    pure = pure_inference(loaded, frames, args.batch, tile)
    return _row("folder of PNGs", loaded, len(paths), (h, w), args.batch, tile, wall, pure, records)


def bench_video(args: argparse.Namespace, work: Path, device: str) -> dict[str, Any]:
    from restore_cli import api, pipeline
    from restore_cli.io import video

    h, w = args.size
    clip = make_clip(work / "clip" / f"pan_{w}x{h}_{args.frames}f.mp4", args.frames, h, w)
    loaded = api.load_model("span-s-x2", device=device, batch=args.batch)
    options = pipeline.VideoOptions(codec=args.codec, preset=args.preset)
    warm = pipeline.VideoOptions(codec=args.codec, preset=args.preset, frames=pipeline.FrameRange(stop=2 * args.batch))
    end_to_end(loaded, [clip], work / "clip_warm", pipeline.Settings(video=warm))
    wall, records = end_to_end(loaded, [clip], work / "clip_restored", pipeline.Settings(video=options))
    rec = records[0]
    frames = [f.pixels for f in video.read_frames(clip)]
    pure = pure_inference(loaded, frames, args.batch, rec.tile or 0)
    return _row("1080p clip", loaded, len(frames), (h, w), args.batch, rec.tile or 0, wall, pure, records,
                codec=f"{rec.codec} {args.preset}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results", help="where pipeline.json and pipeline.md go")
    ap.add_argument("--work", default="/tmp/restore-bench-pipeline", help="generated inputs and the outputs")
    ap.add_argument("--batch", type=int, default=4, help="pictures per forward pass (--batch)")
    ap.add_argument("--codec", default="libx264", help="the clip's output encoder")
    ap.add_argument("--preset", default="ultrafast", help="the encoder's speed preset")
    ap.add_argument("--no-video", action="store_true", help="only the folder of PNGs (no PyAV needed)")
    ap.add_argument("--small", action="store_true", help="CPU smoke test: a few 320x180 pictures")
    args = ap.parse_args()
    if not args.no_video:
        _need_av()  # before minutes of work, not after
    device = "cuda" if torch.cuda.is_available() and not args.small else "cpu"
    args.size = (180, 320) if args.small else (1080, 1920)
    args.images, args.frames = (4, 8) if args.small else (48, 240)
    work = Path(args.work)
    rows = [bench_images(args, work, device)]
    if not args.no_video:
        rows.append(bench_video(args, work, device))
    env = environment()
    env["cpu_cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not args.no_video:
        av = _need_av()
        env["pyav"] = av.__version__
        env["libavcodec"] = ".".join(map(str, av.library_versions["libavcodec"]))
    columns = list(rows[0]) + (["codec"] if len(rows) > 1 else [])
    write_results(Path(args.out), "pipeline" + ("_small" if args.small else ""), env, rows, columns)
    for r in rows:
        print(f"{r['case']}: end to end {r['end_to_end_s']} s, pure inference {r['pure_inference_s']} s "
              f"({r['overhead_pct']:+.1f} %)")


if __name__ == "__main__":
    main()
