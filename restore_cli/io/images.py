"""Image files in and out: decode to numpy, encode atomically, keep depth, alpha, ICC and EXIF.

Which library does what (each picked for being the one that gets that case right):

==========================  ===================================================================
read PNG 8-bit, JPEG,       Pillow (palette/tRNS, CMYK, 1-bit, EXIF, ICC, animation)
WebP, BMP, GIF
read PNG 16-bit             Pillow parses the header and metadata, OpenCV decodes the pixels
                            (Pillow cannot hold 16-bit RGB/RGBA/LA in memory)
read TIFF                   tifffile (8/16-bit, float, planar, palette, alpha); Pillow's EXIF
                            reader for the EXIF/GPS sub-IFDs
write PNG 8-bit, JPEG, WebP Pillow
write PNG 16-bit            OpenCV, then iCCP/eXIf chunks spliced in after IHDR; 16-bit
                            gray+alpha (which OpenCV cannot write) by a minimal zlib encoder
write BMP                   OpenCV (writes 32-bit BMPs with an alpha mask, which Pillow cannot)
write TIFF                  tifffile (Deflate, ICC in tag 34675, EXIF tags in IFD0); the EXIF
                            and GPS sub-IFDs, which tifffile cannot write, serialised by
                            Pillow and linked in afterwards
==========================  ===================================================================

Pixels are H x W x C numpy arrays, C in {1, 2, 3, 4} (gray, gray+alpha, RGB, RGBA) in RGB
order, dtype uint8, uint16 or float32. Bit depth follows the *file*, never the pixel values.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image as PILImage
from PIL import ImageFile

from restore_cli.errors import ImageError, UsageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "FORMAT_EXTENSIONS",
    "Image",
    "from_float",
    "output_format",
    "read_image",
    "to_float",
    "write_image",
]

_log = logging.getLogger(__name__)

#: Decompression-bomb guard: 16384 x 16384. A 4-channel float32 copy of that is 4 GiB.
DEFAULT_MAX_PIXELS = 2**28

#: Formats that can be written (and read). GIF is read-only: its outputs default to PNG.
FORMATS = ("png", "jpeg", "tiff", "webp", "bmp")
FORMAT_EXTENSIONS: dict[str, str] = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "webp": ".webp", "bmp": ".bmp"}
_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "jfif": "jpeg", "tif": "tiff"}
_READ_ONLY = {"gif": "png"}  # readable format -> default output format
_PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "gif": "GIF"}
_MAX_SIDE = {"jpeg": 65500, "webp": 16383}  # libjpeg and libwebp hard limits

# Our per-call limit (max_pixels) replaces Pillow's process-wide one: Pillow's would refuse
# anything over 2 x 89 Mpx whatever --max-pixels says. Ours runs at the same point (after
# the header is parsed, before any pixel is decoded) for every decoder, tifffile/OpenCV too.
PILImage.MAX_IMAGE_PIXELS = None

_EXIF_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_INTEROP_IFD = 0xA005
_PIXEL_X_DIM, _PIXEL_Y_DIM = 0xA002, 0xA003
# IFD0 tags worth carrying out of a TIFF (the rest describe that file's own layout).
_TIFF_EXIF_KEEP = (270, 271, 272, 274, 282, 283, 296, 305, 306, 315, 33432, _EXIF_IFD, _GPS_IFD)
# ASCII IFD0 tags written into TIFF outputs: ImageDescription, Make, Model, Software, DateTime,
# Artist, Copyright.
_TIFF_ASCII_TAGS = (270, 271, 272, 305, 306, 315, 33432)
_JPEG_MAX_EXIF = 65533  # one APP1 segment


@dataclass
class Image:
    """A decoded image: pixels plus the metadata to carry to the output."""

    pixels: np.ndarray  # H x W x C, C in {1,2,3,4}, RGB order, uint8 | uint16 | float32
    icc: bytes | None  # ICC profile matching `pixels` (sRGB when a CMYK input was converted)
    exif: bytes | None  # b"Exif\0\0" + TIFF-structured block, Orientation already reset to 1
    format: str  # detected from content: png | jpeg | tiff | webp | bmp | gif
    frames: int = 1  # frames (GIF/APNG/WebP) or pages (TIFF); only the first is decoded


# --------------------------------------------------------------------------- helpers


def _show(path: Path) -> str:
    """The path for a message: undecodable bytes as \\xNN so printing never fails."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _reason(exc: BaseException) -> str:
    """An exception as one short line."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _canonical(fmt: str) -> str:
    f = fmt.strip().lower().lstrip(".")
    return _ALIASES.get(f, f)


def _limit(max_pixels: int | None) -> int | None:
    if max_pixels is None or max_pixels == 0:
        return None
    if max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0 = no limit), got {max_pixels}")
    return max_pixels


def _check_size(show: str, width: int, height: int, limit: int | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{show}: invalid image size {width}x{height}")
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{show}: image is {width}x{height} ({width * height:,} pixels), over the limit of {limit:,} pixels; "
            "raise it with --max-pixels N (0 = no limit)"
        )


def _sniff(head: bytes) -> str | None:
    """The format from the first bytes; the file name is never trusted."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def sniff_file(path: Path) -> str | None:
    """The image format a file's first bytes announce (None: not an image we read, or unreadable)."""
    try:
        with open(path, "rb") as fh:
            return _sniff(fh.read(32))
    except OSError:
        return None


