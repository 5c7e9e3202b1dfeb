"""Host <-> GPU copies through pinned memory on a side stream, so that they overlap the compute stream's work.

A copy from pageable memory is synchronous and runs at a fraction of the bus speed; from pinned memory it is
asynchronous, and on its own stream it runs while the previous batch computes. Pinned blocks come from torch's
caching host allocator, which reuses them and keeps each alive until the copies that use it have finished.
On the CPU every method is the identity.
"""

from __future__ import annotations

import torch


def _hwc_view(t: torch.Tensor) -> bool:
    """Whether a (C, H, W) tensor is a permuted view of contiguous (H, W, C) memory (pixels as images store them)."""
    return t.dim() == 3 and not t.is_contiguous() and t.permute(1, 2, 0).is_contiguous()


class Transfers:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        """A CPU tensor on the device. Returns at once; work queued later on the current stream waits for the copy.

        A (C, H, W) view of (H, W, C) memory travels as it is stored and is permuted on the device, where it costs
        nothing, instead of being transposed on the CPU first.
        """
        if not self.cuda or host.device.type != "cpu":
            return host
        assert self.stream is not None
        hwc = _hwc_view(host)
        src = host.permute(1, 2, 0) if hwc else host.contiguous()
        if not src.is_pinned():
            src = src.pin_memory()
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            dev = src.to(self.device, non_blocking=True)
        compute.wait_stream(self.stream)
        dev.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        return dev.permute(2, 0, 1) if hwc else dev

    def download(self, dev: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Start copying a device tensor into pinned host memory; the host tensor is valid once the event is done.

        The copy runs on the side stream after the work already queued on the current stream; `dev` must not be
        overwritten by later work (clone a CUDA graph's static output first).
        """
        if not self.cuda or dev.device.type == "cpu":
            return dev, None
        assert self.stream is not None
        dev = dev.contiguous()
        host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(dev, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        dev.record_stream(self.stream)
        return host, done

    def fetch(self, dev: torch.Tensor) -> torch.Tensor:
        """A device tensor on the CPU, waited for. (C, H, W) results travel as (H, W, C) memory, as images are stored,
        and come back as a (C, H, W) view of it: the caller's HWC array needs no CPU transposition."""
        if not self.cuda or dev.device.type == "cpu":
            return dev.cpu()
        chw = dev.dim() == 3
        host, done = self.download(dev.permute(1, 2, 0) if chw else dev)
        assert done is not None
        done.synchronize()
        return host.permute(2, 0, 1) if chw else host
