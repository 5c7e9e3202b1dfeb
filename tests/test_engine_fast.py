"""The engine's GPU fast path, what of it runs on the CPU: option checks, the compile-auto policy, batch sizing,
full fixed-shape batches, model preparation and the transfer helpers (identity on the CPU).

The captured forwards themselves (CUDA graphs, torch.compile) are tested on the GPU in tests/test_throughput_cuda.py.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import archs
from restore_cli.engine import compiled
from restore_cli.engine.runner import Runner, prepare_model
from restore_cli.engine.transfer import Transfers, _hwc_view
from restore_cli.errors import UsageError
from tests.test_engine import LocalNet, _spec

CPU = torch.device("cpu")


def test_compile_choices_are_checked() -> None:
    for ok in ("auto", "off"):
        assert compiled.check_choice(ok, CPU) == ok
    for gpu_only in ("on", "graph", "inductor", "inductor-graph"):
        with pytest.raises(UsageError, match="needs a CUDA GPU"):
            compiled.check_choice(gpu_only, CPU)
    with pytest.raises(UsageError, match="unknown --compile"):
        compiled.check_choice("fast", CPU)
    # on a GPU every choice is accepted (nothing is compiled until a forward needs it)
    for choice in compiled.CHOICES:
        assert compiled.check_choice(choice, torch.device("cuda")) == choice


def test_mode_follows_the_descriptor() -> None:
    spec = _spec(1)
    plain = LocalNet(1)
    assert spec.compile_mode == "none"
    assert compiled.resolve_mode("auto", spec, plain) == "none"
    assert compiled.resolve_mode("on", spec, plain) == "inductor"  # on: a mode even where none is recorded
    assert compiled.resolve_mode("off", dataclasses.replace(spec, compile_mode="graph"), plain) == "none"
    graphed = dataclasses.replace(spec, compile_mode="inductor-graph")
    assert compiled.resolve_mode("auto", graphed, plain) == "inductor-graph"
    assert compiled.resolve_mode("graph", spec, plain) == "graph"

    class Reporting(LocalNet):
        last_info: dict = {}

    # a graph replays kernels, not the Python that fills last_info
    assert compiled.resolve_mode("graph", spec, Reporting(1)) == "none"
    assert compiled.resolve_mode("auto", graphed, Reporting(1)) == "inductor"


def test_auto_captures_only_what_pays_back() -> None:
    # a single image never; a shape seen once never, whatever is expected
    assert not compiled.auto_pays_back("graph", runs=1, expected=1000)
    assert compiled.auto_pays_back("graph", runs=2, expected=1)
    # inductor costs seconds: a few images of one size do not pay for it, a video does
    assert not compiled.auto_pays_back("inductor", runs=2, expected=24)
    assert compiled.auto_pays_back("inductor", runs=2, expected=500)
    # without a hint (an API loop), once enough of one shape have run
    n = compiled.AUTO_MIN_FORWARDS["inductor"]
    assert not compiled.auto_pays_back("inductor", runs=n - 1, expected=1)
    assert compiled.auto_pays_back("inductor", runs=n, expected=1)


def test_descriptors_of_the_fast_models_name_a_mode() -> None:
    for arch, kw in (("span", {"feature_channels": 48, "upscale": 4}), ("plksr", {}), ("realplksr", {}),
                     ("nafnet", {}), ("ufpnet", {})):
        spec = archs.spec(arch, **kw)
        assert spec.compile_mode in compiled.MODES, arch
        assert spec.gpu_precision in (None, "fp16", "bf16", "fp32")


@pytest.mark.parametrize("batch,count,want", [(4, 9, 3), (4, 10, 4), (16, 5, 5), (1, 7, 1), (3, 3, 3)])
def test_fixed_batch_is_split_evenly(batch: int, count: int, want: int) -> None:
    runner = Runner(LocalNet(1), _spec(1), device=CPU, dtype=torch.float32, tile=24, batch=batch)

    @dataclasses.dataclass
    class Plan:
        count: int

    assert runner._batch_size(Plan(count)) == want  # type: ignore[arg-type]


def test_auto_batch_is_one_on_the_cpu() -> None:
    image = torch.rand(3, 40, 50)
    runner = Runner(LocalNet(1), _spec(1), device=CPU, dtype=torch.float32, tile=16, overlap=4, batch=None)
    _, stats = runner.run(image)
    assert stats.tiles > 1 and stats.batch == 1


def test_fixed_shape_batches_are_padded_and_blend_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A captured forward takes full batches only: the last one is padded, and the padding never reaches the
    output. Simulated on the CPU by granting a mode and counting the batch sizes the forward sees."""
    image = torch.rand(3, 70, 90)
    spec = _spec(1)
    model = LocalNet(1)
    ref, ref_stats = Runner(model, spec, device=CPU, dtype=torch.float32, tile=24, overlap=8).run(image)
    runner = Runner(model, spec, device=CPU, dtype=torch.float32, tile=24, overlap=8, batch=5)
    seen: list[int] = []

    def forward(x: torch.Tensor, mode: str, stats: object) -> torch.Tensor:
        seen.append(x.shape[0])
        return runner.call(runner.model, x)

    monkeypatch.setattr(runner, "_capture_mode", lambda key: "graph")
    monkeypatch.setattr(runner, "_forward", forward)
    out, stats = runner.run(image)
    assert stats.tiles == ref_stats.tiles and stats.tiles % stats.batch != 0
    assert set(seen) == {stats.batch}  # every forward, the last included, got a full batch
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_prepare_model_makes_parameters_contiguous_and_fuses() -> None:
    model = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        model.weight.data = model.weight.data.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not model.weight.is_contiguous()
    prepared = prepare_model(model, CPU, torch.float32, channels_last=False)
    assert all(p.is_contiguous() for p in prepared.parameters())
    assert not prepared.training
    # re-parameterised families: the fused eval weights are contiguous themselves (torch.compile needs it)
    span = prepare_model(archs.build("span", feature_channels=8, upscale=2), CPU, torch.float32, False)
    assert span.conv_1.eval_conv.weight.is_contiguous()
    # preparing a prepared module again keeps every parameter's storage (CUDA graphs captured on it stay valid)
    before = [p.data_ptr() for p in span.parameters()]
    prepare_model(span, CPU, torch.float32, False)
    assert [p.data_ptr() for p in span.parameters()] == before


