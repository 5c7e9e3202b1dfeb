"""The per-item flow, for images and videos: read -> pixels to tensor -> model -> pixels -> write -> report row.

`run` restores a list of jobs through the three stages of `stages.py`: every image, and every frame of a video, is
one unit (decoded in the decode pool, restored by the inference thread, converted and written by the encode pool);
a video's frames then go through its encoder in order. Rows come out in job order. `restore_array` is the same
flow for one picture in memory (the Python API, `restore eval`); pixel conversions live in `pixels.py`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import batch
from .errors import InterruptError, RestoreError, UsageError
from .report import FileRecord

if TYPE_CHECKING:  # torch, numpy and PyAV load when there is work: `restore --help` stays fast
    import numpy as np

    from . import pixels
    from .api import LoadedModel
    from .engine.runner import RunStats
    from .io.video import DecodedFrame, VideoInfo, VideoReader
    from .stages import Outcome, Unit


@dataclass(frozen=True)
class FrameRange:
    """`--frames A:B`: from A up to (not including) B; each bound a frame index or a time from the first frame."""

    start: int | None = None
    stop: int | None = None
    start_time: Fraction | None = None
    stop_time: Fraction | None = None

    @property
    def whole(self) -> bool:
        return not self.start and self.stop is None and self.start_time is None and self.stop_time is None


@dataclass(frozen=True)
class VideoOptions:
    """Encoder choices and the frame range, passed through to `VideoReader` / `VideoWriter`."""

    codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    frames: FrameRange = field(default_factory=FrameRange)


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


@dataclass
class Hooks:
    """Where a run reports as it goes (the CLI's rows and progress bar); all called from the caller's thread except
    `expect`, which the decode stage calls when a video's frame count becomes known."""

    record: Callable[[FileRecord], None] = lambda rec: None  # a job is finished (in job order)
    done: Callable[[int], None] = lambda n: None  # pictures restored and written
    expect: Callable[[int], None] = lambda n: None  # more pictures to come than one per job


@dataclass
class RunResult:
    records: list[FileRecord]
    interrupted: bool = False


# --------------------------------------------------------------------------- --frames

_TIME = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_FRAMES_HELP = "--frames takes A:B, each side a frame number (10) or a time (1.5s, 2m, 1m30s, 1h2m3.5s)"


def _bound(text: str, whole: str) -> int | Fraction | None:
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    m = _TIME.fullmatch(text)
    if m is None or not any(m.groups()):
        raise UsageError(f"{_FRAMES_HELP}; got {whole!r}")
    h, mins, secs = (Fraction(g) if g else Fraction(0) for g in m.groups())
    return h * 3600 + mins * 60 + secs


def parse_frames(text: str | None) -> FrameRange:
    """`A:B` (either side optional): frame indices (`10:20`), times from the first frame (`1.5s:4s`, `1m:1m30s`), or
    one of each. The range is half-open: A is in, B is not."""
    if text is None:
        return FrameRange()
    head, sep, tail = text.partition(":")
    if not sep:
        raise UsageError(f"{_FRAMES_HELP} (e.g. 10:20, :50, 100:, 1.5s:4s); got {text!r}")
    start, stop = _bound(head, text), _bound(tail, text)
    if start is not None and stop is not None and type(start) is type(stop) and stop <= start:
        raise UsageError(f"--frames {text}: the end must be after the start")
    return FrameRange(start=start if isinstance(start, int) else None, stop=stop if isinstance(stop, int) else None,
                      start_time=start if isinstance(start, Fraction) else None,
                      stop_time=stop if isinstance(stop, Fraction) else None)


# --------------------------------------------------------------------------- one picture


def restore_array(loaded: LoadedModel, array: np.ndarray) -> tuple[np.ndarray, RunStats]:
    """One H x W x C (or H x W) picture in memory -> restored, in the input's dtype and channel layout."""
    from . import pixels

    prepared = pixels.prepare(array, loaded.spec.in_channels)
    out, stats = loaded.runner.run(prepared.tensor, quantize=prepared.quantize)
    return pixels.finish(prepared, out, loaded.spec.scale), stats


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


# --------------------------------------------------------------------------- runs


@dataclass
class _Job:
    """One input file on its way through the stages."""

    job: batch.Job
    rec: FileRecord
    info: VideoInfo | None = None  # set for videos
    image: Any = None  # the decoded image (its metadata goes into the output)
    out_fmt: str = ""
    dest: Path | None = None
    writer: Any = None  # an entered VideoWriter
    lost: list[str] = field(default_factory=list)  # what a damaged video's decoder reported
    error: BaseException | None = None
    frames: int = 0
    decode_s: float = 0.0
    infer_s: float = 0.0
    encode_s: float = 0.0

    def alive(self) -> bool:
        return self.error is None

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error


def run(jobs: list[batch.Job], loaded: LoadedModel, settings: Settings, hooks: Hooks | None = None) -> RunResult:
    """Restore every job; one failing job never stops the others. On a stop request (Ctrl-C) the run ends after the
    forward pass in flight, keeps what was finished, leaves no partial output, and says it was interrupted."""
    from .stages import Stages

    hooks = hooks or Hooks()
    records: list[FileRecord] = []
    states: list[_Job] = []
    runner = loaded.runner
    saved_stop = runner.should_stop
    runner.should_stop = settings.should_stop  # polled between tiles, too
    stages = Stages(runner, batch=runner.batch, should_stop=settings.should_stop)
    outcomes = stages.run_units(_units(jobs, loaded, settings, states, hooks))
    try:
        for oc in outcomes:
            st: _Job = oc.unit.owner
            if oc.unit.load is None:  # a video's end, or a job that failed before it had a unit
                _finish_video(st)
            elif st.info is not None:
                _commit_frame(st, oc, hooks)
                continue
            else:
                _finish_image(st, oc)
                hooks.done(1)
            records.append(st.rec)
            hooks.record(st.rec)
    except InterruptError:
        return RunResult(records, interrupted=True)
    finally:
        outcomes.close()  # every thread stopped before the unfinished videos are cleaned up
        runner.should_stop = saved_stop
        for st in states:
            if st.writer is not None:  # never finished: its temporary file goes
                st.writer.discard()
                st.writer = None
    return RunResult(records)


def run_job(job: batch.Job, loaded: LoadedModel, settings: Settings) -> FileRecord:
    """Restore one input file; its failure is the row's error; a stop request raises InterruptError."""
    result = run([job], loaded, settings)
    if result.interrupted:
        raise InterruptError("interrupted")
    return result.records[0]


def _units(jobs: list[batch.Job], loaded: LoadedModel, s: Settings, states: list[_Job],
           hooks: Hooks) -> Iterator[Unit]:
    """The decode stage's producer: one unit per image, a video's frames then its end marker (load=None)."""
    from .stages import Unit

    for job in jobs:
        st = _Job(job, FileRecord(input=str(job.source), output=None, status="failed"))
        states.append(st)
        try:
            st.info = probe_video(job.source)
            if st.info is None:
                yield Unit(st, load=partial(_load_image, st, loaded, s), save=partial(_save_image, st, s))
                continue
            yield from _frame_units(st, loaded, s, hooks)
        except Exception as e:  # the job's own failure, reported in its row
            st.fail(e)
        yield Unit(st, load=None)


def _message(e: BaseException) -> str:
    if isinstance(e, RestoreError):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller --tile)"
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    if os.environ.get("RESTORE_DEBUG"):
        raise e
    return f"internal error: {type(e).__name__}: {e} (set RESTORE_DEBUG=1 for the traceback)"


