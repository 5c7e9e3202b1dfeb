"""Image I/O: round trips, depth, alpha, metadata, orientation, hostile inputs, atomic writes.

Every input is generated in a temporary folder. Where our writer could hide a bug in our
reader (16-bit PNG channel order, alpha BMP), the ground truth comes from another encoder.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image as PILImage
from PIL import ImageCms, ImageFile, ImageOps

from restore_cli.errors import ImageError, UsageError
from restore_cli.io import images
from restore_cli.io.images import (
    DEFAULT_MAX_PIXELS,
    FORMAT_EXTENSIONS,
    FORMATS,
    Image,
    from_float,
    output_format,
    read_image,
    to_float,
    write_image,
)

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
GRAY_ICC = SRGB_ICC[:16] + b"GRAY" + SRGB_ICC[20:]  # readers only look at the header here
RNG = np.random.default_rng(1234)

# (format, dtype, channels) that hold pixels exactly; WebP only when lossless (quality 100)
LOSSLESS = (
    [("png", dt, c) for dt in (np.uint8, np.uint16) for c in (1, 2, 3, 4)]
    + [("tiff", dt, c) for dt in (np.uint8, np.uint16, np.float32) for c in (1, 2, 3, 4)]
    + [("webp", np.uint8, c) for c in (3, 4)]
    + [("bmp", np.uint8, c) for c in (1, 3, 4)]
)


def random_pixels(h: int, w: int, c: int, dtype: type = np.uint8) -> np.ndarray:
    if dtype == np.float32:
        return RNG.uniform(-0.5, 1.5, (h, w, c)).astype(np.float32)  # over-range survives float TIFF
    return RNG.integers(0, np.iinfo(dtype).max, (h, w, c), endpoint=True, dtype=dtype)


def png_bytes(width: int, height: int, depth: int, colour_type: int, samples: np.ndarray, extra: bytes = b"") -> bytes:
    """A PNG from scratch (ground truth independent of OpenCV and Pillow)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    dt = ">u2" if depth == 16 else np.uint8
    rows = samples.astype(dt).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_exif(orientation: int | None = None) -> PILImage.Exif:
    exif = PILImage.Exif()
    exif[271] = "TestCam"  # Make
    if orientation is not None:
        exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"  # DateTimeOriginal, in the EXIF sub-IFD
    exif.get_ifd(0x8825)[1] = "N"  # GPSLatitudeRef, in the GPS sub-IFD
    return exif


def parse_exif(data: bytes | None) -> PILImage.Exif:
    assert data is not None
    exif = PILImage.Exif()
    exif.load(data)
    return exif


def assert_one_line_naming(exc: pytest.ExceptionInfo[ImageError], name: str) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert name in message
    return message


# --------------------------------------------------------------------------- float conversion


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(st.sampled_from([np.uint8, np.uint16]), hnp.array_shapes(min_dims=3, max_dims=3, max_side=6)))
def test_float_round_trip_is_exact(pixels: np.ndarray) -> None:
    as_float = to_float(pixels)
    assert as_float.dtype == np.float32
    assert np.array_equal(from_float(as_float, pixels.dtype), pixels)


def test_to_float_scales_by_dtype_not_value_range() -> None:
    dark16 = np.full((2, 2, 1), 300, np.uint16)
    assert np.allclose(to_float(dark16), 300 / 65535)
    assert np.allclose(to_float(np.full((1, 1, 1), 255, np.uint8)), 1.0)
    floats = np.array([[[2.0]]], np.float32)
    assert to_float(floats) is floats  # float passes through, unclipped


def test_from_float_clips_rounds_and_zeroes_nan() -> None:
    arr = np.array([[[-0.2, 0.5, 1.7, np.nan, np.inf]]], np.float32)
    assert from_float(arr, np.uint8).tolist() == [[[0, 128, 255, 0, 255]]]
    assert from_float(arr, np.uint16)[0, 0, :3].tolist() == [0, 32768, 65535]
    out = from_float(arr, np.float32)
    assert out[0, 0, 2] == np.float32(1.7)  # float output is not clipped
    with pytest.raises(TypeError):
        from_float(arr, np.int32)


# --------------------------------------------------------------------------- output format


