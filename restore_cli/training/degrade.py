"""Seeded, deterministic degradation pipelines shared by training (batched, on the GPU) and evaluation (one image).

Every pipeline is `fn(x, rng, gen) -> y`: `x` is a float32 batch (B, 3, H, W) in [0, 1] on any device, `rng` a
`numpy.random.Generator` that draws the per-sample parameters (kernels, sigmas, qualities) on the CPU, and `gen` a
`torch.Generator` on x's device that draws the noise. Same seeds in, same batch out (on the same device).

`DEGRADATIONS` holds the named evaluation degradations, `TRAIN_DEGRADATIONS` the (wider, randomised) training mixes.
Both map a name to a `Degradation`, which is also callable on one HxWx3 float32 image with an integer seed.

Blur kernels are made procedurally: camera-shake trajectories after Boracchi & Foi ("Modeling the performance of
image restoration from motion blur", IEEE TIP 2012; random walk with inertia, centripetal pull and abrupt shakes),
rasterised with bilinear splatting, and anti-aliased defocus disks. Camera motion as in GoPro-style datasets
(Nah et al., CVPR 2017: sharp video frames averaged into one blurry frame, the middle frame as ground truth) is
rendered by warping the sharp image along a random hand-held camera path (`camera_paths`, `average_frames`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
PipelineFn = Callable[[Tensor, np.random.Generator, torch.Generator], Tensor]

RESIZE_MODES = ("bicubic", "bilinear", "area")

# ---------------------------------------------------------------------------------------------------------------
# seeds


def seed_for(name: str, seed: int) -> int:
    """A stable 63-bit seed from a base seed and a name (file name): Python's hash() is salted per process."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generators(seed: int, device: torch.device | str = "cpu") -> tuple[np.random.Generator, torch.Generator]:
    """The (numpy, torch) generator pair a pipeline takes, both derived from one seed."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(rng.integers(0, 2**62)))
    return rng, gen


# ---------------------------------------------------------------------------------------------------------------
# kernels (numpy, float32, each sums to 1)


def _odd(k: int) -> int:
    return k if k % 2 else k + 1


def motion_kernels(
    rng: np.random.Generator, n: int, sizes: int | Sequence[int] | np.ndarray, *, steps: int = 512
) -> list[np.ndarray]:
    """`n` camera-shake kernels; `sizes` (one int or one per kernel, odd) is each kernel's side in pixels.

    The trajectory is the Boracchi & Foi random walk (constant speed, Gaussian jitter, centripetal pull towards the
    start, rare abrupt reversals), vectorised over the batch, with its parameters drawn per kernel as in their
    generator, and recorded over a random exposure fraction. It is centred on its centroid (so blurring does not
    shift the image) and scaled to span the kernel: small `expl` gives near-straight lines, large curly shakes.
    """
    sizes_arr = np.broadcast_to(np.asarray(sizes, dtype=np.int64), (n,))
    expl = 0.1 * rng.random(n)
    centripetal = 0.7 * rng.random(n)
    big_shake = 0.2 * rng.random(n)
    gaussian_shake = 10.0 * rng.random(n)
    angle = 2 * np.pi * rng.random(n)
    jitter = rng.standard_normal((steps - 1, n, 2))
    shake_u = rng.random((steps - 1, n))
    shake_angle = rng.random((steps - 1, n)) - 0.5

    # their units (total length 60 px) keep the balance between jitter and centripetal pull; rescaled afterwards
    step = 60.0 / (steps - 1)
    v = np.exp(1j * angle) * np.where(expl > 0, expl, step)
    x = np.zeros((steps, n), dtype=np.complex128)
    for t in range(steps - 1):
        shake = shake_u[t] < big_shake * expl
        nxt = np.where(shake, 2 * v * np.exp(1j * (np.pi + shake_angle[t])), 0)
        dv = nxt + expl * (gaussian_shake * (jitter[t, :, 0] + 1j * jitter[t, :, 1]) - centripetal * x[t]) * step
        v = v + dv
        v = v / np.maximum(np.abs(v), 1e-12) * step
        x[t + 1] = x[t] + v

    # exposure: only the first part of the walk is recorded (B&F render PSFs at several exposure fractions);
    # whole walks curl into loops, short exposures give the smooth curves real shake mostly shows
    exposure = rng.uniform(0.1, 0.7, size=n)
    out: list[np.ndarray] = []
    for i in range(n):
        k = _odd(int(sizes_arr[i]))
        pts = x[: max(8, int(exposure[i] * steps)), i]
        pts = pts - pts.mean()
        extent = max(np.abs(pts.real).max(), np.abs(pts.imag).max(), 1e-9)
        # leave one pixel for the bilinear footprint
        pts = pts * (((k - 1) / 2 - 1) / extent) + (k - 1) / 2 * (1 + 1j)
        out.append(_splat(pts.real, pts.imag, k))
    return out


def _splat(px: np.ndarray, py: np.ndarray, k: int) -> np.ndarray:
    """Rasterise points onto a k x k grid with bilinear weights, normalised to sum 1."""
    kern = np.zeros((k, k), dtype=np.float64)
    x0 = np.floor(px).astype(np.int64)
    y0 = np.floor(py).astype(np.int64)
    fx = px - x0
    fy = py - y0
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        yy = np.clip(y0 + dy, 0, k - 1)
        xx = np.clip(x0 + dx, 0, k - 1)
        np.add.at(kern, (yy, xx), w)
    return (kern / kern.sum()).astype(np.float32)


@lru_cache(maxsize=256)
def _disk(radius_q: int) -> np.ndarray:
    radius = radius_q / 100.0
    k = 2 * int(np.ceil(radius)) + 1
    ss = 8  # supersampling: pixel coverage of the disk, so small radii stay smooth
    c = (np.arange(k * ss) + 0.5) / ss - k / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inside = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    kern = inside.reshape(k, ss, k, ss).mean(axis=(1, 3))
    return (kern / kern.sum()).astype(np.float32)


def defocus_kernel(radius: float) -> np.ndarray:
    """An anti-aliased disk (out-of-focus blur) of the given radius in pixels; side 2*ceil(r)+1."""
    return _disk(round(float(radius) * 100)).copy()


def gaussian_kernel(
    sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, size: int | None = None
) -> np.ndarray:
    """A (possibly anisotropic, rotated by `theta` radians) Gaussian kernel; side defaults to 2*ceil(3*sigma)+1."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if size is None:
        size = min(2 * int(np.ceil(3 * max(sigma_x, sigma_y))) + 1, 31)
    r = (size - 1) / 2
    yy, xx = np.meshgrid(np.arange(size) - r, np.arange(size) - r, indexing="ij")
    c, s = np.cos(theta), np.sin(theta)
    u = c * xx + s * yy
    w = -s * xx + c * yy
    kern = np.exp(-0.5 * ((u / sigma_x) ** 2 + (w / sigma_y) ** 2))
    return (kern / kern.sum()).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# camera motion rendered as averaged video frames (the GoPro protocol)


