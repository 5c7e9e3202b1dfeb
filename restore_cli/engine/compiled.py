"""Fixed-shape forwards on a GPU: the model captured once per input shape (CUDA graph, torch.compile, or both).

Every tile of a plan and every frame of a video has one shape, so the forward can be specialised to it: inductor
fuses the elementwise work between convolutions and splits reductions that eager kernels run on a few blocks, and a
CUDA graph replays the whole launch sequence at once, which is what small launch-bound SR models need. Capturing a
shape costs milliseconds (graph) to a minute (inductor, cold cache); `Runner` decides when that pays back and
reports it apart from inference time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from torch import nn

from archs import ArchSpec, CompileMode

from ..errors import UsageError

MODES: tuple[CompileMode, ...] = ("graph", "inductor", "inductor-graph")
CHOICES = ("auto", "on", "off", *MODES)
# `auto` captures a shape only when at least this many forwards of it are expected: a graph costs two warm-up
# forwards, an inductor compile tens of seconds on a cold cache (a few with the cache of an earlier run).
AUTO_MIN_FORWARDS = {"graph": 2, "inductor": 100, "inductor-graph": 100}
# Shapes captured per runner before new shapes run eagerly: a folder of many sizes must not compile each one.
MAX_SHAPES = {"auto": 2, "on": 8}

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def check_choice(choice: str, device: torch.device) -> str:
    """Validate a --compile value for a device: auto and off anywhere, the others need a CUDA GPU."""
    if choice not in CHOICES:
        raise UsageError(f"unknown --compile {choice!r} (use {', '.join(CHOICES)})")
    if choice not in ("auto", "off") and device.type != "cuda":
        raise UsageError(f"--compile {choice} needs a CUDA GPU; use auto or off on the {device.type}")
    return choice


def resolve_mode(choice: str, spec: ArchSpec, model: nn.Module) -> CompileMode:
    """The mode `choice` stands for on this model: the descriptor's for auto/on (on: inductor where it says none).

    Graphs replay kernels only, so a model that reports something per forward from Python (`last_info`: AdaRevID's
    exit, MoCE-IR's experts) is not graphed: graph becomes eager, inductor-graph becomes inductor.
    """
    if choice == "off":
        return "none"
    mode: CompileMode = spec.compile_mode if choice in ("auto", "on") else choice  # type: ignore[assignment]
    if choice == "on" and mode == "none":
        mode = "inductor"
    if hasattr(model, "last_info") and mode in ("graph", "inductor-graph"):
        mode = "none" if mode == "graph" else "inductor"
    return mode


def auto_pays_back(mode: CompileMode, runs: int, expected: int) -> bool:
    """`compile auto`: capture a shape on its second run() or later, when about enough forwards of it are due."""
    return runs >= 2 and max(runs, expected) >= AUTO_MIN_FORWARDS[mode]


def configure_cache() -> None:
    """Inductor's FX-graph, AOT-autograd and Triton caches under restore's cache dir (unless the user set one), so a
    later run of the same model and shape loads its kernels instead of compiling them."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        from ..hub import restore_cache_dir

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(restore_cache_dir() / "inductor")
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    import torch._dynamo.config as dynamo_config

    # One specialisation per captured shape; MAX_SHAPES bounds how many we ask for.
    limit = max(MAX_SHAPES.values()) + 2
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


class _Graph:
    """One captured CUDA graph: a static input buffer, the replayed kernels, the static output they write."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 pool: tuple[int, int] | None) -> None:
        self.input = torch.empty_like(x)
        self.input.copy_(x)
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        # Warm-up on a side stream (cuDNN picks its algorithms, inductor compiles) before capture, as capture needs.
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(self.input)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = fn(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        # The same buffer every replay: callers consume it (on this stream) before the next forward.
        return self.output


class StaticForward:
    """The model's forward specialised per input shape in one mode; `capture(x)` before the first call of a shape."""

    def __init__(self, model: nn.Module, call: Forward, mode: CompileMode) -> None:
        if mode not in MODES:
            raise ValueError(f"not a capture mode: {mode!r}")
        self.mode = mode
        self.model = model
        self.call = call
        self._compiled: nn.Module | None = None
        self._graphs: dict[tuple, _Graph] = {}
        self._shapes: set[tuple] = set()
        self._pool: tuple[int, int] | None = None

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        return (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last))

    def ready(self, x: torch.Tensor) -> bool:
        return self.key(x) in self._shapes

    @property
    def shapes(self) -> int:
        return len(self._shapes)

    def _fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.mode == "graph":
            return lambda x: self.call(self.model, x)
        if self._compiled is None:
            configure_cache()
            # dynamic=False: one specialisation per shape, which is what a fixed tile plan gives
            self._compiled = torch.compile(self.model, dynamic=False)  # type: ignore[assignment]
        compiled = self._compiled
        return lambda x: self.call(compiled, x)  # type: ignore[arg-type]

    def capture(self, x: torch.Tensor) -> float:
        """Compile and/or record the forward for x's shape; returns the seconds it took (synchronised)."""
        torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        # A fixed shape is what cuDNN's autotuner is for: the warm-up picks each convolution's fastest algorithm
        # (process-wide, so shapes run eagerly later are tuned on first use too).
        torch.backends.cudnn.benchmark = True
        fn = self._fn()
        key = self.key(x)
        if self.mode == "inductor":
            fn(x)  # the first call compiles; later calls of this shape hit dynamo's cache
        else:
            if self._pool is None:
                # one memory pool for every graph of this model: they never run at the same time
                self._pool = torch.cuda.graph_pool_handle()
            self._graphs[key] = _Graph(fn, x, self._pool)
        torch.cuda.synchronize(x.device)
        self._shapes.add(key)
        return time.perf_counter() - start

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "inductor":
            return self.call(self._compiled, x)  # type: ignore[arg-type]
        return self._graphs[self.key(x)](x)

    def release(self) -> None:
        """Drop the captured graphs (their memory goes back to the allocator); compiled code stays cached."""
        self._graphs.clear()
        self._shapes.clear()
        self._pool = None
