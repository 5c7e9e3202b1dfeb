"""Video I/O: probe, decode, atomic encode, remux of audio/subtitles, timing, depth, damage.

Every clip is generated here with PyAV, tiny (64x48, a handful of frames) so the suite stays fast.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from restore_cli.errors import VideoError

av = pytest.importorskip("av")

from restore_cli.io import video  # noqa: E402
from restore_cli.io.video import Frame, VideoReader, VideoWriter, probe, read_frames  # noqa: E402

W, H = 64, 48


def _has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:
        return False
    return True


def _picture(i: int, deep: bool = False) -> np.ndarray:
    """A moving gradient, different in every frame."""
    y, x = np.mgrid[0:H, 0:W]
    r = (x * 4 + i * 16) % 256
    g = (y * 5 + i * 8) % 256
    b = ((x + y) * 2 + i * 32) % 256
    img = np.stack([r, g, b], axis=-1)
    if deep:
        return (img * 257).astype(np.uint16)
    return img.astype(np.uint8)


def _encode_video(
    out: object,
    codec: str,
    pts: list[int],
    time_base: Fraction,
    *,
    pix_fmt: str = "yuv420p",
    deep: bool = False,
    options: dict[str, str] | None = None,
) -> object:
    stream = out.add_stream(codec, rate=24)  # type: ignore[attr-defined]
    stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
    stream.codec_context.time_base = time_base
    stream.time_base = time_base
    stream.codec_context.options = options or {}
    stream.codec_context.color_primaries = 1  # BT.709
    stream.codec_context.color_trc = 1
    stream.codec_context.colorspace = 1
    stream.codec_context.color_range = 1  # limited
    return stream


def _push(out: object, stream: object, pts: list[int], time_base: Fraction, deep: bool = False) -> None:
    for i, p in enumerate(pts):
        vf = av.VideoFrame.from_ndarray(_picture(i, deep), format="rgb48le" if deep else "rgb24")
        vf = vf.reformat(format=stream.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")  # type: ignore[attr-defined]
        vf.pts = p
        vf.time_base = time_base
        if i + 1 < len(pts):
            vf.duration = pts[i + 1] - p
        for packet in stream.encode(vf):  # type: ignore[attr-defined]
            out.mux(packet)  # type: ignore[attr-defined]
    for packet in stream.encode(None):  # type: ignore[attr-defined]
        out.mux(packet)  # type: ignore[attr-defined]


_X264 = {"preset": "ultrafast", "crf": "20"}


def make_h264_aac(path: Path, frames: int = 8) -> None:
    """H.264 + AAC in MP4, rotated 90 degrees, with a title tag."""
    tb = Fraction(1, 12288)
    step = 512  # 24 fps
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "test clip"
        vs = _encode_video(out, "libx264", [], tb, options=_X264)
        vs.set_display_rotation(90)
        aus = out.add_stream("aac", rate=48000)
        aus.layout = "mono"
        # audio first, to cover the whole clip
        n = 48000 * frames // 24
        t = np.arange(n) / 48000
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for start in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
            af.sample_rate = 48000
            af.pts = start
            for packet in aus.encode(af):
                out.mux(packet)
        for packet in aus.encode(None):
            out.mux(packet)
        _push(out, vs, [i * step for i in range(frames)], tb)


def make_vfr(path: Path) -> list[int]:
    """Irregular timestamps (ms) in MKV."""
    pts = [0, 40, 70, 150, 160, 300, 310, 420, 500, 505]
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        vs = _encode_video(out, "libx264", pts, tb, options=_X264)
        _push(out, vs, pts, tb)
    return pts


def make_10bit(path: Path) -> str:
    """A 10-bit clip: libx265 if present, else FFV1; returns the codec used."""
    tb = Fraction(1, 1000)
    pts = [i * 40 for i in range(6)]
    if _has_encoder("libx265"):
        codec, opts = "libx265", {"preset": "ultrafast", "x265-params": "log-level=error"}
    elif _has_encoder("ffv1"):
        codec, opts = "ffv1", {}
    else:
        pytest.skip("this PyAV build has neither libx265 nor ffv1 for a 10-bit clip")
    with av.open(str(path), "w") as out:
        vs = _encode_video(out, codec, pts, tb, pix_fmt="yuv420p10le", deep=True, options=opts)
        _push(out, vs, pts, tb, deep=True)
    return codec


SRT = """1
00:00:00,000 --> 00:00:00,150
Hello

