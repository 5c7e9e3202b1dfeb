"""Family names as models (restore_cli/resolve.py): `--model ufpnet` -> the family's best preset that can be had.

Three layers: the [families] data in weights.toml against the archs registry; choose() with a stand-in hub; and the
real CLI, offline with an empty cache (bundled fallbacks restore the samples) and against the local fake Hub.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import save_file

import archs
from restore_cli import api, hub, presets, resolve
from restore_cli.errors import UsageError, WeightsError
from tests.conftest import ROOT, no_traceback
from tests.hf_server import FakeHub, sha256

CAT = presets.catalog(presets.PACKAGE_DIR / "weights.toml")
SAMPLES = ROOT / "samples"


# -- the data ---------------------------------------------------------------------------------------------------
def _registry_family(arch: str) -> str:
    return archs.entry(arch).family


@pytest.mark.parametrize("family", CAT.families.values(), ids=lambda f: f.name)
def test_family_chains_are_consistent(family: presets.Family) -> None:
    """One registry family per chain; a bundled preset only as the last resort; upscale chains are x4."""
    for task, chain in family.chains.items():
        ps = [CAT.presets[n] for n in chain]
        assert len({_registry_family(p.arch) for p in ps}) == 1, (task, chain)
        assert all(p.serves(task) for p in ps)
        bundled = [i for i, p in enumerate(ps) if p.source.kind == "bundled"]
        assert bundled in ([], [len(ps) - 1]), (task, chain)
        if task == "upscale":
            assert {p.scale for p in ps} == {4}, chain


def test_no_two_families_claim_one_architecture() -> None:
    owners: dict[str, str] = {}
    for fam in CAT.families.values():
        for chain in fam.chains.values():
            for name in chain:
                reg = _registry_family(CAT.presets[name].arch)
                assert owners.setdefault(reg, fam.name) == fam.name, (reg, fam.name)


@pytest.mark.parametrize("family,task,bundled", [
    ("nafnet", "deblur", "nafnet-s-deblur"), ("nafnet", "denoise", "nafnet-s-denoise"),
    ("ufpnet", "deblur", "ufpnet-s"), ("span", "upscale", "span-s-x4"),
])
def test_bundled_models_are_the_fallbacks(family: str, task: str, bundled: str) -> None:
    chain = CAT.families[family].chains[task]
    assert chain[-1] == bundled and len(chain) > 1  # published weights first


@pytest.mark.parametrize("name", sorted({n for e in map(archs.entry, archs.names())
                                         for n in (e.id, e.cls.__name__, *e.aliases)}))
def test_every_registered_arch_name_resolves_or_says_why(name: str) -> None:
    """Arch ids, upstream class names and aliases (any case) name their family, or fail with one clear line."""
    reg = _registry_family(name)
    for spelling in (name, name.upper(), name.lower()):
        try:
            fam = resolve.find_family(spelling, CAT)
        except UsageError as e:
            assert "without recommended presets" in str(e)
            assert not any(_registry_family(CAT.presets[c[0]].arch) == reg
                           for f in CAT.families.values() for c in f.chains.values())
            continue
        assert fam is not None
        assert all(_registry_family(CAT.presets[n].arch) == reg for c in fam.chains.values() for n in c)


@pytest.mark.parametrize("name,family", [
    ("nafnet", "nafnet"), ("NAFNet", "nafnet"), ("NAFNetLocal", "nafnet"), ("ufpnet", "ufpnet"),
    ("UFPNet_code_uncertainty_Local", "ufpnet"), ("SPAN", "span"), ("span", "span"), ("plksr", "plksr"),
    ("RealPLKSR", "realplksr"), ("CAMixerSR", "camixersr"), ("Restormer", "restormer"), ("PromptIR", "promptir"),
    ("MoCEIR", "moceir"), ("MoCE-IR", "moceir"), ("DSwinIR", "dswinir"), ("AdaRevD", "adarevd"),
])
def test_names_map_to_families(name: str, family: str) -> None:
    found = resolve.find_family(name, CAT)
    assert found is not None and found.name == family
    assert resolve.family_named(name, CAT) is found


def test_presets_files_and_uris_are_not_families(tmp_path: Path) -> None:
    assert resolve.family_named("span-s-x4", CAT) is None
    assert resolve.family_named("hf://acme/span", CAT) is None
    assert resolve.family_named("weights/span.pth", CAT) is None
    (tmp_path / "span").write_bytes(b"")  # an existing file named like a family is a file
    assert resolve.family_named(str(tmp_path / "span"), CAT) is None
    assert resolve.find_family("no-such-thing", CAT) is None
    toml = tmp_path / "p.toml"
    toml.write_text(_TOML.format(sha=_BUNDLED_SHA, official_sha="0" * 64) + _PRESET_NAMED_SPAN)
    cat = presets.catalog(toml)
    assert resolve.family_named("span", cat) is None  # the preset named "span" wins over the family
    assert resolve.family_named("SPAN", cat) is cat.families["span"]


def test_task_checks() -> None:
    span, nafnet = CAT.families["span"], CAT.families["nafnet"]
    assert resolve.pick_task(span, None) == "upscale"
    with pytest.raises(UsageError, match="span has no deblur model; it serves upscale"):
        resolve.pick_task(span, "deblur")
    with pytest.raises(UsageError, match="nafnet serves deblur and denoise: name the task"):
        resolve.pick_task(nafnet, None)


# -- choose() with a stand-in hub -------------------------------------------------------------------------------
_BUNDLED_SHA = CAT.presets["span-s-x4"].source.sha256
_TOML = """
[defaults]
upscale = "span-bundled"