def _unknown_format_message(show: str, path: Path, head: bytes) -> str:
    if head[4:8] == b"ftyp":
        return f"{show}: HEIF/AVIF images are not supported; convert to PNG, JPEG or TIFF first"
    ext = path.suffix.lower()
    named = f" (despite its {ext} name)" if _canonical(ext) in (*FORMATS, "gif") else ""
    return f"{show}: not a PNG, JPEG, TIFF, WebP, BMP or GIF image{named}"


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (1-8) so the pixels are upright, as viewers show them."""
    ops = {
        2: lambda a: a[:, ::-1],  # mirror left-right
        3: lambda a: a[::-1, ::-1],  # rotate 180
        4: lambda a: a[::-1],  # mirror top-bottom
        5: lambda a: a.transpose(1, 0, 2),  # transpose
        6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
        8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
    }
    op = ops.get(orientation)
    return pixels if op is None else np.ascontiguousarray(op(pixels))


def _hwc(pixels: np.ndarray) -> np.ndarray:
    """Native-endian, C-contiguous, writable, H x W x C."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))
    return pixels if pixels.flags.writeable else pixels.copy()


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    # libpng errors on corrupt input reach stderr through OpenCV's logger; we raise instead.
    logging_ = cv2.utils.logging
    old = logging_.getLogLevel()
    logging_.setLogLevel(logging_.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging_.setLogLevel(old)


# --------------------------------------------------------------------------- float <-> int


def to_float(pixels: np.ndarray) -> np.ndarray:
    """float32 in [0, 1], scaled by dtype (uint8 / 255, uint16 / 65535), never by the value range.

    float input is returned as float32 as it is: not copied when already float32, not clipped.
    """
    if pixels.dtype == np.uint8 or pixels.dtype == np.uint16:
        out = pixels.astype(np.float32)
        out /= np.float32(np.iinfo(pixels.dtype).max)  # a true division: round trips are exact
        return out
    if np.issubdtype(pixels.dtype, np.floating):
        return pixels.astype(np.float32, copy=False)
    raise TypeError(f"to_float: unsupported dtype {pixels.dtype} (expected uint8, uint16 or float32)")


def from_float(arr: np.ndarray, dtype: npt.DTypeLike) -> np.ndarray:
    """Back from [0, 1] floats to `dtype`.

    uint8/uint16: NaN -> 0, clipped to [0, 1], scaled and rounded to nearest. float32: a
    plain cast, *not* clipped, so float TIFF outputs keep over-range values (the engine
    clamps if it wants to).
    """
    target = np.dtype(dtype)
    if target == np.float32:
        return arr.astype(np.float32, copy=False)
    if target not in (np.uint8, np.uint16):
        raise TypeError(f"from_float: unsupported dtype {target} (expected uint8, uint16 or float32)")
    work = np.nan_to_num(arr.astype(np.float32), copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(work, 0.0, 1.0, out=work)
    work *= np.float32(np.iinfo(target).max)
    np.rint(work, out=work)
    return work.astype(target)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Reduce any supported dtype to uint8 with rounding (for JPEG, WebP, BMP)."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        # round(v * 255 / 65535) = round(v / 257), in integers
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return from_float(pixels, np.uint8)


# --------------------------------------------------------------------------- formats


def output_format(input_fmt: str, requested: str | None) -> str:
    """The format to write: `requested` if given ('jpg', 'tif', '.png' accepted), else the
    input's own format; read-only inputs (GIF) default to PNG."""
    if requested:
        fmt = _canonical(requested)
        if fmt not in FORMATS:
            raise UsageError(f"unknown output format {requested!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    fmt = _canonical(input_fmt)
    fmt = _READ_ONLY.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {input_fmt!r}")
    return fmt


# --------------------------------------------------------------------------- EXIF / ICC


def _icc_space(icc: bytes | None) -> bytes | None:
    """The data colour space in an ICC header (b'RGB ', b'GRAY', b'CMYK', ...)."""
    return icc[16:20] if icc is not None and len(icc) >= 128 else None


def _icc_for(icc: bytes | None, channels: int) -> bytes | None:
    """The profile if it describes pixels of this channel layout; a GRAY profile on RGB
    (or the reverse) makes readers reject or misrender the file, so drop it."""
    if not icc:
        return None
    want = b"GRAY" if channels <= 2 else b"RGB "
    if _icc_space(icc) != want:
        _log.info("dropping an ICC profile for %r pixels from a %d-channel output", _icc_space(icc), channels)
        return None
    return icc


def _exif_prefixed(raw: bytes) -> bytes:
    return raw if raw.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + raw


def _upright_exif(exif: PILImage.Exif, raw: bytes | None) -> tuple[int, bytes | None]:
    """(orientation, EXIF bytes with Orientation reset to 1). Unchanged blocks stay verbatim."""
    orientation = exif.get(_EXIF_ORIENTATION, 1)
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1
    if len(exif) == 0:
        return orientation, None
    if exif.get(_EXIF_ORIENTATION, 1) != 1:
        exif[_EXIF_ORIENTATION] = 1
        return orientation, exif.tobytes()
    return orientation, _exif_prefixed(raw) if raw else exif.tobytes()


def _pillow_metadata(im: PILImage.Image, *, loaded: bool) -> tuple[int, bytes | None]:
    try:
        # PNG's getexif() decodes the whole image to find an eXIf after IDAT; on the OpenCV
        # path that would be a second (8-bit) decode, so only chunks before IDAT count there.
        exif = im.getexif() if loaded else PILImage.Image.getexif(im)
        return _upright_exif(exif, im.info.get("exif"))
    except Exception as exc:  # a corrupt EXIF block loses the metadata, not the image
        _log.warning("ignoring unreadable EXIF data: %s", _reason(exc))
        return 1, None


def _tiff_exif(fh: IO[bytes]) -> bytes | None:
    """The descriptive part of a TIFF's IFD0 (+ EXIF/GPS sub-IFDs) as an EXIF block."""
    try:
        fh.seek(0)
        src = PILImage.Exif()
        src.load_from_fp(fh)
        out = PILImage.Exif()
        for tag in _TIFF_EXIF_KEEP:
            if tag not in src:
                continue
            if tag in (_EXIF_IFD, _GPS_IFD):
                ifd = dict(src.get_ifd(tag))
                ifd.pop(_INTEROP_IFD, None)  # an offset into the source file
                if ifd:
                    out[tag] = ifd
            else:
                out[tag] = src[tag]
        if out.get(296) == 1:  # resolution "no unit" is the writers' placeholder, not a fact
            for tag in (282, 283, 296):
                out.pop(tag, None)
        if _EXIF_ORIENTATION in out:
            out[_EXIF_ORIENTATION] = 1
        return out.tobytes() if len(out) else None
    except Exception as exc:  # BigTIFF or a corrupt IFD: keep the pixels, lose the EXIF
        _log.info("ignoring TIFF EXIF tags: %s", _reason(exc))
        return None


def _exif_for_output(exif: bytes | None, width: int, height: int) -> bytes | None:
    """Orientation 1 and the output's own PixelX/YDimension; verbatim when nothing changes."""
    if not exif:
        return None
    try:
        parsed = PILImage.Exif()
        parsed.load(exif)
        changed = False
        if parsed.get(_EXIF_ORIENTATION, 1) != 1:
            parsed[_EXIF_ORIENTATION] = 1
            changed = True
        if _EXIF_IFD in parsed:
            sub = parsed.get_ifd(_EXIF_IFD)  # cached: edits reach tobytes()
            for tag, value in ((_PIXEL_X_DIM, width), (_PIXEL_Y_DIM, height)):
                if tag in sub and sub[tag] != value:
                    sub[tag] = value
                    changed = True
        return parsed.tobytes() if changed else _exif_prefixed(exif)
    except Exception:
        return _exif_prefixed(exif)


# --------------------------------------------------------------------------- reading


def read_image(path: Path | str | bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Decode the first frame of an image file, upright (EXIF/TIFF orientation applied).

    The format comes from the content, not the name. `max_pixels` (None or 0: no limit) is
    checked against the header before any pixel is decoded. Every failure is an ImageError
    whose one-line message names the file.
    """
    path = Path(os.fsdecode(path))  # bytes names arrive surrogate-escaped, as os.listdir gives them
    show = _show(path)
    limit = _limit(max_pixels)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set elsewhere in the process: truncation would pass as grey
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False for read_image")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; decoders need the handle open
    except FileNotFoundError as exc:
        raise ImageError(f"{show}: no such file") from exc
    except PermissionError as exc:
        raise ImageError(f"{show}: permission denied") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{show}: is a directory, not an image") from exc
    except OSError as exc:
        raise ImageError(f"{show}: cannot open: {_reason(exc)}") from exc
    with fh:
        try:
            head = fh.read(32)
        except OSError as exc:
            raise ImageError(f"{show}: cannot read: {_reason(exc)}") from exc
        if not head:
            raise ImageError(f"{show}: empty file (0 bytes)")
        fmt = _sniff(head)
        if fmt is None:
            raise ImageError(_unknown_format_message(show, path, head))
        fh.seek(0)
        name = fmt.upper() if fmt != "webp" else "WebP"
        try:
            image = _read_tiff(fh, show, limit) if fmt == "tiff" else _read_pillow(fh, fmt, head, show, limit)
        except ImageError:
            raise
        except MemoryError as exc:
            raise ImageError(f"{show}: not enough memory to decode this {name} image") from exc
        except Exception as exc:  # decoders raise many types on hostile input; all mean "bad file"
            raise ImageError(f"{show}: cannot decode {name} (truncated or corrupt?): {_reason(exc)}") from exc
    image.pixels = _hwc(image.pixels)
    return image


def _read_pillow(fh: IO[bytes], fmt: str, head: bytes, show: str, limit: int | None) -> Image:
    im = PILImage.open(fh, formats=[_PIL_NAMES[fmt]])  # parses the header only
    width, height = im.size
    _check_size(show, width, height, limit)
    icc = im.info.get("icc_profile") or None
    if fmt == "png" and head[24] == 16:  # IHDR bit depth: Pillow would drop it to 8 bits
        pixels = _decode_png16(fh, im, head[25], show)
    else:
        im.load()
        pixels, icc = _pillow_pixels(im, icc, show)
    orientation, exif = _pillow_metadata(im, loaded=not (fmt == "png" and head[24] == 16))
    frames = 1
    if fmt != "jpeg":  # JPEG "frames" are MPO previews/depth maps, not animation
        with contextlib.suppress(Exception):  # a damaged later frame must not fail the first
            frames = int(getattr(im, "n_frames", 1))
    return Image(_orient(_hwc(pixels), orientation), icc, exif, fmt, frames)


def _pillow_pixels(im: PILImage.Image, icc: bytes | None, show: str) -> tuple[np.ndarray, bytes | None]:
    """Pillow image -> array in one of our layouts; returns the ICC that matches the pixels."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.uint16), icc
    if mode == "CMYK":
        return _cmyk_to_rgb(im, icc)
    if mode in ("L", "LA", "RGB", "RGBA"):
        if mode in ("L", "RGB") and im.has_transparency_data:  # tRNS colour key -> real alpha
            im = im.convert("LA" if mode == "L" else "RGBA")
    elif mode == "1":
        im = im.convert("L")  # 0/255
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        if mode == "LAB":
            icc = None
    else:
        raise ImageError(f"{show}: unsupported pixel mode {mode!r}")
    return np.asarray(im), icc


def _cmyk_to_rgb(im: PILImage.Image, icc: bytes | None) -> tuple[np.ndarray, bytes | None]:
    """CMYK -> sRGB through the embedded CMYK profile when there is one, else Pillow's naive
    formula (untagged output)."""
    if _icc_space(icc) == b"CMYK":
        try:
            from PIL import ImageCms

            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(
                im, ImageCms.ImageCmsProfile(io.BytesIO(icc or b"")), srgb, outputMode="RGB"
            )
            if rgb is not None:
                return np.asarray(rgb), ImageCms.ImageCmsProfile(srgb).tobytes()
        except Exception as exc:  # no LittleCMS, or a broken profile
            _log.info("CMYK profile unusable (%s); converting naively", _reason(exc))
    return np.asarray(im.convert("RGB")), None


def _decode_png16(fh: IO[bytes], im: PILImage.Image, colour_type: int, show: str) -> np.ndarray:
    fh.seek(0)
    data = np.frombuffer(fh.read(), np.uint8)
    with _quiet_opencv():
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # UNCHANGED: 16 bits, alpha, no EXIF rotation
    if arr is None:
        if im.size[0] * im.size[1] > 2**30:
            raise ImageError(f"{show}: 16-bit PNGs over 2^30 pixels are beyond OpenCV's decoder")
        raise ImageError(f"{show}: cannot decode PNG (truncated or corrupt?)")
    if arr.dtype != np.uint16 or arr.shape[:2] != (im.size[1], im.size[0]):
        raise ImageError(f"{show}: cannot decode PNG: unexpected {arr.dtype} {arr.shape} from the decoder")
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if arr.shape[2] == 3:
        arr = arr[:, :, ::-1]  # BGR -> RGB
    elif arr.shape[2] == 4:
        # OpenCV expands gray+alpha (colour type 4) to BGRA; take one gray copy back
        arr = arr[:, :, [0, 3]] if colour_type in (0, 4) else arr[:, :, [2, 1, 0, 3]]
    key = im.info.get("transparency")
    if arr.shape[2] == 1 and isinstance(key, int):  # OpenCV ignores a gray tRNS key
        alpha = np.where(arr[:, :, 0] == key, 0, 65535).astype(np.uint16)
        arr = np.stack([arr[:, :, 0], alpha], axis=2)
    return arr


def _read_tiff(fh: IO[bytes], show: str, limit: int | None) -> Image:
    with tifffile.TiffFile(fh) as tf:
        page = tf.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        width, height = int(page.imagewidth), int(page.imagelength)
        _check_size(show, width, height, limit)
        if page.imagedepth > 1:
            raise ImageError(f"{show}: volumetric TIFF is not supported")
        frames = 1
        with contextlib.suppress(Exception):  # a broken later IFD must not fail the first page
            frames = len(tf.pages)
        orientation = int(page.tags.valueof(274, 1) or 1)
        icc = page.tags.valueof(34675) or None
        icc = bytes(icc) if icc is not None else None
        try:
            arr = page.asarray()
        except ValueError as exc:
            if "imagecodecs" not in str(exc):
                raise
            compression = getattr(page.compression, "name", str(page.compression))
            raise ImageError(
                f"{show}: {compression}-compressed TIFF needs the imagecodecs package (pip install imagecodecs)"
            ) from exc
        pixels, icc = _tiff_pixels(page, arr, icc, show)
    exif = _tiff_exif(fh)
    orientation = orientation if 1 <= orientation <= 8 else 1
    return Image(_orient(_hwc(pixels), orientation), icc, exif, "tiff", frames)


def _tiff_pixels(
    page: tifffile.TiffPage, arr: np.ndarray, icc: bytes | None, show: str
) -> tuple[np.ndarray, bytes | None]:
    PH = tifffile.PHOTOMETRIC
    axes = page.axes
    if "S" in axes:  # planar (SYX) or contiguous (YXS) -> YXS
        arr = np.moveaxis(arr, axes.index("S"), -1)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[:2] != (page.imagelength, page.imagewidth):
        raise ImageError(f"{show}: unsupported TIFF layout (axes {axes})")
    photometric = page.photometric
    extras = tuple(int(e) for e in page.extrasamples)

    if arr.dtype == np.bool_:  # 1-bit
        black_is_one = photometric == PH.MINISWHITE
        return np.where(arr ^ black_is_one, 255, 0).astype(np.uint8), icc
    if arr.dtype in (np.float16, np.float64):
        arr = arr.astype(np.float32)  # float TIFF in, float32 out
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageError(f"{show}: unsupported TIFF sample type {arr.dtype} (8/16-bit integer or float only)")

    if photometric == PH.PALETTE:
        colormap = page.colormap  # (3, 2**bits) uint16
        if colormap is None:
            raise ImageError(f"{show}: palette TIFF without a colour map")
        rgb16: np.ndarray = np.moveaxis(colormap[:, arr[:, :, 0]], 0, -1)
        if page.bitspersample <= 8:
            return _to_uint8(rgb16.astype(np.uint16)), icc
        return rgb16.astype(np.uint16), icc
    if photometric == PH.SEPARATED and arr.shape[2] >= 4:
        cmyk = arr[:, :, :4]
        if cmyk.dtype == np.uint8:
            return _cmyk_to_rgb(PILImage.fromarray(cmyk, "CMYK"), icc)
        ink = 1.0 - to_float(cmyk)
        return from_float(ink[:, :, :3] * ink[:, :, 3:4], cmyk.dtype), None  # Pillow's naive formula
    if photometric in (PH.MINISBLACK, PH.MINISWHITE):
        colour = 1
    elif photometric == PH.RGB or (photometric == PH.YCBCR and page.compression == tifffile.COMPRESSION.JPEG):
        colour = 3  # JPEG-in-TIFF YCbCr arrives as RGB from the decoder
    else:
        name = getattr(photometric, "name", str(photometric))
        raise ImageError(f"{show}: unsupported TIFF photometric interpretation {name}")
    if arr.shape[2] < colour:
        raise ImageError(f"{show}: TIFF has {arr.shape[2]} samples per pixel, expected {colour}")
    # Only an extra sample declared as alpha is alpha; other extra samples are dropped.
    has_alpha = arr.shape[2] > colour and bool(extras) and extras[0] in (1, 2)
    out = arr[:, :, : colour + 1] if has_alpha else arr[:, :, :colour]
    if photometric == PH.MINISWHITE:
        out = out.copy()
        out[:, :, 0] = (np.iinfo(out.dtype).max if out.dtype != np.float32 else 1.0) - out[:, :, 0]
    if has_alpha and extras[0] == 1:  # associated (premultiplied) alpha -> straight, as we write it
        out = _unpremultiply(out)
    if colour == 1 and _icc_space(icc) not in (None, b"GRAY"):
        icc = None
    return out, icc


def _unpremultiply(arr: np.ndarray) -> np.ndarray:
    work = to_float(arr).copy()
    alpha = work[:, :, -1:]
    np.divide(work[:, :, :-1], alpha, out=work[:, :, :-1], where=alpha > 0)
    return from_float(work, arr.dtype) if arr.dtype != np.float32 else work


# --------------------------------------------------------------------------- writing


def write_image(
    path: Path | str | bytes,
    pixels: np.ndarray,
    *,
    fmt: str,
    like: Image | None = None,
    quality: int = 95,
    strip_metadata: bool = False,
) -> None:
    """Encode `pixels` as `fmt` and write it atomically to `path`.

    The pixels' depth is kept where the format holds it; otherwise, with rounding:
    uint16/float32 -> uint8 for JPEG, WebP and BMP; float32 -> uint16 for PNG (TIFF holds
    all three). Channels the format lacks: alpha is composited over white for JPEG; gray
    becomes RGB for WebP; gray+alpha becomes RGBA for WebP and BMP.

    `like`'s ICC profile and EXIF are written unless `strip_metadata` (BMP holds neither; a
    profile for another channel layout is dropped). quality (1-100) drives JPEG and WebP;
    WebP at 100 is lossless, JPEG at >= 90 uses 4:4:4 chroma.

    The file appears complete or not at all: a temporary sibling is written, fsynced, then
    renamed over `path`. Disk-full and permission failures raise ImageError naming `path`.
    """
    path = Path(os.fsdecode(path))
    show = _show(path)
    fmt = _canonical(fmt)
    if fmt not in FORMATS:
        raise UsageError(f"cannot write format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 1 <= quality <= 100:
        raise UsageError(f"quality must be between 1 and 100, got {quality}")
    arr = _check_pixels(pixels)
    icc = exif = None
    if like is not None and not strip_metadata:
        icc, exif = like.icc, like.exif
    data = _encode(arr, fmt, quality, icc, exif, show)
    _atomic_write(path, data, show)


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and not 1 <= pixels.shape[2] <= 4):
        raise ValueError(f"pixels must be H x W x C with C in 1-4, got shape {pixels.shape}")
    if np.issubdtype(pixels.dtype, np.floating):
        pixels = pixels.astype(np.float32, copy=False)
    elif pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"pixels must be uint8, uint16 or float32, got {pixels.dtype}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"pixels must not be empty, got shape {pixels.shape}")
    return _hwc(pixels)


def _flatten_on_white(arr: np.ndarray) -> np.ndarray:
    """Drop alpha the way a viewer shows it on a white page."""
    work = to_float(arr)
    alpha = work[:, :, -1:]
    colour = work[:, :, :-1] * alpha + (1.0 - alpha)
    return from_float(colour, arr.dtype)


def _fit(arr: np.ndarray, fmt: str) -> np.ndarray:
    """Depth and channels the format can hold."""
    channels = arr.shape[2]
    if fmt == "png" and arr.dtype == np.float32:
        arr = from_float(arr, np.uint16)
    elif fmt in ("jpeg", "webp", "bmp"):
        arr = _to_uint8(arr)
    if fmt == "jpeg" and channels in (2, 4):
        arr = _flatten_on_white(arr)
    elif fmt in ("webp", "bmp") and channels == 2:
        arr = arr[:, :, [0, 0, 0, 1]]
    elif fmt == "webp" and channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _encode(arr: np.ndarray, fmt: str, quality: int, icc: bytes | None, exif: bytes | None, show: str) -> bytes:
    height, width = arr.shape[:2]
    side = _MAX_SIDE.get(fmt)
    if side is not None and max(width, height) > side:
        raise ImageError(
            f"{show}: {width}x{height} is too large for {fmt.upper()} (at most {side} pixels a side); "
            "choose PNG or TIFF"
        )
    arr = _fit(arr, fmt)
    icc = _icc_for(icc, arr.shape[2])
    exif = _exif_for_output(exif, width, height)
    try:
        if fmt == "tiff":
            return _encode_tiff(arr, icc, exif)
        if fmt == "bmp":
            return _encode_opencv(arr, ".bmp", [])
        if fmt == "png" and arr.dtype == np.uint16:
            return _encode_png16(arr, icc, exif)
        return _encode_pillow(arr, fmt, quality, icc, exif)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(f"{show}: not enough memory to encode {width}x{height} as {fmt.upper()}") from exc
    except Exception as exc:
        raise ImageError(f"{show}: cannot encode as {fmt.upper()}: {_reason(exc)}") from exc


def _encode_pillow(arr: np.ndarray, fmt: str, quality: int, icc: bytes | None, exif: bytes | None) -> bytes:
    im = PILImage.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)  # L, LA, RGB or RGBA
    options: dict[str, object] = {}
    if icc:
        options["icc_profile"] = icc
    if exif:
        if fmt == "jpeg" and len(exif) > _JPEG_MAX_EXIF:
            _log.warning("EXIF block of %d bytes is too long for JPEG; not written", len(exif))
        else:
            options["exif"] = exif
    if fmt == "jpeg":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2, optimize=True)
    elif fmt == "webp":
        if quality == 100:  # lossless; `exact` keeps the colour under fully transparent pixels
            options.update(lossless=True, exact=True)
        else:
            options.update(quality=quality)
    out = io.BytesIO()
    im.save(out, _PIL_NAMES[fmt], **options)
    return out.getvalue()


def _to_bgr(arr: np.ndarray) -> np.ndarray:
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr[:, :, ::-1])
    if arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, [2, 1, 0, 3]])
    return arr


