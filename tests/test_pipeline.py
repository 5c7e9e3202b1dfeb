"""The three-stage pipeline: rows in job order, --batch equal to one by one, errors kept to their file, Ctrl-C and a
full disk leave no partial output. Runs in process on a tiny random 2x SPAN (a few ms per picture on the CPU).

--batch is "equal" up to float rounding: convolution kernels accumulate in another order for another batch size
(measured on the CPU: 7e-6 at most, with or without oneDNN), which can move a value that sits on a rounding edge by
one level. Mixed-up, dropped or shifted frames differ by far more.
"""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from restore_cli import api, batch, pipeline
from restore_cli.engine.runner import Runner
from tests.test_engine import LocalNet, _spec


@pytest.fixture(scope="module")
def span(span_weights: Path) -> api.LoadedModel:
    return api.load_model(str(span_weights), task="upscale", device="cpu", tile=0)


def _folder(path: Path, n: int, sizes: tuple[tuple[int, int], ...] = ((24, 32),)) -> list[Path]:
    path.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        f = path / f"img{i:02d}.png"
        PILImage.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(f)
        files.append(f)
    return files


def _run(folder: Path, out: Path, loaded: api.LoadedModel, *, batch_size: int = 1,
         **settings: object) -> pipeline.RunResult:
    loaded.runner.batch = batch_size
    jobs = batch.collect([str(folder)], out, recursive=False)
    return pipeline.run(jobs, loaded, pipeline.Settings(**settings))  # type: ignore[arg-type]


def _same_up_to_rounding(a: np.ndarray, b: np.ndarray, levels: int = 1) -> bool:
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return a.shape == b.shape and int(diff.max()) <= levels and float((diff > 0).mean()) < 0.01


# --------------------------------------------------------------------------- engine


def test_run_many_equals_run_image_by_image() -> None:
    torch.manual_seed(0)
    runner = Runner(LocalNet(2), _spec(2), device=torch.device("cpu"), dtype=torch.float32, tile=0, batch=3)
    frames = [(torch.rand(3, 30, 41) * 255).round().to(torch.uint8) for _ in range(5)]
    single = [runner.run(f, quantize=255)[0] for f in frames]
    outs, stats = runner.run_many(frames, quantize=255)
    assert all(_same_up_to_rounding(a.numpy(), b.numpy()) for a, b in zip(outs, single, strict=True))
    assert [s.tiles for s in stats] == [1] * 5 and all(s.infer_s > 0 for s in stats)
    floats, _ = runner.run_many([f.float() / 255 for f in frames])
    assert all(torch.allclose(a, runner.run(f.float() / 255)[0], atol=1e-5, rtol=0)
               for a, f in zip(floats, frames, strict=True))
    # a tile plan of several tiles: each frame tiled on its own, still the same pixels as `run`
    runner.tile, runner.overlap = 16, 4
    tiled = [runner.run(f, quantize=255)[0] for f in frames[:2]]
    outs, stats = runner.run_many(frames[:2], quantize=255)
    assert all(torch.equal(a, b) for a, b in zip(outs, tiled, strict=True)) and stats[0].tiles > 1