[presets.span-official]
task = "upscale"
arch = "SPAN"
kwargs = {{ feature_channels = 8, upscale = 4 }}
scale = 4
license = "Apache-2.0"
description = "stands in for published weights on the Hub"
source = {{ hf = "acme/span", filename = "span.safetensors", revision = "v1", sha256 = "{official_sha}" }}

[presets.span-elsewhere]
task = "upscale"
arch = "SPAN"
kwargs = {{ feature_channels = 48, upscale = 4 }}
scale = 4
license = "Apache-2.0"
description = "published weights on a host that needs a manual download"
source = {{ url = "https://pan.baidu.com/s/spanx4", filename = "spanx4.pth" }}

[presets.span-bundled]
task = "upscale"
arch = "SPAN"
kwargs = {{ feature_channels = 48, upscale = 4 }}
scale = 4
license = "MIT"
description = "the bundled model"
source = {{ bundled = "span-s-x4.safetensors", sha256 = "{sha}" }}

[presets.plksr-elsewhere]
task = "upscale"
arch = "plksr"
scale = 4
license = "MIT"
description = "no bundled fallback"
source = {{ url = "https://pan.baidu.com/s/plksr", filename = "PLKSR_X4.pth" }}

[families.span]
upscale = ["span-official", "span-elsewhere", "span-bundled"]