def test_output_format_follows_input_unless_requested() -> None:
    assert output_format("tiff", None) == "tiff"
    assert output_format("gif", None) == "png"  # GIF is read-only
    assert output_format("png", "jpg") == "jpeg"
    assert output_format("png", ".TIF") == "tiff"
    assert output_format("jpeg", "WebP") == "webp"
    with pytest.raises(UsageError, match="unknown output format"):
        output_format("png", "gif")
    assert set(FORMAT_EXTENSIONS) == set(FORMATS)
    assert all(ext.startswith(".") for ext in FORMAT_EXTENSIONS.values())


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("fmt", "dtype", "channels"), LOSSLESS)
def test_lossless_round_trip(tmp_path: Path, fmt: str, dtype: type, channels: int) -> None:
    pixels = random_pixels(5, 7, channels, dtype)
    out = tmp_path / f"out{FORMAT_EXTENSIONS[fmt]}"
    write_image(out, pixels, fmt=fmt, quality=100)
    back = read_image(out)
    assert back.format == fmt
    assert back.pixels.dtype == pixels.dtype
    assert back.pixels.shape == pixels.shape
    assert np.array_equal(back.pixels, pixels)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_lossless_round_trip_property(tmp_path: Path, data: st.DataObject) -> None:
    fmt, dtype, channels = data.draw(st.sampled_from(LOSSLESS))
    height, width = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    elements = st.floats(-4, 4, width=32) if dtype == np.float32 else None
    pixels = data.draw(hnp.arrays(dtype, (height, width, channels), elements=elements))
    out = tmp_path / f"prop{FORMAT_EXTENSIONS[fmt]}"
    write_image(out, pixels, fmt=fmt, quality=100)
    back = read_image(out).pixels
    assert back.dtype == pixels.dtype
    assert np.array_equal(back, pixels)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_dark_16bit_stays_16bit(tmp_path: Path, fmt: str) -> None:
    pixels = RNG.integers(0, 200, (4, 6, 3), dtype=np.uint16)  # every value < 256
    out = tmp_path / f"dark.{fmt}"
    write_image(out, pixels, fmt=fmt)
    back = read_image(out)
    assert back.pixels.dtype == np.uint16
    assert np.array_equal(back.pixels, pixels)


def test_dark_16bit_png_from_another_encoder(tmp_path: Path) -> None:
    samples = np.array([[[1, 2, 3], [40, 50, 60]]], np.uint16)
    path = tmp_path / "dark16.png"
    path.write_bytes(png_bytes(2, 1, 16, 2, samples))
    back = read_image(path)
    assert back.pixels.dtype == np.uint16
    assert back.pixels.tolist() == samples.tolist()


def test_bright_8bit_stays_8bit(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    write_image(path, np.full((3, 3, 3), 255, np.uint8), fmt="png")
    assert read_image(path).pixels.dtype == np.uint8


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "bmp"])
def test_16bit_is_rounded_to_8bit_where_the_format_cannot_hold_it(tmp_path: Path, fmt: str) -> None:
    pixels = random_pixels(8, 8, 3, np.uint16)
    out = tmp_path / f"x.{fmt}"
    write_image(out, pixels, fmt=fmt, quality=100)
    back = read_image(out).pixels
    assert back.dtype == np.uint8
    expected = np.rint(pixels / 257.0).astype(np.uint8)
    if fmt == "jpeg":
        assert np.abs(back.astype(int) - expected).mean() < 8
    else:
        assert np.array_equal(back, expected)


def test_float_to_png_is_16bit(tmp_path: Path) -> None:
    pixels = RNG.uniform(0, 1, (3, 4, 3)).astype(np.float32)
    out = tmp_path / "f.png"
    write_image(out, pixels, fmt="png")
    back = read_image(out).pixels
    assert back.dtype == np.uint16
    assert np.array_equal(back, from_float(pixels, np.uint16))


def test_alpha_to_jpeg_is_flattened_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16, 4), np.uint8)  # black, fully transparent
    out = tmp_path / "a.jpg"
    write_image(out, pixels, fmt="jpeg")
    back = read_image(out).pixels
    assert back.shape == (16, 16, 3)
    assert back.min() >= 250