def _claim_output(dest: Path, job: batch.Job, s: Settings, rec: FileRecord) -> bool:
    """Record the output path; refuse to overwrite an input; False when --skip-existing finds it done."""
    rec.output = str(dest)
    if dest in s.inputs or batch.same_file(dest, job.source):
        raise UsageError(f"output {dest} is an input; refusing to overwrite it (use -o or --suffix)")
    if s.skip_existing and dest.exists():
        rec.status, rec.error = "skipped", "output exists"
        return False
    return True


def _stats_to(rec: FileRecord, stats: RunStats) -> None:
    rec.tile, rec.tiles, rec.model_info = stats.tile, stats.tiles, stats.model_info
    rec.notes += stats.notes


# --------------------------------------------------------------------------- images


def _load_image(st: _Job, loaded: LoadedModel, s: Settings) -> pixels.Prepared | None:
    from . import pixels
    from .errors import ImageError
    from .io import images

    job = st.job
    try:
        img = images.read_image(job.source, max_pixels=s.max_pixels)
    except ImageError:
        if job.source.suffix.lower() in batch.VIDEO_SUFFIXES:
            _not_a_video(job.source)  # named like a video: say why it is not one
        raise
    if job.named:
        raise UsageError(f"{job.source} is an image; -o names a video file (give a folder)")
    st.out_fmt = images.output_format(img.format, s.fmt)
    st.dest = batch.output_path(job, extension=images.FORMAT_EXTENSIONS[st.out_fmt], suffix=s.suffix)
    if not _claim_output(st.dest, job, s, st.rec):
        return None
    st.image = img
    h, w = img.pixels.shape[:2]
    st.rec.size_in = (w, h)
    return pixels.prepare(img.pixels, loaded.spec.in_channels)