[families.plksr]
upscale = ["plksr-elsewhere"]
"""
_PRESET_NAMED_SPAN = """
[presets.span]
task = "upscale"
arch = "SPAN"
scale = 4
license = "MIT"
description = "a preset named like a family"
source = { url = "https://pan.baidu.com/s/x" }
"""


@pytest.fixture()
def cat(tmp_path: Path) -> presets.Catalog:
    toml = tmp_path / "p.toml"
    toml.write_text(_TOML.format(sha=_BUNDLED_SHA, official_sha="0" * 64))
    return presets.catalog(toml)


class StandIn:
    """hub.is_cached / hub.fetch_preset with a set of cached presets and a set that download."""

    def __init__(self, cached: Iterable[str] = (), downloads: Iterable[str] = ()) -> None:
        self.cached, self.downloads = set(cached), set(downloads)
        self.fetched: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch, cat: presets.Catalog) -> StandIn:
        by_source = {p.source: p.name for p in cat.presets.values()}
        real_fetch = hub.fetch_preset

        def is_cached(source: presets.Source) -> bool:
            return source.kind == "bundled" or by_source[source] in self.cached

        def fetch_preset(preset: presets.Preset, *, offline: bool = False, progress: bool = True) -> Path:
            self.fetched.append(preset.name)
            if preset.source.kind == "bundled":
                return real_fetch(preset, offline=offline, progress=progress)
            if preset.name in self.cached or (preset.name in self.downloads and not hub.is_offline(offline)):
                return Path(f"/fake/{preset.name}")
            if hub.is_offline(offline):
                raise WeightsError(f"hf://acme/{preset.name} is not in the local Hugging Face cache and offline "
                                   f"mode is on; run `restore models download {preset.name}` while online")
            raise WeightsError(f"{preset.name} cannot be downloaded automatically: the file is hosted at "
                               f"https://example.org/{preset.name}; download it by hand")

        monkeypatch.setattr(hub, "is_cached", is_cached)
        monkeypatch.setattr(hub, "fetch_preset", fetch_preset)
        return self


@pytest.fixture()
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "is_offline", lambda offline=False: offline)


def test_offline_empty_cache_falls_back_to_bundled(cat: presets.Catalog, monkeypatch: pytest.MonkeyPatch,
                                                   online: None) -> None:
    StandIn().install(monkeypatch, cat)
    c = resolve.choose(cat.families["span"], "upscale", offline=True, catalog=cat)
    assert c.preset.name == "span-bundled" and c.how == "bundled" and c.fallback
    assert c.path == presets.BUNDLED_DIR / "span-s-x4.safetensors"
    assert c.note == "span: span-official, span-elsewhere not cached (offline); using bundled span-bundled"


def test_cached_published_weights_win(cat: presets.Catalog, monkeypatch: pytest.MonkeyPatch, online: None) -> None:
    stand_in = StandIn(cached={"span-official"}).install(monkeypatch, cat)
    c = resolve.choose(cat.families["span"], "upscale", offline=True, catalog=cat)
    assert (c.preset.name, c.how, c.fallback) == ("span-official", "cached", False)
    assert c.note == "span: using span-official (cached)"
    assert stand_in.fetched == ["span-official"]  # nothing after the winner is touched


def test_download_when_online_and_skip_reasons(cat: presets.Catalog, monkeypatch: pytest.MonkeyPatch,
                                                online: None) -> None:
    StandIn(downloads={"span-official"}).install(monkeypatch, cat)
    c = resolve.choose(cat.families["span"], "upscale", catalog=cat)
    assert (c.preset.name, c.how) == ("span-official", "downloaded")
    assert c.note == "span: using span-official (downloaded)"

    StandIn(downloads={"span-elsewhere"}).install(monkeypatch, cat)
    c = resolve.choose(cat.families["span"], "upscale", catalog=cat)
    assert c.preset.name == "span-elsewhere" and len(c.skipped) == 1
    assert c.note == ("span: span-official cannot be downloaded automatically: the file is hosted at "
                      "https://example.org/span-official; using span-elsewhere (downloaded)")

    StandIn().install(monkeypatch, cat)
    c = resolve.choose(cat.families["span"], "upscale", catalog=cat)
    assert c.note.startswith("span: span-official cannot be downloaded automatically")
    assert c.note.endswith("(also skipped span-elsewhere); using bundled span-bundled")
    assert "\n" not in c.note


def test_no_fallback_is_one_error_naming_where_to_download(cat: presets.Catalog, monkeypatch: pytest.MonkeyPatch,
                                                           online: None) -> None:
    StandIn().install(monkeypatch, cat)
    with pytest.raises(WeightsError) as e:
        resolve.choose(cat.families["plksr"], "upscale", catalog=cat)
    assert str(e.value).startswith("plksr: no upscale weights available: plksr-elsewhere cannot be downloaded")
    assert "https://example.org/plksr-elsewhere" in str(e.value) and "\n" not in str(e.value)


def test_candidate_status_without_network(cat: presets.Catalog, monkeypatch: pytest.MonkeyPatch,
                                          online: None) -> None:
    StandIn(cached={"span-official"}).install(monkeypatch, cat)
    got = [(c.preset.name, c.status) for c in resolve.candidates(cat.families["span"], "upscale", catalog=cat)]
    assert got == [("span-official", "cached"), ("span-elsewhere", "manual"), ("span-bundled", "bundled")]
    StandIn().install(monkeypatch, cat)
    got = [c.status for c in resolve.candidates(cat.families["span"], "upscale", offline=True, catalog=cat)]
    assert got == ["offline", "offline", "bundled"]


# -- the API -----------------------------------------------------------------------------------------------------
def test_load_model_by_family_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    m = api.load_model("UFPNet_code_uncertainty_Local", device="cpu", offline=True)  # one task: no task needed
    assert m.name == "ufpnet-s" and m.choice is not None and m.choice.family == "ufpnet"
    assert m.choice.note == "ufpnet: ufpnet-gopro not cached (offline); using bundled ufpnet-s"
    m = api.load_model("nafnet", task="denoise", device="cpu", offline=True)
    assert m.name == "nafnet-s-denoise" and m.license.startswith("MIT")
    with pytest.raises(UsageError, match="name the task"):
        api.load_model("nafnet", device="cpu", offline=True)
    assert api.load_model("span-s-x4", device="cpu", offline=True).choice is None  # presets as before


# -- the CLI -----------------------------------------------------------------------------------------------------
def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An empty HF cache of our own; nothing from the caller's HF_* settings."""
    home = tmp_path / "hf"
    home.mkdir(exist_ok=True)
    (home / ".agent_harnesses.json").write_text('{"standardEnvVars": [], "harnesses": {}}')
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "RESTORE_"))}
    e.update(HF_HOME=str(home), PYTHONPATH=str(ROOT), COLUMNS="200", RESTORE_CACHE_DIR=str(tmp_path / "rc"))
    e.update(extra)
    return e


