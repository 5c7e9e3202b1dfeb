"""Image (and later video) file I/O."""

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
