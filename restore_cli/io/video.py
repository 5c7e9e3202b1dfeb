"""Video files in and out on PyAV: probe, decode to numpy frames, encode atomically, remux the rest.

PyAV is optional (the ``video`` extra); it is imported on first use so image-only installs work.

Frames are H x W x 3 RGB numpy arrays: uint8 for 8-bit sources, uint16 (full 0..65535 scale) for
deeper ones. Each frame keeps its own pts and time base, so a writer fed frames from a reader
reproduces the source timing exactly, variable frame rate included. Streams other than the first
video stream (audio, subtitles, data) are copied packet for packet, never re-encoded unless the
output container cannot hold their codec.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from restore_cli.errors import VideoError

if TYPE_CHECKING:
    import av as _av_module

__all__ = [
    "DecodedFrame",
    "Frame",
    "StreamInfo",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "encoders",
    "probe",
    "read_frames",
]

_log = logging.getLogger(__name__)

#: Decoder name -> encoders of the same family, best first.
_SAME_FAMILY: dict[str, tuple[str, ...]] = {
    "h264": ("libx264",),
    "hevc": ("libx265",),
    "av1": ("libsvtav1", "libaom-av1", "librav1e"),
    "vp9": ("libvpx-vp9",),
    "vp8": ("libvpx",),
    "ffv1": ("ffv1",),
    "mpeg4": ("mpeg4",),
    "mpeg2video": ("mpeg2video",),
    "prores": ("prores_ks",),
    "mjpeg": ("mjpeg",),
    "dnxhd": ("dnxhd",),
    "png": ("png",),
    "utvideo": ("utvideo",),
}
# Tried in order when the container cannot hold libx264 (WebM takes only VP8/VP9/AV1).
_FALLBACK_CHAIN = ("libx264", "libvpx-vp9", "libsvtav1", "libvpx", "mpeg4", "ffv1")
_DEFAULT_CRF = 18
# Encoders that take x264-style crf/preset private options.
_CRF_ENCODERS = {"libx264", "libx265", "libvpx-vp9", "libvpx", "libsvtav1", "libaom-av1"}
_PRESET_ENCODERS = {"libx264", "libx265", "libsvtav1"}
# Container metadata that describes the old file itself, not its content.
_MUXER_KEYS = {"major_brand", "minor_version", "compatible_brands", "encoder", "creation_time_raw"}
# AVColorSpace -> swscale matrix name, for RGB<->YUV conversions that match the tags.
_SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
_RANGE_NAMES = {1: "MPEG", 2: "JPEG"}
# FFmpeg's muxers of the MP4/QuickTime family (edit lists in a movie timescale).
_MOV_MUXERS = {"mp4", "mov", "ipod", "3gp", "3g2", "psp", "ismv", "f4v"}
# Output codec for an audio stream the container cannot hold, by container.
_AUDIO_FALLBACK = ("aac", "libopus", "flac", "libmp3lame", "pcm_s16le")


def _av() -> _av_module:
    """PyAV, or one clear line saying how to get it."""
    try:
        import av
    except ImportError as exc:
        raise VideoError("video support needs PyAV: pip install 'restore-cli[video]'") from exc
    return av


def _show(path: Path) -> str:
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _reason(exc: BaseException) -> str:
    # FFmpeg errors carry the bare message in strerror; str() adds errno and path
    strerror = getattr(exc, "strerror", None)
    text = strerror if isinstance(strerror, str) and strerror else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class StreamInfo:
    """A non-primary stream: kept by remuxing."""

    index: int
    type: str  # audio | subtitle | data | attachment | video
    codec: str


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` found: the first video stream plus the container around it."""

    container: str  # demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    codec: str  # decoder name of the video stream, e.g. "h264"
    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    frame_rate: Fraction | None  # average rate; None when the container does not say
    time_base: Fraction
    duration: float | None  # seconds
    rotation: int  # counter-clockwise degrees the player applies (display matrix / rotate tag)
    color_primaries: int  # AVColorPrimaries, 2 = unspecified
    color_trc: int  # AVColorTransferCharacteristic
    colorspace: int  # AVColorSpace (matrix)
    color_range: int  # AVColorRange: 0 unspecified, 1 limited (MPEG), 2 full (JPEG)
    stream_index: int
    streams: tuple[StreamInfo, ...] = ()  # every other stream
    metadata: dict[str, str] = field(default_factory=dict)  # container tags


@dataclass
class Frame:
    """One decoded picture and where it sits in time."""

    pixels: np.ndarray  # H x W x 3 RGB, uint8 (8-bit source) or uint16 (deeper)
    pts: int | None
    time_base: Fraction | None
    index: int  # decode order position in presentation order, from 0
    duration: int | None = None  # in time_base units, when the container knows it

    @property
    def time(self) -> Fraction | None:
        """Presentation time in seconds, exact."""
        if self.pts is None or self.time_base is None:
            return None
        return self.pts * self.time_base


