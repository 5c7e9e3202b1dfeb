"""Training configurations: `TrainConfig`, and `PRESETS`, the four models the package bundles.

Budgets: all four presets train concurrently on one H200 within 8 minutes each (about a quarter of the GPU and
4 CPU cores per run); `minutes` is a hard wall-clock stop, and `iters` the schedule length it is calibrated against.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DATA_LICENSES = (
    "CLIC 2025 validation+final-test photos (Unsplash License) and GB82 (CC0 1.0), from /work/shared/data/train; "
    "Kodak24 (validation) never used for training"
)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Data/output paths are part of it so `train(config)` needs nothing else."""

    name: str
    arch: str  # archs registry id
    arch_kwargs: dict[str, Any]
    task: str  # deblur / denoise / upscale
    degradation: str  # a degrade.TRAIN_DEGRADATIONS name
    scale: int = 1
    crop: int = 128  # high-resolution crop side; the input is crop // scale
    margin: int = 0  # degrade a crop this much larger on each side, then keep the centre: blur sees real context
    batch: int = 16
    iters: int = 10_000  # schedule length (cosine to the end); --minutes may stop earlier and shortens it
    minutes: float | None = None
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    warmup: int = 200
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    fft_weight: float = 0.0  # weight of an L1 term on the 2-D spectrum (helps sharpness for deblurring)
    kernel_weight: float = 0.0  # UFPNet only: self-supervised reblurring loss that trains its kernel estimator
    kernel_samples: int = 2  # ... computed on this many samples of each batch (the estimator is the costly part)
    ema: float = 0.999  # exponential moving average of the weights (0: off); the EMA is validated and exported
    val_images: int = 2  # training images held out (never trained on) for the periodic validation
    val_crop: int = 256
    val_every: int = 500
    log_every: int = 50
    ckpt_every: int = 2000
    seed: int = 0
    amp: bool = True  # bfloat16 autocast on CUDA (CPU runs stay float32)
    prefetch: bool = True  # build the next batch in a background thread
    threads: int | None = None  # torch CPU threads (None: leave torch's default)
    weights_license: str = "MIT"
    description: str = ""
    train_dir: str = ".devdata/train"
    out_dir: str = "runs/train"
    export: str | None = None  # fp16 file; default <out_dir>/<name>.safetensors
    init: str | None = None  # continue from an earlier run's checkpoint.safetensors (model and EMA weights)
    plain: bool = False  # train re-parameterisable modules in their fused form (cheap; exported as branches)
    device: str | None = None  # default: cuda if available
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TrainConfig] = {
    # Deblurring. UFPNet's kernel estimator (3-input U-Net at widths 64/128/256, 5.6 M params), flow prior (0.19 M)
    # and per-level 361-channel kernel_down convs (0.52 M each) do not depend on `width`: they alone are ~7.4 M
    # parameters (~14 MiB in float16), so no configuration reaches 8 MiB. Three levels (two kernel-attention ones)
    # is the smallest faithful layout: ~8.0 M params, ~15.3 MiB.
    "ufpnet-s": TrainConfig(
        name="ufpnet-s",
        arch="ufpnet",
        # estimator_width 24 (upstream hard-wires 64, 5.6 M params) keeps the model at 3.3 M params / 6.6 MB fp16.
        # The per-pixel kernel map, its flow prior and its 361-channel convolutions are most of UFPNet's cost
        # (docs/models.md); enc_blk_nums [1, 2, 2] (one kernel-attention level) with estimator_width 16 would run
        # in 0.8x the time on a CPU, for the next retraining.
        arch_kwargs={"width": 16, "enc_blk_nums": [1, 1, 2], "middle_blk_num": 2, "dec_blk_nums": [1, 1, 1],
                     "estimator_width": 24},
        task="deblur",
        degradation="train_deblur",
        crop=192,
        margin=32,
        batch=8,
        iters=30_000,
        lr=6e-4,
        betas=(0.9, 0.9),
        weight_decay=0.0,
        fft_weight=0.05,
        kernel_weight=0.1,
        description="UFPNet (kernel-prior deblurring), width 16, 3 levels, estimator 24; camera motion (averaged "
                    "frames), shake kernels, defocus, noise",
    ),
    # Denoising: NAFNet at width 16, 4 levels (~2.0 M params, ~3.8 MiB).
    "nafnet-s-denoise": TrainConfig(
        name="nafnet-s-denoise",
        arch="nafnet",
        arch_kwargs={"width": 16, "enc_blk_nums": [1, 1, 2, 4], "middle_blk_num": 2, "dec_blk_nums": [1, 1, 1, 1]},
        task="denoise",
        degradation="train_denoise",
        crop=192,
        batch=16,
        iters=40_000,
        lr=1e-3,
        betas=(0.9, 0.9),
        weight_decay=0.0,
        description="NAFNet width 16; Gaussian / Poisson-Gaussian noise sigma up to ~55/255, some JPEG",
    ),
    # Upscaling: SPAN at its published width 48 (~2.2 M params with the training-time branches, ~4.3 MiB);
    # the fused eval path is a plain 3x3-conv net and fast on CPUs.
    "span-s-x2": TrainConfig(
        name="span-s-x2",
        arch="span",
        arch_kwargs={"feature_channels": 48, "upscale": 2},
        task="upscale",
        degradation="train_sr_x2",
        scale=2,
        crop=128,
        margin=8,
        batch=32,
        iters=40_000,
        lr=5e-4,
        weight_decay=0.0,
        description="SPAN ch48 x2; 60% plain bicubic, 40% real-world degradations (blur, resize, noise, JPEG)",
    ),
    "span-s-x4": TrainConfig(
        name="span-s-x4",
        arch="span",
        arch_kwargs={"feature_channels": 48, "upscale": 4},
        task="upscale",
        degradation="train_sr_x4",
        scale=4,
        crop=192,
        margin=16,
        batch=32,
        iters=40_000,
        lr=5e-4,
        weight_decay=0.0,
        description="SPAN ch48 x4; 60% plain bicubic, 40% real-world degradations (blur, resize, noise, JPEG)",
    ),
    # Not bundled by default: a plain NAFNet deblurrer with ufpnet-s's data, ~2 M params / 3.8 MiB and ~50x faster on
    # a CPU than ufpnet-s, in case the kernel-prior model's size or speed is not acceptable.
    "nafnet-s-deblur": TrainConfig(
        name="nafnet-s-deblur",
        arch="nafnet",
        arch_kwargs={"width": 16, "enc_blk_nums": [1, 1, 2, 4], "middle_blk_num": 2, "dec_blk_nums": [1, 1, 1, 1]},
        task="deblur",
        degradation="train_deblur",
        crop=192,
        margin=32,  # camera paths travel up to 20 px from the middle frame: keep real context under the crop
        batch=16,
        iters=40_000,
        lr=1e-3,
        betas=(0.9, 0.9),
        weight_decay=0.0,
        fft_weight=0.05,
        description="NAFNet width 16 deblurring; camera motion (averaged frames), shake kernels, defocus, mild noise",
    ),
}


# what train_all trains by default: the four models the package ships
BUNDLED: tuple[str, ...] = ("nafnet-s-deblur", "ufpnet-s", "nafnet-s-denoise", "span-s-x2", "span-s-x4")


def get(name: str) -> TrainConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown training preset {name!r}; known: {', '.join(PRESETS)}") from None
