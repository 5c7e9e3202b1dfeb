"""GPU throughput of one model on one frame size: the incumbents' tiling loop, one eager forward, and the engine.

What `restore bench` and bench/throughput.py measure, per model:
- `loop512`: the Real-ESRGAN style loop (tiles of 512 px with 10 px of context, one at a time, each output
  cropped and pasted), the frame and the result staying on the GPU: the baseline, in the model's precision;
- `eager`: one eager forward of the whole frame (on the GPU, padded to the arch's multiple);
- `module <mode>`: the same forward captured for the frame's shape (CUDA graph, torch.compile, both);
- `api ...`: the engine through the API, uint8 HWC frame in and out, so transfers and conversions count, with each
  optimisation on or off (compile mode, tiles of 512 with seams blended, tiles per forward, channels_last,
  precision).
Times are medians of CUDA-event timings after a warm-up (perf_counter on the CPU). Weights are random unless a
weights file is named: speed does not depend on their values, and the frame is a natural picture scaled up, so
content-aware models (CAMixerSR's masks, MoCE-IR's routing) take their usual paths.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import archs
from archs import ArchSpec

from . import api, presets
from .engine import compiled
from .engine.runner import Runner, pick_dtype, prepare_model
from .engine.tiles import pad_reflect, round_up
from .errors import UsageError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@dataclass
class Variant:
    name: str
    ms: float | None = None
    peak_gib: float | None = None
    compile_s: float | None = None
    # largest difference from the eager result, in 1/255 steps: module variants against `eager`, engine variants
    # against `api` (both quantised), so a fast path that changes the picture shows here
    diff255: float | None = None
    note: str = ""


@dataclass
class Result:
    label: str
    arch: str
    frame: tuple[int, int]  # (width, height) of the input frame
    scale: int
    precision: str
    params: int
    gmacs: float  # multiply-accumulates of one frame (convolutions and linear layers), in billions
    channels_last: bool = False
    variants: list[Variant] = field(default_factory=list)

    def get(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def best(self, prefix: str) -> Variant | None:
        timed = [v for v in self.variants if v.name.startswith(prefix) and v.ms is not None]
        return min(timed, key=lambda v: v.ms or 0.0) if timed else None


# -- what to run -------------------------------------------------------------------------------------------------
def build_model(name: str) -> tuple[str, nn.Module, ArchSpec, bool]:
    """(label, module, spec, random weights?) for a preset name, an architecture name, or a weights file."""
    from . import loading, resolve

    path = Path(name).expanduser()
    if resolve.looks_like_file(name) or path.is_file():
        if not path.is_file():
            raise UsageError(f"{name}: weights file not found")
        sd = loading.read_state_dict(path)
        module = loading.build_from_state_dict(sd, where=str(path))
        return path.name, module, archs.spec(module.arch_id, **module.arch_kwargs), False
    try:
        preset = presets.get(name)
        arch, kwargs, label = preset.arch, dict(preset.kwargs), preset.name
    except UsageError:
        try:
            arch, kwargs, label = archs.entry(name).id, {}, name
        except KeyError:
            raise UsageError(f"{name}: not a preset, an architecture or a weights file") from None
    torch.manual_seed(0)
    module = archs.build(arch, **kwargs)
    return label, module, archs.spec(arch, **kwargs), True


def natural_frame(width: int, height: int, channels: int = 3) -> np.ndarray:
    """A bundled sample picture scaled to width x height (uint8 HWC): real edges and flat areas, unlike noise."""
    import cv2

    from .io.images import read_image

    picture = read_image(sorted(SAMPLES.glob("*/*.png"))[0]).pixels[..., :3]
    frame = cv2.resize(picture, (width, height), interpolation=cv2.INTER_CUBIC)
    if channels == 1:
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[..., None]
    return np.ascontiguousarray(frame)


def parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise UsageError(f"--size takes WIDTHxHEIGHT, e.g. 1920x1080, not {text!r}")
    return int(w), int(h)


def default_size(spec: ArchSpec) -> tuple[int, int]:
    """960x540 for upscalers (4K out at x4), 1920x1080 for restoration."""
    return (960, 540) if spec.scale > 1 else (1920, 1080)


# -- timing ------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, *, repeat: int = 5,
            budget_s: float = 2.0) -> tuple[float, float | None]:
    """(median milliseconds, peak GiB allocated) of fn(): one warm-up call, then up to `repeat` timed calls, fewer
    once they took `budget_s` (at least 3, or 2 for calls over a second; never more than `repeat`). CUDA events on
    the GPU, so only the GPU's timeline counts, idle gaps included."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    while len(times) < repeat and (len(times) < min(2 if times and times[0] > 1000 else 3, repeat)
                                   or sum(times) < budget_s * 1000):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def matmul_peak_tflops(device: torch.device, n: int = 8192) -> float | None:
    """Measured bf16 dense matrix rate (TFLOP/s): the ceiling the models' achieved rates are compared with."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms, _ = measure(lambda: torch.mm(a, b), device, repeat=20)
    return 2 * n**3 / (ms / 1000) / 1e12


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "cpu": platform.processor() or "?",
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   cudnn=torch.backends.cudnn.version(), driver=_driver_version())
    return env


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- the baseline ------------------------------------------------------------------------------------------------
def tile_loop(model: nn.Module, image: torch.Tensor, *, scale: int, tile: int = 512, pad: int = 10,
              multiple_of: int = 1) -> torch.Tensor:
    """The incumbents' loop (Real-ESRGAN's `tile_process`, as chaiNNer and most GUIs run it): the image cut into
    tile x tile pieces, each run one at a time with `pad` pixels of context where the image has them (plus reflect
    padding to the arch's multiple), the context cropped off the output and the piece pasted in. No blending."""
    h, w = image.shape[-2:]
    out: torch.Tensor | None = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - pad, 0), max(x0 - pad, 0)
            py1, px1 = min(y1 + pad, h), min(x1 + pad, w)
            piece = image[:, :, py0:py1, px0:px1]
            ph, pw = piece.shape[-2:]
            piece = pad_reflect(piece, 0, round_up(pw, multiple_of) - pw, 0, round_up(ph, multiple_of) - ph)
            res = model(piece)
            if out is None:
                out = res.new_empty(1, res.shape[1], h * scale, w * scale)
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                res[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    assert out is not None
    return out


# -- one model ---------------------------------------------------------------------------------------------------
@dataclass
class Options:
    repeat: int = 5
    batch: int | None = None  # tiles per forward in the tiled engine variants (None: from free memory)
    frames: int = 4  # frames per forward in the video-like variant (run_many)
    modes: tuple[str, ...] = ("graph", "auto")  # capture modes to time; "auto": the descriptor's own
    compile_budget_s: float = math.inf  # skip inductor compiles once this much compile time has been spent
    precision: str = "auto"
    flips: bool = True  # also time channels_last flipped and the other half precision through the API


def bench_model(label: str, model: nn.Module, spec: ArchSpec, size: tuple[int, int], device: torch.device,
                opts: Options, log: Callable[[str], None] = lambda s: None) -> Result:
    width, height = size
    dtype = pick_dtype(opts.precision, spec, device)
    channels_last = spec.channels_last and device.type == "cuda"
    master = copy.deepcopy(model).eval()  # CPU float32 copy for the variants in another dtype or layout
    main = prepare_model(model, device, dtype, channels_last)
    from .complexity import macs_per_megapixel

    side = max(64, round_up(spec.min_size, spec.multiple_of), 4 * spec.multiple_of)
    gmacs = macs_per_megapixel(main, in_channels=spec.in_channels, side=side) * width * height / 1e6 / 1e9
    res = Result(label, spec.id, size, spec.scale, str(dtype).removeprefix("torch."),
                 sum(p.numel() for p in main.parameters()), gmacs, channels_last)
    frame8 = natural_frame(width, height, spec.in_channels)
    x = torch.from_numpy(frame8).permute(2, 0, 1)[None].float().div(255)
    x = pad_reflect(x, 0, round_up(width, spec.multiple_of) - width, 0, round_up(height, spec.multiple_of) - height)
    x = x.to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def add(v: Variant) -> None:
        res.variants.append(v)
        log(f"{label} {v.name}: " + (f"{v.ms:.1f} ms" if v.ms is not None else "-")
            + (f" (compile {v.compile_s:.1f} s)" if v.compile_s else "") + (f" {v.note}" if v.note else ""))

    def timed(name: str, fn: Callable[[], object], per: int = 1, **extra: Any) -> None:
        try:
            with torch.inference_mode():
                ms, peak = measure(fn, device, repeat=opts.repeat)
            add(Variant(name, ms / per, peak, **extra))
        except Exception as e:  # one variant failing (OOM, a compile error) must not lose the others
            if device.type == "cuda":
                torch.cuda.empty_cache()
            add(Variant(name, note=f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"))

    torch.backends.cudnn.benchmark = False  # eager as users run it; captures turn it on for their fixed shapes
    timed("loop512", lambda: tile_loop(main, x, scale=spec.scale, multiple_of=spec.multiple_of))
    timed("eager", lambda: main(x))
    with torch.inference_mode():
        eager_out = main(x).float().clamp(0, 1)

    def diff(out: torch.Tensor, ref: torch.Tensor) -> float:
        return round(float((out.float() - ref.float()).abs().max()) * 255, 2)

    # whole-frame captures, cheapest first; the engine variants reuse them (same module, same shape)
    statics: dict[str, compiled.StaticForward] = {}
    spent: dict[str, float] = {}  # capture seconds per mode
    wanted = [spec.compile_mode if m == "auto" else m for m in opts.modes]
    for mode in dict.fromkeys(m for m in wanted if m in compiled.MODES and device.type == "cuda"):
        left = opts.compile_budget_s - sum(spent.values())
        if mode != "graph" and not any(m != "graph" for m in statics) and estimate_compile_s(main) > left:
            add(Variant(f"module {mode}", note=f"skipped: compiling takes ~{estimate_compile_s(main):.0f} s, "
                                               f"{max(left, 0):.0f} s of the compile budget left"))
            continue
        static = compiled.StaticForward(main, lambda m, t: m(t), mode)  # type: ignore[arg-type]
        try:
            with torch.inference_mode():
                secs = static.capture(x)
        except Exception as e:
            add(Variant(f"module {mode}", note=f"capture failed: {type(e).__name__}: {str(e)[:100]}"))
            static.release()
            continue
        statics[mode] = static
        spent[mode] = secs if mode != "graph" else 0.0
        with torch.inference_mode():
            d = diff(static(x).float().clamp(0, 1), eager_out)
        timed(f"module {mode}", lambda s=static: s(x), compile_s=secs, diff255=d)
    best_mode = min(statics, key=lambda m: res.get(f"module {m}").ms or math.inf,  # type: ignore[union-attr]
                    default=None)

    api_out: list[torch.Tensor] = []

    def engine(name: str, module: nn.Module, *, tile: int | None = None, batch: int | None = 1, mode: str = "off",
               cl: bool = channels_last, dt: torch.dtype = dtype, static: compiled.StaticForward | None = None,
               frames: int = 0) -> None:
        """One engine variant through the API; `frames`: that many copies of the frame through `run_many` (as a
        video's frames go: batched forwards, results copied down while the next batch computes), per frame."""
        torch.backends.cudnn.benchmark = mode != "off"  # as a run with this --compile has it
        runner = Runner(module, spec, device=device, dtype=dt, tile=tile, overlap=16, batch=batch,
                        channels_last=cl, compile=mode)
        if static is not None:
            runner.use_captured(static)
        loaded = api.LoadedModel(name=label, runner=runner, spec=spec, weights=Path("(random)"))
        try:
            out, first = api.restore_image(loaded, frame8)
        except Exception as e:
            add(Variant(name, note=f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"))
            return
        pixels = torch.from_numpy(out.astype(np.float32) / 255)
        if not api_out:
            api_out.append(pixels)  # the first engine variant (compile off, whole frame) is the reference
        note = "; ".join([*([f"{first.tiles} tiles, batch {first.batch}"] if first.tiles > 1 else []), *first.notes])
        if not frames:
            timed(name, lambda: api.restore_image(loaded, frame8), compile_s=first.compile_s or None,
                  diff255=diff(pixels, api_out[0]), note=note)
            return
        from . import pixels as px

        prepared = px.prepare(frame8, spec.in_channels)

        def video() -> list[np.ndarray]:
            outs, stats = runner.run_many([prepared.tensor] * frames, quantize=prepared.quantize, wait=False)
            for st in stats:
                st.wait()
            return [px.finish(prepared, o, spec.scale) for o in outs]

        try:  # the first call captures this batch shape (its compile time is reported, not timed)
            outs, stats = runner.run_many([prepared.tensor] * frames, quantize=prepared.quantize)
        except Exception as e:
            add(Variant(name, note=f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"))
            return
        compile_s = sum(st.compile_s for st in stats)
        last = px.finish(prepared, outs[-1], spec.scale)
        d = diff(torch.from_numpy(last.astype(np.float32) / 255), api_out[0])
        timed(name, video, diff255=d, compile_s=compile_s or None, per=frames)

    engine("api", main)
    if best_mode is not None:
        engine(f"api {best_mode}", main, mode=best_mode, static=statics[best_mode])
    frames_mode = "graph" if "graph" in statics else "off"  # a batch is another shape: graphs capture it cheaply
    frames_name = f"api frames x{opts.frames}" + (f" {frames_mode}" if frames_mode != "off" else "")
    eager_ms = (res.get("eager") or Variant("")).ms
    if eager_ms is not None and eager_ms * opts.frames > 2000:
        add(Variant(frames_name, note="skipped: one frame already fills the GPU (and the time budget)"))
    else:
        engine(frames_name, main, batch=opts.frames, mode=frames_mode, static=statics.get(frames_mode),
               frames=opts.frames)
    engine("api tile512", main, tile=512, batch=opts.batch)
    if opts.batch != 1:
        engine("api tile512 batch=1", main, tile=512, batch=1)  # what batching tiles buys
    if best_mode is not None:
        # tiles are another shape: inductor compiles again, so only within the budget
        left = opts.compile_budget_s - sum(spent.values())
        tiled_mode = best_mode if best_mode == "graph" or spent.get(best_mode, 0.0) < left else "graph"
        if tiled_mode in statics:
            engine(f"api tile512 {tiled_mode}", main, tile=512, batch=opts.batch, mode=tiled_mode,
                   static=statics[tiled_mode])
    for s in statics.values():
        s.release()
    if opts.flips and device.type == "cuda":
        engine(f"api channels_last={not channels_last}", copy.deepcopy(master), cl=not channels_last)
        other = _other_precision(spec, dtype)
        if other is not None:
            engine(f"api {str(other).removeprefix('torch.')}", copy.deepcopy(master), dt=other)
    return res


def estimate_compile_s(model: nn.Module) -> float:
    """A rough cold-cache inductor compile time, from the number of leaf modules (fitted on issue 13's H100 figures:
    SPAN x4 14 s, NAFNet-64 GoPro 72 s); errs long for plain conv stacks (PLKSR x4: 17 s measured)."""
    leaves = sum(1 for m in model.modules() if not any(True for _ in m.children()))
    return 10.0 + 0.12 * leaves


def _other_precision(spec: ArchSpec, dtype: torch.dtype) -> torch.dtype | None:
    """The other 16-bit type when the arch allows it, else float32 (how much half precision buys)."""
    if dtype is torch.float16 and spec.bf16:
        return torch.bfloat16
    if dtype is torch.bfloat16 and spec.fp16:
        return torch.float16
    return torch.float32 if dtype is not torch.float32 else None


# -- reporting ---------------------------------------------------------------------------------------------------
COLUMNS = ["model", "frame", "precision", "variant", "ms", "MP/s", "TFLOP/s", "% peak", "x loop", "peak GiB",
           "compile s", "diff /255", "note"]


def rows(res: Result, peak_tflops: float | None) -> list[dict[str, Any]]:
    loop = res.get("loop512")
    out = []
    for v in res.variants:
        row: dict[str, Any] = {"model": res.label, "frame": f"{res.frame[0]}x{res.frame[1]}",
                               "precision": res.precision, "variant": v.name, "note": v.note}
        if v.ms is not None:
            tflops = 2 * res.gmacs * 1e9 / (v.ms / 1000) / 1e12
            row.update({"ms": round(v.ms, 2), "MP/s": round(res.frame[0] * res.frame[1] / 1e6 / (v.ms / 1000), 2),
                        "TFLOP/s": round(tflops, 1),
                        "% peak": round(100 * tflops / peak_tflops, 1) if peak_tflops else "",
                        "x loop": round(loop.ms / v.ms, 2) if loop and loop.ms else ""})
        if v.peak_gib is not None:
            row["peak GiB"] = round(v.peak_gib, 2)
        if v.compile_s:
            row["compile s"] = round(v.compile_s, 1)
        if v.diff255 is not None:
            row["diff /255"] = v.diff255
        out.append({c: row[c] for c in COLUMNS if c in row})
    return out


def summary(res: Result) -> dict[str, Any]:
    """One line per model: the figures issue 13's targets are about."""
    loop, whole = res.get("loop512"), res.best("module") or res.get("eager")
    eager = res.get("eager")
    if eager and eager.ms is not None and whole and (whole.ms is None or eager.ms < whole.ms):
        whole = eager
    api_best = min((v for v in res.variants if v.name.startswith("api") and v.ms is not None),
                   key=lambda v: v.ms or 0.0, default=None)
    tiled = res.best("api tile512")

    def ms(v: Variant | None) -> float | str:
        return round(v.ms, 2) if v and v.ms is not None else ""

    def ratio(a: Variant | None, b: Variant | None) -> float | str:
        return round(a.ms / b.ms, 2) if a and b and a.ms and b.ms else ""

    return {"model": res.label, "frame": f"{res.frame[0]}x{res.frame[1]}", "precision": res.precision,
            "descriptor": suggest(res),
            "GMAC/frame": round(res.gmacs, 1), "loop512 ms": ms(loop), "eager ms": ms(res.get("eager")),
            "best whole ms": ms(whole), "best whole": whole.name if whole else "", "api ms": ms(res.get("api")),
            "best api ms": ms(api_best), "best api": api_best.name if api_best else "",
            "api speed-up vs loop": ratio(loop, api_best), "tile512 ms": ms(tiled),
            "tile512 / best whole": ratio(tiled, whole)}


def suggest(res: Result, margin: float = 0.95) -> str:
    """ArchSpec fields these timings argue for (part 3 of issue 13): the capture mode with the fastest whole-frame
    forward, and channels_last / precision where flipping them made the API at least 5% faster. Precision changes
    still need tests/test_throughput_cuda.py's accuracy check."""
    eager = res.get("eager")
    modes = {v.name.split(" ", 1)[1]: v.ms for v in res.variants if v.name.startswith("module ") and v.ms}
    mode = min(modes, key=lambda m: modes[m]) if modes else "none"
    if eager and eager.ms and (not modes or modes[mode] > margin * eager.ms):
        mode = "none"
    out = [f"compile_mode={mode}"]
    api_ms = (res.get("api") or Variant("")).ms
    for v in res.variants:
        if not (api_ms and v.ms and v.ms < margin * api_ms):
            continue
        if v.name.startswith("api channels_last="):
            out.append(v.name.removeprefix("api "))
        elif v.name in ("api float16", "api bfloat16", "api float32"):
            out.append("gpu_precision=" + {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[v.name[4:]])
    return ", ".join(out)


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None
