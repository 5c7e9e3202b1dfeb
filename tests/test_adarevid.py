"""AdaRevD (AdaRevID / AdaRevIDSlide): the golden's per-tile exits and classifier logits, deterministic eval,
early exit (forcing the last exit equals the full model, a permissive threshold or exit table runs fewer decoders,
counted), internal tiling and its blending, batches, detector round trips incl. the separate classifier checkpoint,
descriptor, bf16, and the engine's tiled vs whole runs."""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import pytest
import torch

import archs
from archs.adarevid import AdaRevID, AdaRevIDSlide, UniDecoder, _axis_weights, _tile_starts, merge_classifier
from restore_cli.engine.runner import Runner
from tests.conftest import GOLDEN
from tests.util import load_golden, meta_state_dict, rel_l2

GOLDEN_FILE = GOLDEN / "AdaRevID__slide_w4_3fcnaf_e3hard4_t32o16.safetensors"

# Small and fast: the NAFNet encoder skips UFPNet's 5.6 M-parameter kernel estimator (the golden covers that one).
SMALL: dict[str, Any] = {
    "width": 4,
    "decoder_layers": [1, 1, 1, 1],
    "baseblock": ["fcnaf", "naf", "fcnaf"],
    "train_size": [32, 32],
    "overlap_size": [16, 16],
    "save_memory_decoder": False,
    "encoder": "NAFNet",
}
HARD = {**SMALL, "classifier_type": "hard_simple", "dx": "e3", "num_classes": 4, "exit_idx": [3, 1, 2, 3]}
SINGLE = {**SMALL, "classifier_type": "single", "dx": "fd4"}


def _randomize(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic non-trivial weights (zero-initialised residual scales would make every block the identity);
    decoder alphas stay in [0.3, 0.7] so upstream's |alpha| >= 1e-3 clamp never matters."""
    sd = {}
    for k, v in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(k.encode()))
        x = torch.randn(v.shape, generator=g)
        if k.split(".")[-1].startswith("alpha") and k.startswith("subdenets."):
            sd[k] = 0.5 + 0.2 * torch.rand(v.shape, generator=g) - 0.1
        elif v.ndim >= 2:
            sd[k] = x / math.sqrt(max(1, v[0].numel()))
        else:
            sd[k] = (1.0 + 0.1 * x) if k.endswith("weight") else 0.1 * x
    model.load_state_dict(sd, strict=True)
    return sd


def _build(name: str, kwargs: dict[str, Any], sd: dict[str, torch.Tensor] | None = None) -> Any:
    model = archs.build(name, **kwargs)
    if sd is None:
        _randomize(model)
    else:
        model.load_state_dict(sd, strict=True)
    return model.eval()


def _image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