def test_transfers_are_the_identity_on_the_cpu() -> None:
    t = Transfers(CPU)
    x = torch.rand(3, 5, 7)
    assert t.upload(x) is x
    host, done = t.download(x)
    assert host is x and done is None
    assert torch.equal(t.fetch(x), x)


def test_hwc_views_are_recognised() -> None:
    hwc = torch.rand(5, 7, 3)
    assert _hwc_view(hwc.permute(2, 0, 1))
    assert not _hwc_view(torch.rand(3, 5, 7))
    assert not _hwc_view(torch.rand(3, 5, 7)[:, :, ::2])


def test_compile_option_through_the_api_on_the_cpu(span_weights: object) -> None:
    from restore_cli import api

    loaded = api.load_model(str(span_weights), device="cpu", compile="auto", batch="auto")
    assert loaded.runner.compile == "auto" and loaded.runner.batch is None
    with pytest.raises(UsageError, match="needs a CUDA GPU"):
        api.load_model(str(span_weights), device="cpu", compile="on")
    with pytest.raises(UsageError, match="--batch"):
        api.load_model(str(span_weights), device="cpu", batch="0")


def test_inductor_cache_lives_in_the_restore_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("RESTORE_CACHE_DIR", str(tmp_path))
    compiled.configure_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    # a user's own choice is kept
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compiled.configure_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_baseline_tile_loop_is_the_whole_frame_when_context_suffices() -> None:
    from restore_cli.benchmark import tile_loop

    model = LocalNet(2).eval()
    x = torch.rand(1, 3, 45, 70)
    with torch.no_grad():
        whole = model(x)
        looped = tile_loop(model, x, scale=2, tile=16, pad=4)  # LocalNet's receptive radius is 4
        seamy = tile_loop(model, x, scale=2, tile=16, pad=1)
    torch.testing.assert_close(looped, whole, rtol=0, atol=1e-5)
    assert float((seamy - whole).abs().max()) > 1e-3  # too little context shows at the cuts


def test_bench_command_on_the_cpu(tmp_path: Path, span_weights: Path) -> None:
    """`restore bench` end to end on a tiny frame (CPU: no captures; timings are not checked)."""
    import json

    from tests.conftest import no_traceback, restore

    out = tmp_path / "b.json"
    p = restore("bench", span_weights, "--size", "40x24", "--repeat", "1", "--json", out)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    variants = [r["variant"] for r in doc["rows"]]
    assert variants[:3] == ["loop512", "eager", "api"] and "api tile512" in variants
    assert all(isinstance(r.get("ms"), float) for r in doc["rows"]), doc["rows"]
    assert doc["summary"]["model"] == span_weights.name and doc["summary"]["loop512 ms"]
    bad = restore("bench", span_weights, "--size", "40by24")
    assert bad.returncode == 2 and "--size" in bad.stderr


def test_throughput_markdown_has_the_summary_and_geomean() -> None:
    from bench.throughput import markdown

    doc = {"environment": {"gpu": "G", "driver": "1", "torch": "t", "cuda": "c", "date": "d"}, "peak_tflops": 700.0,
           "summary": [{"model": "m", "api speed-up vs loop": 4.5}], "rows": [{"model": "m", "variant": "eager"}],
           "skipped": ["x"], "geomean_api_speedup_vs_loop": 4.5, "wall_s": 300, "compile_s": 100.0}
    md = markdown(doc)
    assert "GPU G (driver 1)" in md and "4.50x" in md and "| m | 4.5 |" in md and "Not run" in md
