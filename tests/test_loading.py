"""Safe weight loading: wrappers, prefixes, refusal of code-running pickles, readable key reports, detection."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import archs
from restore_cli import loading
from restore_cli.errors import WeightsError
from tests.goldens import expected_detections


def _small_sd() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4)}


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"params_ema": sd, "params": {k: v * 0 for k, v in sd.items()}},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"model": {f"netG.{k}": v for k, v in sd.items()}, "epoch": 3},
    lambda sd: {"net": {f"_orig_mod.{k}": v for k, v in sd.items()}},
])
def test_canonicalize_unwraps(wrap: object) -> None:
    sd = _small_sd()
    got = loading.canonicalize(wrap(sd))  # type: ignore[operator]
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_pth_and_safetensors_round_trip(tmp_path: Path) -> None:
    sd = _small_sd()
    torch.save({"params_ema": sd}, tmp_path / "w.pth")
    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        got = loading.read_state_dict(tmp_path / name)
        assert all(torch.equal(got[k], sd[k]) for k in sd)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {os.environ.get('RESTORE_EVIL_MARKER', '/tmp/restore-evil')}",))


def test_code_running_pickle_is_refused_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RESTORE_EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _small_sd(), "x": _Evil()}, path)
    with pytest.raises(WeightsError) as e:
        loading.read_state_dict(path)
    assert "refused" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    # A bare pickle (not a torch zip) with a payload is refused too.
    raw = tmp_path / "evil.pt"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(WeightsError):
        loading.read_state_dict(raw)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_corrupt_files_give_one_line(tmp_path: Path, content: bytes) -> None:
    for suffix in (".pth", ".safetensors"):
        p = tmp_path / f"bad{suffix}"
        p.write_bytes(content)
        with pytest.raises(WeightsError) as e:
            loading.read_state_dict(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_truncated_pth(tmp_path: Path) -> None:
    p = tmp_path / "t.pth"
    torch.save(_small_sd(), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError):
        loading.read_state_dict(p)
    assert zipfile.is_zipfile(p) is False


def test_missing_file() -> None:
    with pytest.raises(WeightsError, match="not found"):
        loading.read_state_dict(Path("/nonexistent/w.pth"))


def test_strict_report_names_keys() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    sd = {"0.weight": torch.randn(4, 3, 5, 5), "0.extra": torch.randn(1)}
    with pytest.raises(WeightsError) as e:
        loading.load_strict(model, sd, where="w.pth")
    msg = str(e.value)
    assert "1 missing: 0.bias" in msg and "1 unexpected: 0.extra" in msg and "0.weight expects [4, 3, 3, 3]" in msg


def test_detection_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match="no known architecture"):
        loading.detect_arch(_small_sd(), where="w.pth")
    monkeypatch.setattr(archs, "detect", lambda sd: [("nafnet", {}), ("span", {})])
    with pytest.raises(WeightsError, match=r"ambiguous.*nafnet, span"):
        loading.detect_arch(_small_sd(), where="w.pth")


def _buildable_kwargs(name: str) -> dict | None:
    """Constructor defaults, or an official manifest's kwargs where upstream's defaults cannot run (PromptIR)."""
    import json

    from tests.conftest import GOLDEN

    try:
        with torch.device("meta"):
            archs.build(name)
        return {}
    except (ValueError, TypeError):
        cls = archs.entry(name).cls.__name__
        import lzma

        for path in sorted([*GOLDEN.glob("*.keys.json"), *GOLDEN.glob("*.keys.json.xz")]):
            if path.suffix == ".xz":
                with lzma.open(path, "rt") as f:
                    doc = json.load(f)
            else:
                doc = json.loads(path.read_text())
            if doc["class"] == cls:
                return doc["kwargs"]
    return None


@pytest.mark.parametrize("name", [n for n in archs.names() if archs.entry(n).detect is not None])
def test_every_family_detects_its_own_random_weights(name: str) -> None:
    """Round trip through each detector, as spandrel's assert_loads_correctly does."""
    kwargs = _buildable_kwargs(name)
    if kwargs is None:
        pytest.skip(f"{name}: defaults do not build and no manifest is available")
    with torch.device("meta"):
        model = archs.build(name, **kwargs)
    sd = model.state_dict()
    found = archs.detect(sd)
    # shared layouts are pinned in tests/goldens.py (an ambiguity error, or detection as an identical family)
    assert sorted(n for n, _ in found) == expected_detections(name), name
    own = next(f for f in found if f[0] == name)
    with torch.device("meta"):
        again = archs.build(name, **own[1])
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in sd.items()}