class _DecoderCounter:
    """Counts decoder columns and the units (tiles or images) each one processes, with forward hooks."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.units = [0] * len(model.subdenets)  # type: ignore[arg-type]
        for i, dec in enumerate(model.subdenets):  # type: ignore[arg-type]
            assert isinstance(dec, UniDecoder)
            dec.level3.register_forward_hook(lambda m, a, out, i=i: self._hit(i, out))

    def _hit(self, i: int, out: torch.Tensor) -> None:
        self.units[i] += int(out.shape[0])

    @property
    def total(self) -> int:
        return sum(self.units)


# ---------------------------------------------------------------------------------------------------------------------
# golden


def test_golden_tile_exits_logits_and_determinism() -> None:
    model, t, _ = load_golden(GOLDEN_FILE)
    counter = _DecoderCounter(model)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(t["input"])
        torch.manual_seed(2)
        b = model(t["input"])
    assert torch.equal(a, b)  # the encoder's kernel-code noise is zero in eval
    assert rel_l2(a, t["output"]) <= 1e-4
    assert model.last_logits is not None and rel_l2(model.last_logits, t["aux.ape_logits"]) <= 1e-4
    # golden notes: the 6 tiles take classes [0, 2, 0, 0, 0, 0] -> exit_idx [3, 1, 2, 3] -> [3, 2, 3, 3, 3, 3] decoders
    assert model.last_info == {"exit": [[3, 2, 3, 3, 3, 3]], "decoders": [[3, 2, 3, 3, 3, 3]],
                               "classes": [[0, 2, 0, 0, 0, 0]], "tiles": 6, "max_decoders": 3}
    assert counter.units == [12, 12, 10]  # per forward: 6, 6, 5 tiles


# ---------------------------------------------------------------------------------------------------------------------
# early exit


def test_forcing_the_last_exit_equals_the_full_model() -> None:
    x = _image(1, 60, 44)
    model = _build("AdaRevIDSlide", HARD)
    sd = model.state_dict()
    full = _build("AdaRevIDSlide", {**HARD, "pretrain": True, "decoder_idx": 3},
                  {k: v for k, v in sd.items() if not k.startswith("ape.")})
    counter = _DecoderCounter(model)
    with torch.no_grad():
        ref = full(x)
        adaptive = model(x)
        adaptive_runs = sum(model.last_info["decoders"][0])
        assert counter.total == adaptive_runs < 18  # the classifier exits some tiles early
        counter.units = [0, 0, 0]
        model.force_exit = 3
        forced = model(x)
        assert counter.units == [6, 6, 6] and model.last_info["exit"] == [[3] * 6]
        model.force_exit = None
        model.exit_idx = [3, 3, 3, 3]  # the same through the classifier's table
        table = model(x)
    assert full.last_info["decoders"] == [[3] * 6]
    assert torch.allclose(forced, ref, rtol=0, atol=1e-6) and torch.allclose(table, ref, rtol=0, atol=1e-6)
    assert rel_l2(adaptive, ref) > 1e-3


def test_exit_table_and_force_exit_run_fewer_decoders() -> None:
    x = _image(1, 60, 44)
    model = _build("AdaRevIDSlide", HARD)
    counter = _DecoderCounter(model)
    with torch.no_grad():
        model.exit_idx = [1, 1, 1, 1]
        one = model(x)
        assert counter.units == [6, 0, 0] and model.last_info["decoders"] == [[1] * 6]
        model.exit_idx = [3, 1, 2, 3]
        model(x)
        assert counter.total == 6 + sum(model.last_info["decoders"][0])
        model.force_exit = 1
        assert torch.allclose(model(x), one, rtol=0, atol=1e-6)
        model.force_exit = 0  # no decoder at all: the input comes back
        assert torch.equal(model(x), x)
        assert model.last_info["exit"] == [[0] * 6]
        model.force_exit = 4
        with pytest.raises(ValueError, match="force_exit"):
            model(x)


def test_exit_threshold_selects_a_calibrated_table_for_hard_simple() -> None:
    """exit_tables (ours): the authors' per-threshold exit_idx calibrations; a larger threshold, fewer decoders."""
    x = _image(1, 60, 44)
    tables = {"0.05": [3, 1, 2, 3], "0.1": [2, 1, 1, 1]}  # TOML-style string keys
    model = _build("AdaRevIDSlide", {**HARD, "exit_threshold": 0.05, "exit_tables": tables})
    counter = _DecoderCounter(model)
    with torch.no_grad():
        strict = model(x)
        runs_strict = counter.total
        classes = model.last_info["classes"][0]
        assert model.last_info["decoders"][0] == [tables["0.05"][c] for c in classes]
        counter.units = [0, 0, 0]
        model.exit_threshold = 0.1
        loose = model(x)
        assert model.last_info["decoders"][0] == [tables["0.1"][c] for c in classes]
        assert counter.total == sum(model.last_info["decoders"][0]) < runs_strict
        assert rel_l2(loose, strict) > 1e-3
        model.exit_threshold = 0.2
        with pytest.raises(ValueError, match="not calibrated"):
            model(x)
    plain = _build("AdaRevIDSlide", HARD, model.state_dict())  # without tables the threshold is unused, as upstream
    with torch.no_grad():
        assert torch.equal(plain(x), strict)
        plain.exit_threshold = 0.1
        assert torch.equal(plain(x), strict)