@dataclass
class DecodedFrame:
    """A decoded picture before its conversion to RGB, the costly part, which `to_frame` may run on another thread."""

    av_frame: Any
    deep: bool  # convert to 16-bit RGB
    pts: int | None
    time_base: Fraction | None
    index: int
    duration: int | None = None

    def to_frame(self) -> Frame:
        pixels = VideoReader.pixels(self.av_frame, self.deep)
        self.av_frame = None  # the decoder's buffer goes back as soon as the pixels are out
        return Frame(pixels, self.pts, self.time_base, self.index, self.duration)


# --------------------------------------------------------------------------- probe


def _bit_depth(av: Any, pix_fmt: str | None) -> int:
    if not pix_fmt:
        return 8
    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, AttributeError):
        return 8


def _rotation(av: Any, container: Any, stream: Any) -> int:
    """The display rotation: the old `rotate` tag, else the display matrix of the first frame."""
    tag = stream.metadata.get("rotate")
    if tag is not None:
        with contextlib.suppress(ValueError):
            # the tag is clockwise; the display matrix (and PyAV) count counter-clockwise
            return (-int(float(tag))) % 360
    # FFmpeg exposes the stream's display matrix as side data of each decoded frame.
    with contextlib.suppress(av.FFmpegError, StopIteration):
        frame = next(container.decode(stream))
        return round(frame.rotation) % 360
    return 0


def _open_input(av: Any, path: Path) -> Any:
    show = _show(path)
    try:
        return av.open(os.fspath(path), "r")
    except FileNotFoundError as exc:
        raise VideoError(f"{show}: no such file") from exc
    except IsADirectoryError as exc:
        raise VideoError(f"{show}: is a folder, not a video") from exc
    except PermissionError as exc:
        raise VideoError(f"{show}: cannot read: permission denied") from exc


def probe(path: str | os.PathLike[str]) -> VideoInfo | None:
    """The video's properties, or None when the file holds no video stream (an image, text, ...).

    The decision comes from demuxing the content, never the file name. Single-picture formats
    (PNG, JPEG, ...) that FFmpeg can read as a one-frame "video" count as images. A missing or
    unreadable file raises VideoError.
    """
    return _probe(Path(path))[0]


def _probe(p: Path) -> tuple[VideoInfo | None, str]:
    """`probe`, plus why the answer is None (for error messages)."""
    av = _av()
    try:
        container = _open_input(av, p)
    except av.FFmpegError as exc:
        if _looks_like_mp4(p):
            # an MP4/MOV whose index (moov, written last) was cut off: nothing is decodable
            return None, f"{_reason(exc)}; an MP4/MOV without its index, probably truncated"
        return None, _reason(exc)
    try:
        fmt = container.format.name
        # FFmpeg's image demuxers (png_pipe, image2, ...) make any picture a one-frame video
        if fmt.endswith("_pipe") or fmt in ("image2", "gif", "webp_pipe", "apng", "tiff_pipe"):
            return None, f"an image ({fmt.removesuffix('_pipe')})"
        videos = [s for s in container.streams.video if not (s.disposition & _attached_pic(av))]
        if not videos:
            return None, "no video stream found"
        vs = videos[0]
        cc = vs.codec_context
        pix_fmt = cc.format.name if cc.format is not None else ""
        others = tuple(
            StreamInfo(s.index, s.type, s.codec_context.name if s.codec_context else "unknown")
            for s in container.streams
            if s.index != vs.index
        )
        duration: float | None = None
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        rate = vs.average_rate or vs.guessed_rate
        info = VideoInfo(
            container=fmt,
            codec=cc.name,
            width=cc.width,
            height=cc.height,
            pix_fmt=pix_fmt,
            bit_depth=_bit_depth(av, pix_fmt),
            frame_rate=Fraction(rate) if rate else None,
            time_base=Fraction(vs.time_base),
            duration=duration,
            rotation=_rotation(av, container, vs),
            color_primaries=int(cc.color_primaries),
            color_trc=int(cc.color_trc),
            colorspace=int(cc.colorspace),
            color_range=int(cc.color_range),
            stream_index=vs.index,
            streams=others,
            metadata=dict(container.metadata),
        )
    finally:
        container.close()
    return info, ""


