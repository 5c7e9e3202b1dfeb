"""Registry-wide architecture checks (like timm's test_models.py): the helper-layer import rule, the detector round
trip of every detectable family, tiles == whole image for every `safe`/`tlc` golden, every preset buildable on the
meta device, and runner tiling defaults. Per-family files hold only what is special to a family."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import archs
from restore_cli import presets
from restore_cli.engine.runner import Runner
from tests.conftest import GOLDEN, ROOT
from tests.util import (
    DETECTED_AS,
    assert_round_trip,
    golden_files,
    golden_spec,
    load_golden,
    manifests,
    meta_state_dict,
    randomise,
    read_manifest,
    shapes,
    smooth_image,
    tiled_and_whole,
)

ARCHS_DIR = ROOT / "archs"
SHAPES_ONLY = ("*",)

# ---------------------------------------------------------------------------------------------------------------------
# the helper layer


def _imported_modules(path: Path) -> set[str]:
    """archs.* modules a file imports, as dotted names relative to the archs package ("layers.norm", "span", ...)."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.parent.relative_to(ROOT).parts  # ("archs",) or ("archs", "layers")
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = [*base, *(node.module.split(".") if node.module else [])]
            else:
                parts = (node.module or "").split(".")
            names = [".".join(parts)] + [".".join([*parts, a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n.removeprefix("archs.") for n in names if n.startswith("archs.")}
    return out


def test_no_family_imports_another_family() -> None:
    """Families share code only through archs/layers; the layer imports no family."""
    families = set(archs._FAMILY_MODULES)
    for name in sorted(families):
        imported = {m.split(".")[0] for m in _imported_modules(ARCHS_DIR / f"{name}.py")}
        assert not (imported & families) - {name}, f"archs/{name}.py imports {sorted((imported & families) - {name})}"
    for path in sorted((ARCHS_DIR / "layers").glob("*.py")):
        imported = {m.split(".")[0] for m in _imported_modules(path)}
        assert not imported & families, f"{path.name} imports a family: {sorted(imported & families)}"
    # the import parser sees relative imports
    assert "layers.norm" in _imported_modules(ARCHS_DIR / "nafnet.py")


def test_only_helper_modules_beside_the_families() -> None:
    """Every module in archs/ is a listed family, the registry, the descriptor, or a package (layers, ops)."""
    loose = {p.stem for p in ARCHS_DIR.glob("*.py")} - set(archs._FAMILY_MODULES) - {"__init__", "spec"}
    assert loose == set(), f"modules outside the helper layer: {sorted(loose)}"


# ---------------------------------------------------------------------------------------------------------------------
# detector round trip: every detectable architecture at its defaults (or an official manifest's kwargs where the
# defaults cannot build), plus the configurations each family needs covered. `loose`: kwargs a state dict does not
# store (detected as another value with the same shapes); SHAPES_ONLY: only keys and shapes are compared.

_NAFNET = [
    {"img_channel": 3, "width": 32, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 28], "dec_blk_nums": [1, 1, 1, 1]},
    {"img_channel": 3, "width": 64, "middle_blk_num": 12, "enc_blk_nums": [2, 2, 4, 8], "dec_blk_nums": [2, 2, 2, 2]},
    {"img_channel": 1, "width": 16, "middle_blk_num": 0, "enc_blk_nums": [1, 0, 3], "dec_blk_nums": [2, 0, 1]},
    {"img_channel": 3, "width": 8, "middle_blk_num": 2, "enc_blk_nums": [], "dec_blk_nums": []},
]
_RESTORMER_SMALL = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}
_ADAREVD_SMALL = {"width": 4, "decoder_layers": [1, 1, 1, 1], "baseblock": ["fcnaf", "naf", "fcnaf"],
                  "train_size": [32, 32], "overlap_size": [16, 16], "save_memory_decoder": False, "encoder": "NAFNet"}
