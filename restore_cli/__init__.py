"""restore: batch image restoration with PyTorch."""

from .api import LoadedModel, load_model, restore_image

__all__ = ["LoadedModel", "load_model", "restore_image"]
__version__ = "0.1.0"
