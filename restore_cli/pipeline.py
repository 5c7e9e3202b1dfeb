"""The per-item flow, for images and videos: read -> restore with the loaded model -> write -> one report row.

The CLI builds the jobs and the `Settings`, then calls `run_job` once per job; everything between the input file and
its `FileRecord` lives here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import batch
from .errors import InterruptError, RestoreError, UsageError
from .report import FileRecord

if TYPE_CHECKING:
    import numpy as np

    from .api import LoadedModel
    from .io.video import VideoInfo


@dataclass(frozen=True)
class VideoOptions:
    """Encoder choices and the frame range, passed through to `VideoReader` / `VideoWriter`."""

    codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    start: int | None = None
    stop: int | None = None


@dataclass
class Settings:
    """What every job of a run shares."""

    fmt: str | None = None
    suffix: str = ""
    quality: int = 95
    skip_existing: bool = False
    strip: bool = False
    max_pixels: int | None = None
    inputs: set[Path] = field(default_factory=set)
    compare: bool = False
    video: VideoOptions = field(default_factory=VideoOptions)
    should_stop: Callable[[], bool] = lambda: False


def parse_frames(text: str | None) -> tuple[int | None, int | None]:
    """`A:B` (either side optional) -> (start, stop), a half-open frame index range."""
    if text is None:
        return None, None
    head, sep, tail = text.partition(":")
    if not sep:
        raise UsageError(f"--frames takes A:B (e.g. 10:20, :50, 100:), got {text!r}")
    try:
        start = int(head) if head.strip() else None
        stop = int(tail) if tail.strip() else None
    except ValueError:
        raise UsageError(f"--frames takes whole frame numbers A:B, got {text!r}") from None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise UsageError(f"--frames takes frame numbers >= 0, got {text!r}")
    if start is not None and stop is not None and stop <= start:
        raise UsageError(f"--frames {text}: the end must be after the start")
    return start, stop


def probe_video(path: Path) -> VideoInfo | None:
    """The file's video properties when its content is a video; None for images, text, or without PyAV."""
    from .io import images

    if images.sniff_file(path) is not None:  # an image by its signature: no container probe per photo
        return None
    try:
        from .io import video
    except ImportError:
        return None
    try:
        return video.probe(path)
    except RestoreError:  # no PyAV, unreadable: the image reader gives the usual message
        return None


def run_job(job: batch.Job, loaded: LoadedModel, settings: Settings) -> FileRecord:
    """Restore one input file into its output; failures become the row's error, Ctrl-C propagates."""
    rec = FileRecord(input=str(job.source), output=None, status="failed")
    try:
        info = probe_video(job.source)
        if info is not None:
            _video(job, loaded, settings, info, rec)
        else:
            _image(job, loaded, settings, rec)
    except InterruptError:
        raise
    except RestoreError as e:
        rec.error = str(e)
    except MemoryError:
        rec.error = "out of memory (try a smaller --tile)"
    except OSError as e:
        rec.error = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return rec


def _claim_output(dest: Path, job: batch.Job, s: Settings, rec: FileRecord) -> bool:
    """Record the output path; refuse to overwrite an input; False when --skip-existing finds it done."""
    rec.output = str(dest)
    if dest in s.inputs or batch.same_file(dest, job.source):
        raise UsageError(f"output {dest} is an input; refusing to overwrite it (use -o or --suffix)")
    if s.skip_existing and dest.exists():
        rec.status, rec.error = "skipped", "output exists"
        return False
    return True


# --------------------------------------------------------------------------- images


def _image(job: batch.Job, loaded: LoadedModel, s: Settings, rec: FileRecord) -> None:
    from . import api
    from .errors import ImageError
    from .io import images

    t = time.perf_counter()
    try:
        img = images.read_image(job.source, max_pixels=s.max_pixels)
    except ImageError:
        if job.source.suffix.lower() in batch.VIDEO_SUFFIXES:
            _not_a_video(job.source)  # named like a video: say why it is not one
        raise
    if job.named:
        raise UsageError(f"{job.source} is an image; -o names a video file (give a folder)")
    rec.decode_ms = (time.perf_counter() - t) * 1000
    out_fmt = images.output_format(img.format, s.fmt)
    dest = batch.output_path(job, extension=images.FORMAT_EXTENSIONS[out_fmt], suffix=s.suffix)
    if not _claim_output(dest, job, s, rec):
        return
    h, w = img.pixels.shape[:2]
    rec.size_in = (w, h)
    result, stats = api.restore_image(loaded, img.pixels)
    rec.infer_ms = stats.infer_s * 1000
    rec.compile_ms = stats.compile_s * 1000
    rec.tile, rec.tiles, rec.notes, rec.model_info = stats.tile, stats.tiles, stats.notes, stats.model_info
    rec.size_out = (result.shape[1], result.shape[0])
    t = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    images.write_image(dest, result, fmt=out_fmt, like=img, quality=s.quality, strip_metadata=s.strip)
    rec.encode_ms = (time.perf_counter() - t) * 1000
    if s.compare:
        side = dest.with_name(f"{dest.stem}_compare{dest.suffix}")
        images.write_image(side, side_by_side(img.pixels, result), fmt=out_fmt, like=img, quality=s.quality,
                           strip_metadata=s.strip)
        rec.compare = str(side)
    rec.status = "ok"