def test_channel_fallbacks(tmp_path: Path) -> None:
    gray = random_pixels(4, 4, 1)
    write_image(tmp_path / "g.webp", gray, fmt="webp", quality=100)
    assert np.array_equal(read_image(tmp_path / "g.webp").pixels, np.repeat(gray, 3, axis=2))
    la = random_pixels(4, 4, 2)
    write_image(tmp_path / "la.bmp", la, fmt="bmp")
    assert np.array_equal(read_image(tmp_path / "la.bmp").pixels, la[:, :, [0, 0, 0, 1]])


def test_jpeg_quality_and_444_chroma(tmp_path: Path) -> None:
    pixels = random_pixels(32, 32, 3)
    write_image(tmp_path / "hi.jpg", pixels, fmt="jpeg", quality=95)
    write_image(tmp_path / "lo.jpg", pixels, fmt="jpeg", quality=40)
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size
    with PILImage.open(tmp_path / "hi.jpg") as im:
        assert im.layer[0][1:3] == (1, 1)  # type: ignore[attr-defined]  # luma 1x1: 4:4:4
    with pytest.raises(UsageError):
        write_image(tmp_path / "bad.jpg", pixels, fmt="jpeg", quality=0)


def test_16bit_png_channel_order_against_other_codecs(tmp_path: Path) -> None:
    red = np.zeros((2, 2, 4), np.uint16)
    red[..., 0] = 65535
    red[..., 3] = 65535
    write_image(tmp_path / "red.png", red, fmt="png")
    with PILImage.open(tmp_path / "red.png") as im:  # Pillow reads 16-bit RGBA as 8-bit RGBA
        assert im.convert("RGBA").getpixel((0, 0)) == (255, 0, 0, 255)
    rgba = np.array([[[1000, 2000, 3000, 4000]]], np.uint16)
    (tmp_path / "gt.png").write_bytes(png_bytes(1, 1, 16, 6, rgba))
    assert read_image(tmp_path / "gt.png").pixels.tolist() == rgba.tolist()


def test_16bit_gray_alpha_png_from_another_encoder(tmp_path: Path) -> None:
    la = np.array([[[100, 65535], [200, 0], [300, 1234]]], np.uint16)
    (tmp_path / "la16.png").write_bytes(png_bytes(3, 1, 16, 4, la))
    back = read_image(tmp_path / "la16.png").pixels
    assert back.dtype == np.uint16
    assert back.tolist() == la.tolist()


def test_16bit_gray_png_from_pillow(tmp_path: Path) -> None:
    gray = RNG.integers(0, 65535, (3, 5), dtype=np.uint16)
    PILImage.fromarray(gray).save(tmp_path / "g16.png")  # Pillow mode I;16
    back = read_image(tmp_path / "g16.png").pixels
    assert back.dtype == np.uint16
    assert np.array_equal(back[:, :, 0], gray)


def test_16bit_gray_png_colour_key_becomes_alpha(tmp_path: Path) -> None:
    gray = np.array([[5, 7, 5]], np.uint16)
    (tmp_path / "key.png").write_bytes(png_bytes(3, 1, 16, 0, gray, png_chunk(b"tRNS", struct.pack(">H", 5))))
    back = read_image(tmp_path / "key.png").pixels
    assert back.tolist() == [[[5, 0], [7, 65535], [5, 0]]]


def test_rgb_colour_key_becomes_alpha(tmp_path: Path) -> None:
    rgb = np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8)
    (tmp_path / "key.png").write_bytes(png_bytes(2, 1, 8, 2, rgb, png_chunk(b"tRNS", struct.pack(">HHH", 4, 5, 6))))
    assert read_image(tmp_path / "key.png").pixels.tolist() == [[[1, 2, 3, 255], [4, 5, 6, 0]]]


