"""An attached image made ready for a vision model: bounded in pixels, first frame, upright,
resized, re-encoded. CPU-bound: `decoded_image` runs in a worker thread.

The costs are bounded before any pixel is decoded. `Image.open` reads only the header; Pillow's
decompression-bomb guard stays on (it refuses more than twice `Image.MAX_IMAGE_PIXELS` at open),
and `MAX_DECODED_PIXELS` is checked on the size that will actually be decoded: a PNG declaring
30000×30000 is refused without allocating its pixels. A JPEG is decoded at 1/2, 1/4 or 1/8 of its
size when that is still larger than the result (`Image.draft`, done by libjpeg itself), so a 48 MP
photo costs a few megapixels. Of an animation (GIF, WebP, APNG) only the first frame is decoded:
nothing here seeks to another one, so a 1,000-frame GIF costs one frame.

Re-encoding drops the metadata (a photo's EXIF, with its GPS position, never reaches the model).
"""

from __future__ import annotations

import io
import struct
import threading
from typing import Final

from PIL import Image, ImageOps

from bot.errors import ChinwagError
from bot.ports import ImagePart

MAX_DECODED_PIXELS: Final = 32_000_000
"""The most pixels decoded for one image (an 8K screenshot has 33 M; a 32 MP RGBA image takes 128 MB
while it is decoded). Above it the image is refused; a JPEG counts after `Image.draft`."""

# Formats whose decoders are pure raster and well-trodden. Not EPS (Pillow runs Ghostscript on it),
# nor the dozens of rare formats Pillow would otherwise try on unknown bytes. "JPEG" also opens MPO
# (many phone photos: a JPEG with a second, preview image), which has no opener of its own.
_FORMATS: Final = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
_JPEG_QUALITY: Final = 85
# Images decoded at once in the whole process: each may take up to ~128 MB while it is decoded
# (MAX_DECODED_PIXELS of RGBA), and the default thread pool would run one per thread. A threading
# semaphore, not an asyncio one: it is taken in the worker thread, whatever event loop asked.
_DECODE_SLOTS: Final = threading.BoundedSemaphore(2)
_HIGH_BIT_DEPTH_MODES: Final = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


class TooManyPixels(ChinwagError):
    """The image has more pixels than may be decoded; `width`/`height` are its declared size, or
    None when Pillow's own guard refused it at open (its size is then not known here)."""

    def __init__(self, width: int | None = None, height: int | None = None) -> None:
        super().__init__("too many pixels")
        self.width = width
        self.height = height


class UnreadableImage(ChinwagError):
    """The bytes are not an image Pillow can decode in an allowed format (truncated, garbage)."""


def decoded_image(data: bytes, name: str, max_side: int) -> ImagePart:
    """`data` decoded, its first frame turned upright (EXIF orientation), resized so that its longer
    side is at most `max_side`, and re-encoded: PNG when it has transparency, else JPEG.

    Raises `TooManyPixels` or `UnreadableImage`."""
    with _DECODE_SLOTS:
        return _decoded(data, name, max_side)


def _decoded(data: bytes, name: str, max_side: int) -> ImagePart:
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as image:
            return _prepared(image, name, max_side)
    except Image.DecompressionBombError:
        raise TooManyPixels() from None
    # What Pillow raises for a truncated or malformed file (UnidentifiedImageError is an OSError).
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise UnreadableImage(type(error).__name__) from None


def _prepared(image: Image.Image, name: str, max_side: int) -> ImagePart:
    declared_width, declared_height = image.size
    if image.format in ("JPEG", "MPO"):
        image.draft(None, _scaled_to_fit(image.size, max_side))
    if image.width * image.height > MAX_DECODED_PIXELS:
        raise TooManyPixels(declared_width, declared_height)
    image.load()  # the current frame, i.e. the first: an animation's other frames stay undecoded
    upright = ImageOps.exif_transpose(image)
    if upright.mode in _HIGH_BIT_DEPTH_MODES:
        # 16-bit grey (a PNG): converting it straight to RGB would clip almost every pixel to white.
        upright = upright.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    prepared, transparent = _rgb_or_rgba(upright)
    prepared.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if transparent:
        prepared.save(buffer, "PNG")
        mime_type = "image/png"
    else:
        prepared.save(buffer, "JPEG", quality=_JPEG_QUALITY)
        mime_type = "image/jpeg"
    return ImagePart(name, mime_type, buffer.getvalue(), prepared.width, prepared.height)


def _scaled_to_fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size `thumbnail` will give: `draft` then picks the smallest JPEG scale at least as big."""
    width, height = size
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _rgb_or_rgba(image: Image.Image) -> tuple[Image.Image, bool]:
    """RGBA when some pixel is not fully opaque (an alpha channel that is all 255, as in many
    screenshots, is dropped: JPEG is then much smaller); else RGB. Says which."""
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        lowest_alpha, _ = rgba.getchannel("A").getextrema()
        if isinstance(lowest_alpha, (int, float)) and lowest_alpha < 255:
            return rgba, True
        return rgba.convert("RGB"), False
    return image.convert("RGB"), False