2
00:00:00,200 --> 00:00:00,350
World
"""


def make_mkv_subs(path: Path, tmp: Path) -> None:
    """MKV with H.264 video and a SubRip stream remuxed from an .srt file."""
    srt = tmp / "subs.srt"
    srt.write_text(SRT)
    tb = Fraction(1, 1000)
    pts = [i * 40 for i in range(10)]
    with av.open(str(srt)) as sub_in, av.open(str(path), "w") as out:
        vs = _encode_video(out, "libx264", pts, tb, options=_X264)
        ss = out.add_stream_from_template(sub_in.streams.subtitles[0])
        ss.metadata["language"] = "eng"
        vs.metadata["language"] = "fra"
        _push(out, vs, pts, tb)
        for packet in sub_in.demux(sub_in.streams.subtitles[0]):
            if packet.size == 0:
                continue
            packet.stream = ss
            out.mux(packet)


def _round_trip(src: Path, dst: Path, **kwargs: object) -> VideoWriter:
    with VideoWriter(dst, source=src, **kwargs) as writer:  # type: ignore[arg-type]
        for frame in read_frames(src):
            writer.write(frame)
    return writer


def _packets(path: Path, kind: str) -> list[tuple[Fraction | None, str]]:
    with av.open(str(path)) as c:
        stream = next(s for s in c.streams if s.type == kind)
        return [
            (None if p.pts is None else p.pts * Fraction(p.time_base), hashlib.sha256(bytes(p)).hexdigest())
            for p in c.demux(stream)
            if p.size
        ]


def _times(path: Path) -> list[Fraction | None]:
    return [f.time for f in read_frames(path)]


# --------------------------------------------------------------------------- probe


def test_probe_h264_aac(tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    make_h264_aac(src)
    info = probe(src)
    assert info is not None
    assert info.codec == "h264" and "mp4" in info.container
    assert (info.width, info.height, info.pix_fmt, info.bit_depth) == (W, H, "yuv420p", 8)
    assert info.frame_rate == 24
    assert info.rotation == 90
    assert (info.color_primaries, info.color_trc, info.colorspace, info.color_range) == (1, 1, 1, 1)
    assert [(s.type, s.codec) for s in info.streams] == [("audio", "aac")]
    assert info.duration is not None and abs(info.duration - 8 / 24) < 1e-3
    assert info.metadata.get("title") == "test clip"


def test_probe_by_content_not_name(tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    make_h264_aac(src, frames=5)
    disguised = tmp_path / "holiday.png"
    disguised.write_bytes(src.read_bytes())
    assert probe(disguised) is not None


def test_probe_refuses_images_and_text(tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "a.mp4"  # an image named like a video
    Image.fromarray(_picture(0)).save(png, format="PNG")
    txt = tmp_path / "notes.mkv"
    txt.write_text("not a video at all\n" * 10)
    assert probe(png) is None
    assert probe(txt) is None
    with pytest.raises(VideoError, match=r"notes\.mkv: not a video") as err:
        list(read_frames(txt))
    assert "\n" not in str(err.value)
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "missing.mp4")


# --------------------------------------------------------------------------- read


def test_read_frames_count_order_and_range(tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    make_h264_aac(src, frames=8)
    frames = list(read_frames(src))
    assert [f.index for f in frames] == list(range(8))
    assert all(f.pixels.shape == (H, W, 3) and f.pixels.dtype == np.uint8 for f in frames)
    times = [f.time for f in frames]
    assert times == sorted(times)
    # colour round trip through YUV 4:2:0 is close, not exact
    assert np.abs(frames[3].pixels.astype(int) - _picture(3).astype(int)).mean() < 12
    part = list(read_frames(src, start=2, stop=5))
    assert [f.index for f in part] == [2, 3, 4]
    assert [f.pts for f in part] == [f.pts for f in frames[2:5]]


# --------------------------------------------------------------------------- round trips


def test_round_trip_h264_aac_keeps_audio_timing_tags(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    make_h264_aac(src, frames=8)
    writer = _round_trip(src, dst, preset="ultrafast")
    assert writer.codec == "libx264" and writer.frames_written == 8
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]  # no temp left
    a, b = probe(src), probe(dst)
    assert a is not None and b is not None
    assert _times(src) == _times(dst)
    assert b.duration == pytest.approx(a.duration, abs=1e-6)
    assert _packets(src, "audio") == _packets(dst, "audio")
    assert (b.pix_fmt, b.bit_depth, b.rotation) == (a.pix_fmt, a.bit_depth, 90)
    assert (b.color_primaries, b.color_trc, b.colorspace, b.color_range) == (1, 1, 1, 1)
    assert b.metadata.get("title") == "test clip"
    assert [(s.type, s.codec) for s in b.streams] == [("audio", "aac")]


def test_round_trip_variable_frame_rate(tmp_path: Path) -> None:
    src, dst = tmp_path / "vfr.mkv", tmp_path / "out.mkv"
    pts = make_vfr(src)
    frames = list(read_frames(src))
    assert len(frames) == len(pts)
    assert [f.time for f in frames] == [Fraction(p, 1000) for p in pts]
    _round_trip(src, dst, preset="ultrafast")
    assert _times(dst) == [Fraction(p, 1000) for p in pts]
    a, b = probe(src), probe(dst)
    assert a is not None and b is not None
    assert b.duration == pytest.approx(a.duration, abs=1e-3)


def test_round_trip_10bit_stays_10bit(tmp_path: Path) -> None:
    src, dst = tmp_path / "deep.mkv", tmp_path / "out.mkv"
    codec = make_10bit(src)
    frames = list(read_frames(src))
    assert len(frames) == 6 and frames[0].pixels.dtype == np.uint16
    opts = {"preset": "ultrafast"} if codec == "libx265" else {}
    writer = _round_trip(src, dst, **opts)
    assert writer.codec == codec and writer.pix_fmt == "yuv420p10le"
    info = probe(dst)
    assert info is not None
    assert (info.codec, info.pix_fmt, info.bit_depth) == (probe(src).codec, "yuv420p10le", 10)  # type: ignore[union-attr]
    assert (info.color_primaries, info.colorspace, info.color_range) == (1, 1, 1)
    out = list(read_frames(dst))
    assert out[0].pixels.dtype == np.uint16
    # a 10-bit path keeps sub-8-bit detail: the values are not all multiples of 257
    assert np.any(out[2].pixels % 257 != 0)
    assert _times(src) == _times(dst)


def test_round_trip_mkv_subtitles_kept(tmp_path: Path) -> None:
    src, dst = tmp_path / "subs.mkv", tmp_path / "out.mkv"
    make_mkv_subs(src, tmp_path)
    info = probe(src)
    assert info is not None and [s.type for s in info.streams] == ["subtitle"]
    writer = _round_trip(src, dst, preset="ultrafast")
    assert writer.notes == []
    out = probe(dst)
    assert out is not None and [(s.type, s.codec) for s in out.streams] == [(s.type, s.codec) for s in info.streams]
    assert _packets(src, "subtitle") == _packets(dst, "subtitle")
    with av.open(str(dst)) as c:
        assert c.streams.subtitles[0].metadata.get("language") == "eng"
        assert c.streams.video[0].metadata.get("language") == "fra"


def test_subtitles_the_container_cannot_hold_are_reported(tmp_path: Path) -> None:
    src, dst = tmp_path / "subs.mkv", tmp_path / "out.mp4"
    make_mkv_subs(src, tmp_path)
    writer = _round_trip(src, dst, preset="ultrafast")
    assert any("subtitle" in n and "dropped" in n for n in writer.notes), writer.notes
    assert probe(dst) is not None


def test_codec_and_crf_options(tmp_path: Path) -> None:
    src, dst = tmp_path / "vfr.mkv", tmp_path / "out.mkv"
    make_vfr(src)
    if not _has_encoder("ffv1"):
        pytest.skip("no ffv1 encoder")
    writer = _round_trip(src, dst, codec="ffv1", crf=10)
    assert writer.codec == "ffv1" and any("takes no CRF" in n for n in writer.notes)
    assert probe(dst).codec == "ffv1"  # type: ignore[union-attr]


def test_bare_arrays_get_regular_timestamps(tmp_path: Path) -> None:
    dst = tmp_path / "plain.mp4"
    with VideoWriter(dst, rate=25, preset="ultrafast") as writer:
        for i in range(5):
            writer.write(_picture(i))
    assert _times(dst) == [Fraction(i, 25) for i in range(5)]


# --------------------------------------------------------------------------- failures


def test_exception_in_block_leaves_no_output(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    make_h264_aac(src, frames=5)
    with pytest.raises(RuntimeError, match="model crashed"), VideoWriter(dst, source=src, preset="ultrafast") as w:
        for i, frame in enumerate(read_frames(src)):
            if i == 3:
                raise RuntimeError("model crashed")
            w.write(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_failed_write_keeps_existing_output(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    make_h264_aac(src, frames=5)
    dst.write_bytes(b"previous result")
    with pytest.raises(KeyError), VideoWriter(dst, source=src) as w:
        w.write(next(read_frames(src)))
        raise KeyError("stop")
    assert dst.read_bytes() == b"previous result"


def test_no_frames_is_an_error(tmp_path: Path) -> None:
    dst = tmp_path / "empty.mp4"
    with pytest.raises(VideoError, match="no frames"), VideoWriter(dst):
        pass
    assert not list(tmp_path.iterdir())


def test_truncated_file_yields_frames_before_the_cut(tmp_path: Path) -> None:
    src = tmp_path / "vfr.mkv"
    pts = make_vfr(src)
    data = src.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    reader = VideoReader(cut)
    frames = list(reader)
    assert 0 < len(frames) < len(pts)
    assert [f.pts for f in frames] == pts[: len(frames)]
    assert reader.errors, "the loss must be reported"
    assert any("truncated" in e or "undecodable" in e or "corrupt" in e for e in reader.errors)


def test_missing_pyav_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(VideoError, match=r"pip install 'restore-cli\[video\]'"):
        video.probe("x.mp4")


def test_frame_time_property() -> None:
    f = Frame(np.zeros((2, 2, 3), np.uint8), pts=3, time_base=Fraction(1, 30), index=0)
    assert f.time == Fraction(1, 10)
    assert Frame(f.pixels, None, None, 0).time is None


def test_container_that_cannot_hold_the_codecs_reencodes_and_reports(tmp_path: Path) -> None:
    if not (_has_encoder("libvpx-vp9") and _has_encoder("libopus")):
        pytest.skip("this PyAV build lacks libvpx-vp9 or libopus for WebM")
    src, dst = tmp_path / "clip.mp4", tmp_path / "out.webm"
    make_h264_aac(src, frames=6)
    fast = {"deadline": "realtime", "cpu-used": "8"}
    writer = _round_trip(src, dst, options=fast)
    assert writer.codec == "libvpx-vp9"
    assert any("using libvpx-vp9" in n for n in writer.notes), writer.notes
    assert any("audio aac" in n and "re-encoded to libopus" in n for n in writer.notes), writer.notes
    info = probe(dst)
    assert info is not None and info.codec == "vp9"
    assert [(s.type, s.codec) for s in info.streams] == [("audio", "opus")]
    # WebM counts in milliseconds, so timestamps survive to the nearest millisecond
    assert [round(t * 1000) for t in _times(dst)] == [round(t * 1000) for t in _times(src)]  # type: ignore[operator]
    with av.open(str(dst)) as c:
        decoded = sum(f.samples for f in c.decode(audio=0))
    assert abs(decoded - 48000 * 6 // 24) < 2048


def test_upscaled_frames_keep_timing_and_audio(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip.mp4", tmp_path / "x2.mp4"
    make_h264_aac(src, frames=5)
    with VideoWriter(dst, source=src, preset="ultrafast") as writer:
        for frame in read_frames(src):
            big = frame.pixels.repeat(2, axis=0).repeat(2, axis=1)
            writer.write(Frame(big, frame.pts, frame.time_base, frame.index, frame.duration))
    info = probe(dst)
    assert info is not None and (info.width, info.height) == (2 * W, 2 * H)
    assert _times(dst) == _times(src)
    assert _packets(src, "audio") == _packets(dst, "audio")


def test_corrupt_bytes_in_the_middle_do_not_stop_decoding(tmp_path: Path) -> None:
    src = tmp_path / "vfr.mkv"
    pts = make_vfr(src)
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 200] = bytes(range(200))  # garbage over part of a frame
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    reader = VideoReader(bad)
    frames = list(reader)  # must not raise
    assert 0 < len(frames) <= len(pts)
    if len(frames) < len(pts):
        assert reader.errors


def test_truncated_mp4_without_index_is_one_clear_line(tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    make_h264_aac(src, frames=5)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[:-300])  # the moov index sits at the end
    assert probe(cut) is None
    with pytest.raises(VideoError, match="probably truncated") as err:
        VideoReader(cut)
    assert "\n" not in str(err.value)


def test_missing_output_folder_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="does not exist"), VideoWriter(tmp_path / "nope" / "out.mp4"):
        pass


def test_mp4_to_mkv_keeps_every_timestamp(tmp_path: Path) -> None:
    """MP4's AAC priming packet sits before the first frame (-21 ms); Matroska must not shift the clip to hide it."""
    src, dst = tmp_path / "clip.mp4", tmp_path / "out.mkv"
    make_h264_aac(src, frames=8)
    _round_trip(src, dst)  # the default preset: B-frames, so the video's first dts is negative too

    def ms(times: list[Fraction | None]) -> list[int]:  # Matroska counts whole milliseconds
        return [round(t * 1000) for t in times]  # type: ignore[operator]

    audio = _packets(src, "audio")
    assert audio[0][0] is not None and audio[0][0] < 0
    assert ms(_times(dst)) == ms(_times(src)) and _times(src)[0] == 0
    assert [(round(t * 1000), h) for t, h in _packets(dst, "audio")] == [(round(t * 1000), h) for t, h in audio]