def _looks_like_mp4(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp"


def _attached_pic(av: Any) -> int:
    # cover art in audio files is a "video" stream with the attached_pic disposition
    try:
        return int(av.stream.Disposition.attached_pic)
    except AttributeError:
        return 0x400


# --------------------------------------------------------------------------- read


class VideoReader:
    """Decodes the first video stream to `Frame`s in presentation order, surviving damage.

    Iterate it (or `decoded()`, which leaves the RGB conversion to the caller). Decoding errors
    do not stop the iteration: every decodable frame is yielded and each problem is recorded in
    `errors`; a file that ends early (truncated copy) is reported there too once iteration
    finishes. The range [start, stop) counts frame indices; [start_time, stop_time) counts seconds
    from the first frame's timestamp; frames must be inside both.
    """

    def __init__(self, path: str | os.PathLike[str], *, start: int | None = None, stop: int | None = None,
                 start_time: Fraction | float | None = None, stop_time: Fraction | float | None = None) -> None:
        if any(v is not None and v < 0 for v in (start, stop, start_time, stop_time)):
            raise ValueError("start and stop must be >= 0")
        self.path = Path(path)
        self.start = start or 0
        self.stop = stop
        self.start_time = Fraction(start_time) if start_time is not None else None
        self.stop_time = Fraction(stop_time) if stop_time is not None else None
        self.errors: list[str] = []
        self.frames_decoded = 0
        info, why = _probe(self.path)
        if info is None:
            raise VideoError(f"{_show(self.path)}: not a video ({why})")
        self.info = info

    def __iter__(self) -> Iterator[Frame]:
        for decoded in self.decoded():
            yield decoded.to_frame()

    def decoded(self) -> Iterator[DecodedFrame]:
        """The frames in range, decoded but not yet converted to RGB."""
        av = _av()
        self.errors = []  # each pass reports its own problems
        self.frames_decoded = 0
        container = _open_input(av, self.path)
        try:
            yield from self._frames(av, container)
        finally:
            container.close()

    def _frames(self, av: Any, container: Any) -> Iterator[DecodedFrame]:
        stream = container.streams[self.info.stream_index]
        stream.thread_type = "AUTO"
        deep = self.info.bit_depth > 8
        index = 0
        first: Fraction | None = None  # the first frame's time: time ranges count from it
        last_end: Fraction | None = None
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as exc:  # a damaged container: nothing after this is reachable
                self.errors.append(f"demuxing stopped after frame {index}: {_reason(exc)}")
                break
            try:
                decoded = packet.decode()  # the final empty packet flushes the decoder
            except av.FFmpegError as exc:
                where = f" at {float(packet.pts * packet.time_base):.3f}s" if packet.pts is not None else ""
                self.errors.append(f"undecodable packet{where}: {_reason(exc)}")
                continue
            for vf in decoded:
                if vf.is_corrupt:
                    self.errors.append(f"frame {index} decoded with errors (corrupt data)")
                if self.stop is not None and index >= self.stop:
                    return
                tb = Fraction(vf.time_base) if vf.time_base is not None else None
                t = vf.pts * tb if vf.pts is not None and tb is not None else None
                if t is not None:
                    last_end = (vf.pts + (vf.duration or 0)) * tb
                    first = t if first is None else first
                since = t - first if t is not None and first is not None else None
                if self.stop_time is not None and since is not None and since >= self.stop_time:
                    return
                late_enough = self.start_time is None or (since is not None and since >= self.start_time)
                if index >= self.start and late_enough:
                    yield DecodedFrame(vf, deep, vf.pts, tb, index, vf.duration or None)
                index += 1
                self.frames_decoded = index
        self._check_end(last_end, index)

    @staticmethod
    def pixels(vf: Any, deep: bool) -> np.ndarray:
        """A decoded PyAV frame as H x W x 3 RGB (uint16 when `deep`), converted by the frame's own colour tags."""
        kwargs: dict[str, Any] = {}
        src_range = _RANGE_NAMES.get(int(vf.color_range))
        if src_range is not None:  # swscale assumes limited range unless told
            kwargs["src_color_range"] = src_range
        matrix = _SWS_MATRIX.get(int(vf.colorspace))
        if matrix is not None:
            kwargs["src_colorspace"] = matrix
        arr = vf.to_ndarray(format="rgb48le" if deep else "rgb24", **kwargs)
        return np.ascontiguousarray(arr)

    def _check_end(self, last_end: Fraction | None, count: int) -> None:
        """Compare the decoded end with the duration the container announced."""
        expected = self.info.duration
        if expected is None or last_end is None or self.stop is not None or self.stop_time is not None:
            return
        rate = self.info.frame_rate
        tolerance = float(1 / rate) if rate else 0.1
        missing = expected - float(last_end)
        if missing > tolerance:
            lost = f", about {round(missing * float(rate))} frames" if rate else ""
            self.errors.append(
                f"video ends at {float(last_end):.3f}s but the container says {expected:.3f}s "
                f"(truncated or damaged: {missing:.3f}s lost{lost}; {count} frames decoded)"
            )


def read_frames(path: str | os.PathLike[str], *, start: int | None = None, stop: int | None = None,
                start_time: Fraction | float | None = None, stop_time: Fraction | float | None = None,
                ) -> Iterator[Frame]:
    """Every frame of the first video stream, in presentation order; `start`/`stop` pick an index range,
    `start_time`/`stop_time` a time range (seconds from the first frame).

    Problems with damaged files are logged as warnings; use `VideoReader` to get them as a list.
    """
    reader = VideoReader(path, start=start, stop=stop, start_time=start_time, stop_time=stop_time)
    yield from reader
    for problem in reader.errors:
        _log.warning("%s: %s", _show(reader.path), problem)


# --------------------------------------------------------------------------- write


def _encoder_exists(av: Any, name: str) -> bool:
    try:
        av.Codec(name, "w")
    except (ValueError, av.FFmpegError):
        return False
    return True


def _fits(av: Any, encoder: str, fmt_codecs: set[str]) -> bool:
    """Whether `encoder` exists and the output container can hold what it makes."""
    # supported_codecs lists codec names (h264), not encoder names (libx264)
    return _encoder_exists(av, encoder) and av.Codec(encoder, "w").canonical_name in fmt_codecs


#: The encoders `restore doctor` reports on, in the order it lists them.
ENCODERS = ("libx264", "libx265", "libsvtav1", "libaom-av1", "ffv1", "h264_nvenc", "hevc_nvenc")


def encoders() -> dict[str, str]:
    """ENCODERS -> "yes" or why not. Hardware encoders count only if one opens here (a GPU, a driver, a session)."""
    av = _av()
    found = {}
    for name in ENCODERS:
        if not _encoder_exists(av, name):
            found[name] = "not in this PyAV build"
        elif name.endswith(("_nvenc", "_qsv", "_vaapi", "_amf")):
            found[name] = _opens(av, name)
        else:
            found[name] = "yes"
    return found


def _opens(av: Any, name: str) -> str:
    try:
        cc = av.CodecContext.create(name, "w")
        cc.width, cc.height, cc.pix_fmt = 256, 256, "yuv420p"
        cc.time_base = Fraction(1, 25)
        cc.open()
    except (av.FFmpegError, ValueError, OSError) as exc:
        return f"cannot open: {_reason(exc)}"
    return "yes"


@dataclass
class ConvertedFrame:
    """A frame in the encoder's pixel format (from `VideoWriter.convert`), with its timing."""

    av_frame: Any
    pts: int | None
    time_base: Fraction | None
    duration: int | None


@dataclass(frozen=True)
class StreamHandling:
    """What the writer did with one of the source's other streams."""

    index: int
    type: str
    codec: str
    action: str  # copied | trimmed | re-encoded | dropped
    detail: str = ""


class VideoWriter:
    """Encodes frames into `path` atomically and remuxes the source's other streams.

    Use as a context manager. Output goes to a hidden temporary file beside `path`, renamed into
    place only when the block ends without an exception; otherwise the temporary file is deleted
    and `path` is left as it was. `notes` lists every decision a user should know about (codec
    fallback, a stream re-encoded or dropped because the container cannot hold it).

    The video stream is created on the first `write` (or `convert`), so the output may have any
    size (an upscaler doubles it). Frames carrying pts/time_base keep them; bare arrays get
    consecutive timestamps at `rate` (or the source's frame rate). `convert` may run on several
    threads at once (the costly RGB -> YUV step); `write` takes frames one at a time, in order.

    `trim_streams`: copy the other streams only over the span the written frames cover (a frame
    range of a longer source). `streams` says what happened to each of them.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        source: str | os.PathLike[str] | None = None,
        codec: str | None = None,
        crf: int | None = None,
        preset: str | None = None,
        pix_fmt: str | None = None,
        rate: Fraction | int | None = None,
        container_format: str | None = None,
        copy_streams: bool = True,
        trim_streams: bool = False,
        options: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.source = Path(source) if source is not None else None
        self.info: VideoInfo | None = None
        if self.source is not None:
            self.info, why = _probe(self.source)
            if self.info is None:
                raise VideoError(f"{_show(self.source)}: not a video ({why})")
        self._codec_request = codec
        self.crf = crf
        self.preset = preset
        self._pix_fmt_request = pix_fmt
        self.rate = Fraction(rate) if rate is not None else None
        self.container_format = container_format
        self.copy_streams = copy_streams
        self.trim_streams = trim_streams
        self.extra_options = dict(options or {})
        self.notes: list[str] = []
        self.streams: list[StreamHandling] = []
        self.codec: str | None = None
        self.pix_fmt: str | None = None
        self.frames_written = 0
        self._av: Any = None
        self._out: Any = None
        self._tmp: Path | None = None
        self._vstream: Any = None
        self._src: Any = None  # source container for remuxed streams
        self._copy_map: dict[int, Any] = {}  # source stream index -> output stream (packet copy)
        # source index -> (output stream, resampler, fifo) for audio the container cannot hold
        self._reencode: dict[int, tuple[Any, Any, Any]] = {}
        self._pending: Iterator[Any] | None = None  # source packets of other streams, in file order
        self._held: Any = None  # one packet read ahead from `_pending`
        self._next_pts = 0
        self._lock = threading.Lock()  # the first `convert` opens the stream; others wait for it
        self._reformat: dict[str, Any] = {}
        # with trim_streams: the span (seconds) the written frames cover
        self._span_start: Fraction | None = None
        self._span_end: Fraction | None = None

    # ---------------------------------------------------------------- context manager

    def __enter__(self) -> VideoWriter:
        self._av = _av()
        self._tmp = self._temp_path()
        try:
            kwargs: dict[str, Any] = {"format": self.container_format} if self.container_format else {}
            self._out = self._av.open(os.fspath(self._tmp), "w", **kwargs)
            if self._out.format.name in ("matroska", "webm"):
                # Matroska holds negative timestamps (an MP4's AAC priming packet sits at -21 ms); FFmpeg's
                # default shifts every stream to start at 0 instead, moving all timestamps
                self._out.options["avoid_negative_ts"] = "disabled"
        except (OSError, self._av.FFmpegError, ValueError) as exc:
            self._discard()
            folder = self.path.parent
            if isinstance(exc, OSError) and exc.errno == errno.ENOENT and not folder.is_dir():
                raise VideoError(f"{_show(self.path)}: cannot write: folder {_show(folder)} does not exist") from exc
            raise VideoError(f"{_show(self.path)}: cannot write: {_reason(exc)}") from exc
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._finish()
        except BaseException:
            self._discard()
            raise

    def _temp_path(self) -> Path:
        # keep the suffix so FFmpeg picks the muxer from the target's extension; O_EXCL claims
        # the name so two writers never share one (FFmpeg then truncates and fills it)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):
            tmp = self.path.parent / f".{self.path.stem[:100]}.tmp-{secrets.token_hex(4)}{self.path.suffix}"
            try:
                os.close(os.open(tmp, flags, 0o666))
            except FileExistsError:
                continue
            except OSError as exc:
                folder, show = self.path.parent, _show(self.path)
                if exc.errno == errno.ENOENT and not folder.is_dir():
                    raise VideoError(f"{show}: cannot write: folder {_show(folder)} does not exist") from exc
                raise VideoError(f"{show}: cannot write: {_reason(exc)}") from exc
            return tmp
        raise VideoError(f"{_show(self.path)}: cannot write: no free temporary name")

    def discard(self) -> None:
        """Give up: delete the temporary file; `path` stays as it was (for a writer entered without `with`)."""
        self._discard()

    def _discard(self) -> None:
        for c in (self._out, self._src):
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()
        self._out = self._src = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None

    def _finish(self) -> None:
        show = _show(self.path)
        if self._out is None:
            raise VideoError(f"{show}: writer is not open")
        if self._vstream is None:
            raise VideoError(f"{show}: no frames were written")
        av = self._av
        try:
            for packet in self._vstream.encode(None):
                self._mux_other_until(self._packet_time(packet))
                self._mux(packet)
            self._mux_other_until(self._span_end if self.trim_streams else None)
            for ostream, resampler, fifo in self._reencode.values():
                self._encode_audio(ostream, resampler, fifo, None)
            self._out.close()
        except (av.FFmpegError, OSError) as exc:
            raise self._write_error(exc, "cannot encode") from exc
        self._out = None
        if self._src is not None:
            self._src.close()
            self._src = None
        assert self._tmp is not None
        try:
            with contextlib.suppress(OSError):  # overwriting keeps the old file's permissions
                os.chmod(self._tmp, os.stat(self.path).st_mode & 0o7777)
            with open(self._tmp, "rb") as fh:  # durable before it takes the real name
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
        except OSError as exc:
            raise self._write_error(exc, "cannot write") from exc
        self._tmp = None

    def _write_error(self, exc: BaseException, what: str) -> VideoError:
        """One line naming the output; a full disk says so plainly (the partial file is deleted by the caller)."""
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return VideoError(f"{_show(self.path)}: cannot write: disk full (no space left on the device); "
                              "the partial file was deleted")
        return VideoError(f"{_show(self.path)}: {what}: {_reason(exc)}")

    def _mux(self, packet: Any) -> None:
        self._out.mux(packet)

    # ---------------------------------------------------------------- stream setup

    def _pick_codec(self, fmt_codecs: set[str]) -> str:
        av = self._av
        if self._codec_request:
            if not _encoder_exists(av, self._codec_request):
                raise VideoError(f"{_show(self.path)}: encoder {self._codec_request!r} is not available in this PyAV")
            return self._codec_request
        if self.info is not None:
            for name in _SAME_FAMILY.get(self.info.codec, ()):
                if _fits(av, name, fmt_codecs):
                    return name
        for name in _FALLBACK_CHAIN:
            if _fits(av, name, fmt_codecs):
                if self.info is not None:
                    self.notes.append(f"cannot encode {self.info.codec} into this container; using {name}")
                return name
        raise VideoError(f"{_show(self.path)}: this container holds no video codec that PyAV can encode here")

    def _pick_pix_fmt(self, codec: str, deep: bool) -> str:
        supported = [f.name for f in (self._av.Codec(codec, "w").video_formats or ())]
        if self._pix_fmt_request:
            if supported and self._pix_fmt_request not in supported:
                raise VideoError(
                    f"{_show(self.path)}: {codec} cannot encode pix_fmt {self._pix_fmt_request!r} "
                    f"(it takes {', '.join(supported)})"
                )
            return self._pix_fmt_request
        if not supported:
            return "yuv420p10le" if deep else "yuv420p"
        if self.info is not None and self.info.pix_fmt in supported:
            return self.info.pix_fmt
        wanted = ("yuv420p10le", "yuv420p12le", "yuv444p10le", "yuv420p16le") if deep else ("yuv420p",)
        for name in wanted:
            if name in supported:
                return name
        if deep:
            self.notes.append(f"{codec} has no >8-bit pixel format here; output is 8-bit")
        return supported[0]

    def _open_video(self, width: int, height: int, deep: bool, time_base: Fraction | None) -> None:
        av = self._av
        fmt_codecs = set(self._out.supported_codecs)
        codec = self._pick_codec(fmt_codecs)
        pix_fmt = self._pick_pix_fmt(codec, deep)
        rate = self.rate or (self.info.frame_rate if self.info else None) or Fraction(25)
        stream = self._out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        cc = stream.codec_context
        tb = time_base or (self.info.time_base if self.info else None) or 1 / rate
        # keep the source's clock so every pts survives unchanged (variable frame rate too)
        cc.time_base = tb
        stream.time_base = tb
        options = dict(self.extra_options)
        crf = self.crf if self.crf is not None else _DEFAULT_CRF
        if codec in _CRF_ENCODERS:
            options.setdefault("crf", str(crf))
            if codec == "libvpx-vp9":
                options.setdefault("b", "0")  # constant quality mode
        elif self.crf is not None:
            self.notes.append(f"{codec} takes no CRF; crf={self.crf} ignored")
        if self.preset is not None:
            if codec in _PRESET_ENCODERS:
                options.setdefault("preset", self.preset)
            else:
                self.notes.append(f"{codec} takes no preset; preset={self.preset} ignored")
        if codec == "libx265":
            options.setdefault("x265-params", "log-level=error")
        cc.options = options
        if self.info is not None:
            info = self.info
            cc.color_primaries = info.color_primaries
            cc.color_trc = info.color_trc
            cc.colorspace = info.colorspace
            cc.color_range = info.color_range
            if info.rotation:
                try:
                    stream.set_display_rotation(info.rotation)
                except (AttributeError, av.FFmpegError, ValueError):
                    stream.metadata["rotate"] = str((-info.rotation) % 360)
            for key, value in info.metadata.items():
                if key.lower() not in _MUXER_KEYS:
                    self._out.metadata[key] = value
            self._copy_video_stream_tags(av, stream)
        self._reformat = {"format": pix_fmt}
        if self.info is not None:  # RGB -> YUV by the matrix and range the output is tagged with
            matrix = _SWS_MATRIX.get(self.info.colorspace)
            if matrix is not None:
                self._reformat["dst_colorspace"] = matrix
            rng = _RANGE_NAMES.get(self.info.color_range)
            if rng is not None:
                self._reformat["dst_color_range"] = rng
        self._vstream = stream
        self.codec, self.pix_fmt = codec, pix_fmt
        if self.source is not None and self.copy_streams:
            self._open_copies()
        self._exact_mp4_starts()

    def _exact_mp4_starts(self) -> None:
        """MP4/MOV say where a track starts (an edit list) in the movie's clock, milliseconds unless told; a track
        that starts later (a --frames range) would move to a whole millisecond. A clock every track's time base
        divides keeps each start exact."""
        if self._out.format.name not in _MOV_MUXERS:
            return
        scale = 1
        for stream in self._out.streams:
            if stream.time_base is not None:
                scale = math.lcm(scale, Fraction(stream.time_base).denominator)
        if 1000 < scale < 2**31:
            self._out.options["movie_timescale"] = str(scale)

    def _open_copies(self) -> None:
        """Add an output stream for every other source stream; they are muxed as video goes out."""
        av = self._av
        assert self.source is not None and self.info is not None
        self._src = _open_input(av, self.source)
        fmt_codecs = set(self._out.supported_codecs)
        keep = []
        for s in self._src.streams:
            if s.index == self.info.stream_index:
                continue
            name = s.codec_context.name if s.codec_context else "unknown"
            label = f"stream {s.index} ({s.type} {name})"
            handled = (s.index, s.type, name)
            if s.type == "video" and not (s.disposition & _attached_pic(av)):
                self.notes.append(f"{label} dropped: only the first video stream is restored")
                self.streams.append(StreamHandling(*handled, "dropped", "only the first video stream is restored"))
                continue
            if name in fmt_codecs:
                try:
                    out = self._out.add_stream_from_template(s)
                except (av.FFmpegError, ValueError) as exc:
                    self.notes.append(f"{label} dropped: {_reason(exc)}")
                    self.streams.append(StreamHandling(*handled, "dropped", _reason(exc)))
                    continue
                self._copy_stream_tags(s, out)
                self._copy_map[s.index] = out
                keep.append(s)
                if self.trim_streams:
                    self.streams.append(StreamHandling(*handled, "trimmed", "packets within the frame range"))
                else:
                    self.streams.append(StreamHandling(*handled, "copied"))
            elif s.type == "audio":
                target = next((c for c in _AUDIO_FALLBACK if _fits(av, c, fmt_codecs)), None)
                if target is None:
                    self.notes.append(f"{label} dropped: the container holds no audio codec this PyAV can encode")
                    self.streams.append(StreamHandling(*handled, "dropped", "no audio codec for this container"))
                    continue
                rate = s.codec_context.sample_rate
                rates = av.Codec(target, "w").audio_rates
                if rates and rate not in rates:  # Opus takes 48 kHz and a few others only
                    rate = 48000 if 48000 in rates else rates[0]
                out = self._out.add_stream(target, rate=rate)
                out.layout = s.codec_context.layout
                enc_fmt = [f.name for f in (av.Codec(target, "w").audio_formats or ())]
                if enc_fmt:
                    out.format = enc_fmt[0]
                self._copy_stream_tags(s, out)
                resampler = av.AudioResampler(format=out.format, layout=out.layout, rate=out.rate)
                self._reencode[s.index] = (out, resampler, av.AudioFifo())
                keep.append(s)
                self.notes.append(f"{label} re-encoded to {target}: the container cannot hold {name}")
                self.streams.append(StreamHandling(*handled, "re-encoded", f"to {target}"))
            else:
                self.notes.append(f"{label} dropped: the container cannot hold {name}")
                self.streams.append(StreamHandling(*handled, "dropped", f"the container cannot hold {name}"))
        self._pending = self._src.demux(*keep) if keep else None

    def _copy_video_stream_tags(self, av: Any, out: Any) -> None:
        """Language, title, handler name of the source video stream; not tags the muxer recomputes."""
        assert self.info is not None and self.source is not None
        with av.open(os.fspath(self.source)) as src:
            vs = src.streams[self.info.stream_index]
            for key, value in vs.metadata.items():
                # rotate is carried as a display matrix; DURATION/encoder/stats describe the old encode
                if key.lower() in ("rotate", "duration", "encoder") or key.lower().startswith("_statistics"):
                    continue
                if key.upper().startswith(("NUMBER_OF_", "BPS")):
                    continue
                out.metadata[key] = value
            with contextlib.suppress(AttributeError, ValueError, TypeError):
                out.disposition = vs.disposition

    @staticmethod
    def _copy_stream_tags(src: Any, out: Any) -> None:
        for key, value in src.metadata.items():
            out.metadata[key] = value
        with contextlib.suppress(AttributeError, ValueError, TypeError):
            out.disposition = src.disposition

    # ---------------------------------------------------------------- writing

    def convert(self, frame: Frame | np.ndarray) -> ConvertedFrame:
        """A frame (H x W x 3 RGB, uint8 or uint16) in the encoder's pixel format, for `write`.

        Safe to call from several threads at once; the first call opens the video stream with the
        frame's size and depth. A `Frame` keeps its pts, time base and duration.
        """
        if self._out is None:
            raise VideoError(f"{_show(self.path)}: writer is not open (use it in a with block)")
        pixels = frame.pixels if isinstance(frame, Frame) else frame
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frames must be H x W x 3 uint8 or uint16, got {pixels.shape} {pixels.dtype}")
        deep = pixels.dtype == np.uint16
        height, width = pixels.shape[:2]
        timing = (frame.pts, frame.time_base, frame.duration) if isinstance(frame, Frame) else (None, None, None)
        with self._lock:
            if self._vstream is None:
                self._open_video(width, height, deep, timing[1])
        vs = self._vstream
        if (width, height) != (vs.width, vs.height):
            raise ValueError(f"frame size {width}x{height} differs from the stream's {vs.width}x{vs.height}")
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb48le" if deep else "rgb24")
        return ConvertedFrame(vf.reformat(**self._reformat), *timing)

    def write(self, frame: Frame | np.ndarray | ConvertedFrame) -> None:
        """Encode one frame (see `convert`), in presentation order."""
        ready = frame if isinstance(frame, ConvertedFrame) else self.convert(frame)
        av, vs = self._av, self._vstream
        vf = ready.av_frame
        ctb = Fraction(vs.codec_context.time_base)
        pts, tb, duration = ready.pts, ready.time_base, ready.duration
        if pts is not None and tb is not None and tb != ctb:  # a frame from another clock: rescale to ours
            pts = round(pts * tb / ctb)
            duration = round(duration * tb / ctb) if duration else duration
        vf.pts = pts if pts is not None else self._next_pts
        vf.time_base = ctb
        if duration:
            vf.duration = duration
        step = max(1, round(1 / (self._rate() * ctb)))
        self._next_pts = vf.pts + step
        if self._span_start is None:
            self._span_start = vf.pts * ctb
        end = (vf.pts + (duration or step)) * ctb
        self._span_end = end if self._span_end is None else max(self._span_end, end)
        try:
            for packet in vs.encode(vf):
                self._mux_other_until(self._packet_time(packet))
                self._mux(packet)
        except (av.FFmpegError, OSError) as exc:
            raise self._write_error(exc, f"cannot encode frame {self.frames_written}") from exc
        self.frames_written += 1

    def _rate(self) -> Fraction:
        return self.rate or (self.info.frame_rate if self.info else None) or Fraction(25)

    @staticmethod
    def _packet_time(packet: Any) -> Fraction | None:
        ts = packet.dts if packet.dts is not None else packet.pts
        if ts is None or packet.time_base is None:
            return None
        return ts * Fraction(packet.time_base)

    def _mux_other_until(self, until: Fraction | None) -> None:
        """Copy source packets of the other streams up to `until` seconds (None: all), interleaving them."""
        if self._pending is None:
            return
        while True:
            if self._held is None:
                try:
                    self._held = next(self._pending)
                except (StopIteration, self._av.FFmpegError):
                    self._pending = None
                    return
            packet = self._held
            t = self._packet_time(packet)
            if until is not None and t is not None and t > until:
                return
            if self.trim_streams and not self._in_span(packet, t):
                self._held = None
                continue
            self._held = None
            if packet.size == 0 and packet.pts is None:  # demux's end-of-stream flush marker
                continue
            index = packet.stream.index
            if index in self._copy_map:
                packet.stream = self._copy_map[index]
                self._mux(packet)
            elif index in self._reencode:
                out, resampler, fifo = self._reencode[index]
                for af in packet.decode():
                    self._encode_audio(out, resampler, fifo, af)

    def _in_span(self, packet: Any, t: Fraction | None) -> bool:
        """Whether a packet of another stream overlaps the span the written frames cover."""
        if t is None or self._span_start is None:
            return True
        duration = (packet.duration or 0) * Fraction(packet.time_base) if packet.time_base else 0
        if t + duration <= self._span_start if duration else t < self._span_start:
            return False
        return self._span_end is None or t < self._span_end

    def _encode_audio(self, out: Any, resampler: Any, fifo: Any, af: Any) -> None:
        """Resample and encode one decoded audio frame (None: flush), in the encoder's frame size."""
        cc = out.codec_context
        if not cc.is_open:  # the frame size is only known once the encoder is open
            cc.open()
        for item in resampler.resample(af):
            fifo.write(item)
        size = cc.frame_size or 0
        while True:
            # fixed-size encoders (AAC 1024, Opus 960) reject other sizes; the last one may be short
            chunk = fifo.read(size, partial=af is None) if size else fifo.read()
            if chunk is None:
                break
            for packet in out.encode(chunk):
                self._mux(packet)
        if af is None:
            for packet in out.encode(None):
                self._mux(packet)