def test_palette_png_with_and_without_trns(tmp_path: Path) -> None:
    im = PILImage.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.putdata([0, 1, 2])
    im.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").pixels.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]
    im.save(tmp_path / "pt.png", transparency=bytes([255, 0, 128]))
    back = read_image(tmp_path / "pt.png").pixels
    assert back.shape == (1, 3, 4)
    assert back[0, :, 3].tolist() == [255, 0, 128]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = PILImage.fromarray(random_pixels(8, 8, 4), "CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    with PILImage.open(tmp_path / "cmyk.jpg") as im:
        expected = np.asarray(im.convert("RGB"))
    back = read_image(tmp_path / "cmyk.jpg")
    assert back.pixels.shape == (8, 8, 3)
    assert np.array_equal(back.pixels, expected)
    assert back.icc is None
    # an RGB profile on CMYK data cannot be used: the naive route, and no profile claimed
    cmyk.save(tmp_path / "cmyk_rgbicc.jpg", quality=100, icc_profile=SRGB_ICC)
    assert read_image(tmp_path / "cmyk_rgbicc.jpg").icc is None


@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff"])
def test_one_bit_images(tmp_path: Path, fmt: str) -> None:
    bits = np.array([[1, 0, 1], [0, 0, 1]], bool)
    path = tmp_path / f"bits.{fmt}"
    if fmt == "tiff":
        tifffile.imwrite(path, bits, metadata=None)  # tifffile writes 1-bit as min-is-white
        expected = np.where(bits, 0, 255)
    else:
        PILImage.fromarray(bits).save(path)
        expected = np.where(bits, 255, 0)
    back = read_image(path).pixels
    assert back.dtype == np.uint8
    assert back[:, :, 0].tolist() == expected.tolist()


def test_tiff_planar_palette_and_associated_alpha(tmp_path: Path) -> None:
    rgb = random_pixels(3, 4, 3)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_image(tmp_path / "planar.tif").pixels, rgb)

    colormap = RNG.integers(0, 65535, (3, 256), dtype=np.uint16)
    index = np.array([[0, 1], [2, 255]], np.uint8)
    tifffile.imwrite(tmp_path / "pal.tif", index, photometric="palette", colormap=colormap)
    back = read_image(tmp_path / "pal.tif").pixels
    assert back.dtype == np.uint8
    assert np.array_equal(back, np.rint(np.moveaxis(colormap[:, index], 0, -1) / 257).astype(np.uint8))

    premultiplied = np.array([[[50, 100, 0, 128]]], np.uint8)
    tifffile.imwrite(tmp_path / "assoc.tif", premultiplied, photometric="rgb", extrasamples=["assocalpha"])
    assert read_image(tmp_path / "assoc.tif").pixels.tolist() == [[[100, 199, 0, 128]]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_cmyk_tiff_becomes_rgb(tmp_path: Path, dtype: type) -> None:
    cmyk = random_pixels(3, 4, 4)
    scale = 257 if dtype == np.uint16 else 1
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk.astype(dtype) * scale, photometric="separated", metadata=None)
    back = read_image(tmp_path / "cmyk.tif").pixels
    assert back.dtype == dtype
    expected = np.asarray(PILImage.frombytes("CMYK", (4, 3), cmyk.tobytes()).convert("RGB")).astype(int) * scale
    assert np.abs(back.astype(int) - expected).max() <= scale  # Pillow rounds in 8 bits


def test_lzw_and_packbits_tiff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = random_pixels(6, 7, 3)
    PILImage.fromarray(pixels).save(tmp_path / "packbits.tif", compression="packbits")
    assert np.array_equal(read_image(tmp_path / "packbits.tif").pixels, pixels)
    PILImage.fromarray(pixels).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # Photoshop's default
    try:
        import imagecodecs  # noqa: F401 - tifffile's LZW/JPEG decoders
    except ImportError:
        with pytest.raises(ImageError, match="needs the imagecodecs package"):
            read_image(tmp_path / "lzw.tif")
        return
    assert np.array_equal(read_image(tmp_path / "lzw.tif").pixels, pixels)

    def no_codecs(self: tifffile.TiffPage, *args: object, **kwargs: object) -> np.ndarray:
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codecs)
    with pytest.raises(ImageError, match="LZW-compressed TIFF needs the imagecodecs package"):
        read_image(tmp_path / "lzw.tif")


def test_multipage_tiff_reads_the_first_page(tmp_path: Path) -> None:
    pages = random_pixels(3, 4, 1, np.uint16), random_pixels(3, 4, 1, np.uint16)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for page in pages:
            tw.write(page[:, :, 0], photometric="minisblack", metadata=None)
    image = read_image(tmp_path / "pages.tif")
    assert image.frames == 2
    assert np.array_equal(image.pixels, pages[0])


def test_float64_tiff_reads_as_float32(tmp_path: Path) -> None:
    data = RNG.uniform(0, 1, (2, 3)).astype(np.float64)
    tifffile.imwrite(tmp_path / "f64.tif", data)
    back = read_image(tmp_path / "f64.tif").pixels
    assert back.dtype == np.float32
    assert np.allclose(back[:, :, 0], data)


