"""Evaluation: degrade clean images deterministically, restore them with a callable, score input and output.

`evaluate()` is a pure function of a `restore_fn(np.ndarray HxWx3 float32 in [0, 1]) -> np.ndarray` and a folder,
so the CLI (or a test) can plug in any model runner. Degraded inputs are seeded per file name, so a result can be
regenerated exactly. `evaluate_pairs()` scores a folder of given inputs against a folder of targets.

Metric conventions (see `metrics`): upscaling is scored on the Y channel with a border crop of `scale` pixels, and
its "input" baseline is bicubic upscaling of the low-resolution input; other tasks are scored on RGB, no crop.
Outputs are clipped and rounded to 8 bits before scoring (what a saved PNG holds) unless `quantize=False`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import metrics
from .batch import image_files
from .io import images
from .training import degrade

RestoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Scores:
    """PSNR (dB) and SSIM on RGB and on Y."""

    psnr: float
    ssim: float
    psnr_y: float
    ssim_y: float

    def primary(self, space: Literal["rgb", "y"]) -> tuple[float, float]:
        return (self.psnr_y, self.ssim_y) if space == "y" else (self.psnr, self.ssim)


@dataclass(frozen=True)
class ImageResult:
    name: str
    height: int
    width: int
    seed: int | None
    input: Scores
    output: Scores
    seconds: float  # time spent in restore_fn


@dataclass
class EvalResult:
    """Per-image and mean scores; `input` is the degraded image (bicubic-upscaled for SR), `output` the restored."""

    mode: Literal["synthetic", "pairs"]
    folder: str
    degradation: str | None
    seed: int | None
    scale: int
    space: Literal["rgb", "y"]
    crop_border: int
    quantized: bool
    images: list[ImageResult] = field(default_factory=list)

    def _mean(self, which: str) -> Scores:
        rows = [getattr(r, which) for r in self.images]
        if not rows:
            return Scores(math.nan, math.nan, math.nan, math.nan)
        return Scores(*(float(np.mean([getattr(s, k) for s in rows])) for k in ("psnr", "ssim", "psnr_y", "ssim_y")))

    @property
    def mean_input(self) -> Scores:
        return self._mean("input")

    @property
    def mean_output(self) -> Scores:
        return self._mean("output")

    @property
    def gain_psnr(self) -> float:
        return self.mean_output.primary(self.space)[0] - self.mean_input.primary(self.space)[0]

    @property
    def gain_ssim(self) -> float:
        return self.mean_output.primary(self.space)[1] - self.mean_input.primary(self.space)[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        p_in, s_in = self.mean_input.primary(self.space)
        p_out, s_out = self.mean_output.primary(self.space)
        d["summary"] = {
            "images": len(self.images),
            "space": self.space,
            "input_psnr": p_in,
            "input_ssim": s_in,
            "output_psnr": p_out,
            "output_ssim": s_out,
            "gain_psnr": self.gain_psnr,
            "gain_ssim": self.gain_ssim,
            "seconds": float(sum(r.seconds for r in self.images)),
        }
        d["mean_input"] = asdict(self.mean_input)
        d["mean_output"] = asdict(self.mean_output)
        return _finite(d)

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def summary(self) -> str:
        s = self.to_dict()["summary"]
        space = "Y" if self.space == "y" else "RGB"
        return (f"{s['images']} images, {space} PSNR {s['input_psnr']:.2f} -> {s['output_psnr']:.2f} dB "
                f"({s['gain_psnr']:+.2f}), SSIM {s['input_ssim']:.4f} -> {s['output_ssim']:.4f} "
                f"({s['gain_ssim']:+.4f})")


def _finite(obj: Any) -> Any:
    # JSON has no inf/nan (identical images give PSNR inf): write null instead
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------------------------
# image files: through the io layer, so evaluation decodes exactly as the CLI does (orientation, depth, CMYK)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 float32 RGB in [0, 1] (8 or 16 bit; gray is replicated, alpha dropped)."""
    px = images.to_float(images.read_image(Path(path), max_pixels=None).pixels)
    if px.shape[2] in (1, 2):
        px = np.repeat(px[..., :1], 3, axis=2)
    return np.ascontiguousarray(px[..., :3], dtype=np.float32)