def run(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "restore_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("task,folder,family,preset,note", [
    ("upscale", "lowres", "span", "span-s-x4", "span: span-x4-ch48 not cached (offline); using bundled span-s-x4"),
    ("denoise", "noisy", "nafnet", "nafnet-s-denoise",
     "nafnet: nafnet-sidd-w64, nafnet-sidd-w32 not cached (offline); using bundled nafnet-s-denoise"),
])
def test_family_restores_the_samples_offline(tmp_path: Path, task: str, folder: str, family: str, preset: str,
                                             note: str) -> None:
    out = tmp_path / "out"
    p = run(_env(tmp_path, HF_HUB_OFFLINE="1"), task, SAMPLES / folder, "--model", family, "-o", out)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines()[0] == note
    assert p.stderr.count(note) == 1 and f"{preset} (" in p.stderr
    for src in (SAMPLES / folder).glob("*.png"):
        w, h = PILImage.open(src).size
        scale = 4 if task == "upscale" else 1
        assert PILImage.open(out / src.name).size == (w * scale, h * scale)


def test_ufpnet_family_deblurs_offline(tmp_path: Path) -> None:
    """ufpnet-s takes seconds per 256 px sample on a small CPU: one crop here, the full folder in the slow test."""
    crops = tmp_path / "blurry"
    crops.mkdir()
    PILImage.open(SAMPLES / "blurry" / "kodim05.png").crop((0, 0, 48, 40)).save(crops / "a.png")
    p = run(_env(tmp_path, HF_HUB_OFFLINE="1"), "deblur", crops, "--model", "ufpnet", "-o", tmp_path / "out", "-q")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    # quiet still says which weights a fallback used
    assert "ufpnet: ufpnet-gopro not cached (offline); using bundled ufpnet-s" in p.stderr
    assert PILImage.open(tmp_path / "out" / "a.png").size == (48, 40)