# --------------------------------------------------------------------------- metadata


def save_with_metadata(path: Path, fmt: str, pixels: np.ndarray, exif: PILImage.Exif, icc: bytes) -> None:
    """An input file carrying ICC + EXIF, written by Pillow, or by us where Pillow cannot
    (16-bit PNG; TIFF, where Pillow does not write the EXIF sub-IFD)."""
    if fmt == "png16":  # our encoder, minus write_image's orientation reset
        path.write_bytes(images._encode_png16(pixels.astype(np.uint16) * 257, icc, exif.tobytes()))
        return
    if fmt == "tiff":
        write_image(path, pixels, fmt="tiff", like=Image(pixels, icc, exif.tobytes(), "jpeg"))
        return
    pil_fmt = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    options = {"quality": 100} if fmt in ("jpeg", "webp") else {}
    if fmt == "webp":
        options["lossless"] = True
    PILImage.fromarray(pixels).save(path, pil_fmt, exif=exif, icc_profile=icc, **options)


@pytest.mark.parametrize("fmt", ["png", "png16", "jpeg", "webp", "tiff"])
def test_icc_and_exif_are_carried_and_stripped(tmp_path: Path, fmt: str) -> None:
    pixels = random_pixels(4, 6, 3)
    src = tmp_path / f"in.{fmt}"
    save_with_metadata(src, fmt, pixels, make_exif(orientation=1), SRGB_ICC)
    image = read_image(src)
    assert image.icc == SRGB_ICC
    exif = parse_exif(image.exif)
    assert exif[271] == "TestCam"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"

    out_fmt = "png" if fmt == "png16" else fmt
    out = tmp_path / f"out.{out_fmt}"
    write_image(out, image.pixels, fmt=out_fmt, like=image)
    again = read_image(out)
    assert again.icc == SRGB_ICC
    exif = parse_exif(again.exif)
    assert exif[271] == "TestCam"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"
    assert exif.get_ifd(0x8825)[1] == "N"

    stripped = tmp_path / f"stripped.{out_fmt}"
    write_image(stripped, image.pixels, fmt=out_fmt, like=image, strip_metadata=True)
    bare = read_image(stripped)
    assert bare.icc is None
    assert bare.exif is None


@pytest.mark.parametrize("out_fmt", ["png", "jpeg", "webp", "tiff"])
def test_metadata_crosses_formats(tmp_path: Path, out_fmt: str) -> None:
    src = tmp_path / "in.jpg"
    save_with_metadata(src, "jpeg", random_pixels(4, 4, 3), make_exif(orientation=6), SRGB_ICC)
    image = read_image(src)
    out = tmp_path / f"out{FORMAT_EXTENSIONS[out_fmt]}"
    write_image(out, image.pixels, fmt=out_fmt, like=image)
    again = read_image(out)
    assert again.icc == SRGB_ICC
    assert parse_exif(again.exif)[271] == "TestCam"
    assert parse_exif(again.exif).get(0x0112, 1) == 1
    assert again.pixels.shape == image.pixels.shape  # not rotated a second time


def test_tiff_exif_reads_back_in_other_readers(tmp_path: Path) -> None:
    exif = make_exif(orientation=1)
    exif[306] = "2024:05:06 07:08:09"  # DateTime
    like = Image(random_pixels(3, 4, 3), SRGB_ICC, exif.tobytes(), "jpeg")
    out = tmp_path / "exif.tif"
    write_image(out, random_pixels(3, 4, 3, np.uint16), fmt="tiff", like=like)
    with tifffile.TiffFile(out) as tf:
        tags = tf.pages.first.tags
        assert tags["Make"].value == "TestCam"
        assert tags["DateTime"].value == "2024:05:06 07:08:09"
        assert tags["ExifTag"].value["DateTimeOriginal"] == "2024:01:02 03:04:05"
        assert tags["GPSTag"].value["GPSLatitudeRef"] == "N"
        assert tags["InterColorProfile"].value == SRGB_ICC
        assert "ImageDescription" not in tags  # no tifffile JSON
    with PILImage.open(out) as im:  # libtiff-based reader still opens it
        assert im.getexif().get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"