def test_permissive_threshold_runs_fewer_decoders() -> None:
    """Scalar classifiers: exit when the predicted gain of the next decoder is <= exit_threshold (per tile)."""
    x = _image(1, 60, 44)
    model = _build("AdaRevIDSlide", SINGLE)
    sd = model.state_dict()
    full = _build("AdaRevIDSlide", {**SINGLE, "pretrain": True, "decoder_idx": 3},
                  {k: v for k, v in sd.items() if not k.startswith("ape.")})
    counter = _DecoderCounter(model)
    with torch.no_grad():
        model.exit_threshold = -math.inf  # never exits early
        strict = model(x)
        assert counter.units == [6, 6, 6] and model.last_info["exit"] == [[3] * 6]
        assert torch.allclose(strict, full(x), rtol=0, atol=1e-6)
        counter.units = [0, 0, 0]
        model.exit_threshold = math.inf  # every tile leaves after the first decoder
        loose = model(x)
        assert counter.units == [6, 0, 0] and model.last_info["exit"] == [[1] * 6]
        model.force_exit = 1
        assert torch.allclose(model(x), loose, rtol=0, atol=1e-6)
        model.force_exit = None
        # a threshold between the first step's predictions splits the tiles
        seen: list[torch.Tensor] = []
        hook = model.ape.register_forward_hook(lambda m, a, out: seen.append(out[:, 0].clone()))
        model.exit_threshold = -math.inf
        model(x)
        hook.remove()
        model.exit_threshold = float(seen[0].median())
        model(x)
        exits = model.last_info["exit"][0]
        assert 1 in exits and max(exits) > 1
        assert exits.count(1) == int((seen[0] <= seen[0].median()).sum())


def test_threshold_per_image_in_plain_adarevid() -> None:
    x = _image(2, 32, 48)
    model = _build("AdaRevID", SINGLE)
    counter = _DecoderCounter(model)
    with torch.no_grad():
        model.exit_threshold = -math.inf
        model(x)
        assert model.last_info["exit"] == [3, 3] and counter.units == [2, 2, 2]
        model.exit_threshold = math.inf
        model(x)
        assert model.last_info["exit"] == [1, 1] and counter.units == [4, 2, 2]


# ---------------------------------------------------------------------------------------------------------------------
# internal tiling


def test_tile_grid_and_blend_weights() -> None:
    # golden geometry: 64 rows, tiles of 32 with overlap 16 -> origins 0, 16, 32; 48 columns -> 0, 16
    assert _tile_starts(64, 32, 16) == (32, [0, 16, 32], 16)
    assert _tile_starts(48, 32, 16) == (32, [0, 16], 16)
    assert _tile_starts(720, 384, 32) == (384, [0, 336], 48)  # GoPro frames: the last tile snaps to the border
    assert _tile_starts(30, 384, 32) == (30, [0], 0)
    for n, k, o in ((64, 32, 16), (48, 32, 16), (720, 384, 32), (1280, 384, 32), (400, 384, 32), (96, 32, 16)):
        size, starts, ek = _tile_starts(n, k, o)
        total = torch.zeros(n)
        for p, w in zip(starts, _axis_weights(n, size, o, starts, ek), strict=True):
            total[p:p + size] += w
        assert torch.allclose(total, torch.ones(n), atol=1e-6), (n, k, o)
    # one tile: weight 1 everywhere (upstream fades the first `overlap` rows in from 0)
    assert torch.equal(_axis_weights(30, 30, 16, [0], 0)[0], torch.ones(30))


def test_single_tile_slide_equals_whole_image_model() -> None:
    """An image within one tile: the Slide (TLC windows cover it, one tile, weight 1) equals AdaRevID."""
    x = _image(1, 30, 28)
    slide = _build("AdaRevIDSlide", HARD)
    plain = _build("AdaRevID", HARD, slide.state_dict())
    with torch.no_grad():
        a, b = slide(x), plain(x)
    assert torch.allclose(a, b, rtol=0, atol=1e-5)
    assert slide.last_info["classes"] == [plain.last_info["classes"]]
    with torch.no_grad():
        assert plain.classify(x).tolist() == plain.last_info["classes"]


def test_batch_items_are_independent_and_tile_batch_changes_nothing() -> None:
    x = _image(2, 60, 44, seed=3)
    model = _build("AdaRevIDSlide", HARD)
    with torch.no_grad():
        both = model(x)
        info = model.last_info
        alone = model(x[1:])
        model.tile_batch = 4
        chunked = model(x)
    assert rel_l2(both[1:], alone) < 1e-5  # float noise of other batch sizes only
    assert info["decoders"][1] == model.last_info["decoders"][1] and len(info["exit"]) == 2
    assert rel_l2(chunked, both) < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# detector, classifier checkpoint, descriptor, construction


def _manifest(name: str) -> dict[str, torch.Tensor]:
    path = GOLDEN / f"AdaRevID__{name}.keys.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return {k: torch.empty(v, device="meta") for k, v in json.loads(path.read_text())["state_dict"].items()}


