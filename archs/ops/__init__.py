"""Custom operators: each has a PyTorch reference (CPU, tests) and a CUDA kernel in csrc/<op>/, compiled on first use.

Backends are chosen per call: the compiled kernel when the tensors are on a GPU and the build succeeded, else the
reference. `archs.ops.status()` says which ops are compiled, for which GPU architecture, and which fall back.
"""

from __future__ import annotations

from ._build import OpStatus, build_all, status

__all__ = ["OpStatus", "build_all", "status"]