@dataclass(frozen=True)
class CameraShake:
    """Ranges of a hand-held camera's motion during one exposure, drawn per image by `camera_paths`.

    `extent`: length in pixels of the straight part of the path (the image centre's travel over the exposure);
    `curve`: bend of the path as a fraction of that length (acceleration); `jitter`: fast tremor, also a fraction;
    `roll`: in-plane rotation over the exposure in degrees (spatially varying blur, stronger at the corners);
    `zoom`: relative scale change over the exposure (walking forwards or backwards); `frames`: odd counts of
    averaged frames (GoPro: 7-13 frames of a 240 fps video); `centre`: where the rotation/zoom centre may lie, as a
    fraction of the image size around its middle (0: the image centre, as for a whole photo; crops use > 0).
    """

    extent: tuple[float, float] = (10.0, 34.0)
    curve: tuple[float, float] = (0.0, 0.8)
    jitter: tuple[float, float] = (0.0, 0.12)
    roll: tuple[float, float] = (0.0, 1.2)
    zoom: tuple[float, float] = (0.0, 0.015)
    frames: tuple[int, int] = (7, 13)
    centre: float = 0.0


@dataclass(frozen=True)
class CameraPath:
    """Affine poses of one exposure: for each sub-frame m, source = c + A[m] @ (p - c) + d[m] (pixels)."""

    A: np.ndarray  # (M, 2, 2)
    d: np.ndarray  # (M, 2) as (x, y)
    centre: np.ndarray  # (2,) as (x, y), pixels
    frames: int