def _not_a_video(path: Path) -> None:
    """Raise the video reader's reason (why the content is no video) for a file named like one."""
    try:
        from .io import video

        video.VideoReader(path)
    except ImportError:
        return
    except RestoreError as e:
        # the row already names the file; keep only the reason
        reason = str(e).partition(": not a video")[2].strip(" ()") or str(e)
        raise RestoreError(f"neither a video nor an image ({reason})") from None
    # VideoReader raises for anything probe rejects; reaching here means it is a video after all


def side_by_side(before: Any, after: Any) -> Any:
    """Input (nearest-neighbour enlarged to the output size, so SR shows its pixels) | output, 8 px gap."""
    import cv2
    import numpy as np

    from .io.images import from_float, to_float

    b = before[..., None] if before.ndim == 2 else before
    a = after[..., None] if after.ndim == 2 else after
    h, w = a.shape[:2]
    if b.shape[:2] != (h, w):
        b = cv2.resize(b, (w, h), interpolation=cv2.INTER_NEAREST).reshape(h, w, b.shape[2])
    b = from_float(to_float(b), a.dtype)
    gap = np.zeros((h, 8, a.shape[2]), dtype=a.dtype)
    if a.shape[2] in (2, 4):
        gap[..., -1] = np.iinfo(a.dtype).max if a.dtype != np.float32 else 1.0
    return np.concatenate([b, gap, a], axis=1)


# --------------------------------------------------------------------------- videos


def _video(job: batch.Job, loaded: LoadedModel, s: Settings, info: VideoInfo, rec: FileRecord) -> None:
    from . import api
    from .io import video

    # same container as the input, so every stream it held still fits
    dest = batch.output_path(job, extension=job.rel.suffix or job.source.suffix, suffix=s.suffix)
    if not _claim_output(dest, job, s, rec):
        return
    if s.max_pixels and info.width * info.height > s.max_pixels:
        raise RestoreError(f"{info.width}x{info.height} frames exceed the {s.max_pixels:,} pixel limit "
                           "(raise it with --max-pixels, 0 for none)")
    rec.size_in = (info.width, info.height)
    if s.compare:
        rec.notes.append("--compare is for images")
    v = s.video
    reader = video.VideoReader(job.source, start=v.start, stop=v.stop)
    if info.duration and info.frame_rate:  # every frame has one size: worth a fixed-shape forward (compile auto)
        total = round(info.duration * float(info.frame_rate))
        loaded.runner.expect(min(total, v.stop or total) - (v.start or 0))
    decode = infer = encode = 0.0
    frames = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the writer copies other streams whole; with a frame range they would outlast the video, so they stay out
    ranged = v.start is not None or v.stop is not None
    writer = video.VideoWriter(dest, source=job.source, codec=v.codec, crf=v.crf, preset=v.preset,
                               pix_fmt=v.pix_fmt, copy_streams=not ranged)
    if ranged and info.streams:
        rec.notes.append(f"--frames: {len(info.streams)} other stream(s) (audio, subtitles) not copied")
    with writer:
        it = iter(reader)
        while True:
            t = time.perf_counter()
            frame = next(it, None)
            decode += time.perf_counter() - t
            if frame is None:
                break
            result, stats = api.restore_image(loaded, frame.pixels)
            infer += stats.infer_s
            rec.compile_ms += stats.compile_s * 1000
            if stats.compile_s and frames > 0:
                rec.notes += stats.notes  # a compile that failed after the first frame says so
            if frames == 0:  # the same for every frame: report them once
                rec.tile, rec.tiles, rec.model_info = stats.tile, stats.tiles, stats.model_info
                rec.notes += stats.notes
                rec.size_out = (result.shape[1], result.shape[0])
            t = time.perf_counter()
            writer.write(video.Frame(_contiguous(result), frame.pts, frame.time_base, frame.index, frame.duration))
            encode += time.perf_counter() - t
            frames += 1
            if s.should_stop():  # Ctrl-C between frames: the writer discards its temporary file
                raise InterruptError("interrupted")
        if frames == 0:
            lost = "; ".join(reader.errors)
            raise RestoreError("no frames to restore" + (f" ({lost})" if lost else " in the --frames range"))
        t = time.perf_counter()
    encode += time.perf_counter() - t  # muxing the tail and the other streams happens on close
    rec.frames = frames
    rec.decode_ms, rec.infer_ms, rec.encode_ms = decode * 1000, infer * 1000, encode * 1000
    rec.fps = float(info.frame_rate) if info.frame_rate else None
    rec.notes += writer.notes
    rec.codec = writer.codec
    if reader.errors:
        # the decodable frames are written, but the output is short of the input: the run must say so
        rec.error = f"damaged input ({frames} frames restored, output written): " + "; ".join(reader.errors)
        return
    rec.status = "ok"


def _contiguous(arr: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.ascontiguousarray(arr)
