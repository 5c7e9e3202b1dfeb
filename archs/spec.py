"""The descriptor every architecture publishes, and the registry entry that carries it.

Pure data: the application (restore_cli) reads these to plan tiles, pick precisions and detect checkpoints.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]
Task = Literal["deblur", "denoise", "upscale", "restore", "face"]
# safe: local receptive field, tiles with a context margin are exact;
# tlc: whole-image statistics, made tile-stable by Test-time Local Converter (the *Local variants);
# global: whole-image statistics without TLC (e.g. GroupNorm): tile only with large tiles, small seams expected;
# internal: the model tiles itself, give it whole frames.
TilingHint = Literal["safe", "tlc", "global", "internal"]
# How the engine may specialise a forward to one fixed input shape on a GPU (restore_cli/engine/compiled.py):
# none: eager only; graph: a CUDA graph of the eager forward (launch-bound models); inductor: torch.compile;
# inductor-graph: torch.compile, then a CUDA graph of the compiled forward.
CompileMode = Literal["none", "graph", "inductor", "inductor-graph"]
Precision = Literal["fp16", "bf16", "fp32"]


@dataclass(frozen=True)
class ArchSpec:
    """What the engine needs to know about one configured model."""

    id: str
    family: str
    upstream_class: str
    tasks: tuple[Task, ...]
    scale: int
    in_channels: int
    out_channels: int
    min_size: int = 1
    multiple_of: int = 1
    fp16: bool = True
    bf16: bool = True
    channels_last: bool = False
    tiling: TilingHint = "safe"
    context: int = 16
    code_license: str = ""
    # GPU fast path, measured with bench/throughput.py (bench/results/throughput.md): what `--compile auto|on`
    # runs, what `--precision auto` prefers on a GPU (None: fp16 where allowed, else bf16), and the core tile
    # size `--tile auto` uses on a GPU when the frame is larger (0: whole frame when it fits memory).
    compile_mode: CompileMode = "none"
    gpu_precision: Precision | None = None
    gpu_tile: int = 0
    # "image": image-to-image (everything the engine runs); "latent": a generator whose input is a style code;
    # "unsupported": weights load and are detected, but the model cannot run (upstream's forward is broken).
    input_kind: Literal["image", "latent", "unsupported"] = "image"


@dataclass(frozen=True)
class ArchEntry:
    """One registered architecture: its class, how to describe a configuration, how to recognise a state dict.

    `describe(kwargs)` gets the full keyword set (upstream defaults filled in) and returns the ArchSpec.
    `detect(state_dict)` returns the constructor kwargs that reproduce the state dict's keys and shapes, or None.
    """

    id: str
    family: str
    cls: type[nn.Module]
    describe: Callable[[dict[str, Any]], ArchSpec]
    detect: Callable[[StateDict], dict[str, Any] | None] | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Same state dict, tile-stable variant (e.g. NAFNet -> NAFNetLocal): what a detected checkpoint is built as.
    local_variant: str | None = None

    def full_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """kwargs with the constructor's defaults filled in; unknown names are an error, as in upstream."""
        params = inspect.signature(self.cls.__init__).parameters
        accepted = {n: p for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD}
        unknown = set(kwargs) - set(accepted)
        if unknown:
            raise TypeError(f"{self.id}: unknown argument(s) {sorted(unknown)}")
        full = {n: p.default for n, p in accepted.items() if p.default is not inspect.Parameter.empty}
        full.update(kwargs)
        return full
