"""`restore <task> clip.mp4` end to end: frames, timing, audio and subtitles survive; damage and Ctrl-C are safe.

Clips are tiny (64x48, a few frames) and the model is a random 2x SPAN, so each CLI run takes a few seconds.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.conftest import no_traceback, restore

pytest.importorskip("av")

from restore_cli import batch, pipeline
from restore_cli.errors import InterruptError, UsageError
from restore_cli.io.video import probe
from restore_cli.pipeline import FrameRange
from tests.test_io_video import H, W, _packets, _times, make_h264_aac, make_mkv_subs, make_vfr


def _packet_spans(path: Path, kind: str) -> list[tuple[Fraction, str, Fraction]]:
    """(start s, sha256, duration s) of every packet of the first `kind` stream."""
    import av

    with av.open(str(path)) as c:
        stream = next(s for s in c.streams if s.type == kind)
        return [(p.pts * Fraction(p.time_base), hashlib.sha256(bytes(p)).hexdigest(),
                 (p.duration or 0) * Fraction(p.time_base)) for p in c.demux(stream) if p.size]


def _report(path: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in json.loads(path.read_text())["files"]}


def test_clip_keeps_frames_timing_and_audio(span_weights: Path, tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    make_h264_aac(src, frames=6)
    report = tmp_path / "r.json"
    p = restore("upscale", src, "--model", span_weights, "--preset", "ultrafast", "--json", report)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    dst = tmp_path / "clip_restored.mp4"  # default: beside the input, same container
    info = probe(dst)
    assert info is not None and (info.width, info.height) == (2 * W, 2 * H)
    assert info.rotation == 90 and info.metadata.get("title") == "test clip"
    assert _times(dst) == _times(src) and len(_times(dst)) == 6
    assert _packets(src, "audio") == _packets(dst, "audio")  # copied, not re-encoded
    rec = _report(report)["clip.mp4"]
    assert rec["status"] == "ok" and rec["frames"] == 6 and rec["size_out"] == [2 * W, 2 * H]
    assert rec["fps"] == 24 and rec["infer_fps"] > 0 and rec["codec"] == "libx264"
    assert "6 frames" in p.stderr and "infer" in p.stderr and "fps" in p.stderr


def test_folder_mixing_image_and_videos(span_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pts = make_vfr(folder / "vfr.mkv")
    make_mkv_subs(folder / "subs.mkv", tmp_path)
    rng = np.random.default_rng(0)
    PILImage.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    out = tmp_path / "out"
    p = restore("upscale", folder, "-o", out, "--model", span_weights, "--preset", "ultrafast", "-q")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert PILImage.open(out / "a.png").size == (48, 40)
    # variable frame rate: every timestamp kept
    assert [f * 1000 for f in _times(out / "vfr.mkv")] == pts
    assert _packets(folder / "subs.mkv", "subtitle") == _packets(out / "subs.mkv", "subtitle")
    assert _times(out / "subs.mkv") == _times(folder / "subs.mkv")


def test_frame_range_named_output_and_skip_existing(span_weights: Path, tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    make_h264_aac(src, frames=5)
    dst = tmp_path / "out.mkv"
    args = ("upscale", src, "-o", dst, "--model", span_weights, "--frames", "1:3", "--preset", "ultrafast")
    p = restore(*args)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    info = probe(dst)
    assert dst.is_file() and info is not None and "matroska" in info.container
    # the range keeps its place in time (Matroska counts whole milliseconds)
    times = _times(src)
    assert [round(t * 1000) for t in _times(dst)] == [round(t * 1000) for t in times[1:3]]
    # audio is trimmed to the range: the packets that overlap frames 1 and 2, copied as they were
    kept = [(round(t * 1000), h) for t, h, d in _packet_spans(src, "audio") if t + d > times[1] and t < times[3]]
    assert [(round(t * 1000), h) for t, h in _packets(dst, "audio")] == kept
    assert 0 < len(kept) < len(_packets(src, "audio"))
    before = dst.stat().st_mtime_ns
    p = restore(*args, "--skip-existing")
    assert p.returncode == 0 and "skipped" in p.stderr
    assert dst.stat().st_mtime_ns == before


def test_truncated_clip_restores_what_decodes_and_exits_1(span_weights: Path, tmp_path: Path) -> None:
    good = tmp_path / "vfr.mkv"
    pts = make_vfr(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    report = tmp_path / "r.json"
    p = restore("upscale", cut, "--model", span_weights, "--preset", "ultrafast", "--json", report)
    no_traceback(p)
    assert p.returncode == 1
    rec = _report(report)["cut.mkv"]
    assert rec["status"] == "partial" and "damaged" in rec["error"] and "truncated" in rec["error"]
    dst = tmp_path / "cut_restored.mkv"
    n = len(_times(dst))
    assert 0 < n < len(pts) and rec["frames"] == n
    assert f"{n} frames restored" in rec["error"]
    assert json.loads(report.read_text())["totals"]["partial"] == 1
    assert "partial" in p.stderr


def test_text_named_mp4_is_one_line(span_weights: Path, tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("hello, not a video\n")
    p = restore("upscale", fake, "--model", span_weights, "-q")
    no_traceback(p)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if "notes.mp4" in ln and ln.startswith("failed")]
    assert len(lines) == 1 and "neither a video nor an image" in lines[0]
    assert not (tmp_path / "notes_restored.mp4").exists()


def test_stop_request_leaves_no_output(span_weights: Path, tmp_path: Path) -> None:
    from restore_cli import api

    src = tmp_path / "clip.mp4"
    make_h264_aac(src, frames=8)
    loaded = api.load_model(str(span_weights), task="upscale", device="cpu")
    done: list[int] = []
    job = batch.collect([str(src)], None, recursive=False)[0]
    settings = pipeline.Settings(should_stop=lambda: len(done) >= 2)  # Ctrl-C once two frames are through
    result = pipeline.run([job], loaded, settings, pipeline.Hooks(done=done.append))
    assert result.interrupted and result.records == []
    assert 2 <= len(done) < 8  # stopped after the frames in flight, not at the end
    assert sorted(f.name for f in tmp_path.iterdir()) == ["clip.mp4"]  # no output, no temporary
    with pytest.raises(InterruptError):
        pipeline.run_job(job, loaded, pipeline.Settings(should_stop=lambda: True))


@pytest.mark.parametrize("text,expected", [
    ("1:3", FrameRange(1, 3)), (":5", FrameRange(stop=5)), ("2:", FrameRange(2)), (":", FrameRange()),
    (None, FrameRange()), ("1.5s:4s", FrameRange(start_time=Fraction(3, 2), stop_time=Fraction(4))),
    ("1m:1m30.25s", FrameRange(start_time=Fraction(60), stop_time=Fraction(361, 4))),
    ("10:2h", FrameRange(start=10, stop_time=Fraction(7200))), ("0.5s:", FrameRange(start_time=Fraction(1, 2))),
])
def test_parse_frames(text: str | None, expected: FrameRange) -> None:
    assert pipeline.parse_frames(text) == expected


@pytest.mark.parametrize("text", ["3", "a:b", "5:2", "-1:4", "4s:1s", "1.5:2", "1x:2s", "00:00:01"])
def test_parse_frames_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--frames"):
        pipeline.parse_frames(text)


def test_named_output_needs_one_input_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    with pytest.raises(UsageError, match="exactly one input file"):
        batch.collect([str(a), str(b)], tmp_path / "out.mkv", recursive=False)
    (job,) = batch.collect([str(a)], tmp_path / "out.mkv", recursive=False)
    assert batch.output_path(job, extension=".mp4", suffix="_x") == (tmp_path / "out.mkv").resolve()


def test_10bit_clip_stays_10bit(span_weights: Path, tmp_path: Path) -> None:
    from tests.test_io_video import make_10bit

    src = tmp_path / "deep.mkv"
    make_10bit(src)
    p = restore("upscale", src, "--model", span_weights, "--preset", "ultrafast")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    info = probe(tmp_path / "deep_restored.mkv")
    assert info is not None and info.bit_depth == 10 and info.width == 2 * W


def test_ctrl_c_exits_130_and_leaves_no_output(span_weights: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    src = tmp_path / "clip.mp4"
    make_h264_aac(src, frames=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    # small tiles: many stop checks per frame, and the run outlasts the signal's way in
    proc = subprocess.Popen([sys.executable, "-m", "restore_cli", "upscale", str(src), "--model", str(span_weights),
                             "--tile", "8", "--overlap", "4"], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "loaded in" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "Traceback" not in rest
    assert sorted(f.name for f in tmp_path.iterdir()) == ["clip.mp4"]  # no output, no temporary


def test_doctor_lists_video_encoders() -> None:
    p = restore("doctor")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("video: PyAV"))
    assert "libx264" in line.partition("usable:")[2]
    for name in ("libx265", "libsvtav1", "libaom-av1", "ffv1", "h264_nvenc", "hevc_nvenc"):
        assert name in p.stdout  # usable, or listed with why not