def camera_paths(rng: np.random.Generator, n: int, size: tuple[int, int], shake: CameraShake) -> list[CameraPath]:
    """`n` random exposures for images of `size` (H, W). The middle frame is the identity pose: it is the target.

    Each of the `frames` video frames integrates its own short exposure (half the frame interval, 4 sub-samples),
    so fast motion shows the faint ghosting of averaged frames, slow motion a smooth streak. The translation is a
    quadratic curve plus a two-tone tremor; roll and zoom are linear in time.
    """
    H, W = size
    out: list[CameraPath] = []
    for _ in range(n):
        lo, hi = shake.frames
        frames = int(rng.integers(lo // 2, hi // 2 + 1)) * 2 + 1
        sub = 4
        # frame f's sub-samples cover [t_f - 1/(4N), t_f + 1/(4N)]; t spans [-0.5, 0.5] over the whole exposure
        tf = np.linspace(-0.5, 0.5, frames) if frames > 1 else np.zeros(1)
        offs = (np.arange(sub) + 0.5) / sub - 0.5
        t = (tf[:, None] + offs[None, :] * (0.5 / frames)).reshape(-1)
        length = rng.uniform(*shake.extent)
        ang = rng.uniform(0, 2 * np.pi)
        v = length * np.array([np.cos(ang), np.sin(ang)])
        bend_ang = ang + rng.choice([-1.0, 1.0]) * np.pi / 2 + rng.normal(0, 0.4)
        a = rng.uniform(*shake.curve) * length * 2 * np.array([np.cos(bend_ang), np.sin(bend_ang)])
        d = t[:, None] * v[None] + (t**2)[:, None] * a[None]
        amp = rng.uniform(*shake.jitter) * length
        for _tone in range(2):
            freq = rng.uniform(1.5, 4.0)
            phase = rng.uniform(0, 2 * np.pi, size=2)
            wave = np.sin(2 * np.pi * freq * t[:, None] + phase[None]) - np.sin(phase)[None]
            d = d + 0.5 * amp * wave
        roll = np.deg2rad(rng.uniform(*shake.roll)) * rng.choice([-1.0, 1.0])
        zoom = rng.uniform(*shake.zoom) * rng.choice([-1.0, 1.0])
        th = roll * t
        sc = 1.0 + zoom * t
        A = np.stack([np.stack([np.cos(th), -np.sin(th)], -1), np.stack([np.sin(th), np.cos(th)], -1)], -2)
        A = A * sc[:, None, None]
        c = np.array([(W - 1) / 2, (H - 1) / 2]) + rng.uniform(-1, 1, size=2) * shake.centre * np.array([W, H])
        out.append(CameraPath(A=A, d=d, centre=c, frames=frames))
    return out


def average_frames(x: Tensor, paths: Sequence[CameraPath], gamma: float = 2.2) -> Tensor:
    """Render each image's exposure: warp it to every sub-frame pose, average in linear light, back to gamma.

    Frames are bicubic-resampled (reflection at the borders) and averaged after undoing a 2.2 gamma, as GoPro's
    authors averaged frames through an approximate inverse camera response. Samples with fewer sub-frames than the
    batch maximum get zero weight for the missing ones, so each averages exactly its own exposure.
    """
    B, _, H, W = x.shape
    dev = x.device
    lin = x.clamp(0, 1).pow(gamma)
    ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32),
                            torch.arange(W, device=dev, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs, ys], -1).view(1, H, W, 2)
    counts = np.array([len(p.d) for p in paths])
    m_max = int(counts.max())
    acc = torch.zeros_like(lin)
    scale = torch.tensor([2.0 / W, 2.0 / H], device=dev)
    c = np.stack([p.centre for p in paths])
    for m in range(m_max):
        A = np.stack([p.A[min(m, len(p.d) - 1)] for p in paths])
        d = np.stack([p.d[min(m, len(p.d) - 1)] for p in paths])
        w = torch.as_tensor(m < counts, dtype=lin.dtype, device=dev).view(B, 1, 1, 1)
        At = torch.as_tensor(A, dtype=torch.float32, device=dev).view(B, 1, 1, 2, 2)
        ct = torch.as_tensor(c, dtype=torch.float32, device=dev).view(B, 1, 1, 2)
        dt = torch.as_tensor(d, dtype=torch.float32, device=dev).view(B, 1, 1, 2)
        src = ct + (At @ (pix - ct).unsqueeze(-1)).squeeze(-1) + dt
        grid = (src + 0.5) * scale - 1  # pixel centres -> [-1, 1] (align_corners=False)
        warped = F.grid_sample(lin, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        acc += warped.clamp_min(0) * w
    n = torch.as_tensor(counts, dtype=lin.dtype, device=dev).view(B, 1, 1, 1)
    return (acc / n).pow(1.0 / gamma)


# ---------------------------------------------------------------------------------------------------------------
# batched torch ops


def blur(x: Tensor, kernels: Sequence[np.ndarray] | Tensor) -> Tensor:
    """Convolve each image of the batch with its own kernel (grouped conv2d, reflect padding).

    Kernels of different sizes are zero-padded (centred) to the largest, which keeps their sums.
    """
    B, C, H, W = x.shape
    if not isinstance(kernels, Tensor):
        k = max(kern.shape[0] for kern in kernels)
        stack = np.zeros((B, k, k), dtype=np.float32)
        for i, kern in enumerate(kernels):
            o = (k - kern.shape[0]) // 2
            stack[i, o : o + kern.shape[0], o : o + kern.shape[1]] = kern
        kernels = torch.from_numpy(stack)
    kt = kernels.to(device=x.device, dtype=x.dtype)
    k = kt.shape[-1]
    # conv2d is a correlation: flip so that a trajectory kernel blurs along the trajectory, not its mirror
    weight = kt.flip(-1, -2).repeat_interleave(C, dim=0).unsqueeze(1)
    p = k // 2
    mode = "reflect" if p < min(H, W) else "replicate"
    xp = F.pad(x.reshape(1, B * C, H, W), (p, p, p, p), mode=mode)
    return F.conv2d(xp, weight, groups=B * C).reshape(B, C, H, W)


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize with antialiasing when shrinking (bicubic/bilinear match PIL; `area` is box averaging)."""
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=down)


def downscale(x: Tensor, scale: int, modes: Sequence[str] | str = "bicubic") -> Tensor:
    """Shrink by an integer factor, with a resize mode per sample (one call per distinct mode)."""
    B, _, H, W = x.shape
    size = (H // scale, W // scale)
    if isinstance(modes, str):
        return resize(x, size, modes)
    out = x.new_empty((B, x.shape[1], *size))
    for mode in sorted(set(modes)):
        idx = torch.tensor([i for i, m in enumerate(modes) if m == mode], device=x.device)
        out[idx] = resize(x[idx], size, mode)
    return out


def upscale_bicubic(x: Tensor, scale: int) -> Tensor:
    """The SR baseline: plain bicubic upscaling (no antialiasing needed when enlarging)."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def _per_sample(v: np.ndarray | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(np.asarray(v, dtype=np.float32), device=x.device)
    return t.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)