_ADAREVD_HARD = {**_ADAREVD_SMALL, "classifier_type": "hard_simple", "dx": "e3", "num_classes": 4}
_CONVMAMBA = {"embed_dim": 32, "depths": [1, 2], "RCG_num": 2, "d_state": 8}
_RHA_SMALL = {"dim": 32, "group_blocks": 1, "res_blocks": 1}

DETECT_CASES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    *[("nafnet", kw, ()) for kw in _NAFNET],
    *[("baseline", {**kw, "dw_expand": dw, "ffn_expand": ffn}, ())
      for kw, dw, ffn in zip(_NAFNET[:3], (1, 2, 3), (2, 2, 1), strict=True)],
    ("ufpnet", {"width": 64, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 28], "dec_blk_nums": [1, 1, 1, 1]}, ()),
    ("ufpnet", {"width": 8, "middle_blk_num": 2, "enc_blk_nums": [1, 1, 3], "dec_blk_nums": [1, 2, 1]}, ()),
    ("ufpnet", {"width": 16, "enc_blk_nums": [1, 1, 2], "middle_blk_num": 2, "dec_blk_nums": [1, 1, 1],
                "estimator_width": 24}, ()),
    *[("plksr", kw, ("split_ratio",)) for kw in [
        {"upscaling_factor": 2}, {"upscaling_factor": 3},
        {"upscaling_factor": 4, "n_blocks": 12, "kernel_size": 13, "use_ea": False},  # plksr_tiny
        {"upscaling_factor": 4, "dim": 32, "n_blocks": 3, "ccm_type": "CCM"},
        {"upscaling_factor": 3, "dim": 48, "n_blocks": 2, "ccm_type": "ICCM", "kernel_size": 9},
        {"upscaling_factor": 2, "dim": 32, "n_blocks": 2, "split_ratio": 0.5},
        {"upscaling_factor": 1, "dim": 16, "n_blocks": 1},
        {"upscaling_factor": 2, "dim": 16, "n_blocks": 2, "lk_type": "RectSparsePLK", "kernel_size": 15},
        {"upscaling_factor": 2, "dim": 16, "n_blocks": 2, "lk_type": "SparsePLK"},
        {"upscaling_factor": 2, "dim": 16, "n_blocks": 2, "lk_type": "SparsePLK", "use_max_kernel": True,
         "kernel_size": 21},
        {"upscaling_factor": 4, "num_in_ch": 1, "num_out_ch": 1, "dim": 16, "n_blocks": 2},
    ]],
    *[("realplksr", kw, ()) for kw in [
        {"upscaling_factor": 2}, {"upscaling_factor": 3},
        {"upscaling_factor": 4, "n_blocks": 12, "kernel_size": 13, "use_ea": False},  # realplksr_s
        {"upscaling_factor": 4, "dim": 96},  # realplksr_l
        {"upscaling_factor": 4, "dysample": True},
        {"upscaling_factor": 3, "dim": 32, "n_blocks": 2, "dysample": True},
        {"upscaling_factor": 2, "dim": 32, "n_blocks": 2, "dysample": True, "use_ea": False},
        {"upscaling_factor": 1, "dim": 16, "n_blocks": 1},
    ]],
    *[("span", kw, ()) for kw in [
        {"upscale": 2}, {"upscale": 3}, {"upscale": 4, "feature_channels": 52}, {"upscale": 1, "feature_channels": 16},
        {"upscale": 2, "num_out_ch": 1, "feature_channels": 16},
    ]],
    # meta tensors carry no MetaIGConv values: scale_list comes back as 1..n (test_spanc reads real buffers)
    *[("spanc", kw, ("scale_list", "eval_base_scale")) for kw in [
        {"scale_list": [2, 3, 4], "feature_channels": 16, "implicit_dim": 32, "latent_layers": 1},
        {"scale_list": [1, 3], "ig_kernel_size": 5, "feature_channels": 8, "implicit_dim": 16, "latent_layers": 3},
        {"scale_list": [4], "num_in_ch": 1, "feature_channels": 8, "implicit_dim": 16, "latent_layers": 2},
    ]],
    *[("camixersr", kw, ()) for kw in [
        {"scale": 2}, {"scale": 3, "n_feats": 36}, {"n_block": [1, 2], "n_group": 2, "n_feats": 16},
        {"n_block": [2, 3, 1], "n_group": 3, "n_feats": 24, "n_colors": 1, "scale": 2},
    ]],
    *[("restormer", {**_RESTORMER_SMALL, **kw}, ("ffn_expansion_factor",)) for kw in [
        {"LayerNorm_type": "BiasFree", "bias": True},
        {"inp_channels": 1, "out_channels": 1, "ffn_expansion_factor": 2.0},
        {"inp_channels": 6, "dual_pixel_task": True},
        {"num_blocks": [2, 0, 1, 1], "heads": [2, 1, 4, 8], "ffn_expansion_factor": 3.3},
    ]],
    ("promptir", {**_RESTORMER_SMALL, "dim": 48, "decoder": True, "LayerNorm_type": "BiasFree",
                  "heads": [2, 4, 4, 8]}, ("ffn_expansion_factor",)),
    ("dfpir", {**_RESTORMER_SMALL, "heads": [2, 2, 2, 4], "LayerNorm_type": "BiasFree"}, ("ffn_expansion_factor",)),
    *[("moceir", kw, ("depth_type", "stage_depth", "ffn_expansion_factor")) for kw in [
        {"dim": 32, "num_blocks": [4, 6, 6, 8], "num_dec_blocks": [2, 4, 4], "heads": [1, 2, 4, 8],
         "num_refinement_blocks": 4, "rank_type": "spread", "depth_type": "constant", "stage_depth": [1, 1, 1]},
        {"dim": 8, "levels": 3, "heads": [1, 2, 4], "num_blocks": [1, 2, 1], "num_dec_blocks": [2, 1],
         "stage_depth": [1, 1], "rank": 3, "rank_type": "lin", "num_experts": 3, "LayerNorm_type": "BiasFree",
         "bias": True, "ffn_expansion_factor": 2.66},
    ]],
    *[("dswinir", kw, ("ffn_expansion_factor",)) for kw in [
        {"dim": 12, "heads": [3, 3, 6, 6]},
        {"dim": 12, "heads": [3, 6, 6, 12], "LayerNorm_type": "BiasFree", "bias": True, "ffn_expansion_factor": 2.66},
        {"dim": 12, "heads": [6, 3, 3, 6], "kernel_size": [5, 3, 7, 3], "num_blocks": [1, 2, 1, 3]},
        {"dim": 12, "heads": [3, 3, 6, 6], "rel_pos_bias": False, "num_refinement_blocks": 0},
        {"dim": 12, "heads": [3, 3, 6, 6], "inp_channels": 6, "dual_pixel_task": True},
        {"dim": 9, "heads": [3, 3, 3, 3], "num_blocks": [1, 0, 2, 0], "inp_channels": 1, "out_channels": 1},
    ]],
    *[("restore_rwkv", kw, ()) for kw in [
        _RESTORMER_SMALL, {"dim": 4, "num_blocks": [2, 0, 1, 3], "num_refinement_blocks": 0},
        {"inp_channels": 3, "out_channels": 3, "dim": 6, "num_blocks": [1, 2, 1, 1], "num_refinement_blocks": 2},
    ]],
    *[("convmambasr", {**_CONVMAMBA, **kw}, ()) for kw in [
        {"upsampler": "pixelshuffledirect", "upscale": 3, "in_chans": 1},
        {"upsampler": "", "resi_connection": "3conv", "patch_norm": False},
        {"upsampler": "pixelshuffle", "upscale": 3, "mlp_ratio": 1.5, "RCG_num": 0},
        {"upsampler": "pixelshuffle", "upscale": 8, "d_state": 20, "depths": [2, 1, 1]},
    ]],
    # is_train is not stored (the full generator is returned); instance and syncbatch build the same layers
    *[("hifacegan", kw, ("is_train", "norm_g")) for kw in [
        {"num_feat": 4}, {"num_feat": 4, "norm_g": "spectralspadebatch3x3", "is_train": False},
        {"num_feat": 4, "norm_g": "spadeinstance3x3"}, {"num_feat": 4, "norm_g": "spectralspadebatch5x5"},
        {"num_feat": 2, "use_vae": True, "z_dim": 16, "crop_size": 256}, {"num_feat": 3, "num_in_ch": 3},
    ]],
    # meta tensors: down_list and the upsampler come from shapes alone (test_rha reads the real buffers)
    *[("rha", kw, SHAPES_ONLY) for kw in [
        {"scale": 2}, {**_RHA_SMALL, "scale": 3, "group_blocks": 2, "res_blocks": 2}, {**_RHA_SMALL, "scale": 1},
        {**_RHA_SMALL, "scale": 2, "unshuffle_mod": True}, {**_RHA_SMALL, "scale": 1, "unshuffle_mod": True},
        {**_RHA_SMALL, "upsample": "pixelshuffle", "mid_dim": 48},
        {**_RHA_SMALL, "upsample": "pixelshuffle", "scale": 3},
        {**_RHA_SMALL, "upsample": "nearest+conv"}, {**_RHA_SMALL, "upsample": "dysample", "mid_dim": 16},
        {**_RHA_SMALL, "upsample": "dysample", "mid_dim": 32, "scale": 2},
        {**_RHA_SMALL, "upsample": "conv", "scale": 1, "out_ch": 1, "in_ch": 1, "dim": 16},
        {**_RHA_SMALL, "down_list": [4, 2, 1], "group_blocks": 3, "expansion_ratio": 2.0},
        {"window_size": 4, "down_list": [4], "dim": 48, "group_blocks": 2, "res_blocks": 3, "expansion_ratio": 1.25},
    ]],
    *[("stylegan2", kw, SHAPES_ONLY) for kw in [
        {"out_size": 4, "num_style_feat": 8, "num_mlp": 0, "narrow": 1 / 64},
        {"out_size": 128, "num_style_feat": 8, "num_mlp": 3, "channel_multiplier": 1, "narrow": 1 / 16},
        {"out_size": 256, "num_style_feat": 32, "num_mlp": 1, "channel_multiplier": 4, "narrow": 1 / 32},
    ]],
    *[("adarevid_slide", kw, SHAPES_ONLY) for kw in [
        _ADAREVD_HARD, {**_ADAREVD_HARD, "dx": "e4", "encoder": "UFPNet"}, {**_ADAREVD_SMALL, "pretrain": True},
    ]],
]


