"""Structural re-parameterisation shared by SPAN's Conv3XC, SPANC's RepConv and the OmniShifts of Restore-RWKV and RHA.

Such a module trains as several parallel conv branches and runs, in eval mode, as one conv whose weights are computed
from them (`fuse()`). Upstream fuses on `.eval()` (or on the first eval forward); we fuse on every switch to eval
and after every `load_state_dict`, so the stored fused weights never matter and the order of load and `.eval()`
does not either. Only direct edits of the branch weights while in eval need another `.eval()` or `fuse()`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

_R = TypeVar("_R", bound="Reparameterizable")


class Reparameterizable(nn.Module):
    """Base of the re-parameterisable modules: calls `fuse()` after each `load_state_dict` and on `train(False)`."""

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(_fuse_after_load)

    def fuse(self) -> None:
        """Write the single conv equal to the training-time branches into the eval-mode conv."""
        raise NotImplementedError

    def plain(self) -> nn.Module:
        """The eval-mode module alone (a copy), for training the fused form directly."""
        raise NotImplementedError(f"{type(self).__name__} has no plain form")

    def load_plain(self, plain: nn.Module) -> None:
        """Set the training branches so that they fuse to `plain` (a trained `plain()`), then fuse."""
        raise NotImplementedError(f"{type(self).__name__} has no plain form")

    def train(self: _R, mode: bool = True) -> _R:
        super().train(mode)
        if not mode:
            self.fuse()
        return self


def _fuse_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    assert isinstance(module, Reparameterizable)
    module.fuse()


def fusion_dtype(device: torch.device) -> torch.dtype:
    """float64 for composing fused weights, so they carry only their storage rounding; float32 on MPS (no float64).

    Callers compose under `torch.inference_mode(False), torch.no_grad()`, so the result stays a normal tensor.
    """
    return torch.float32 if device.type == "mps" else torch.float64


def set_fused(param: torch.Tensor, value: torch.Tensor) -> None:
    """param.data = value in param's device and dtype, contiguous.

    Swaps the data rather than copying into it: after load_state_dict(assign=True) the old storage may be shared
    with another module. Contiguous: composed weights (einsum outputs) can carry permuted strides, which
    torch.compile's guards and cuDNN's layout choice treat as another tensor than a loaded conv weight.
    """
    param.data = value.to(device=param.device, dtype=param.dtype).contiguous()


def to_plain(model: nn.Module) -> nn.Module:
    """A copy of `model` whose re-parameterisable modules are replaced by their fused plain modules.

    Training the fused form costs a fraction of the branches (SPAN: one 3x3 conv instead of a 1x1-3x3-1x1 chain of
    twice the width), which is what makes fine-tuning on a CPU practical. `from_plain` maps the result back.
    """
    import copy

    model = copy.deepcopy(model).eval()  # eval: every module fused
    for name, module in list(model.named_modules()):
        if isinstance(module, Reparameterizable):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.plain())
    return model.train()


def from_plain(model: nn.Module, plain: nn.Module) -> nn.Module:
    """Load a `to_plain` model's trained weights back into `model` (same architecture, branch form): each
    re-parameterisable module gets branches that fuse to its plain counterpart; everything else is copied."""
    plain_modules = dict(plain.named_modules())
    rep_names = [n for n, m in model.named_modules() if isinstance(m, Reparameterizable)]
    with torch.no_grad():
        for name in rep_names:
            module = model.get_submodule(name)
            assert isinstance(module, Reparameterizable)
            module.load_plain(plain_modules[name])
        skip = tuple(n + "." for n in rep_names)
        own = model.state_dict()
        for key, value in plain.state_dict().items():
            if not key.startswith(skip):
                own[key].copy_(value)
    return model