@pytest.mark.slow
def test_ufpnet_family_deblurs_the_samples_offline(tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = run(_env(tmp_path, HF_HUB_OFFLINE="1"), "deblur", SAMPLES / "blurry", "--model", "ufpnet", "-o", out)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert "using bundled ufpnet-s" in p.stderr
    assert sorted(f.name for f in out.iterdir()) == sorted(f.name for f in (SAMPLES / "blurry").iterdir())


@pytest.mark.parametrize("args,code,needle", [
    (["upscale", "{img}", "--model", "ufpnet"], 2, "ufpnet has no upscale model; it serves deblur"),
    (["deblur", "{img}", "--model", "span"], 2, "span has no deblur model; it serves upscale"),
    (["upscale", "{img}", "--model", "plksr"], 1,
     "plksr: no upscale weights available: plksr-x4 is not in the download cache and offline mode is on; "
     "run `restore models download plksr-x4`"),
    (["upscale", "{img}", "--model", "gfisrv2"], 2, "gfisrv2 is a GFISRV2 architecture without recommended presets"),
    (["upscale", "{img}", "--model", "no-such-family"], 2, "unknown model preset"),
])
def test_family_errors_are_one_line(tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    img = tmp_path / "in.png"
    PILImage.new("RGB", (8, 8)).save(img)
    p = run(_env(tmp_path, HF_HUB_OFFLINE="1"), *(a.format(img=img) for a in args), "-o", tmp_path / "o")
    no_traceback(p)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr


def test_models_info_family_shows_the_chain(tmp_path: Path) -> None:
    p = run(_env(tmp_path, HF_HUB_OFFLINE="1"), "models", "info", "ufpnet")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    gopro = next(ln for ln in lines if ln.strip().startswith("ufpnet-gopro"))
    small = next(ln for ln in lines if ln.strip().startswith("ufpnet-s "))
    assert "offline" in gopro and "drive.google.com" in gopro and "<-" not in gopro
    assert "bundled" in small and "<- used now" in small
    assert "UFPNet_code_uncertainty_Local" in p.stdout  # the other names that mean this family
    p = run(_env(tmp_path, HF_HUB_OFFLINE="1"), "models", "info", "ufpnet-s")  # a preset: as before
    assert p.returncode == 0 and "3,289,674" in p.stdout and "family       ufpnet" in p.stdout


# -- against the local fake Hub ---------------------------------------------------------------------------------
@pytest.fixture()
def fake(tmp_path: Path) -> Iterator[tuple[FakeHub, dict[str, str], Path]]:
    """Our presets file: span-official on the fake Hub, span-elsewhere manual, span-bundled bundled (x4)."""
    torch.manual_seed(0)
    official = tmp_path / "official.safetensors"
    model = archs.build("SPAN", feature_channels=8, upscale=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(official))
    data = official.read_bytes()
    toml = tmp_path / "presets.toml"
    toml.write_text(_TOML.format(sha=_BUNDLED_SHA, official_sha=sha256(data)))
    img = tmp_path / "in.png"
    PILImage.fromarray((np.random.default_rng(0).random((10, 12, 3)) * 255).astype(np.uint8)).save(img)
    with FakeHub() as srv:
        srv.add_commit("acme/span", {"span.safetensors": data}, refs=("main", "v1"))
        yield srv, _env(tmp_path, HF_ENDPOINT=srv.url, RESTORE_PRESETS=str(toml)), img


def test_against_the_hub_download_cache_offline(fake: tuple[FakeHub, dict[str, str], Path], tmp_path: Path) -> None:
    srv, e, img = fake
    p = run({**e, "HF_HUB_OFFLINE": "1"}, "upscale", img, "--model", "span", "-o", tmp_path / "o1")
    assert p.returncode == 0, p.stderr
    assert "span: span-official, span-elsewhere not cached (offline); using bundled span-bundled" in p.stderr
    assert srv.requests == []

    p = run(e, "models", "info", "span")
    assert p.returncode == 0 and "<- downloaded and used now" in p.stdout, p.stdout

    p = run(e, "upscale", img, "--model", "span", "-o", tmp_path / "o2")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert "span: using span-official (downloaded)" in p.stderr
    assert PILImage.open(tmp_path / "o2" / "in.png").size == (48, 40)

    srv.clear()
    p = run({**e, "HF_HUB_OFFLINE": "1"}, "upscale", img, "--model", "SPAN", "-o", tmp_path / "o3")
    assert p.returncode == 0, p.stderr
    assert "span: using span-official (cached)" in p.stderr and srv.requests == []
    p = run({**e, "HF_HUB_OFFLINE": "1"}, "models", "info", "span")
    line = next(ln for ln in p.stdout.splitlines() if ln.strip().startswith("span-official"))
    assert "cached" in line and "<- used now" in line


def test_against_the_hub_missing_file_falls_back(fake: tuple[FakeHub, dict[str, str], Path], tmp_path: Path) -> None:
    _, e, img = fake
    toml = Path(e["RESTORE_PRESETS"])
    toml.write_text(toml.read_text().replace('hf = "acme/span"', 'hf = "acme/gone"'))
    p = run(e, "upscale", img, "--model", "span", "-o", tmp_path / "o", "-q")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    note = p.stderr.splitlines()[0]
    assert note.startswith("span: span-official: cannot fetch hf://acme/gone/span.safetensors@v1: repository")
    assert note.endswith("(also skipped span-elsewhere); using bundled span-bundled")
    assert PILImage.open(tmp_path / "o" / "in.png").size == (48, 40)