def gaussian_noise(
    x: Tensor, sigma: np.ndarray | float, gen: torch.Generator, gray: np.ndarray | bool = False
) -> Tensor:
    """Add white Gaussian noise, std `sigma` (on the [0, 1] scale) per sample; gray samples share it over channels."""
    B, C, H, W = x.shape
    color = torch.randn((B, C, H, W), generator=gen, device=x.device, dtype=x.dtype)
    mono = torch.randn((B, 1, H, W), generator=gen, device=x.device, dtype=x.dtype)
    g = _per_sample(np.asarray(gray, dtype=np.float32), x) > 0.5
    return x + torch.where(g, mono.expand_as(color), color) * _per_sample(sigma, x)


def poisson_noise(x: Tensor, peak: np.ndarray | float, gen: torch.Generator, gray: np.ndarray | bool = False) -> Tensor:
    """Shot noise: photon counts ~ Poisson(x * peak) / peak, `peak` = photons at white, per sample.

    Gray samples draw the noise on the luma and add it to all channels (sensor noise before demosaicking looks
    closer to this than to independent channels).
    """
    p = _per_sample(peak, x)
    xc = x.clamp(0, 1)
    color = torch.poisson(xc * p, generator=gen) / p - xc
    luma = (0.299 * xc[:, :1] + 0.587 * xc[:, 1:2] + 0.114 * xc[:, 2:]).contiguous()
    mono = torch.poisson(luma * p, generator=gen) / p - luma
    g = _per_sample(np.asarray(gray, dtype=np.float32), x) > 0.5
    return x + torch.where(g, mono.expand_as(color), color)