def _default_kwargs(name: str) -> dict[str, Any] | None:
    """{} when the defaults build, else an official manifest's kwargs (PromptIR's defaults cannot run)."""
    try:
        with torch.device("meta"):
            archs.build(name)
        return {}
    except (ValueError, TypeError):
        cls = archs.entry(name).cls.__name__
        for path in manifests():
            doc = read_manifest(path)
            if doc["class"] == cls:
                return doc["kwargs"]
    return None


DETECTABLE = [n for n in archs.names() if archs.entry(n).detect is not None]


@pytest.mark.parametrize("name", DETECTABLE)
def test_detects_its_own_defaults(name: str) -> None:
    """Round trip through each detector, as spandrel's assert_loads_correctly does."""
    kwargs = _default_kwargs(name)
    if kwargs is None:
        pytest.skip(f"{name}: defaults do not build and no manifest is available")
    assert_round_trip(name, kwargs, loose=SHAPES_ONLY)


@pytest.mark.parametrize(("name", "kwargs", "loose"), DETECT_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(DETECT_CASES)])
def test_detect_round_trip(name: str, kwargs: dict[str, Any], loose: tuple[str, ...]) -> None:
    assert_round_trip(name, kwargs, loose=loose)


@pytest.mark.parametrize("name", [n for n in archs.names() if archs.entry(n).detect is None])
def test_undetectable_variants_share_a_detectable_layout(name: str) -> None:
    """Archs without a detector (the *Local / TLC variants, AdaRevID, the bilinear StyleGAN2) have the state dict of
    a detectable sibling of their family, which detection returns instead."""
    if name in DETECTED_AS:
        pytest.skip(f"{name} is detected as {DETECTED_AS[name]} (pinned in tests/util.py)")
    kwargs = _default_kwargs(name)
    assert kwargs is not None
    found = archs.detect(meta_state_dict(name, **kwargs))
    assert len(found) == 1 and archs.entry(found[0][0]).family == archs.entry(name).family, found