def test_frames_converted_on_threads_then_written_in_order(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    src, dst = tmp_path / "vfr.mkv", tmp_path / "out.mkv"
    pts = make_vfr(src)
    frames = list(read_frames(src))
    with VideoWriter(dst, source=src, preset="ultrafast") as writer, ThreadPoolExecutor(4) as pool:
        for ready in list(pool.map(writer.convert, frames)):  # the first conversions race to open the stream
            writer.write(ready)
    assert _times(dst) == [Fraction(p, 1000) for p in pts]
    out = list(read_frames(dst))
    assert np.abs(out[4].pixels.astype(int) - frames[4].pixels.astype(int)).mean() < 3


def test_trimmed_range_keeps_audio_over_the_range_only(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip.mp4", tmp_path / "part.mp4"
    make_h264_aac(src, frames=12)
    with VideoWriter(dst, source=src, preset="ultrafast", trim_streams=True) as writer:
        for frame in read_frames(src, start=3, stop=6):
            writer.write(frame)
    times = _times(src)
    assert _times(dst) == times[3:6]
    with av.open(str(src)) as c:
        spans = [(p.pts * p.time_base, (p.pts + p.duration) * p.time_base, hashlib.sha256(bytes(p)).hexdigest())
                 for p in c.demux(audio=0) if p.size]
    kept = [(a, h) for a, b, h in spans if b > times[3] and a < times[6]]  # type: ignore[operator]
    assert _packets(dst, "audio") == kept  # exact times in MP4, and the packets as they were
    assert [s.action for s in writer.streams] == ["trimmed"]