def write_png(path: str | Path, img: np.ndarray) -> None:
    """Write HxWx3 float RGB in [0, 1] as an 8-bit PNG (atomically)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images.write_image(Path(path), images.from_float(img, np.uint8), fmt="png")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    return image_files(folder, recursive=False)


# ---------------------------------------------------------------------------------------------------------------


def _quantize(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255).round().astype(np.float32) / 255


def _center_crop(img: np.ndarray, size: int | None, multiple: int) -> np.ndarray:
    h, w = img.shape[:2]
    th, tw = (min(h, size), min(w, size)) if size else (h, w)
    th, tw = th - th % multiple, tw - tw % multiple
    y, x = (h - th) // 2, (w - tw) // 2
    return img[y : y + th, x : x + tw]


def bicubic_upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """The SR input baseline: bicubic upscaling (torch, align_corners=False), clipped to [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    y = degrade.upscale_bicubic(x, scale).clamp(0, 1)
    return y[0].permute(1, 2, 0).numpy()


def _scores(a: np.ndarray, b: np.ndarray, crop: int) -> Scores:
    return Scores(
        psnr=metrics.psnr(a, b, crop_border=crop),
        ssim=metrics.ssim(a, b, crop_border=crop),
        psnr_y=metrics.psnr(a, b, crop_border=crop, y_channel=True),
        ssim_y=metrics.ssim(a, b, crop_border=crop, y_channel=True),
    )


def _run(restore_fn: RestoreFn, lq: np.ndarray, want: tuple[int, ...]) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = np.asarray(restore_fn(np.ascontiguousarray(lq, dtype=np.float32)), dtype=np.float32)
    dt = time.perf_counter() - t0
    if out.shape != want:
        raise ValueError(f"restore_fn returned shape {out.shape}, expected {want}")
    return out, dt


def _conventions(scale: int, y_channel: bool | None, crop_border: int | None) -> tuple[Literal["rgb", "y"], int]:
    y = scale > 1 if y_channel is None else y_channel
    return ("y" if y else "rgb"), (scale if crop_border is None and scale > 1 else crop_border or 0)


def _score_one(
    restore_fn: RestoreFn, name: str, seed: int | None, lq: np.ndarray, gt: np.ndarray, scale: int, crop: int,
    quantize: bool, save_dir: Path | None,
) -> ImageResult:
    out, dt = _run(restore_fn, lq, gt.shape)
    out = _quantize(out) if quantize else np.clip(out, 0, 1)
    # the input is scored as given (noise25_raw stays unclipped, as in the literature); the SR baseline is an
    # output like the model's, so it is treated like one
    base = lq
    if scale > 1:
        base = bicubic_upscale(lq, scale)
        base = _quantize(base) if quantize else base
    if save_dir is not None:
        stem = Path(name).stem
        write_png(save_dir / f"{stem}_input.png", lq)
        write_png(save_dir / f"{stem}_output.png", out)
    return ImageResult(name, gt.shape[0], gt.shape[1], seed, _scores(base, gt, crop), _scores(out, gt, crop), dt)


def evaluate(
    restore_fn: RestoreFn,
    folder: str | Path,
    degradation_name: str,
    *,
    seed: int = 0,
    scale: int | None = None,
    limit: int | None = None,
    crop: int | None = None,
    y_channel: bool | None = None,
    crop_border: int | None = None,
    quantize: bool = True,
    json_path: str | Path | None = None,
    save_dir: str | Path | None = None,
    progress: Callable[[ImageResult], None] | None = None,
) -> EvalResult:
    """Degrade every clean image of `folder` with `degradation_name` (seeded by `seed` and the file name), restore
    it with `restore_fn` and score both against the clean image.

    `scale` must match the degradation's (it is taken from it when omitted). `crop` center-crops the clean images
    to at most crop x crop first (fast runs); images are always cropped to a multiple of the scale.
    """
    deg = degrade.get(degradation_name)
    if scale is not None and scale != deg.scale:
        raise ValueError(f"degradation {degradation_name!r} has scale {deg.scale}, not {scale}")
    space, border = _conventions(deg.scale, y_channel, crop_border)
    result = EvalResult("synthetic", str(folder), deg.name, seed, deg.scale, space, border, quantize)
    out_dir = Path(save_dir) if save_dir is not None else None
    for path in list_images(folder)[:limit]:
        gt = _center_crop(read_rgb(path), crop, deg.scale)
        s = degrade.seed_for(path.name, seed)
        lq = deg(gt, s)
        row = _score_one(restore_fn, path.name, s, lq, gt, deg.scale, border, quantize, out_dir)
        result.images.append(row)
        if progress is not None:
            progress(row)
    if json_path is not None:
        result.write_json(json_path)
    return result


def evaluate_pairs(
    restore_fn: RestoreFn,
    inputs: str | Path,
    targets: str | Path,
    *,
    scale: int = 1,
    y_channel: bool | None = None,
    crop_border: int | None = None,
    quantize: bool = True,
    json_path: str | Path | None = None,
    save_dir: str | Path | None = None,
    progress: Callable[[ImageResult], None] | None = None,
) -> EvalResult:
    """Score given degraded inputs against targets, matched by file stem (inputs without a target are an error).

    For scale > 1 each target must be `scale` times its input (targets are cropped to that if slightly larger).
    """
    space, border = _conventions(scale, y_channel, crop_border)
    result = EvalResult("pairs", str(inputs), None, None, scale, space, border, quantize)
    by_stem = {p.stem: p for p in list_images(targets)}
    out_dir = Path(save_dir) if save_dir is not None else None
    for path in list_images(inputs):
        if path.stem not in by_stem:
            raise FileNotFoundError(f"no target for {path.name} in {targets}")
        lq = read_rgb(path)
        gt = read_rgb(by_stem[path.stem])
        h, w = lq.shape[0] * scale, lq.shape[1] * scale
        if gt.shape[0] < h or gt.shape[1] < w:
            raise ValueError(f"{path.name}: target {gt.shape[:2]} smaller than input x{scale} {(h, w)}")
        gt = gt[:h, :w]
        row = _score_one(restore_fn, path.name, None, lq, gt, scale, border, quantize, out_dir)
        result.images.append(row)
        if progress is not None:
            progress(row)
    if json_path is not None:
        result.write_json(json_path)
    return result


def identity(scale: int = 1) -> RestoreFn:
    """A do-nothing restore_fn (bicubic for scale > 1): the baseline row of an evaluation table."""
    return (lambda img: img) if scale == 1 else (lambda img: bicubic_upscale(img, scale))


def degradation_names(task: str | None = None) -> Iterable[str]:
    return [n for n, d in degrade.DEGRADATIONS.items() if task is None or d.task == task]


__all__ = ["EvalResult", "ImageResult", "Scores", "degradation_names", "evaluate", "evaluate_pairs", "identity"]