def test_bmp_drops_metadata_and_mismatched_icc_is_dropped(tmp_path: Path) -> None:
    like = Image(random_pixels(2, 2, 3), SRGB_ICC, make_exif().tobytes(), "png")
    write_image(tmp_path / "m.bmp", like.pixels, fmt="bmp", like=like)
    assert read_image(tmp_path / "m.bmp").icc is None
    gray_like = Image(random_pixels(2, 2, 1), GRAY_ICC, None, "png")
    write_image(tmp_path / "rgb.png", random_pixels(2, 2, 3), fmt="png", like=gray_like)
    assert read_image(tmp_path / "rgb.png").icc is None  # a GRAY profile on RGB pixels is invalid
    write_image(tmp_path / "gray.png", random_pixels(2, 2, 1), fmt="png", like=gray_like)
    assert read_image(tmp_path / "gray.png").icc == GRAY_ICC


def test_exif_pixel_dimensions_follow_the_output(tmp_path: Path) -> None:
    exif = make_exif()
    exif.get_ifd(0x8769)[0xA002] = 4  # PixelXDimension
    exif.get_ifd(0x8769)[0xA003] = 4
    like = Image(random_pixels(4, 4, 3), None, exif.tobytes(), "jpeg")
    write_image(tmp_path / "big.jpg", random_pixels(8, 16, 3), fmt="jpeg", like=like)
    sub = parse_exif(read_image(tmp_path / "big.jpg").exif).get_ifd(0x8769)
    assert (sub[0xA002], sub[0xA003]) == (16, 8)


