"""The trainer: `train(config) -> Path` of the exported float16 safetensors, and its command line:

    python -m restore_cli.training.train --preset ufpnet-s --train-dir .devdata/train --out runs/ufpnet-s \
        [--minutes 8] [--iters N] [--seed S]

Data: every training image is decoded once into one uint8 tensor on the device; batches are random crops with a
random dihedral flip (one gather), degraded on the device by a `degrade` pipeline (JPEG on CPU threads).
Optimisation: L1 (+ optional spectrum L1), AdamW, linear warmup + cosine decay, bf16 autocast on CUDA, gradient
clipping, EMA of the weights. Logs: `log.jsonl` (one JSON object per event) and human lines on stdout/`log.txt`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import queue
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..metrics import psnr_batch
from . import configs, degrade
from .configs import DATA_LICENSES, TrainConfig

BuildFn = Callable[[str, dict[str, Any]], nn.Module]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------------------------
# data


def _read_u8(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode {path}")
    return np.ascontiguousarray(img[..., ::-1])


def split_images(folder: Path, n_val: int) -> tuple[list[Path], list[Path]]:
    """(train, held-out) image paths: the held-out ones are spread evenly over the sorted list."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(paths) <= n_val:
        raise ValueError(f"{folder}: {len(paths)} images, need more than the {n_val} held out")
    val_idx = {int((i + 0.5) * len(paths) / n_val) for i in range(n_val)} if n_val else set()
    return [p for i, p in enumerate(paths) if i not in val_idx], [p for i, p in enumerate(paths) if i in val_idx]