def test_run_many_halves_the_batch_on_out_of_memory() -> None:
    sizes: list[int] = []

    def call(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return model(x)

    runner = Runner(LocalNet(1), _spec(1), device=torch.device("cpu"), dtype=torch.float32, tile=0, batch=4,
                    call=call)
    frames = [torch.rand(3, 20, 20) for _ in range(5)]
    outs, _ = runner.run_many(frames)
    assert sizes == [4, 2, 2, 1] and runner._frames_cap == 2  # the working batch is kept
    assert all(torch.allclose(a, runner.run(f)[0], atol=1e-5, rtol=0) for a, f in zip(outs, frames, strict=True))


@pytest.mark.cuda
@pytest.mark.parametrize("quantize", [255, 65535, None])
def test_run_many_on_cuda_downloads_while_the_next_batch_runs(quantize: int | None) -> None:
    torch.manual_seed(0)
    runner = Runner(LocalNet(2), _spec(2), device=torch.device("cuda"), dtype=torch.float32, tile=0, batch=3)
    if quantize is None:
        frames = [torch.rand(3, 30, 41) for _ in range(5)]
    else:
        frames = [(torch.rand(3, 30, 41) * quantize).round().to(torch.uint8 if quantize == 255 else torch.int32)
                  for _ in range(5)]
    single = [runner.run(f, quantize=quantize)[0] for f in frames]
    outs, stats = runner.run_many(frames, quantize=quantize, wait=False)
    assert stats[0].pending is not None
    for st in stats:
        st.wait()
    assert all(st.pending is None and st.infer_s > 0 for st in stats)
    for a, b in zip(outs, single, strict=True):
        assert a.shape == b.shape == (3, 60, 82) and a.dtype == b.dtype and a.is_pinned()
        assert a.permute(1, 2, 0).is_contiguous()  # H x W x C in memory: no transpose on the CPU
        if quantize is None:
            assert torch.allclose(a, b, atol=1e-5, rtol=0)
        else:
            assert _same_up_to_rounding(a.numpy(), b.numpy())


@pytest.mark.cuda
def test_folder_on_cuda_matches_cpu(span_weights: Path, tmp_path: Path) -> None:
    _folder(tmp_path / "in", 6, sizes=((24, 32), (24, 32), (16, 20)))
    results = {}
    for device in ("cpu", "cuda"):
        loaded = api.load_model(str(span_weights), task="upscale", device=device, precision="fp32")
        results[device] = _run(tmp_path / "in", tmp_path / device, loaded, batch_size=2)
        assert [r.status for r in results[device].records] == ["ok"] * 6
    for f in sorted((tmp_path / "cpu").iterdir()):
        a, b = np.asarray(PILImage.open(f)), np.asarray(PILImage.open(tmp_path / "cuda" / f.name))
        assert _same_up_to_rounding(a, b, levels=2)
    assert all(r.infer_ms > 0 for r in results["cuda"].records)


# --------------------------------------------------------------------------- images


def test_rows_in_job_order_however_decoding_overlaps(span: api.LoadedModel, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from restore_cli.io import images

    files = _folder(tmp_path / "in", 8, sizes=((24, 32), (24, 32), (16, 20)))
    (tmp_path / "in" / "img03.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # fails on its own
    real = images.read_image
    delays = {f.name: random.Random(i).uniform(0, 0.05) for i, f in enumerate(files)}

    def slow_read(path: Path, **kw: object) -> images.Image:
        time.sleep(delays[Path(path).name])  # finish out of order
        return real(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "read_image", slow_read)
    rows: list[str] = []
    span.runner.batch = 2
    jobs = batch.collect([str(tmp_path / "in")], tmp_path / "out", recursive=False)
    result = pipeline.run(jobs, span, pipeline.Settings(), pipeline.Hooks(record=lambda r: rows.append(r.input)))
    assert rows == [str(f) for f in files] == [r.input for r in result.records]
    assert [r.status for r in result.records] == ["ok"] * 3 + ["failed"] + ["ok"] * 4
    assert "img03.png" in result.records[3].input and result.records[3].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f.name for f in files if f.name != "img03.png"]
    assert result.records[0].size_out == (64, 48) and result.records[2].size_out == (40, 32)


def test_batch_gives_the_same_outputs(span: api.LoadedModel, tmp_path: Path) -> None:
    _folder(tmp_path / "in", 5, sizes=((24, 32), (24, 32), (24, 32), (16, 20)))
    one = _run(tmp_path / "in", tmp_path / "b1", span, batch_size=1)
    four = _run(tmp_path / "in", tmp_path / "b4", span, batch_size=4)
    assert [r.status for r in one.records] == [r.status for r in four.records] == ["ok"] * 5
    for f in sorted((tmp_path / "b1").iterdir()):
        assert _same_up_to_rounding(np.asarray(PILImage.open(f)), np.asarray(PILImage.open(tmp_path / "b4" / f.name)))


def test_stop_keeps_finished_images_only(span: api.LoadedModel, tmp_path: Path) -> None:
    _folder(tmp_path / "in", 8)
    done: list[int] = []
    span.runner.batch = 1
    jobs = batch.collect([str(tmp_path / "in")], tmp_path / "out", recursive=False)
    result = pipeline.run(jobs, span, pipeline.Settings(should_stop=lambda: len(done) >= 2),
                          pipeline.Hooks(done=done.append))
    assert result.interrupted and 2 <= len(result.records) < 8
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(Path(r.output).name for r in result.records if r.output)  # every output is whole
    assert all(r.status == "ok" for r in result.records)


def test_disk_full_names_the_output_and_leaves_nothing(span: api.LoadedModel, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _folder(tmp_path / "in", 3)
    real_fsync = os.fsync

    def full(fd: int) -> None:  # the disk fills up while img01's bytes go out
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".img01"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell the files apart")
    monkeypatch.setattr(os, "fsync", full)
    result = _run(tmp_path / "in", tmp_path / "out", span)
    assert [r.status for r in result.records] == ["ok", "failed", "ok"]
    error = result.records[1].error or ""
    assert str(tmp_path / "out" / "img01.png") in error and "No space left" in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img00.png", "img02.png"]  # no partial file


# --------------------------------------------------------------------------- videos

av = pytest.importorskip("av")

from restore_cli.io import video  # noqa: E402
from tests.test_io_video import _has_encoder, _packets, _times, make_h264_aac  # noqa: E402


def _video_job(src: Path, dest: Path) -> batch.Job:
    return batch.collect([str(src)], dest, recursive=False)[0]


def test_video_batch_gives_the_same_frames(span: api.LoadedModel, tmp_path: Path) -> None:
    codec = "ffv1" if _has_encoder("ffv1") else "libx264"
    src = tmp_path / "clip.mkv"
    make_h264_aac(src, frames=7)
    frames = {}
    for n in (1, 3):
        span.runner.batch = n
        dest = tmp_path / f"b{n}.mkv"
        rec = pipeline.run_job(_video_job(src, dest), span,
                               pipeline.Settings(video=pipeline.VideoOptions(codec=codec, preset="ultrafast")))
        assert rec.status == "ok" and rec.frames == 7, rec.error
        frames[n] = list(video.read_frames(dest))
    assert [f.pts for f in frames[1]] == [f.pts for f in frames[3]]
    # one level in RGB can become one in Y and in chroma, and two back in RGB
    assert all(_same_up_to_rounding(a.pixels, b.pixels, levels=3) for a, b in zip(frames[1], frames[3], strict=True))


def test_time_range_trims_audio_and_keeps_timestamps(span: api.LoadedModel, tmp_path: Path) -> None:
    src, dest = tmp_path / "clip.mp4", tmp_path / "part.mp4"
    make_h264_aac(src, frames=12)
    settings = pipeline.Settings(video=pipeline.VideoOptions(preset="ultrafast",
                                                             frames=pipeline.parse_frames("0.1s:0.25s")))
    span.runner.batch = 2
    rec = pipeline.run_job(_video_job(src, dest), span, settings)
    assert rec.status == "ok", rec.error
    times = _times(src)
    assert _times(dest) == [t for t in times if 0.1 <= t < 0.25]  # 24 fps: frames 3, 4 and 5, timestamps kept
    start, end = times[3], times[6]
    with av.open(str(src)) as c:
        expected = [p.pts * p.time_base for p in c.demux(audio=0)
                    if p.size and p.pts * p.time_base + p.duration * p.time_base > start
                    and p.pts * p.time_base < end]
    got = _packets(dest, "audio")
    assert [t for t, _ in got] == expected
    assert {h for _, h in got} <= {h for _, h in _packets(src, "audio")}  # copied, not re-encoded
    assert rec.streams == [{"index": 1, "type": "audio", "codec": "aac", "action": "trimmed",
                            "detail": "packets within the frame range"}]


def test_video_disk_full_names_the_output_and_deletes_the_partial_file(span: api.LoadedModel, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src, dest = tmp_path / "clip.mp4", tmp_path / "out" / "clip.mp4"
    make_h264_aac(src, frames=8)
    real_mux = video.VideoWriter._mux
    muxed: list[int] = []

    def mux(self: video.VideoWriter, packet: object) -> None:
        if len(muxed) >= 4:  # some packets are on disk when it fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        muxed.append(1)
        real_mux(self, packet)

    monkeypatch.setattr(video.VideoWriter, "_mux", mux)
    span.runner.batch = 1
    rec = pipeline.run_job(_video_job(src, dest.parent), span, pipeline.Settings(video=pipeline.VideoOptions(
        preset="ultrafast")))
    assert rec.status == "failed" and muxed
    assert str(dest) in (rec.error or "") and "disk full" in (rec.error or "")
    assert list((tmp_path / "out").iterdir()) == []  # the temporary file is gone, no output


def test_encoder_list_for_doctor() -> None:
    found = video.encoders()
    assert list(found) == list(video.ENCODERS)
    assert found["libx264"] == "yes"
    if not torch.cuda.is_available():
        assert found["h264_nvenc"] != "yes"  # listed by the build, but nothing to open it on
