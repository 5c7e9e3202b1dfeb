"""Structural re-parameterisation: the base of SPAN's Conv3XC (here), SpanC's RepConv and the OmniShifts of
Restore-RWKV and RHA.

Such a module trains as several parallel conv branches and runs, in eval mode, as one conv whose weights are computed
from them (`fuse()`). Upstream fuses on `.eval()` (or on the first eval forward); we fuse on every switch to eval
and after every `load_state_dict`, so the stored fused weights never matter and the order of load and `.eval()`
does not either. Only direct edits of the branch weights while in eval need another `.eval()` or `fuse()`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn.functional as F
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


class Conv3XC(Reparameterizable):
    """Re-parameterisable 3x3 conv: 1x1 -> 3x3 -> 1x1 chain plus a 1x1 skip while training, one 3x3 in eval.

    The chain sees the input zero-padded by one pixel before its first 1x1, so its bias also reaches the border,
    exactly as the fused 3x3 with padding=1 treats it: the two forms are the same function.

    Upstream recomputes `eval_conv` from the branches on every eval forward, so stored `eval_conv.*` values never
    matter; we fuse on `.eval()` and after every load (see `Reparameterizable`).
    """

    def __init__(self, c_in: int, c_out: int, gain: int = 2) -> None:
        super().__init__()
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in * gain, 1),
            nn.Conv2d(c_in * gain, c_out * gain, 3),  # no padding: the input is padded explicitly
            nn.Conv2d(c_out * gain, c_out, 1),
        )
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.eval_conv.weight.requires_grad_(False)
        assert self.eval_conv.bias is not None
        self.eval_conv.bias.requires_grad_(False)
        self.fuse()

    def fuse(self) -> None:
        """Write the single 3x3 conv equal to conv[2] . conv[1] . conv[0] + sk into eval_conv."""
        w1, w2, w3 = (m.weight for m in self.conv)
        b1, b2, b3 = (m.bias for m in self.conv)
        sk_w, sk_b = self.sk.weight, self.sk.bias
        assert b1 is not None and b2 is not None and b3 is not None and sk_b is not None
        dt = fusion_dtype(w2.device)
        with torch.inference_mode(False), torch.no_grad():
            a, b, c = w1.to(dt)[:, :, 0, 0], w2.to(dt), w3.to(dt)[:, :, 0, 0]
            weight = torch.einsum("on,nmhw,mi->oihw", c, b, a)
            mid_bias = torch.einsum("nmhw,m->n", b, b1.to(dt)) + b2.to(dt)
            bias = c @ mid_bias + b3.to(dt)
            weight[:, :, 1, 1] += sk_w.to(dt)[:, :, 0, 0]
            bias = bias + sk_b.to(dt)
            assert self.eval_conv.bias is not None
            set_fused(self.eval_conv.weight, weight)
            set_fused(self.eval_conv.bias, bias)

    def plain(self) -> nn.Module:
        conv = nn.Conv2d(self.eval_conv.in_channels, self.eval_conv.out_channels, 3, padding=1)
        conv.load_state_dict(self.eval_conv.state_dict())
        return conv.to(self.eval_conv.weight.device)

    def load_plain(self, plain: nn.Module) -> None:
        """Branches that compose to exactly `plain`'s 3x3 conv: identity 1x1s around it, a zero skip."""
        assert isinstance(plain, nn.Conv2d) and plain.bias is not None
        w, b = plain.weight.detach(), plain.bias.detach()
        c_out, c_in = w.shape[:2]
        first, mid, last = self.conv
        with torch.no_grad():
            for m in (first, mid, last, self.sk):
                m.weight.zero_()
                m.bias.zero_()
            first.weight[:c_in, :, 0, 0] = torch.eye(c_in, dtype=w.dtype, device=w.device)
            mid.weight[:c_out, :c_in] = w
            mid.bias[:c_out] = b
            last.weight[:, :c_out, 0, 0] = torch.eye(c_out, dtype=w.dtype, device=w.device)
        self.fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)
        return self.eval_conv(x)
