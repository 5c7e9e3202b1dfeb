"""Kernel build bookkeeping (archs.ops._build) and `restore doctor`: status per op, the build cache, and the
one-warning fallback when a build fails. Runs on the CPU: the compiler is replaced where a GPU would be needed."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from archs.ops import _build
from tests.conftest import no_traceback, restore

OPS = {"selective_scan", "bi_wkv", "neighborhood_attn", "upfirdn2d"}


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty build state and an empty cache folder, as in a new process."""
    monkeypatch.setattr(_build, "_LOADED", {})
    monkeypatch.setattr(_build, "_ERRORS", {})
    monkeypatch.setenv("RESTORE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("RESTORE_NO_EXTENSIONS", raising=False)
    return tmp_path


def test_status_lists_every_op_not_built(fresh: Path) -> None:
    st = {s.name: s for s in _build.status()}
    assert set(st) == OPS
    assert all(s.backend == "not built" for s in st.values())


def test_status_sees_an_earlier_build_in_the_cache(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_arch", lambda: "sm_90")
    lib = _build.cache_dir() / "bi_wkv" / "restore_bi_wkv.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    assert "sm_90" in str(lib)  # one cache per GPU architecture (and torch / CUDA version)
    st = {s.name: s for s in _build.status()}
    assert st["bi_wkv"].backend == "cached" and st["upfirdn2d"].backend == "not built"


def test_no_gpu_falls_back_to_the_reference(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_arch", lambda: None)
    assert _build.load("upfirdn2d") is None
    st = {s.name: s for s in _build.status()}
    assert st["upfirdn2d"].backend == "reference" and st["upfirdn2d"].detail == "no CUDA GPU"


def test_failed_build_warns_once_and_falls_back(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import cpp_extension

    calls = []

    def broken(**kwargs: object) -> None:
        calls.append(kwargs)
        raise RuntimeError("Error building extension 'restore_bi_wkv'\nnvcc fatal: Unsupported gpu architecture")

    monkeypatch.setattr(_build, "_arch", lambda: "sm_90")
    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.warns(RuntimeWarning, match="could not build the bi_wkv kernel.*Unsupported gpu architecture"):
        assert _build.load("bi_wkv") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call neither rebuilds nor warns again
        assert _build.load("bi_wkv") is None
    assert len(calls) == 1
    assert calls[0]["build_directory"] == str(_build.cache_dir() / "bi_wkv")
    assert "--use_fast_math" not in calls[0]["extra_cuda_cflags"]  # type: ignore[operator]
    st = {s.name: s for s in _build.status()}
    assert st["bi_wkv"].backend == "reference" and "Unsupported gpu architecture" in st["bi_wkv"].detail


def test_disabled_by_environment(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_arch", lambda: "sm_90")
    monkeypatch.setenv("RESTORE_NO_EXTENSIONS", "1")
    assert _build.load("selective_scan") is None
    assert "RESTORE_NO_EXTENSIONS" in _build._ERRORS["selective_scan"]


def test_doctor_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORE_CACHE_DIR", str(tmp_path))
    p = restore("doctor")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    for op in OPS:
        assert op in p.stdout
    assert "torch" in p.stdout and "mamba-ssm selective_scan_cuda:" in p.stdout
