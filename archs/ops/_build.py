"""Compiling the csrc/ kernels once per (op, torch, CUDA, GPU architecture), with a clear fallback.

Builds go through torch.utils.cpp_extension.load into a cache folder, for the running GPU's architecture only
(sm_90 on an H200), so the first call pays the compile (a progress line on stderr) and later ones load the cached
library. A failed build warns once and the op falls back to its PyTorch reference; it never raises.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"

# name -> source files relative to csrc/; each op module registers itself here at import.
_SOURCES: dict[str, list[str]] = {}
_LOADED: dict[str, ModuleType | None] = {}
_ERRORS: dict[str, str] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class OpStatus:
    name: str
    # "cuda" (compiled and loaded), "cached" (a build from an earlier run, loaded on first use), "reference"
    # (fallback), "not built" (not tried yet)
    backend: str
    arch: str | None  # e.g. "sm_90"
    detail: str


def register(name: str, sources: list[str]) -> None:
    _SOURCES[name] = sources


def _arch() -> str | None:
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def cache_dir() -> Path:
    root = Path(os.environ.get("RESTORE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "restore")
    tag = f"torch{torch.__version__.split('+')[0]}-cu{torch.version.cuda or 'none'}-{_arch() or 'cpu'}"
    return root.expanduser() / "extensions" / tag


def load(name: str, *, verbose: bool = False) -> ModuleType | None:
    """The compiled extension for `name`, building it on first use; None when it cannot be had (then warn once)."""
    if name in _LOADED:
        return _LOADED[name]
    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        module: ModuleType | None = None
        arch = _arch()
        if arch is None:
            _ERRORS[name] = "no CUDA GPU"
        elif os.environ.get("RESTORE_NO_EXTENSIONS"):
            _ERRORS[name] = "disabled by RESTORE_NO_EXTENSIONS"
        else:
            module = _compile(name, arch, verbose=verbose)
        _LOADED[name] = module
        return module


def _compile(name: str, arch: str, *, verbose: bool) -> ModuleType | None:
    from torch.utils import cpp_extension

    sources = [str(CSRC / s) for s in _SOURCES[name]]
    build_dir = cache_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    cap = arch.removeprefix("sm_")
    # Only the running GPU's architecture: one small, fast build instead of torch's fat default list.
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{cap[:-1]}.{cap[-1]}"
    print(f"restore: compiling the {name} kernel for {arch} (once; cached in {build_dir})", file=sys.stderr,
          flush=True)
    try:
        return cpp_extension.load(
            name=f"restore_{name}",
            sources=sources,
            build_directory=str(build_dir),
            extra_cflags=["-O3"],
            # no --use_fast_math: its approximate exp/log cost the long scans (selective_scan) float32 accuracy
            extra_cuda_cflags=["-O3", "-lineinfo"],
            verbose=verbose,
        )
    except Exception as e:  # compiler missing, toolchain mismatch, ...: the reference still works
        msg = str(e).strip().splitlines()
        _ERRORS[name] = (msg[-1] if msg else type(e).__name__)[:300]
        warnings.warn(f"restore: could not build the {name} kernel ({_ERRORS[name]}); using the PyTorch reference",
                      RuntimeWarning, stacklevel=3)
        return None


def status() -> list[OpStatus]:
    _import_all()
    arch = _arch()
    out = []
    for name in sorted(_SOURCES):
        if name not in _LOADED:
            built = arch is not None and any((cache_dir() / name).glob(f"restore_{name}*.so"))
            out.append(OpStatus(name, "cached", arch, f"built earlier, loads on first use from {cache_dir() / name}")
                       if built else
                       OpStatus(name, "not built", arch, "compiles on first use (or: restore doctor --build)"))
        elif _LOADED[name] is not None:
            out.append(OpStatus(name, "cuda", arch, f"compiled, cached in {cache_dir() / name}"))
        else:
            out.append(OpStatus(name, "reference", arch, _ERRORS.get(name, "")))
    return out


def build_all(*, verbose: bool = False) -> list[OpStatus]:
    _import_all()
    for name in sorted(_SOURCES):
        load(name, verbose=verbose)
    return status()


def _import_all() -> None:
    """Import every op module so each registers its sources (explicit list, like the arch registry)."""
    import importlib

    for mod in _OP_MODULES:
        try:
            importlib.import_module(f"archs.ops.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"archs.ops.{mod}":
                raise


_OP_MODULES = ["selective_scan", "bi_wkv", "neighborhood_attn", "upfirdn2d"]
