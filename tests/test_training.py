"""Degradations (determinism, kernels), the trainer (CPU smoke run + fp16 export) and evaluate()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from restore_cli import evaluate as ev
from restore_cli.training import configs, degrade
from restore_cli.training import train as tr


def _image(h: int = 64, w: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth image with some edges, float32 HxWx3 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.3 * np.sin(xx / 5 + rng.random()) * np.cos(yy / 7)
    img = np.stack([base, base[::-1], (xx + yy) / (h + w)], axis=2)
    img[h // 3 : h // 2, w // 4 : w // 2] = 0.9
    return np.clip(img, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------------- kernels


def test_motion_kernels_deterministic_normalised_centred() -> None:
    sizes = [9, 15, 21, 31]
    a = degrade.motion_kernels(np.random.default_rng(7), 4, sizes)
    b = degrade.motion_kernels(np.random.default_rng(7), 4, sizes)
    c = degrade.motion_kernels(np.random.default_rng(8), 4, sizes)
    for ka, kb, kc, k in zip(a, b, c, sizes, strict=True):
        assert ka.shape == (k, k) and ka.dtype == np.float32
        assert np.array_equal(ka, kb)
        assert not np.array_equal(ka, kc)
        assert ka.sum() == pytest.approx(1.0, abs=1e-5)
        assert (ka >= 0).all()
        yy, xx = np.mgrid[0:k, 0:k]
        # centred on its centroid, so blurring does not shift the image
        assert (ka * yy).sum() == pytest.approx((k - 1) / 2, abs=0.5)
        assert (ka * xx).sum() == pytest.approx((k - 1) / 2, abs=0.5)


def test_defocus_and_gaussian_kernels() -> None:
    d = degrade.defocus_kernel(3.5)
    assert d.shape == (9, 9) and d.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(d, d.T) and np.allclose(d, d[::-1])
    g = degrade.gaussian_kernel(1.0, 2.0, 0.3)
    assert g.sum() == pytest.approx(1.0, abs=1e-6)
    assert g.shape[0] % 2 == 1


def test_blur_is_a_convolution_preserving_constants() -> None:
    k = degrade.motion_kernels(np.random.default_rng(0), 1, 11)[0]
    delta = torch.zeros(1, 3, 33, 33)
    delta[..., 16, 16] = 1
    out = degrade.blur(delta, [k])
    assert torch.allclose(out[0, 0, 11:22, 11:22], torch.from_numpy(k), atol=1e-6)
    const = torch.full((2, 3, 20, 20), 0.3)
    assert torch.allclose(degrade.blur(const, [k, degrade.defocus_kernel(2)]), const, atol=1e-6)


# --------------------------------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("name", sorted(degrade.DEGRADATIONS))
def test_eval_degradations_deterministic(name: str) -> None:
    d = degrade.DEGRADATIONS[name]
    img = _image()
    a, b, c = d(img, 1), d(img, 1), d(img, 2)
    assert a.shape == (64 // d.scale, 48 // d.scale, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.array_equal(a, c) != d.random
    assert d.description


@pytest.mark.parametrize("name", sorted(degrade.TRAIN_DEGRADATIONS))
def test_train_degradations_batched(name: str) -> None:
    d = degrade.TRAIN_DEGRADATIONS[name]
    x = torch.from_numpy(np.stack([_image(seed=i) for i in range(3)])).permute(0, 3, 1, 2)
    y1 = d.batch(x, *degrade.generators(5))
    y2 = d.batch(x, *degrade.generators(5))
    y3 = d.batch(x, *degrade.generators(6))
    assert y1.shape == (3, 3, 64 // d.scale, 48 // d.scale)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert torch.isfinite(y1).all()


def test_camera_paths_middle_frame_is_the_identity() -> None:
    """The target of a GoPro-style pair is the middle frame: the path must pass through the identity there."""
    paths = degrade.camera_paths(np.random.default_rng(3), 6, (64, 96), degrade.TRAIN_SHAKE)
    for p in paths:
        assert p.frames % 2 == 1 and len(p.d) == 4 * p.frames
        # the two sub-samples around t = 0 straddle it symmetrically: their mean pose is the identity
        mid = len(p.d) // 2
        assert np.allclose((p.d[mid - 1] + p.d[mid]) / 2, 0, atol=0.05 * np.abs(p.d).max() + 1e-6)
        assert np.allclose((p.A[mid - 1] + p.A[mid]) / 2, np.eye(2), atol=1e-3)


def test_average_frames_still_camera_is_lossless_and_moving_camera_blurs() -> None:
    x = torch.from_numpy(_image(48, 64)).permute(2, 0, 1)[None]
    still = degrade.CameraPath(A=np.tile(np.eye(2), (8, 1, 1)), d=np.zeros((8, 2)), centre=np.array([31.5, 23.5]),
                               frames=1)
    assert torch.allclose(degrade.average_frames(x, [still]), x, atol=1e-4)
    # a pure horizontal 8 px sweep over f(x) + g(y): the x detail blurs, the y detail stays
    g = torch.Generator().manual_seed(1)
    x = (0.3 * torch.rand(1, 3, 1, 64, generator=g) + 0.3 * torch.rand(1, 3, 48, 1, generator=g) + 0.2)
    t = np.linspace(-0.5, 0.5, 33)
    sweep = degrade.CameraPath(A=np.tile(np.eye(2), (33, 1, 1)), d=np.stack([8 * t, 0 * t], 1),
                               centre=np.array([31.5, 23.5]), frames=33)
    y = degrade.average_frames(x, [sweep])
    gx = lambda z: (z[..., 1:] - z[..., :-1]).abs().mean()  # noqa: E731
    gy = lambda z: (z[..., 1:, :] - z[..., :-1, :]).abs().mean()  # noqa: E731
    assert gx(y) < 0.5 * gx(x) and gy(y) > 0.8 * gy(x)
    # energy in linear light is kept: a flat image stays flat
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(degrade.average_frames(flat, [sweep]), flat, atol=1e-4)


def test_deblur_camera_blur_varies_over_the_image() -> None:
    """Roll about the centre blurs the corners more than the centre (spatially varying, as real shake)."""
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    roll = np.deg2rad(6.0) * np.linspace(-0.5, 0.5, 24)
    A = np.stack([[[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]] for r in roll])
    path = degrade.CameraPath(A=A, d=np.zeros((24, 2)), centre=np.array([47.5, 47.5]), frames=24)
    err = (degrade.average_frames(x, [path]) - x).abs()[0].mean(0)
    assert float(err[:16, :16].mean()) > 2 * float(err[40:56, 40:56].mean())


def test_seed_for_is_stable() -> None:
    assert degrade.seed_for("kodim01.png", 0) == degrade.seed_for("kodim01.png", 0)
    assert degrade.seed_for("kodim01.png", 0) != degrade.seed_for("kodim02.png", 0)
    assert degrade.seed_for("kodim01.png", 0) != degrade.seed_for("kodim01.png", 1)


def test_image_bank_crops_are_dihedral_views() -> None:
    img = np.arange(20 * 20 * 3, dtype=np.int64).reshape(20, 20, 3) % 251
    bank = tr.ImageBank.__new__(tr.ImageBank)
    bank.data = torch.from_numpy(img.astype(np.uint8).transpose(2, 0, 1)[None].copy())
    bank.sizes = np.array([[20, 20]])
    bank.names = ["x"]
    crops = bank.crops(np.random.default_rng(0), 16, 20)
    views = []
    for t in (img, img.transpose(1, 0, 2)):
        for v in (t, t[::-1], t[:, ::-1], t[::-1, ::-1]):
            views.append(torch.from_numpy(v.transpose(2, 0, 1).astype(np.float32) / 255))
    for c in crops:
        assert any(torch.equal(c, v) for v in views)


# --------------------------------------------------------------------------------------------------- training


class _Tiny(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _write_images(folder: Path, n: int, h: int = 72, w: int = 64) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ev.write_png(folder / f"img{i}.png", _image(h, w, seed=i))


def test_train_smoke_exports_loadable_fp16(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", 4)
    cfg = configs.TrainConfig(
        name="tiny", arch="tiny", arch_kwargs={"width": 8}, task="denoise", degradation="train_denoise",
        crop=32, batch=2, iters=3, warmup=1, val_images=1, val_crop=48, val_every=2, log_every=1, seed=3,
        train_dir=str(tmp_path / "train"), out_dir=str(tmp_path / "run"), device="cpu", fft_weight=0.1,
    )
    path = tr.train(cfg, build_fn=lambda arch, kw: _Tiny(**kw), command="pytest", stream=None)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    assert all(t.dtype == torch.float16 for t in tensors.values())
    assert meta["arch"] == "tiny" and json.loads(meta["kwargs"]) == {"width": 8}
    assert meta["iterations"] == "3" and meta["seed"] == "3" and "CC0" in meta["training_data"]
    model = _Tiny(8)
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "export" and "val" in events
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()


def test_train_continues_from_an_export(tmp_path: Path) -> None:
    """`init` starts the model and its average from an earlier export (fp16) or checkpoint (fp32)."""
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    for i in range(3):
        ev.write_png(train_dir / f"im{i}.png", _image(80, 80, seed=i))
    base = configs.get("nafnet-s-denoise").replace(
        arch_kwargs={"width": 8, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]},
        train_dir=str(train_dir), batch=2, crop=32, iters=3, warmup=1, val_images=1, val_crop=32, val_every=100,
        log_every=1, prefetch=False, device="cpu")
    first = tr.train(base.replace(out_dir=str(tmp_path / "a")), stream=None)
    second = tr.train(base.replace(out_dir=str(tmp_path / "b"), init=str(first), iters=1), stream=None)
    events = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "init" for e in events)
    ckpt = tr._read_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    assert ckpt["iteration"] == 3 and ckpt["model"] and ckpt["ema"]
    exported = tr._read_checkpoint(first)
    assert exported["model"].keys() == ckpt["model"].keys()
    with safe_open(str(second), "pt") as f:
        assert f.metadata()["iterations"] == "1"


def test_lr_schedule_warmup_and_cosine() -> None:
    cfg = configs.TrainConfig(name="x", arch="x", arch_kwargs={}, task="denoise", degradation="train_denoise",
                              lr=1e-3, warmup=10, min_lr_ratio=0.01)
    assert tr.lr_at(0, cfg, 100) == pytest.approx(1e-5)
    assert tr.lr_at(10, cfg, 100) == pytest.approx(1e-3)
    assert tr.lr_at(100, cfg, 100) == pytest.approx(1e-5)
    assert tr.lr_at(55, cfg, 100) == pytest.approx(0.5 * (1e-3 + 1e-5))


def test_presets_are_consistent() -> None:
    for name, cfg in configs.PRESETS.items():
        assert cfg.name == name
        d = degrade.get(cfg.degradation)
        assert d.scale == cfg.scale and d.task == cfg.task
        assert cfg.crop % (16 * cfg.scale) == 0 and cfg.margin % cfg.scale == 0


def test_ufpnet_kernel_loss_trains_the_estimator() -> None:
    archs = pytest.importorskip("archs")
    model = archs.build("ufpnet", width=4, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]).train()
    # the estimator's 64-256-channel trunk is slow to differentiate on a CPU; its last convs and the flow suffice
    for name, p in model.kernel_extra.named_parameters():
        p.requires_grad_(name.startswith("Conv_tail"))
    gt = torch.from_numpy(_image(24, 24)).permute(2, 0, 1)[None]
    lq = degrade.blur(gt, [degrade.defocus_kernel(2)])
    gen = torch.Generator().manual_seed(0)
    loss = tr.kernel_reblur_loss(model, lq, gt, gen, pixels=8)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.kernel_extra.Conv_tail.mean[2].weight.grad is not None
    assert model.flow.net[0].s_net[0].weight.grad is not None
    groups = tr._clip_groups(model)
    assert len(groups) == 2


def test_span_starts_at_the_output_scale_with_upstream_kwargs() -> None:
    archs = pytest.importorskip("archs")
    torch.manual_seed(0)
    model = archs.build("span", feature_channels=8, upscale=2).train()
    x = torch.rand(1, 3, 16, 16)
    before = model(x).abs().mean()
    tr.prepare_for_training(model)
    after = model(x).abs().mean()
    assert before > 1 and after < 0.2  # input is multiplied by img_range=255 and never divided back
    assert model.arch_kwargs["img_range"] == 255.0


# --------------------------------------------------------------------------------------------------- evaluate


def test_evaluate_identity_and_json(tmp_path: Path) -> None:
    _write_images(tmp_path / "clean", 2, 48, 40)
    res = ev.evaluate(ev.identity(), tmp_path / "clean", "noise25", seed=0, json_path=tmp_path / "r.json")
    assert len(res.images) == 2 and res.space == "rgb" and res.crop_border == 0
    assert res.gain_psnr == pytest.approx(0.0, abs=1e-9)
    assert 18 < res.mean_input.psnr < 25  # sigma 25/255 -> ~20.2 dB before clipping
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["summary"]["images"] == 2 and data["degradation"] == "noise25"
    again = ev.evaluate(ev.identity(), tmp_path / "clean", "noise25", seed=0)
    assert again.to_dict()["images"][0]["input"] == data["images"][0]["input"]

    def smooth(img: np.ndarray) -> np.ndarray:
        return degrade.blur(torch.from_numpy(img).permute(2, 0, 1)[None], [degrade.gaussian_kernel(1.0)])[0] \
            .permute(1, 2, 0).numpy()

    better = ev.evaluate(smooth, tmp_path / "clean", "noise25", seed=0)
    assert better.gain_psnr > 1.0
    assert "PSNR" in better.summary()


def test_evaluate_sr_and_pairs(tmp_path: Path) -> None:
    _write_images(tmp_path / "clean", 2, 50, 44)  # cropped to multiples of 4
    res = ev.evaluate(ev.identity(4), tmp_path / "clean", "bicubic_x4", seed=1)
    assert res.scale == 4 and res.space == "y" and res.crop_border == 4
    assert res.images[0].height == 48 and res.images[0].width == 44
    assert res.gain_psnr == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        ev.evaluate(ev.identity(4), tmp_path / "clean", "bicubic_x4", scale=2)
    with pytest.raises(ValueError):
        ev.evaluate(ev.identity(), tmp_path / "clean", "bicubic_x4")  # wrong output size

    (tmp_path / "lq").mkdir()
    for p in sorted((tmp_path / "clean").iterdir()):
        ev.write_png(tmp_path / "lq" / p.name, degrade.DEGRADATIONS["noise50"](ev.read_rgb(p), 0))
    pairs = ev.evaluate_pairs(ev.identity(), tmp_path / "lq", tmp_path / "clean", json_path=tmp_path / "p.json")
    assert pairs.mode == "pairs" and len(pairs.images) == 2
    assert pairs.mean_input.psnr < 20
