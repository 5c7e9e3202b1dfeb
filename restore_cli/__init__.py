"""restore: batch image restoration with PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import LoadedModel, load_model, restore_image

__all__ = ["LoadedModel", "load_model", "restore_image"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The API pulls in torch (seconds): load it on first use, so `restore --help`, `restore_cli.hub`, ... stay light.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