def _encode_opencv(arr: np.ndarray, ext: str, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, _to_bgr(arr), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode {arr.shape} {arr.dtype} as {ext}")
    return buf.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode_png16(arr: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    if arr.shape[2] == 2:
        png = _encode_png16_gray_alpha(arr)
    else:
        png = _encode_opencv(arr, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 6])
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature + IHDR (always first, always 13 bytes)
    return png[:ihdr_end] + extra + png[ihdr_end:]


def _encode_png16_gray_alpha(arr: np.ndarray) -> bytes:
    """16-bit gray+alpha PNG, which OpenCV cannot write: unfiltered rows, zlib, one pass."""
    height, width = arr.shape[:2]
    rows = arr.astype(">u2").view(np.uint8).reshape(height, width * 4)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter byte 0 per row
    compressed = zlib.compress(raw.tobytes(), 6)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    step = 1 << 20
    idat = b"".join(_png_chunk(b"IDAT", compressed[i : i + step]) for i in range(0, len(compressed), step))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + idat + _png_chunk(b"IEND", b"")


def _encode_tiff(arr: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    extratags: list[tuple[int, int, int, str | int, bool]] = []
    resolution: tuple[float, float] | None = None
    resolution_unit: int | None = None
    parsed: PILImage.Exif | None = None
    if exif:
        try:
            parsed = PILImage.Exif()
            parsed.load(exif)
            for tag in _TIFF_ASCII_TAGS:
                value = parsed.get(tag)
                if isinstance(value, str) and value.isascii() and value.strip("\0"):
                    extratags.append((tag, 2, 0, value.strip("\0"), True))
            if parsed.get(296) in (2, 3) and 282 in parsed and 283 in parsed:
                resolution = (float(parsed[282]), float(parsed[283]))
                resolution_unit = int(parsed[296])
        except Exception as exc:  # the EXIF is a bonus; never fail the pixels on it
            _log.info("not writing EXIF tags to TIFF: %s", _reason(exc))
            parsed = None
    pointers = [tag for tag in (_EXIF_IFD, _GPS_IFD) if parsed is not None and tag in parsed]

    def encode(placeholders: list[int]) -> bytes:
        out = io.BytesIO()
        tifffile.imwrite(
            out,
            arr[:, :, 0] if arr.shape[2] == 1 else arr,
            photometric="minisblack" if arr.shape[2] <= 2 else "rgb",
            planarconfig="contig",
            extrasamples=["unassalpha"] if arr.shape[2] in (2, 4) else None,
            compression="zlib",
            # horizontal differencing helps Deflate; the float predictor would need imagecodecs
            predictor=arr.dtype != np.float32,
            iccprofile=icc,
            resolution=resolution,
            resolutionunit=resolution_unit,
            metadata=None,  # no tifffile JSON in ImageDescription
            software=False,
            byteorder="<",
            extratags=[*extratags, *((_TIFF_POINTER_PLACEHOLDER[tag], 4, 1, 0, True) for tag in placeholders)],
        )
        return out.getvalue()

    data = encode(pointers)
    if not pointers or parsed is None:
        return data
    try:
        return _attach_exif_ifds(data, parsed, pointers)
    except Exception as exc:  # keep the image, without the camera EXIF
        _log.info("not writing EXIF sub-IFDs to TIFF: %s", _reason(exc))
        return encode([])


# tifffile refuses to write the EXIF/GPS pointer tags (it cannot write what they point to), so
# it writes these unused codes, which sort just before the real ones; _attach_exif_ifds appends
# the sub-IFDs (serialised by Pillow) and turns the placeholders into real pointers.
_TIFF_POINTER_PLACEHOLDER = {_EXIF_IFD: _EXIF_IFD - 1, _GPS_IFD: _GPS_IFD - 1}


def _attach_exif_ifds(data: bytes, exif: PILImage.Exif, pointers: list[int]) -> bytes:
    if not data.startswith(b"II*\0"):  # BigTIFF (> 4 GiB): 32-bit pointers cannot reach
        raise ValueError("BigTIFF output")
    for tag in list(exif):
        if tag not in pointers:
            del exif[tag]
    for tag in pointers:
        exif.get_ifd(tag)  # decode the sub-IFDs while the source byte order still applies
    exif.endian = "<"
    exif.bigtiff = False
    start = len(data) + (len(data) & 1)  # IFDs start on a word boundary
    # Pillow lays out a small IFD at `start` holding the two pointers, then the sub-IFDs.
    blob = exif.tobytes(offset=start)[6 + 8 :]
    if start + len(blob) >= 2**32:
        raise ValueError("EXIF beyond 4 GiB")
    (count,) = struct.unpack_from("<H", blob, 0)
    targets = {}
    for i in range(count):
        code, _kind, _n, value = struct.unpack_from("<HHII", blob, 2 + 12 * i)
        targets[code] = value
    out = bytearray(data) + bytes(start - len(data)) + blob
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        tags = tf.pages.first.tags
        for tag in pointers:
            entry = tags.get(_TIFF_POINTER_PLACEHOLDER[tag])
            if entry is None:
                raise ValueError("placeholder tag missing")
            struct.pack_into("<HHII", out, entry.offset, tag, 4, 1, targets[tag])
    check = PILImage.Exif()  # never hand out a TIFF whose pointers do not read back
    check.load_from_fp(io.BytesIO(bytes(out)))
    if any(not check.get_ifd(tag) for tag in pointers):
        raise ValueError("EXIF sub-IFDs did not read back")
    return bytes(out)


def _atomic_write(path: Path, data: bytes, show: str) -> None:
    """Write via a temporary sibling + fsync + rename, so `path` is never half-written."""
    folder = path.parent
    tmp: Path | None = None
    try:
        fd, tmp = _create_temp(folder, path.name)
        with contextlib.suppress(OSError):  # overwriting keeps the old file's permissions
            os.fchmod(fd, os.stat(path).st_mode & 0o7777)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if exc.errno == errno.ENOENT and not folder.is_dir():
            raise ImageError(f"{show}: cannot write: folder {_show(folder)} does not exist") from exc
        raise ImageError(f"{show}: cannot write: {_reason(exc)}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable, where the OS allows
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    # os.open with 0o666 (not mkstemp's 0o600) so the result gets the usual umask permissions
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f".{name[:100]}.tmp-{secrets.token_hex(4)}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a temporary file", str(folder))