@pytest.mark.parametrize("plain", [n for n in archs.names() if archs.entry(n).local_variant])
def test_local_variants_load_the_plain_state_dict(plain: str) -> None:
    """A detected checkpoint is built as its `local_variant`: same keys and shapes, no detector of its own."""
    local = archs.entry(plain).local_variant
    assert local is not None and archs.entry(local).detect is None
    kwargs = _default_kwargs(plain) or {}
    sd = meta_state_dict(local, **kwargs)
    assert shapes(sd) == shapes(meta_state_dict(plain, **kwargs))
    assert [n for n, _ in archs.detect(sd)] == [plain]


# ---------------------------------------------------------------------------------------------------------------------
# tiles == whole image, on the golden weights (upstream-initialised small configs), for every tile-stable golden

TOLERANCE = {"safe": 1 / 255, "tlc": 2 / 255}
MAX_GOLDEN_CONTEXT = 96  # beyond this a golden's seam run costs minutes on a CPU; such archs get a small config
# (arch, kwargs) with seeded random weights, for tile-stable archs whose goldens are too deep or missing
SEAM_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("dswinir", {"dim": 6, "num_blocks": [1, 0, 0, 0], "num_refinement_blocks": 0, "heads": [3, 3, 3, 3]}),
    ("ufpnet_local", {"width": 4, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1],
                      "estimator_width": 4, "train_size": [1, 3, 16, 16]}),
    ("paragonsr2", {"variant": "realtime", "num_feat": 8, "num_groups": 1, "num_blocks": 2, "scale": 2}),
    ("paragonsr2", {"variant": "stream", "num_feat": 8, "num_groups": 1, "num_blocks": 2, "scale": 2}),
    ("elysiumsr", {"num_feat": 8, "num_blocks": 2, "scale": 2}),
    ("aether", {"embed_dim": 8, "depths": [1, 1], "lk_kernel": 5, "scale": 2, "use_channel_attn": False}),
    ("cfsr", {"embed_dim": 8, "depths": [1, 1], "dw_size": 5, "upscale": 2}),
]
# Size classes that are the base class at fixed widths (same blocks, so the base's seam case covers them).
SEAMS_AS = {"elysiumsr_l": "elysiumsr", "elysiumsr_xl": "elysiumsr"}


