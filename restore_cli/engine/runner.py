"""Run a model over a tile plan: device and precision, batching, pinned transfers, OOM back-off, auto tile size."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from archs import ArchSpec

from ..errors import InterruptError, RestoreError, UsageError
from .tiles import TilePlan, pad_reflect, plan_tiles, ramp_1d, round_up

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_TILE = 512
MIN_TILE = 32
MAX_AUTO_TILE = 2048


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} asked for, but no CUDA GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s) present)")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return dev


def pick_dtype(precision: str, spec: ArchSpec, device: torch.device) -> torch.dtype:
    """auto: fp16 where the arch allows it on a GPU (its 11-bit mantissa suits 16-bit output), else bf16, fp32."""
    if precision not in ("auto", *DTYPES):
        raise UsageError(f"unknown precision {precision!r} (use auto, fp32, fp16 or bf16)")
    if device.type != "cuda":
        if precision in ("fp16",):
            raise UsageError("fp16 needs a CUDA GPU; use fp32 or bf16 on the CPU")
        return DTYPES["bf16"] if precision == "bf16" else torch.float32
    if precision == "auto":
        if spec.fp16:
            return torch.float16
        if spec.bf16 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtype = DTYPES[precision]
    if (dtype is torch.float16 and not spec.fp16) or (dtype is torch.bfloat16 and not spec.bf16):
        raise UsageError(f"{spec.id} does not support {precision}; use fp32 or auto")
    return dtype


def choose_tile(height: int, width: int, *, per_px: float, budget: float, margin: int, batch: int, cap: int) -> int:
    """Auto tile size: 0 (whole image) when the whole image fits the memory budget, else the largest square core
    whose window (core + 2 margins) fits it, within [MIN_TILE, cap]."""
    if per_px * height * width <= budget:
        return 0
    side = int(math.sqrt(budget / (per_px * batch))) - 2 * margin
    return max(MIN_TILE, min(side, cap))


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e))


@dataclass
class RunStats:
    tile: int = 0  # core tile size used (0: whole image)
    tiles: int = 0
    retries: int = 0
    infer_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    # What the model reported about each forward (e.g. AdaRevID's exit, MoCE-IR's experts), one entry per batch.
    model_info: list[dict] = field(default_factory=list)
    # run_many(wait=False) on a GPU: the output is still on its way to host memory until `wait()`
    pending: _Pending | None = None

    def wait(self) -> None:
        """Block until the output tensor holds its data (a no-op unless run_many(wait=False) returned it)."""
        if self.pending is not None:
            self.infer_s = self.pending.wait()
            self.pending = None


class _Pending:
    """A batch's device-to-host copy in flight, and the forward's GPU time (shared by the batch's images)."""

    def __init__(self, start: torch.cuda.Event, end: torch.cuda.Event, copied: torch.cuda.Event, count: int) -> None:
        self.start, self.end, self.copied, self.count = start, end, copied, count

    def wait(self) -> float:
        self.copied.synchronize()
        return self.start.elapsed_time(self.end) / 1000 / self.count


class Runner:
    """Holds a model on its device in its precision, and runs images through it tile by tile."""

    def __init__(self, model: nn.Module, spec: ArchSpec, *, device: torch.device, dtype: torch.dtype,
                 tile: int | None = None, overlap: int = 16, batch: int = 1, margin: int | None = None,
                 channels_last: bool | None = None,
                 call: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.overlap = max(0, overlap)
        self.batch = max(1, batch)
        self.margin = spec.context if margin is None else max(0, margin)
        self.channels_last = (spec.channels_last and device.type == "cuda") if channels_last is None else channels_last
        self.call = call or (lambda m, x: m(x))
        self.model = model.to(device=device, dtype=dtype).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # None: choose per image (auto); 0: whole image; N: fixed core size. OOM back-off lowers it for the run.
        self.tile = tile
        # Polled between batches of tiles: a graceful Ctrl-C stops after the tile in flight.
        self.should_stop: Callable[[], bool] = lambda: False

    # -- tile size -------------------------------------------------------------------------------------------
    def _auto_tile(self, height: int, width: int) -> int:
        if self.device.type != "cuda":
            if self.spec.tiling != "safe" and height * width <= 4_000_000:
                return 0  # whole-image statistics: one tile is exact and still cheap on the CPU
            return CPU_TILE if self.spec.tiling == "safe" else 1024
        per_px = self._probe_bytes_per_pixel()
        free, _ = torch.cuda.mem_get_info(self.device)
        budget = 0.5 * (free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device))
        cap = MAX_AUTO_TILE * (2 if self.spec.tiling != "safe" else 1)
        return choose_tile(height, width, per_px=per_px, budget=budget, margin=self.margin, batch=self.batch,
                           cap=cap)

    def _probe_bytes_per_pixel(self) -> float:
        """Activation memory per input pixel: the slope between two probe sizes, so weights and fixed buffers
        (which a single small probe would spread over its few pixels) do not count."""
        if hasattr(self, "_per_px"):
            return self._per_px
        peaks = []
        sides = [round_up(max(n, self.spec.min_size), self.spec.multiple_of) for n in (128, 256)]
        for side in sides:
            x = torch.rand(1, self.spec.in_channels, side, side, device=self.device, dtype=self.dtype)
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            with torch.inference_mode():
                self.call(self.model, self._to_format(x))
            peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
            del x
        slope = (peaks[1] - peaks[0]) / max(1, sides[1] ** 2 - sides[0] ** 2)
        # headroom: peaks do not scale perfectly, and the allocator fragments
        self._per_px = max(slope, peaks[1] / sides[1] ** 2 / 4, 1.0) * 1.25
        return self._per_px

    def _to_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, image: torch.Tensor, *, quantize: int | None = None) -> tuple[torch.Tensor, RunStats]:
        """image: (C, H, W) on the CPU, uint8 / uint16 (scaled by their range) or float in [0, 1].

        Returns (C', H*s, W*s) on the CPU: float32, or with `quantize` = 255 / 65535 the values clamped, scaled
        and rounded on the device (uint8, or int32 for 16-bit), which saves the CPU that work and the transfer.
        """
        stats = RunStats()
        _, height, width = image.shape
        tile = self.tile if self.tile is not None else self._auto_tile(height, width)
        start = time.perf_counter()
        while True:
            plan = plan_tiles(height, width, tile=tile, overlap=self.overlap, margin=self.margin,
                              multiple_of=self.spec.multiple_of, scale=self.spec.scale, min_size=self.spec.min_size)
            try:
                out = self._run_plan(image, plan, stats, quantize)
                break
            except Exception as e:
                if not _is_oom(e):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                current = tile if tile > 0 else max(height, width)
                tile = current // 2
                if tile < max(MIN_TILE, self.spec.min_size):
                    raise RestoreError(f"out of memory even with {current}px tiles on {self.device}") from None
                stats.retries += 1
                stats.notes.append(f"out of memory at tile {current}px, retrying with {tile}px")
                self.tile = tile  # keep the working size for the rest of the run
        stats.tile, stats.tiles = (0 if plan.count == 1 and plan.margin == 0 else plan.tile_h), plan.count
        stats.infer_s = time.perf_counter() - start
        return out, stats

    def run_many(self, images: list[torch.Tensor], *, quantize: int | None = None,
                 wait: bool = True) -> tuple[list[torch.Tensor], list[RunStats]]:
        """Same-size, same-type (C, H, W) images, e.g. consecutive video frames: as `run`, image by image.

        When the tile plan is one whole-image tile they go through the model together, `batch` at a time (halved
        on out-of-memory, and the working size kept); otherwise each image is tiled by `run`, its tiles batched.
        Each image's stats carry its share of the batch's time.

        `wait=False` (a GPU pipeline): return as soon as the work is queued on the device; the outputs land in
        pinned host memory on a copy stream, so the next batch computes meanwhile. Call each stats' `wait()`
        before reading its output. The outputs are (C, H, W) views of channels-last memory, the layout image
        and video encoders take.
        """
        if not images or any(im.shape != images[0].shape or im.dtype != images[0].dtype for im in images):
            return self._one_by_one(images, quantize)
        _, height, width = images[0].shape
        tile = self.tile if self.tile is not None else self._auto_tile(height, width)
        plan = plan_tiles(height, width, tile=tile, overlap=self.overlap, margin=self.margin,
                          multiple_of=self.spec.multiple_of, scale=self.spec.scale, min_size=self.spec.min_size)
        if plan.count != 1:
            return self._one_by_one(images, quantize)
        outs: list[torch.Tensor] = []
        stats: list[RunStats] = []
        step = min(self.batch, getattr(self, "_frames_cap", self.batch))
        i = 0
        while i < len(images):
            chunk = images[i:i + step]
            start = time.perf_counter()
            try:
                got, info, pending = self._run_whole(chunk, plan, quantize, wait)
            except Exception as e:
                if not _is_oom(e):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if step == 1:  # one image does not fit whole: `run` tiles it
                    got_one, st = self.run(chunk[0], quantize=quantize)
                    outs.append(got_one)
                    stats.append(st)
                    i += 1
                    continue
                step = max(1, step // 2)
                self._frames_cap = step  # keep the working batch for the rest of the run
                continue
            share = (time.perf_counter() - start) / len(chunk)
            for out in got:
                outs.append(out)
                stats.append(RunStats(tile=0, tiles=1, infer_s=share, model_info=list(info), pending=pending))
            i += len(chunk)
        return outs, stats

    def _one_by_one(self, images: list[torch.Tensor],
                    quantize: int | None) -> tuple[list[torch.Tensor], list[RunStats]]:
        pairs = [self.run(im, quantize=quantize) for im in images]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _run_whole(self, images: list[torch.Tensor], plan: TilePlan, quantize: int | None,
                   wait: bool) -> tuple[list[torch.Tensor], list[dict], _Pending | None]:
        """One forward of a single-tile plan over a stack of images; the same pixels `_run_plan` gives each."""
        if self.should_stop():
            raise InterruptError("interrupted")
        s = plan.scale
        cuda = self.device.type == "cuda"
        stack = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, pin_memory=cuda)
        torch.stack(images, out=stack)  # straight into pinned memory: one copy, and an asynchronous upload
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(self.device))
        x = pad_reflect(_unit_float(stack.to(self.device, non_blocking=True)), *plan.pad)
        ((_, _, y, x0),) = plan.positions()
        wy, wx = plan.window_origin(y, x0)
        windows = x[:, :, wy:wy + plan.window_h, wx:wx + plan.window_w]
        info: list[dict] = []
        with torch.inference_mode():
            y_dev = self.call(self.model, self._to_format(windows.to(self.dtype)))
            last = getattr(self.model, "last_info", None)
            if last:
                info.append(dict(last))
            if y_dev.shape[-2:] != (plan.window_h * s, plan.window_w * s):
                raise RestoreError(f"{self.spec.id} returned {tuple(y_dev.shape[-2:])} for a "
                                   f"{plan.window_h}x{plan.window_w} tile, expected scale {s}")
            oy, ox = (y - wy) * s, (x0 - wx) * s
            core = y_dev[:, :, oy:oy + plan.tile_h * s, ox:ox + plan.tile_w * s].float()
            if not cuda:
                return list(_finish(core, quantize).unbind(0)), info, None
            return self._download(core, quantize, start, wait, info)

    def _download(self, core: torch.Tensor, quantize: int | None, start: torch.cuda.Event, wait: bool,
                  info: list[dict]) -> tuple[list[torch.Tensor], list[dict], _Pending | None]:
        """Quantise on the device, then copy to pinned host memory on a side stream (the compute stream goes on
        with the next batch); channels-last on both sides, so the host gets H x W x C pictures without a CPU
        transpose."""
        if quantize is not None:
            core = core.clamp_(0.0, 1.0).mul_(float(quantize)).round_().to(
                torch.uint8 if quantize == 255 else torch.int32)
        hwc = core.permute(0, 2, 3, 1).contiguous()
        compute = torch.cuda.current_stream(self.device)
        end = torch.cuda.Event(enable_timing=True)
        end.record(compute)
        host = torch.empty(hwc.shape, dtype=hwc.dtype, pin_memory=True)
        if not hasattr(self, "_copy_stream"):
            self._copy_stream = torch.cuda.Stream(self.device)
        copy = self._copy_stream
        copy.wait_stream(compute)
        with torch.cuda.stream(copy):
            host.copy_(hwc, non_blocking=True)
        hwc.record_stream(copy)  # its memory is not reused before the copy has read it
        copied = torch.cuda.Event()
        copied.record(copy)
        pending = _Pending(start, end, copied, core.shape[0])
        if wait:
            pending.wait()
            pending = None
        return [im.permute(2, 0, 1) for im in host.unbind(0)], info, pending

    def _resident(self, image: torch.Tensor, plan: TilePlan) -> bool:
        """Whether the whole image (as float) and the output accumulators go on the GPU: fast, and they fit."""
        if self.device.type != "cuda":
            return False
        s, c_out = plan.scale, self.spec.out_channels
        ph, pw = plan.padded_size
        need = 4 * (image.shape[0] * ph * pw + (c_out + 1) * plan.height * plan.width * s * s)
        return need < 0.25 * torch.cuda.mem_get_info(self.device)[0]

    def _run_plan(self, image: torch.Tensor, plan: TilePlan, stats: RunStats, quantize: int | None) -> torch.Tensor:
        s = plan.scale
        resident = self._resident(image, plan)
        work = self.device if resident else torch.device("cpu")
        src = _unit_float(image.to(work, non_blocking=True))
        padded = pad_reflect(src[None], *plan.pad)[0]
        single = plan.count == 1
        if not single:
            acc = torch.zeros(self.spec.out_channels, plan.height * s, plan.width * s, device=work)
            # Blending happens where the accumulator lives, so no tile's weights travel between devices.
            ramps_y = [ramp_1d(plan.ys, i, plan.tile_h, s).to(work) for i in range(len(plan.ys))]
            ramps_x = [ramp_1d(plan.xs, j, plan.tile_w, s).to(work) for j in range(len(plan.xs))]
            # The tiles form a grid and the weights are separable, so their sum is the outer product of the
            # per-axis sums: no full-size weight buffer.
            sum_y = torch.zeros(plan.height * s, device=work)
            sum_x = torch.zeros(plan.width * s, device=work)
            for i, y in enumerate(plan.ys):
                sum_y[y * s:(y + plan.tile_h) * s] += ramps_y[i]
            for j, x in enumerate(plan.xs):
                sum_x[x * s:(x + plan.tile_w) * s] += ramps_x[j]
        positions = plan.positions()
        with torch.inference_mode():
            for b in range(0, len(positions), self.batch):
                if self.should_stop():
                    raise InterruptError("interrupted")
                chunk = positions[b:b + self.batch]
                origins = [plan.window_origin(y, x) for _, _, y, x in chunk]
                windows = torch.stack([padded[:, wy:wy + plan.window_h, wx:wx + plan.window_w] for wy, wx in origins])
                if self.device.type == "cuda" and not resident:
                    windows = windows.pin_memory()
                x_dev = self._to_format(windows.to(self.device, dtype=self.dtype, non_blocking=True))
                y_dev = self.call(self.model, x_dev)
                info = getattr(self.model, "last_info", None)
                if info:
                    stats.model_info.append(dict(info))
                if y_dev.shape[-2:] != (plan.window_h * s, plan.window_w * s):
                    raise RestoreError(f"{self.spec.id} returned {tuple(y_dev.shape[-2:])} for a "
                                       f"{plan.window_h}x{plan.window_w} tile, expected scale {s}")
                for k, ((i, j, y, x), (wy, wx)) in enumerate(zip(chunk, origins, strict=True)):
                    oy, ox = (y - wy) * s, (x - wx) * s
                    core = y_dev[k, :, oy:oy + plan.tile_h * s, ox:ox + plan.tile_w * s].float()
                    if single:
                        return _finish(core, quantize)
                    w = ramps_y[i][:, None] * ramps_x[j][None, :]
                    ys, xs = slice(y * s, (y + plan.tile_h) * s), slice(x * s, (x + plan.tile_w) * s)
                    # blocking: a non_blocking device-to-host copy returns before its data lands
                    acc[:, ys, xs] += core.to(work) * w
        return _finish(acc.div_(sum_y[:, None] * sum_x[None, :]), quantize)


def _unit_float(x: torch.Tensor) -> torch.Tensor:
    """Integer pixels scaled by their type's range (never by value); floats as they are."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.dtype == torch.int32:  # 16-bit pixels travel as int32: torch's uint16 lacks most ops
        return x.float().div_(65535.0)
    return x.float()


def _finish(out: torch.Tensor, quantize: int | None) -> torch.Tensor:
    if quantize is None:
        return out.cpu()
    q = out.clamp_(0.0, 1.0).mul_(float(quantize)).round_()
    return q.to(torch.uint8 if quantize == 255 else torch.int32).cpu()