_JPEG_POOL: ThreadPoolExecutor | None = None


def _jpeg_one(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def jpeg(x: Tensor, quality: np.ndarray | Sequence[int] | int, *, threads: int = 4) -> Tensor:
    """Round-trip through 8-bit JPEG (OpenCV, 4:2:0) on the CPU, quality per sample; cv2 drops the GIL, so threads help.

    Samples with quality >= 101 pass through (quantised to 8 bits like the others).
    """
    global _JPEG_POOL
    B = x.shape[0]
    q = np.broadcast_to(np.asarray(quality, dtype=np.int64), (B,))
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    todo = [i for i in range(B) if q[i] <= 100]
    if threads > 1 and len(todo) > 1:
        if _JPEG_POOL is None:
            _JPEG_POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jpeg")
        results = list(_JPEG_POOL.map(lambda i: _jpeg_one(u8[i], int(q[i])), todo))
    else:
        results = [_jpeg_one(u8[i], int(q[i])) for i in todo]
    for i, r in zip(todo, results, strict=True):
        u8[i] = r
    out = torch.from_numpy(u8).to(x.device).permute(0, 3, 1, 2)
    return out.to(x.dtype) / 255.0


def quantize(x: Tensor) -> Tensor:
    """Clip to [0, 1] and round to 8-bit levels, as a saved PNG would be."""
    return (x.clamp(0, 1) * 255).round() / 255


# ---------------------------------------------------------------------------------------------------------------
# pipelines


def _odd_sizes(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    return rng.integers(lo // 2, hi // 2 + 1, size=n) * 2 + 1


def _random_blur_kernels(rng: np.random.Generator, n: int, p_motion: float, size: tuple[int, int],
                         radius: tuple[float, float]) -> list[np.ndarray]:
    use_motion = rng.random(n) < p_motion
    sizes = _odd_sizes(rng, n, *size)
    radii = rng.uniform(*radius, size=n)
    motion = motion_kernels(rng, n, sizes)
    return [motion[i] if use_motion[i] else defocus_kernel(radii[i]) for i in range(n)]


def _sr_blur_kernels(rng: np.random.Generator, n: int, sigma: tuple[float, float]) -> list[np.ndarray]:
    """Real-ESRGAN-style first-order blur: isotropic (p=0.5) or anisotropic rotated Gaussians."""
    iso = rng.random(n) < 0.5
    sx = rng.uniform(*sigma, size=n)
    sy = np.where(iso, sx, rng.uniform(*sigma, size=n))
    theta = rng.uniform(0, np.pi, size=n)
    return [gaussian_kernel(float(sx[i]), float(sy[i]), float(theta[i])) for i in range(n)]


# training crops see rotation/zoom centres anywhere near them (a crop of a photo is off its centre), and a wider
# range of motion than the evaluation
TRAIN_SHAKE = CameraShake(extent=(3.0, 40.0), curve=(0.0, 1.0), jitter=(0.0, 0.2), roll=(0.0, 2.5), zoom=(0.0, 0.03),
                          frames=(5, 15), centre=1.5)


def train_deblur(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Deblur training mix: averaged frames along a camera path (55%, spatially varying), uniform camera-shake
    kernels (20%, 7-31 px), defocus disks (20%, r 1-6 px); 5% left sharp; noise 0-3/255, 8-bit.
    """
    B = x.shape[0]
    kind = rng.choice(3, size=B, p=[0.55, 0.2, 0.25])
    kernels = _random_blur_kernels(rng, B, 0.0, (7, 31), (1.0, 6.0))
    shake = motion_kernels(rng, B, _odd_sizes(rng, B, 7, 31))
    sharp = rng.random(B) < 0.2  # of the defocus share: 5% overall
    kernels = [shake[i] if kind[i] == 1 else np.ones((1, 1), np.float32) if sharp[i] else kernels[i]
               for i in range(B)]
    y = blur(x, kernels)
    frames = np.flatnonzero(kind == 0)
    if len(frames):
        idx = torch.as_tensor(frames, device=x.device)
        y[idx] = average_frames(x[idx], camera_paths(rng, len(frames), (x.shape[-2], x.shape[-1]), TRAIN_SHAKE))
    y = gaussian_noise(y, rng.uniform(0, 3, size=B) / 255, gen)
    return quantize(y)


def train_denoise(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Denoise training mix: AWGN sigma 2-55/255 (65%) or Poisson-Gaussian (35%), 20% gray noise; JPEG q 60-95 on
    25%; 30% of the samples are left unclipped and unquantised, like the literature's AWGN protocol (`noise25_raw`).
    """
    B = x.shape[0]
    awgn = rng.random(B) < 0.65
    sigma = np.where(awgn, rng.uniform(2, 55, size=B), rng.uniform(0, 8, size=B)) / 255
    peak = np.where(awgn, 1e9, 10 ** rng.uniform(1.3, 3.0, size=B))  # ~20..1000 photons at white
    gray = rng.random(B) < 0.2
    y = poisson_noise(x, peak, gen, gray)
    y = gaussian_noise(y, sigma, gen, gray)
    quality = np.where(rng.random(B) < 0.25, rng.integers(60, 96, size=B), 101)
    raw = torch.as_tensor(rng.random(B) < 0.3, device=x.device).view(B, 1, 1, 1)
    yj = jpeg(y, quality) if (quality <= 100).any() else quantize(y)
    return torch.where(raw & torch.as_tensor(quality > 100, device=x.device).view(B, 1, 1, 1), y, yj)


def _train_sr_real(x: Tensor, rng: np.random.Generator, gen: torch.Generator, scale: int,
                   p_clean: float = 0.2) -> Tensor:
    """One-stage "real-world" SR mix: a share of plain bicubic (20% here); else Gaussian blur, random resize
    kernel, Gaussian or Poisson noise, JPEG q 40-95 (80%).
    """
    B = x.shape[0]
    clean = rng.random(B) < p_clean
    sig_hi = 1.6 if scale == 2 else 2.6
    kernels = _sr_blur_kernels(rng, B, (0.2, sig_hi))
    kernels = [np.ones((1, 1), np.float32) if clean[i] else kernels[i] for i in range(B)]
    modes = [("bicubic" if clean[i] else RESIZE_MODES[int(rng.integers(0, 3))]) for i in range(B)]
    y = downscale(blur(x, kernels), scale, modes)
    use_poisson = rng.random(B) < 0.4
    sigma = np.where(clean | use_poisson, 0.0, rng.uniform(1, 20, size=B)) / 255
    peak = np.where(~clean & use_poisson, 10 ** rng.uniform(1.5, 3.0, size=B), 1e9)
    gray = rng.random(B) < 0.4
    y = gaussian_noise(poisson_noise(y, peak, gen, gray), sigma, gen, gray)
    quality = np.where(~clean & (rng.random(B) < 0.8), rng.integers(40, 96, size=B), 101)
    return jpeg(y, quality)


def train_sr_real_x2(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    return _train_sr_real(x, rng, gen, 2)


def train_sr_real_x4(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    return _train_sr_real(x, rng, gen, 4)


train_sr_real_x2.__doc__ = train_sr_real_x4.__doc__ = _train_sr_real.__doc__


def train_sr_x2(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Bicubic-first x2 mix: 60% plain bicubic (sharpest detail), 40% the real-world degradations (blur, resize
    kernel, noise, JPEG), so the model still cleans up camera and web images."""
    return _train_sr_real(x, rng, gen, 2, p_clean=0.6)


def train_sr_x4(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Bicubic-first x4 mix: 60% plain bicubic (sharpest detail), 40% the real-world degradations (blur, resize
    kernel, noise, JPEG), so the model still cleans up camera and web images."""
    return _train_sr_real(x, rng, gen, 4, p_clean=0.6)


# evaluation degradations: fixed strength, per-image randomness only where the task needs it (kernels)


def deblur_motion(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Camera-shake blur: one random trajectory kernel per image (side 11-31 px), AWGN 1/255, 8-bit PNG."""
    B = x.shape[0]
    y = blur(x, motion_kernels(rng, B, _odd_sizes(rng, B, 11, 31)))
    return quantize(gaussian_noise(y, 1 / 255, gen))


EVAL_SHAKE = CameraShake(extent=(6.0, 24.0))


def deblur_camera(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Camera motion by the GoPro protocol: 7-13 frames along a random hand-held path (travel 6-24 px, bend, tremor,
    roll up to 1.2 deg about the image centre, zoom up to 1.5%) averaged in linear light; the middle frame is the
    target. AWGN 1/255, 8-bit PNG."""
    B = x.shape[0]
    y = average_frames(x, camera_paths(rng, B, (x.shape[-2], x.shape[-1]), EVAL_SHAKE))
    return quantize(gaussian_noise(y, 1 / 255, gen))


def deblur_defocus(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Out-of-focus blur: disk of radius 2-5 px per image, AWGN 1/255, 8-bit PNG."""
    B = x.shape[0]
    y = blur(x, [defocus_kernel(r) for r in rng.uniform(2, 5, size=B)])
    return quantize(gaussian_noise(y, 1 / 255, gen))


def noise25(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """AWGN sigma 25/255 (color), then clipped and rounded to 8 bits as a saved PNG would be."""
    return quantize(gaussian_noise(x, 25 / 255, gen))


def noise25_raw(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """AWGN sigma 25/255, unclipped float: the protocol of the denoising literature (e.g. Kodak24 sigma=25 tables)."""
    return gaussian_noise(x, 25 / 255, gen)


def noise50(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """AWGN sigma 50/255, clipped and rounded to 8 bits."""
    return quantize(gaussian_noise(x, 50 / 255, gen))


def noise_real(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Poisson-Gaussian camera-like noise (peak 100 photons, read noise 4/255), then JPEG quality 90."""
    return jpeg(gaussian_noise(poisson_noise(x, 100.0, gen), 4 / 255, gen), 90)


def bicubic_x2(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Bicubic x2 downscaling with antialiasing (PIL/MATLAB-like kernel, a=-0.5), 8-bit PNG."""
    return quantize(downscale(x, 2, "bicubic"))


def bicubic_x4(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """Bicubic x4 downscaling with antialiasing (PIL/MATLAB-like kernel, a=-0.5), 8-bit PNG."""
    return quantize(downscale(x, 4, "bicubic"))


def _sr_real_eval(x: Tensor, rng: np.random.Generator, gen: torch.Generator, scale: int) -> Tensor:
    B = x.shape[0]
    sig = rng.uniform(0.6, 1.2 if scale == 2 else 2.0, size=B)
    y = blur(x, [gaussian_kernel(float(s)) for s in sig])
    y = downscale(y, scale, [RESIZE_MODES[int(i)] for i in rng.integers(0, 3, size=B)])
    y = gaussian_noise(y, rng.uniform(2, 8, size=B) / 255, gen)
    return jpeg(y, rng.integers(60, 86, size=B))


def sr_real_x2(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """"Real-world" x2: Gaussian blur sigma 0.6-1.2, random bicubic/bilinear/area x2 shrink, AWGN 2-8/255,
    JPEG q 60-85 (parameters drawn per image)."""
    return _sr_real_eval(x, rng, gen, 2)


def sr_real_x4(x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
    """"Real-world" x4: Gaussian blur sigma 0.6-2.0, random bicubic/bilinear/area x4 shrink, AWGN 2-8/255,
    JPEG q 60-85 (parameters drawn per image)."""
    return _sr_real_eval(x, rng, gen, 4)


@dataclass(frozen=True)
class Degradation:
    """A named pipeline with what evaluation needs to know: task, scale, and a description."""

    name: str
    fn: PipelineFn
    task: str
    scale: int = 1
    random: bool = True  # False: the seed does not matter (plain bicubic downscaling)

    @property
    def description(self) -> str:
        return " ".join((self.fn.__doc__ or "").split())

    def batch(self, x: Tensor, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
        return self.fn(x, rng, gen)

    def __call__(self, img: np.ndarray, seed: int) -> np.ndarray:
        """Degrade one HxWx3 float32 image in [0, 1] on the CPU; H and W must be multiples of `scale`."""
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
        if img.shape[0] % self.scale or img.shape[1] % self.scale:
            raise ValueError(f"{self.name}: image size {img.shape[:2]} is not a multiple of {self.scale}")
        rng, gen = generators(seed)
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = self.fn(x, rng, gen)
        return y[0].permute(1, 2, 0).contiguous().numpy()


def _registry(*items: Degradation) -> dict[str, Degradation]:
    return {d.name: d for d in items}


DEGRADATIONS: dict[str, Degradation] = _registry(
    Degradation("deblur_camera", deblur_camera, "deblur"),
    Degradation("deblur_motion", deblur_motion, "deblur"),
    Degradation("deblur_defocus", deblur_defocus, "deblur"),
    Degradation("noise25", noise25, "denoise"),
    Degradation("noise25_raw", noise25_raw, "denoise"),
    Degradation("noise50", noise50, "denoise"),
    Degradation("noise_real", noise_real, "denoise"),
    Degradation("bicubic_x2", bicubic_x2, "upscale", 2, random=False),
    Degradation("bicubic_x4", bicubic_x4, "upscale", 4, random=False),
    Degradation("sr_x2", bicubic_x2, "upscale", 2, random=False),
    Degradation("sr_x4", bicubic_x4, "upscale", 4, random=False),
    Degradation("sr_real_x2", sr_real_x2, "upscale", 2),
    Degradation("sr_real_x4", sr_real_x4, "upscale", 4),
)

TRAIN_DEGRADATIONS: dict[str, Degradation] = _registry(
    Degradation("train_deblur", train_deblur, "deblur"),
    Degradation("train_denoise", train_denoise, "denoise"),
    Degradation("train_sr_real_x2", train_sr_real_x2, "upscale", 2),
    Degradation("train_sr_real_x4", train_sr_real_x4, "upscale", 4),
    Degradation("train_sr_x2", train_sr_x2, "upscale", 2),
    Degradation("train_sr_x4", train_sr_x4, "upscale", 4),
)


def get(name: str) -> Degradation:
    """An evaluation or training degradation by name."""
    for reg in (DEGRADATIONS, TRAIN_DEGRADATIONS):
        if name in reg:
            return reg[name]
    known = ", ".join([*DEGRADATIONS, *TRAIN_DEGRADATIONS])
    raise KeyError(f"unknown degradation {name!r}; known: {known}")