def _save_image(st: _Job, s: Settings, result: np.ndarray, stats: RunStats) -> None:
    from .io import images

    img, dest = st.image, st.dest
    assert dest is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    images.write_image(dest, result, fmt=st.out_fmt, like=img, quality=s.quality, strip_metadata=s.strip)
    if s.compare:
        side = dest.with_name(f"{dest.stem}_compare{dest.suffix}")
        images.write_image(side, side_by_side(img.pixels, result), fmt=st.out_fmt, like=img, quality=s.quality,
                           strip_metadata=s.strip)
        st.rec.compare = str(side)
    st.rec.size_out = (result.shape[1], result.shape[0])
    st.image = None  # the input's pixels are not needed any more


def _finish_image(st: _Job, oc: Outcome) -> None:
    rec = st.rec
    rec.decode_ms, rec.infer_ms, rec.encode_ms = oc.decode_s * 1000, oc.infer_s * 1000, oc.encode_s * 1000
    st.image = None
    if oc.error is not None:
        rec.status, rec.error = "failed", _message(oc.error)
    elif oc.stats is not None:
        _stats_to(rec, oc.stats)
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


def _frame_units(st: _Job, loaded: LoadedModel, s: Settings, hooks: Hooks) -> Iterator[Unit]:
    from .io import video
    from .stages import Unit

    job, info, v = st.job, st.info, s.video
    assert info is not None
    # same container as the input, so every stream it held still fits
    dest = batch.output_path(job, extension=job.rel.suffix or job.source.suffix, suffix=s.suffix)
    if not _claim_output(dest, job, s, st.rec):
        return
    if s.max_pixels and info.width * info.height > s.max_pixels:
        raise RestoreError(f"{info.width}x{info.height} frames exceed the {s.max_pixels:,} pixel limit "
                           "(raise it with --max-pixels, 0 for none)")
    st.rec.size_in = (info.width, info.height)
    st.rec.fps = float(info.frame_rate) if info.frame_rate else None
    if s.compare:
        st.rec.notes.append("--compare is for images")
    r = v.frames
    reader = video.VideoReader(job.source, start=r.start, stop=r.stop, start_time=r.start_time,
                               stop_time=r.stop_time)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a frame range keeps the other streams over the range only (they would outlast it)
    writer = video.VideoWriter(dest, source=job.source, codec=v.codec, crf=v.crf, preset=v.preset,
                               pix_fmt=v.pix_fmt, trim_streams=not r.whole)
    writer.__enter__()
    st.writer = writer
    hooks.expect(_expected_frames(info, reader) - 1)
    in_channels = loaded.spec.in_channels
    t = time.perf_counter()
    for raw in reader.decoded():
        if not st.alive():  # an encoding error: no point decoding the rest
            break
        yield Unit(st, load=partial(_load_frame, raw, in_channels), save=partial(_save_frame, st, raw),
                   alive=st.alive, decode_s=time.perf_counter() - t)
        t = time.perf_counter()
    st.lost = list(reader.errors)