def _seam_cases() -> list[Any]:
    cases = [pytest.param("golden", p, id=p.name) for p in golden_files()
             if golden_spec(p).tiling in TOLERANCE and golden_spec(p).context <= MAX_GOLDEN_CONTEXT]
    return cases + [pytest.param(name, kw, id=f"{name}-random") for name, kw in SEAM_CONFIGS]


def _seam_model(kind: str, what: Any) -> tuple[torch.nn.Module, archs.ArchSpec]:
    if kind == "golden":
        model, _, meta = load_golden(what)
        return model, archs.spec(meta["class"], **json.loads(meta["kwargs"]))
    torch.manual_seed(0)
    return randomise(archs.build(kind, **what), seed=1, scale=0.05).eval(), archs.spec(kind, **what)


@pytest.mark.parametrize(("kind", "what"), _seam_cases())
def test_tiled_matches_whole(kind: str, what: Any) -> None:
    """Smooth random images, tiles with `context` real neighbours beyond every seam: safe archs must agree with the
    whole-image run within 1/255, TLC variants (tile-stable whole-image statistics) within 2/255.

    The cheapest plan that tests the margin: a wide image cut into two tiles across, and a tall one cut into two
    tiles down (the short side is one tile). A window (core, `context` on both sides, the multiple) fits inside
    the long side, and two overlapping cores cover it; sizes are odd, so the tile does not divide them.
    The model runs in float64: the claim is that the margin covers the receptive field, and float32 conv kernels
    chosen per input size round differently, which the golden recipe weights amplify (SPAN: up to 4/255)."""
    model, spec = _seam_model(kind, what)
    c, m, overlap = spec.context, spec.multiple_of, 12
    tile = 2 * c + 2 * m + overlap + 8
    long, short = tile + 2 * c + 2 * m + 3, max(2 * m + 5, 21)
    for h, w in ((short, long), (long + 4, short)):
        image = smooth_image(h, w, seed=h, channels=spec.in_channels)
        tiled, whole, count = tiled_and_whole(model, spec, image, tile, overlap=overlap, dtype=torch.float64, batch=2)
        assert count == 2, (h, w)
        err = float((tiled - whole).abs().max())
        assert err <= TOLERANCE[spec.tiling], f"{h}x{w}: max |tiled - whole| = {err * 255:.3f}/255"