PATTERN = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5) * 16  # asymmetric, values unique
TRANSPOSES = {
    1: None,
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}  # the EXIF meaning of each orientation, as Pillow's exif_transpose applies it


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["jpeg", "png", "png16", "webp", "tiff"])
def test_all_eight_orientations(tmp_path: Path, fmt: str, orientation: int) -> None:
    rgb = np.stack([PATTERN, 255 - PATTERN, PATTERN // 2], axis=2)
    op = TRANSPOSES[orientation]
    expected = rgb if op is None else np.asarray(PILImage.fromarray(rgb).transpose(op))
    path = tmp_path / f"o{orientation}.{fmt}"
    if fmt == "tiff":
        tifffile.imwrite(path, rgb, photometric="rgb", metadata=None, extratags=[(274, 3, 1, orientation, True)])
    else:
        save_with_metadata(path, fmt, rgb, make_exif(orientation), SRGB_ICC)
    image = read_image(path)
    if fmt == "jpeg":  # lossy: the oracle is Pillow's own transpose of the same decode
        with PILImage.open(path) as im:
            expected = np.asarray(ImageOps.exif_transpose(im))
    got = image.pixels
    if fmt == "png16":
        assert got.dtype == np.uint16
        got = (got // 257).astype(np.uint8)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    if image.exif is not None:
        assert parse_exif(image.exif).get(0x0112, 1) == 1


# --------------------------------------------------------------------------- animation


def test_animated_gif_webp_apng_read_first_frame(tmp_path: Path) -> None:
    frames = [PILImage.new("RGB", (4, 3), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for name in ("anim.gif", "anim.webp", "anim.png"):
        lossless = {"lossless": True} if name.endswith("webp") else {}
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0, **lossless)  # type: ignore[arg-type]
        image = read_image(tmp_path / name)
        assert image.frames == 3, name
        assert image.pixels.shape[:2] == (3, 4)
        assert image.pixels[0, 0, :3].tolist() == [255, 0, 0], name
    assert read_image(tmp_path / "anim.gif").format == "gif"
    assert output_format("gif", None) == "png"


def test_gif_transparency_becomes_alpha(tmp_path: Path) -> None:
    im = PILImage.new("P", (2, 1))
    im.putpalette([10, 20, 30, 40, 50, 60])
    im.putdata([0, 1])
    im.save(tmp_path / "t.gif", transparency=1)
    assert read_image(tmp_path / "t.gif").pixels.tolist() == [[[10, 20, 30, 255], [40, 50, 60, 0]]]


# --------------------------------------------------------------------------- bad inputs


def test_load_truncated_images_stays_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries do on import
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(tmp_path / "any.png")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as exc:
        read_image(tmp_path / "empty.png")
    assert "empty file" in assert_one_line_naming(exc, "empty.png")


@pytest.mark.parametrize("fmt", ["png", "png16", "jpeg", "tiff", "webp", "bmp", "gif"])
def test_truncated_files_raise(tmp_path: Path, fmt: str) -> None:
    pixels = random_pixels(64, 64, 3)
    path = tmp_path / f"full.{fmt}"
    if fmt == "png16":
        write_image(path, pixels.astype(np.uint16) * 257, fmt="png")
    elif fmt == "gif":
        PILImage.fromarray(pixels).save(path)
    else:
        write_image(path, pixels, fmt=fmt, quality=90)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        read_image(cut)
    assert_one_line_naming(exc, "cut.")


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello, this is not an image\n")
    with pytest.raises(ImageError) as exc:
        read_image(tmp_path / "notes.png")
    message = assert_one_line_naming(exc, "notes.png")
    assert "not a PNG, JPEG" in message
    assert ".png name" in message


def test_heif_gets_a_specific_message(tmp_path: Path) -> None:
    (tmp_path / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 40)
    with pytest.raises(ImageError, match="HEIF/AVIF"):
        read_image(tmp_path / "photo.heic")


def test_wrong_extension_is_decoded_by_content(tmp_path: Path) -> None:
    pixels = random_pixels(3, 3, 3)
    write_image(tmp_path / "real.png", pixels, fmt="png")
    os.replace(tmp_path / "real.png", tmp_path / "liar.jpg")
    image = read_image(tmp_path / "liar.jpg")
    assert image.format == "png"
    assert np.array_equal(image.pixels, pixels)


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_by_one(tmp_path: Path, fmt: str) -> None:
    pixels = np.array([[[10, 200, 30]]], np.uint8)
    write_image(tmp_path / "one", pixels, fmt=fmt, quality=100)
    back = read_image(tmp_path / "one").pixels
    assert back.shape == (1, 1, 3)
    if fmt != "jpeg":
        assert np.array_equal(back, pixels)


@pytest.mark.parametrize(
    ("fmt", "dtype"), [("png", np.uint8), ("png", np.uint16), ("tiff", np.uint16), ("bmp", np.uint8)]
)
def test_65535_wide_single_row(tmp_path: Path, fmt: str, dtype: type) -> None:
    pixels = random_pixels(1, 65535, 3, dtype)
    write_image(tmp_path / "wide", pixels, fmt=fmt)
    assert np.array_equal(read_image(tmp_path / "wide").pixels, pixels)


@pytest.mark.parametrize(("fmt", "limit"), [("jpeg", 65500), ("webp", 16383)])
def test_too_wide_for_format(tmp_path: Path, fmt: str, limit: int) -> None:
    with pytest.raises(ImageError) as exc:
        write_image(tmp_path / "wide", np.zeros((1, 65535, 3), np.uint8), fmt=fmt)
    assert f"at most {limit}" in assert_one_line_naming(exc, "wide")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["png", "png16", "jpeg", "tiff", "webp", "bmp", "gif"])
def test_pixel_limit_on_every_decoder_and_override(tmp_path: Path, fmt: str) -> None:
    pixels = random_pixels(4, 5, 3)
    path = tmp_path / f"img.{fmt}"
    if fmt == "png16":
        write_image(path, pixels.astype(np.uint16), fmt="png")
    elif fmt == "gif":
        PILImage.fromarray(pixels).save(path)
    else:
        write_image(path, pixels, fmt=fmt)
    with pytest.raises(ImageError) as exc:
        read_image(path, max_pixels=19)
    message = assert_one_line_naming(exc, f"img.{fmt}")
    assert "5x4" in message
    assert "19 pixels" in message
    assert "--max-pixels" in message
    assert read_image(path, max_pixels=20).pixels.shape[:2] == (4, 5)
    assert read_image(path, max_pixels=0).pixels.shape[:2] == (4, 5)
    assert read_image(path, max_pixels=None).pixels.shape[:2] == (4, 5)


def test_png_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # A header claiming 100000 x 100000 (10 Gpx) over a few bytes of data.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    (tmp_path / "bomb.png").write_bytes(bomb + png_chunk(b"IEND", b""))
    with pytest.raises(ImageError) as exc:
        read_image(tmp_path / "bomb.png")
    assert f"{DEFAULT_MAX_PIXELS:,}" in assert_one_line_naming(exc, "bomb.png")


def test_tiff_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((2, 2), np.uint8), metadata=None)
    with tifffile.TiffFile(path, mode="r+") as tf:
        tf.pages.first.tags["ImageWidth"].overwrite(200_000)
        tf.pages.first.tags["ImageLength"].overwrite(200_000)
    with pytest.raises(ImageError) as exc:
        read_image(path)
    assert "200000x200000" in assert_one_line_naming(exc, "bomb.tif")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    write_image(path, random_pixels(2, 2, 3), fmt="png")
    path.chmod(0)
    with pytest.raises(ImageError) as exc:
        read_image(path)
    assert "permission denied" in assert_one_line_naming(exc, "secret.png")


def test_unreadable_file_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(images, "open", refuse, raising=False)  # shadows the builtin in that module
    with pytest.raises(ImageError) as exc:
        read_image(tmp_path / "secret.png")
    assert "permission denied" in assert_one_line_naming(exc, "secret.png")


def test_non_utf8_file_name(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9-\xff.png")  # not UTF-8: surrogate-escaped on Linux
    path = tmp_path / name
    pixels = random_pixels(3, 3, 4, np.uint16)  # 16-bit: the OpenCV paths too
    write_image(path, pixels, fmt="png")
    assert os.fsencode(path).endswith(b"caf\xe9-\xff.png")
    assert np.array_equal(read_image(path).pixels, pixels)
    (tmp_path / os.fsdecode(b"bad\xe9.png")).write_bytes(b"junk")
    with pytest.raises(ImageError) as exc:
        read_image(tmp_path / os.fsdecode(b"bad\xe9.png"))
    assert_one_line_naming(exc, "bad\\xe9.png")
    str(exc.value).encode("utf-8")  # printable
    raw = os.fsencode(tmp_path) + b"/raw\xfe.tif"  # bytes paths are accepted as they are
    write_image(raw, pixels, fmt="tiff")
    assert np.array_equal(read_image(raw).pixels, pixels)


# --------------------------------------------------------------------------- atomic writes


def test_write_failure_leaves_nothing_and_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out.png"
    dest.write_bytes(b"old contents")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images.os, "fsync", disk_full)
    with pytest.raises(ImageError) as exc:
        write_image(dest, random_pixels(4, 4, 3), fmt="png")
    assert "No space left" in assert_one_line_naming(exc, "out.png")
    assert dest.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_encoder_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise ValueError("encoder exploded")

    monkeypatch.setattr(images, "_encode_pillow", broken)
    with pytest.raises(ImageError) as exc:
        write_image(tmp_path / "out.jpg", random_pixels(4, 4, 3), fmt="jpeg")
    assert "encoder exploded" in assert_one_line_naming(exc, "out.jpg")
    assert not list(tmp_path.iterdir())


def test_interrupted_write_removes_the_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(images.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", random_pixels(2, 2, 3), fmt="png")
    assert not list(tmp_path.iterdir())


def test_write_into_missing_or_readonly_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as exc:
        write_image(tmp_path / "missing" / "out.png", random_pixels(2, 2, 3), fmt="png")
    assert "does not exist" in assert_one_line_naming(exc, "out.png")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(ImageError, match="Permission denied"):
            write_image(locked / "out.png", random_pixels(2, 2, 3), fmt="png")
        assert not list(locked.iterdir())


def test_written_file_has_umask_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    write_image(tmp_path / "out.png", random_pixels(2, 2, 3), fmt="png")
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / "out.png").chmod(0o640)
    write_image(tmp_path / "out.png", random_pixels(2, 2, 3), fmt="png")
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o640


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        write_image(Path("x.gif"), np.zeros((1, 1, 3), np.uint8), fmt="gif")
    with pytest.raises(TypeError):
        write_image(Path("x.png"), np.zeros((1, 1, 3), np.int32), fmt="png")
    with pytest.raises(ValueError, match="C in 1-4"):
        write_image(Path("x.png"), np.zeros((1, 1, 5), np.uint8), fmt="png")
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(Path("x.png"), max_pixels=-1)


def test_in_memory_bytes_match_a_real_decoder(tmp_path: Path) -> None:
    """Cross-check: what we write as 8-bit PNG is what Pillow reads."""
    pixels = random_pixels(5, 5, 4)
    write_image(tmp_path / "x.png", pixels, fmt="png")
    with PILImage.open(io.BytesIO((tmp_path / "x.png").read_bytes())) as im:
        assert np.array_equal(np.asarray(im), pixels)