class ImageBank:
    """All training images, zero-padded into one (N, 3, Hmax, Wmax) uint8 tensor on the device."""

    def __init__(self, paths: list[Path], device: torch.device, min_side: int) -> None:
        imgs = [_read_u8(p) for p in paths]
        keep = [i for i, im in enumerate(imgs) if min(im.shape[:2]) >= min_side]
        if not keep:
            raise ValueError(f"no training image is at least {min_side}px on its short side")
        imgs = [imgs[i] for i in keep]
        self.names = [paths[i].name for i in keep]
        self.skipped = len(paths) - len(keep)
        hmax = max(im.shape[0] for im in imgs)
        wmax = max(im.shape[1] for im in imgs)
        bank = np.zeros((len(imgs), 3, hmax, wmax), dtype=np.uint8)
        for i, im in enumerate(imgs):
            bank[i, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
        self.data = torch.from_numpy(bank).to(device)
        self.sizes = np.array([im.shape[:2] for im in imgs], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def crops(self, rng: np.random.Generator, batch: int, size: int) -> torch.Tensor:
        """`batch` random size x size crops with a random flip/transpose each, as float in [0, 1], one gather."""
        dev = self.data.device
        idx = rng.integers(0, len(self), size=batch)
        y0 = rng.integers(0, self.sizes[idx, 0] - size + 1)
        x0 = rng.integers(0, self.sizes[idx, 1] - size + 1)
        flip_y, flip_x, transpose = (rng.random((3, batch)) < 0.5)
        ar = np.arange(size)
        ys = y0[:, None] + np.where(flip_y[:, None], size - 1 - ar, ar)
        xs = x0[:, None] + np.where(flip_x[:, None], size - 1 - ar, ar)
        yy = torch.from_numpy(ys).to(dev)
        xx = torch.from_numpy(xs).to(dev)
        t = torch.from_numpy(transpose).to(dev).view(batch, 1, 1)
        rows = torch.where(t, yy[:, None, :], yy[:, :, None]).expand(batch, size, size)
        cols = torch.where(t, xx[:, :, None], xx[:, None, :]).expand(batch, size, size)
        n = torch.from_numpy(idx).to(dev).view(batch, 1, 1)
        out = self.data[n, :, rows, cols]  # (B, S, S, 3): advanced indices first
        return out.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


class BatchSource:
    """Seeded (lq, gt) batches: crop with margin -> degrade -> keep the centre. Optionally one batch ahead."""

    def __init__(self, bank: ImageBank, cfg: TrainConfig, seed: int, prefetch: bool) -> None:
        self.bank = bank
        self.cfg = cfg
        self.deg = degrade.get(cfg.degradation)
        if cfg.margin % cfg.scale or cfg.crop % cfg.scale:
            raise ValueError("crop and margin must be multiples of the scale")
        self.rng, self.gen = degrade.generators(seed, bank.data.device)
        self._queue: queue.Queue[tuple[torch.Tensor, torch.Tensor] | BaseException] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if prefetch:
            self._thread = threading.Thread(target=self._work, name="batches", daemon=True)
            self._thread.start()

    def make(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, m, s = self.cfg.crop, self.cfg.margin, self.cfg.scale
        with torch.no_grad():
            hr = self.bank.crops(self.rng, self.cfg.batch, c + 2 * m)
            lq = self.deg.batch(hr, self.rng, self.gen)
            gt = hr[..., m : m + c, m : m + c]
            lq = lq[..., m // s : (m + c) // s, m // s : (m + c) // s]
        return lq.contiguous(), gt.contiguous()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                item = self.make()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._queue.put(e)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            return self.make()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError("batch producer failed") from item
        return item

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def validation_set(paths: list[Path], cfg: TrainConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (lq, gt) crops of the held-out images: the four corners-ish + centre grid, degraded with a fixed seed."""
    size = cfg.val_crop - cfg.val_crop % 16
    gts = []
    for p in paths:
        im = _read_u8(p)
        h, w = im.shape[:2]
        s = min(size, h, w) // 16 * 16
        for fy, fx in ((0.25, 0.25), (0.75, 0.75)):
            y = int((h - s) * fy)
            x = int((w - s) * fx)
            gts.append(im[y : y + s, x : x + s])
    s = min(g.shape[0] for g in gts)
    gt = torch.from_numpy(np.stack([g[:s, :s] for g in gts])).permute(0, 3, 1, 2).float().div(255).to(device)
    rng, gen = degrade.generators(cfg.seed + 10_007, device)
    with torch.no_grad():
        lq = degrade.get(cfg.degradation).batch(gt, rng, gen)
    return lq, gt


# ---------------------------------------------------------------------------------------------------------------
# model helpers


def default_build(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    import archs

    return archs.build(arch, **kwargs)


@torch.no_grad()
def prepare_for_training(model: nn.Module) -> None:
    """Architecture-specific initialisation that keeps the architecture and its kwargs upstream's.

    SPAN multiplies its input by img_range (255) and never divides its output back, so at the default init its
    output is ~255x too large and short runs spend their first thousand steps shrinking it (on a CPU check: 19 dB
    vs 25 dB validation PSNR after 400 steps at x4). Scaling the final conv by 1 / img_range starts it at the right
    magnitude.
    """
    img_range = getattr(model, "img_range", None)
    upsampler = getattr(model, "upsampler", None)
    if img_range and isinstance(upsampler, nn.Sequential) and isinstance(upsampler[0], nn.Conv2d):
        conv = upsampler[0]
        conv.weight.mul_(1.0 / float(img_range))
        if conv.bias is not None:
            conv.bias.mul_(1.0 / float(img_range))


def image_output(out: Any) -> torch.Tensor:
    # UFPNet-style models may return [kernel, image]
    return out[-1] if isinstance(out, list | tuple) else out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay conv/linear weights only: norms, biases and NAFNet's beta/gamma scales stay undecayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if name.endswith("weight") and p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(it: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup, then cosine from lr to lr * min_lr_ratio at `total`."""
    if it < cfg.warmup:
        return cfg.lr * (0.01 + 0.99 * it / max(1, cfg.warmup))
    t = min(1.0, (it - cfg.warmup) / max(1, total - cfg.warmup))
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of float parameters; buffers are copied. Warm-up avoids the init bias."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._src = list(model.parameters())
        self._dst = list(self.model.parameters())

    start = 0  # iterations already averaged (a run continued from a checkpoint skips the warm-up)

    @torch.no_grad()
    def update(self, model: nn.Module, it: int) -> None:
        it += self.start
        d = min(self.decay, (1 + it) / (10 + it))
        torch._foreach_lerp_(self._dst, self._src, 1.0 - d)
        for b_dst, b_src in zip(self.model.buffers(), model.buffers(), strict=True):
            b_dst.copy_(b_src)


def spectrum_l1(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    fo = torch.fft.rfft2(out.float())
    fg = torch.fft.rfft2(gt.float())
    return (torch.view_as_real(fo) - torch.view_as_real(fg)).abs().mean()


def kernel_reblur_loss(model: nn.Module, lq: torch.Tensor, gt: torch.Tensor, gen: torch.Generator,
                       pixels: int = 256) -> torch.Tensor:
    """UFPDeblur's self-supervised kernel objective on `pixels` random pixels per sample.

    UFPNet runs its kernel estimator (code U-Net + flow prior) without gradients inside forward, because upstream
    trains it separately; here it is trained on the side: the 19x19 kernel predicted at a pixel, applied to the
    sharp image around it, must reproduce the blurry pixel (+ a small push of each kernel's sum towards 1).
    """
    k = int(model.kernel_size)  # type: ignore[arg-type]
    r = k // 2
    B, _, H, W = lq.shape
    dev = lq.device
    code, sigma = model.kernel_extra(lq)  # type: ignore[operator]
    ys = torch.randint(r, H - r, (B, pixels), generator=gen, device=dev)
    xs = torch.randint(r, W - r, (B, pixels), generator=gen, device=dev)
    flat = (ys * W + xs).view(B, pixels, 1, 1).expand(B, pixels, k, k)
    code = code.gather(1, flat).float()
    sigma = sigma.gather(1, flat).float()
    # the same code statistics as the arch's _estimate_kernel, in training mode
    code = (code - code.mean(dim=(2, 3), keepdim=True)) / code.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    code = code * torch.sqrt((1 - sigma.square()).clamp_min(0)) + torch.randn_like(code) * sigma
    kern = model.flow(code.reshape(B * pixels, k * k)).view(B, pixels, k, k)  # type: ignore[operator]
    off = torch.arange(-r, r + 1, device=dev)
    rows = (ys.view(B, pixels, 1, 1) + off.view(1, 1, k, 1)).expand(B, pixels, k, k)
    cols = (xs.view(B, pixels, 1, 1) + off.view(1, 1, 1, k)).expand(B, pixels, k, k)
    b = torch.arange(B, device=dev).view(B, 1, 1, 1)
    patches = gt[b, :, rows, cols].float()  # (B, P, k, k, C)
    reblur = (patches * kern.unsqueeze(-1)).sum(dim=(2, 3))
    target = lq[b.view(B, 1), :, ys, xs].float()  # (B, P, C)
    return (reblur - target).abs().mean() + 0.1 * (kern.sum(dim=(2, 3)) - 1).abs().mean()


# ---------------------------------------------------------------------------------------------------------------
# logging


class Logger:
    def __init__(self, out_dir: Path, name: str, stream: TextIO | None) -> None:
        self.name = name
        self.stream = stream
        self.jsonl = (out_dir / "log.jsonl").open("a")
        self.text = (out_dir / "log.txt").open("a")

    def event(self, kind: str, msg: str | None = None, **data: Any) -> None:
        rec = {"t": round(time.time(), 3), "run": self.name, "event": kind, **data}
        self.jsonl.write(json.dumps(rec, default=str) + "\n")
        self.jsonl.flush()
        if msg is not None:
            line = f"[{datetime.now().strftime('%H:%M:%S')}] {self.name}: {msg}"
            self.text.write(line + "\n")
            self.text.flush()
            if self.stream is not None:
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        self.jsonl.close()
        self.text.close()


# ---------------------------------------------------------------------------------------------------------------
# export


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


@torch.no_grad()
def export_fp16(model: nn.Module, path: Path, metadata: dict[str, str], probe_size: int = 64) -> str:
    """Save the model's state dict as float16 safetensors (non-float tensors unchanged); returns the sha256.

    The model is put in eval mode and run once first, so re-parameterised weights (SPAN's fused eval_conv) are
    current. Values beyond float16's range are an error rather than silent infinities.
    """
    model.eval()
    p = next(model.parameters())
    model(torch.rand(1, 3, probe_size, probe_size, device=p.device, dtype=p.dtype))
    sd: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        if v.is_floating_point():
            if v.abs().max().item() > 65504:
                raise ValueError(f"{k}: values beyond the float16 range")
            v = v.half()
        sd[k] = v.contiguous().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(sd, path, metadata)
    path.chmod(0o644)
    return sha256_file(path)


def _arch_kwargs(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    full = getattr(model, "arch_kwargs", None) or cfg.arch_kwargs
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in full.items()}


# ---------------------------------------------------------------------------------------------------------------
# training


class _Stop:
    """Set by SIGTERM/SIGINT so the loop ends cleanly and still exports."""

    def __init__(self) -> None:
        self.flag = False
        self.reason = ""

    def __call__(self, signum: int, frame: Any) -> None:
        self.flag = True
        self.reason = signal.Signals(signum).name


def train(config: TrainConfig, *, build_fn: BuildFn | None = None, command: str | None = None,
          stream: TextIO | None = sys.stdout) -> Path:
    """Train `config` and export the EMA (or raw) weights as float16 safetensors; returns the exported path."""
    cfg = config
    t_start = time.time()
    deadline = t_start + cfg.minutes * 60 - 15 if cfg.minutes else math.inf  # 15 s kept for the export
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_path = Path(cfg.export) if cfg.export else out_dir / f"{cfg.name}.safetensors"
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cv2.setNumThreads(1)  # the JPEG pool parallelises across images instead
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shapes
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log = Logger(out_dir, cfg.name, stream)
    stop = _Stop()
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, stop)
    source: BatchSource | None = None
    try:
        train_paths, val_paths = split_images(Path(cfg.train_dir), cfg.val_images)
        bank = ImageBank(train_paths, device, cfg.crop + 2 * cfg.margin)
        val_lq, val_gt = validation_set(val_paths, cfg, device) if val_paths else (None, None)
        model = (build_fn or default_build)(cfg.arch, dict(cfg.arch_kwargs))
        prepare_for_training(model)
        init = _read_checkpoint(Path(cfg.init)) if cfg.init else None
        if init is not None:
            model.load_state_dict(init["model"], strict=True)
        arch_model = model  # the architecture as exported; `model` may become its plain (fused) training form
        if cfg.plain:
            from archs.layers.reparam import to_plain

            model = to_plain(model)
        model = model.to(device)
        n_params = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
        log.event("start", f"{cfg.arch} {json.dumps(cfg.arch_kwargs)}: {n_params / 1e6:.3f} M params "
                  f"({n_params * 2 / 2**20:.2f} MiB fp16), {len(bank)} train images ({bank.skipped} too small), "
                  f"{len(val_paths)} held out, device {device}",
                  config=_config_dict(cfg), params=n_params, train_images=bank.names,
                  held_out=[p.name for p in val_paths], command=command)
        opt_kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": cfg.betas}
        if device.type == "cuda":
            opt_kwargs["fused"] = True
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), **opt_kwargs)
        clip_groups = _clip_groups(model)
        ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
        if ema is not None and init is not None:
            if init["ema"] and not cfg.plain:  # a plain run's average starts as its (initialised) copy
                ema.model.load_state_dict(init["ema"], strict=True)
            ema.start = cfg.warmup  # the average is already warm: no bias correction from zero
        if init is not None:
            log.event("init", f"continuing from {cfg.init} (iteration {init['iteration']})", init=cfg.init,
                      init_iteration=init["iteration"])
        use_amp = cfg.amp and device.type == "cuda"
        kernel_gen = torch.Generator(device=device)
        kernel_gen.manual_seed(cfg.seed + 1)
        source = BatchSource(bank, cfg, cfg.seed, cfg.prefetch)

        def autocast() -> contextlib.AbstractContextManager[Any]:
            return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

        def validate(it: int) -> dict[str, float]:
            if val_lq is None or val_gt is None:
                return {}
            net = ema.model if ema is not None else model
            net.eval()
            outs = []
            with torch.no_grad():  # float32: the number should reflect the weights, not bf16 rounding
                for i in range(val_lq.shape[0]):  # one at a time: UFPNet's kernel map is large
                    outs.append(image_output(net(val_lq[i : i + 1])).float().clamp(0, 1))
            model.train()
            out = torch.cat(outs)
            base = degrade.upscale_bicubic(val_lq, cfg.scale).clamp(0, 1) if cfg.scale > 1 else val_lq.clamp(0, 1)
            border = cfg.scale if cfg.scale > 1 else 0
            res = {"val_psnr": float(psnr_batch(out, val_gt, crop_border=border).mean()),
                   "val_psnr_input": float(psnr_batch(base, val_gt, crop_border=border).mean())}
            log.event("val", f"it {it}: val PSNR {res['val_psnr']:.2f} dB (input {res['val_psnr_input']:.2f})",
                      it=it, **res)
            return res

        total = cfg.iters
        t_val = time.time()
        val = validate(0)
        val_seconds = time.time() - t_val
        model.train()
        it = 0
        window_loss = torch.zeros((), device=device)
        window_n = 0
        t_window = time.time()
        calib = _Calibrator(cfg, t_start, deadline) if cfg.minutes else None
        last_grad = float("nan")
        bad_steps = 0
        while it < total:
            if stop.flag or time.time() >= deadline:
                log.event("stop", f"stopping at it {it}: {stop.reason or 'time budget'}", it=it,
                          reason=stop.reason or "minutes")
                break
            lr = lr_at(it, cfg, total)
            for g in opt.param_groups:
                g["lr"] = lr
            lq, gt = next(source)
            with autocast():
                out = image_output(model(lq)).float()
                loss = F.l1_loss(out, gt)
                if cfg.fft_weight:
                    loss = loss + cfg.fft_weight * spectrum_l1(out, gt)
                if cfg.kernel_weight and hasattr(model, "kernel_extra"):
                    n = cfg.kernel_samples
                    loss = loss + cfg.kernel_weight * kernel_reblur_loss(model, lq[:n], gt[:n], kernel_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # clipped per group: the kernel estimator's loss must not scale down the restoration net's step
            grad = sum(torch.nn.utils.clip_grad_norm_(g, cfg.grad_clip) for g in clip_groups)
            if not bool(torch.isfinite(torch.as_tensor(grad))):
                # one bad batch (e.g. a bf16 overflow) must not poison the weights and the EMA
                bad_steps += 1
                log.event("skip", f"non-finite gradient at it {it}: step skipped ({bad_steps} in a row)", it=it)
                if bad_steps >= 20:
                    raise FloatingPointError(f"non-finite gradients for {bad_steps} steps in a row at it {it}")
                continue
            bad_steps = 0
            opt.step()
            if ema is not None:
                ema.update(model, it)
            it += 1
            window_loss += loss.detach()
            window_n += 1

            if calib is not None:
                new_total = calib.update(it, total, val_seconds)
                if new_total is not None:
                    total = new_total
                    log.event("calibrate", f"{calib.rate:.2f} it/s -> schedule of {total} iterations", it=it,
                              it_per_s=calib.rate, schedule_iters=total)
            if it % cfg.log_every == 0 or it == total:
                loss_avg = float(window_loss) / max(1, window_n)
                last_grad = float(grad)
                if not math.isfinite(loss_avg):
                    raise FloatingPointError(f"loss is {loss_avg} at iteration {it}")
                dt = time.time() - t_window
                ips = window_n / max(dt, 1e-9)
                log.event("train", f"it {it}/{total} loss {loss_avg:.4f} lr {lr:.2e} grad {last_grad:.3f} "
                          f"{ips:.2f} it/s", it=it, loss=loss_avg, lr=lr, grad_norm=last_grad, it_per_s=ips,
                          elapsed=round(time.time() - t_start, 1))
                window_loss.zero_()
                window_n = 0
                t_window = time.time()
            if it % cfg.val_every == 0 and it < total:
                t_val = time.time()
                val = validate(it)
                val_seconds = time.time() - t_val
            if it % cfg.ckpt_every == 0 and it < total:
                _checkpoint(model, ema, out_dir / "checkpoint.safetensors", it)

        source.close()
        val = validate(it)
        _checkpoint(model, ema, out_dir / "checkpoint.safetensors", it)
        final = ema.model if ema is not None else model
        if cfg.plain:
            from archs.layers.reparam import from_plain

            final = from_plain(arch_model.to(device), final)
        meta = {
            "format": "restore-cli weights v1",
            "name": cfg.name,
            "arch": cfg.arch,
            "kwargs": json.dumps(_arch_kwargs(model, cfg)),
            "task": cfg.task,
            "scale": str(cfg.scale),
            "description": cfg.description,
            "weights_license": cfg.weights_license,
            "training_data": DATA_LICENSES,
            "held_out": json.dumps([p.name for p in val_paths]),
            "training_command": command or "train(config)",
            "training_config": json.dumps(_config_dict(cfg)),
            "degradation": cfg.degradation,
            "iterations": str(it),
            "schedule_iters": str(total),
            "seed": str(cfg.seed),
            "ema": str(cfg.ema),
            "val_psnr": f"{val.get('val_psnr', float('nan')):.3f}",
            "val_psnr_input": f"{val.get('val_psnr_input', float('nan')):.3f}",
            "torch": torch.__version__,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        final.float()
        sha = export_fp16(final, export_path, meta, probe_size=64)
        size = export_path.stat().st_size
        log.event("export", f"exported {export_path} ({size / 2**20:.2f} MiB, sha256 {sha}) after {it} iterations, "
                  f"{(time.time() - t_start) / 60:.1f} min", path=str(export_path), sha256=sha, bytes=size,
                  iterations=it, schedule_iters=total, params=n_params, **val)
        return export_path
    except BaseException as e:
        log.event("error", f"failed: {type(e).__name__}: {e}", error=repr(e))
        raise
    finally:
        if source is not None:
            source.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        log.close()


def _clip_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """UFPNet's kernel estimator (kernel_extra, flow) apart from the rest; one group for other models."""
    side = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("kernel_extra.", "flow."))]
    ids = {id(p) for p in side}
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [g for g in (main, side) if g]


class _Calibrator:
    """With a time budget: re-fit the schedule length to the measured speed at a few points of the budget.

    Concurrent runs share the GPU, so speed changes as others start and finish; re-fitting keeps the cosine
    ending near the deadline. Each decision is logged (and the final length stored in the export's metadata).
    """

    FRACTIONS = (0.08, 0.25, 0.5, 0.75, 0.9)

    def __init__(self, cfg: TrainConfig, t_start: float, deadline: float) -> None:
        self.cfg = cfg
        self.t_start = t_start
        self.deadline = deadline
        self.rate = 0.0
        self._next = 0
        self._mark: tuple[int, float] | None = None

    def update(self, it: int, total: int, val_seconds: float) -> int | None:
        now = time.time()
        if self._mark is None:
            if it >= 20:  # skip start-up (cudnn autotuning, first allocations)
                self._mark = (it, now)
            return None
        if self._next >= len(self.FRACTIONS):
            return None
        frac = (now - self.t_start) / max(1e-6, self.deadline - self.t_start)
        if frac < self.FRACTIONS[self._next] or it - self._mark[0] < 20:
            return None
        self._next += 1
        self.rate = (it - self._mark[0]) / max(1e-6, now - self._mark[1])
        self._mark = (it, now)
        remaining = max(0.0, self.deadline - now)
        # validations also take time: n = rate * (remaining - n / val_every * val_seconds)
        n_more = int(0.97 * self.rate * remaining / (1 + self.rate * val_seconds / max(1, self.cfg.val_every)))
        return max(it + 1, min(self.cfg.iters, it + n_more))


def _checkpoint(model: nn.Module, ema: EMA | None, path: Path, it: int) -> None:
    """Full-precision weights (model + EMA) for inspection or a manual restart; overwritten each time."""
    tensors = {f"model.{k}": v.detach().float().contiguous().cpu() if v.is_floating_point() else v.cpu()
               for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().float().contiguous().cpu() if v.is_floating_point() else v.cpu()
                        for k, v in ema.model.state_dict().items()})
    _atomic_save(tensors, path, {"iteration": str(it)})


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A `_checkpoint` file (or an exported weights file) as {"model": sd, "ema": sd or {}, "iteration": int}."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}}
    for k, v in tensors.items():
        head, _, key = k.partition(".")
        if head in parts:
            parts[head][key] = v
    if not parts["model"]:
        # an exported (EMA, float16) weights file: it starts both the model and the average
        parts = {"model": {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}}
        parts["ema"] = parts["model"]
    return {**parts, "iteration": int(meta.get("iteration", meta.get("iterations", "0")))}


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m restore_cli.training.train", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(configs.PRESETS))
    ap.add_argument("--out", required=True, help="run folder (logs, checkpoint, default export location)")
    ap.add_argument("--train-dir", default=None, help="folder of clean training images (default .devdata/train)")
    ap.add_argument("--export", default=None, help="float16 safetensors path (default <out>/<preset>.safetensors)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget; stops cleanly and exports")
    ap.add_argument("--iters", type=int, default=None, help="schedule length (iterations)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-prefetch", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any TrainConfig field (VALUE as JSON, else a string), e.g. --set val_crop=64")
    args = ap.parse_args(argv)
    changes: dict[str, Any] = {"out_dir": args.out}
    for key, val in (("train_dir", args.train_dir), ("export", args.export), ("minutes", args.minutes),
                     ("iters", args.iters), ("batch", args.batch), ("seed", args.seed), ("device", args.device),
                     ("threads", args.threads)):
        if val is not None:
            changes[key] = val
    if args.no_prefetch:
        changes["prefetch"] = False
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            ap.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    cfg = configs.get(args.preset).replace(**changes)
    command = "python -m restore_cli.training.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    train(cfg, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