def test_every_tile_stable_arch_proves_its_seams() -> None:
    """Each arch whose default configuration is safe/tlc has a seam case above."""
    covered = {n for n, _ in SEAM_CONFIGS} | {golden_spec(p).id for p in golden_files()}
    stable = {SEAMS_AS.get(n, n) for n in archs.names()
              if archs.spec(n).tiling in TOLERANCE and archs.spec(n).input_kind != "unsupported"}
    if not GOLDEN.is_dir():
        stable -= {"nafnet_local", "baseline_local", "plksr", "span", "spanc"}  # their cases are goldens
    assert stable <= covered, sorted(stable - covered)


def test_global_archs_prefer_whole() -> None:
    """Archs with untreated whole-image statistics get one tile on the CPU and large tiles on the GPU."""
    for name in archs.names():
        spec = archs.spec(name)
        if spec.tiling in ("global", "internal"):
            runner = Runner(torch.nn.Identity(), spec, device=torch.device("cpu"), dtype=torch.float32)
            assert runner._auto_tile(1080, 1920) == 0, name


# ---------------------------------------------------------------------------------------------------------------------
# presets


# Presets of unpublished configurations: no kwargs, and upstream's defaults cannot build, so loading takes the
# kwargs from the downloaded weights through the arch's own detector (loading.build_from_state_dict).
_KWARGS_FROM_WEIGHTS = {"dswinir-rain100l"}


def _preset_param(p: presets.Preset) -> Any:
    return pytest.param(p, id=p.name)


def test_a_preset_without_kwargs_builds_from_its_weights() -> None:
    """dswinir-rain100l's case: MSDeformableNAIR's defaults (heads 2, 4, 8, 8) cannot build; the weights can."""
    from restore_cli import loading

    path = next(iter(golden_files("MSDeformableNAIR__*.safetensors")), None)
    if path is None:
        pytest.skip("no MSDeformableNAIR golden (../shared missing)")
    model, _, _ = load_golden(path)
    sd = model.state_dict()
    with pytest.raises((TypeError, ValueError)):
        archs.build("MSDeformableNAIR")
    built = loading.build_from_state_dict(sd, where="w.pth", arch="MSDeformableNAIR", kwargs={})
    assert shapes(built.state_dict()) == shapes(sd)


@pytest.mark.parametrize("preset", [_preset_param(p) for p in presets.all_presets().values()])
def test_every_preset_builds_on_the_meta_device(preset: presets.Preset) -> None:
    """weights.toml: each preset's arch and kwargs build (no memory), and its descriptor agrees on scale and task."""
    if preset.name in _KWARGS_FROM_WEIGHTS:
        assert not preset.kwargs and archs.entry(preset.arch).detect is not None
        return
    with torch.device("meta"):
        model = archs.build(preset.arch, **preset.kwargs)
    assert shapes(model.state_dict())
    spec = archs.spec(preset.arch, **preset.kwargs)
    assert spec.scale == preset.scale, (spec.scale, preset.scale)
    assert preset.task in spec.tasks, (preset.task, spec.tasks)