def _expected_frames(info: VideoInfo, reader: VideoReader) -> int:
    """About how many frames the range holds (for the progress bar; the real count comes from decoding)."""
    rate = float(info.frame_rate or 0)
    if not rate or not info.duration:
        return 1
    lo, hi = 0.0, info.duration
    if reader.start:
        lo = max(lo, reader.start / rate)
    if reader.start_time is not None:
        lo = max(lo, float(reader.start_time))
    if reader.stop is not None:
        hi = min(hi, reader.stop / rate)
    if reader.stop_time is not None:
        hi = min(hi, float(reader.stop_time))
    return max(1, round((hi - lo) * rate))


def _load_frame(raw: DecodedFrame, in_channels: int) -> pixels.Prepared:
    from . import pixels

    return pixels.prepare(raw.to_frame().pixels, in_channels)


def _save_frame(st: _Job, raw: DecodedFrame, result: np.ndarray, stats: RunStats) -> Any:
    from .io import video

    # the RGB -> YUV conversion, in the encode pool; the encoder itself takes the frames in order
    return st.writer.convert(video.Frame(result, raw.pts, raw.time_base, raw.index, raw.duration))


def _commit_frame(st: _Job, oc: Outcome, hooks: Hooks) -> None:
    if oc.error is not None:
        st.fail(oc.error)
    if not st.alive() or oc.stats is None:
        return
    t = time.perf_counter()
    try:
        st.writer.write(oc.value)
    except Exception as e:
        st.fail(e)
        return
    st.encode_s += oc.encode_s + time.perf_counter() - t
    st.decode_s += oc.decode_s
    st.infer_s += oc.infer_s
    if st.frames == 0:  # the same for every frame: reported once
        _stats_to(st.rec, oc.stats)
        st.rec.size_out = (oc.value.av_frame.width, oc.value.av_frame.height)
    st.frames += 1
    hooks.done(1)


def _finish_video(st: _Job) -> None:
    """Close the output (or discard it) and fill the row; also ends a job that failed before it had a unit."""
    rec, writer = st.rec, st.writer
    if st.error is None and writer is not None and st.frames == 0:
        lost = "; ".join(st.lost)
        st.fail(RestoreError("no frames to restore" + (f" ({lost})" if lost else " in the --frames range")))
    if st.error is not None:
        rec.status, rec.error = "failed", _message(st.error)
    if writer is None:  # skipped, or failed before its output was opened
        return
    st.writer = None
    if st.error is not None:
        writer.discard()
        return
    t = time.perf_counter()
    try:
        writer.__exit__(None, None, None)  # muxes the tail and the other streams, then renames into place
    except Exception as e:
        rec.status, rec.error = "failed", _message(e)
        return
    finally:
        st.encode_s += time.perf_counter() - t
        rec.decode_ms, rec.infer_ms, rec.encode_ms = st.decode_s * 1000, st.infer_s * 1000, st.encode_s * 1000
        rec.frames = st.frames
    rec.codec = writer.codec
    rec.notes += writer.notes
    rec.streams = [{"index": h.index, "type": h.type, "codec": h.codec, "action": h.action,
                    **({"detail": h.detail} if h.detail else {})} for h in writer.streams]
    if st.lost:
        # every decodable frame is written, but the output is short of the input: the run must say so
        rec.status = "partial"
        rec.error = f"damaged input: {st.frames} frames restored and written; " + "; ".join(st.lost)
    else:
        rec.status = "ok"