def test_decoder_checkpoint_alone_and_merged_classifier() -> None:
    sd = _manifest("AdaRevID-B")
    main = {k: v for k, v in sd.items() if not k.startswith("ape.")}
    classifier = {k.removeprefix("ape."): v for k, v in sd.items() if k.startswith("ape.")}  # save_classifier.py
    found = archs.detect(main)
    assert [n for n, _ in found] == ["adarevid_slide"]
    assert found[0][1]["pretrain"] is True and found[0][1]["decoder_idx"] == 4
    merged = merge_classifier(main, classifier)
    assert merged.keys() == sd.keys()
    found = archs.detect(merged)
    assert [n for n, _ in found] == ["adarevid_slide"]
    kw = found[0][1]
    assert (kw["pretrain"], kw["dx"], kw["num_classes"], kw["exit_idx"]) == (False, "e3", 6, [4, 4, 3, 3, 2, 1])
    assert kw["baseblock"] == ["fcnaf"] * 4 and kw["train_size"] == [384, 384]


def test_detector_refuses_scalar_classifiers_and_truncated_state_dicts() -> None:
    """Scalar classifiers are not detected (no released weights); nor is a truncated state dict (the round trips of
    the detected configurations are in tests/test_archs.py)."""
    assert archs.detect(meta_state_dict("AdaRevIDSlide", **SINGLE)) == []
    sd = meta_state_dict("AdaRevIDSlide", **HARD)
    assert [n for n, _ in archs.detect(sd)] == ["adarevid_slide"]
    del sd["outputs.2.0.bias"]
    assert archs.detect(sd) == []


def test_descriptors_and_arguments() -> None:
    slide = archs.spec("AdaRevIDSlide", **HARD)
    plain = archs.spec("AdaRevID", **HARD)
    assert (slide.tiling, plain.tiling) == ("internal", "global")
    assert slide.tasks == ("deblur",) and slide.scale == 1 and slide.min_size == 16 and slide.multiple_of == 1
    assert "non-commercial" in slide.code_license
    assert archs.entry("adarevd").id == "adarevid_slide" and archs.entry("AdaRevID").id == "adarevid"
    with pytest.raises(ValueError, match="reads no files"):
        AdaRevIDSlide(**{**HARD, "state_dict_pth_classifier": "/x/GoPro.pth"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiples of 16"):
        AdaRevIDSlide(**{**HARD, "train_size": [40, 40]})  # type: ignore[arg-type]
    # upstream's AdaRevID defaults (hard_simple with dx fd4_d4) build no classifier: it fails at forward, as there
    plain = AdaRevID(width=4, encoder="NAFNet", baseblock=["naf", "naf"]).eval()
    with pytest.raises(RuntimeError, match="no classifier"), torch.no_grad():
        plain(torch.rand(1, 3, 16, 16))


def test_bf16_cpu_close_to_float32() -> None:
    x = _image(1, 60, 44)
    model = _build("AdaRevIDSlide", HARD)
    model.force_exit = 3  # the same decoders in both precisions, whatever the classifier says
    with torch.no_grad():
        ref = model(x)
        out = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_l2(out.float(), ref) < 0.05


# ---------------------------------------------------------------------------------------------------------------------
# engine


@pytest.mark.parametrize("name", ["AdaRevIDSlide", "AdaRevID"])
def test_engine_tiled_vs_whole(name: str) -> None:
    model = _build(name, {**HARD, "exit_idx": [3, 3, 3, 3]})
    spec = archs.spec(name, **HARD)
    image = _image(1, 80, 72, seed=5)[0]
    cpu = torch.device("cpu")
    whole, _ = Runner(model, spec, device=cpu, dtype=torch.float32, tile=0).run(image)
    tiled, stats = Runner(model, spec, device=cpu, dtype=torch.float32, tile=40, overlap=8, margin=16).run(image)
    assert stats.tiles > 1 and tiled.shape == whole.shape == image.shape
    err = (tiled - whole).abs().max().item()
    print(f"{name} tiled (40 px, margin 16) vs whole: max abs error {err:.4f}")
    # the model's own tile grid and its whole-image encoder statistics move with the engine's tiles
    assert err > 1 / 255 and spec.tiling != "safe"


def test_runner_collects_last_info() -> None:
    model = _build("AdaRevIDSlide", HARD)
    spec = archs.spec("AdaRevIDSlide", **HARD)
    _, stats = Runner(model, spec, device=torch.device("cpu"), dtype=torch.float32, tile=0).run(_image(1, 60, 44)[0])
    assert stats.model_info and stats.model_info[-1]["tiles"] == 6
