"""Checking and normalising images from the open web (shared by the downloader and the builder)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# The largest real Yoga-82 images are a few megapixels; anything declaring more than this is refused before its
# pixels are decoded. It is a per-call check rather than a change of PIL's global Image.MAX_IMAGE_PIXELS so that
# importing this package does not alter other code in the process (PIL's own, larger guard still applies).
MAX_IMAGE_PIXELS = 50_000_000

# Formats a web image plausibly is; others (e.g. PIL reading an .ico or a PDF-like header) are not photos.
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"})


class InvalidImage(ValueError):
    """The bytes are not a usable image; ``reason`` is a short code for summaries and failures.csv."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def open_checked(source: bytes | str | Path) -> Image.Image:
    """Open an image and fully decode it, refusing non-images, truncated files and decompression bombs.

    Returns the decoded image (first frame for animations). Raises InvalidImage with reason ``empty_body``,
    ``not_an_image``, ``decompression_bomb`` or ``corrupt_image``.
    """
    if isinstance(source, bytes):
        if not source:
            raise InvalidImage("empty_body")
        opener = lambda: io.BytesIO(source)  # a fresh BytesIO per open
    else:
        if Path(source).stat().st_size == 0:
            raise InvalidImage("empty_body")
        opener = lambda: source
    try:
        # verify() checks structure (e.g. PNG chunk CRCs) without decoding; it leaves the image unusable, so the
        # file is opened twice. load() then decodes every pixel, which is what catches truncated JPEGs.
        with Image.open(opener()) as probe:
            _check_header(probe)
            probe.verify()
        image = Image.open(opener())
        _check_header(image)
        image.load()
        return image
    except InvalidImage:
        raise
    except UnidentifiedImageError as error:
        raise InvalidImage("not_an_image", str(error)) from None
    except Image.DecompressionBombError as error:
        raise InvalidImage("decompression_bomb", str(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as error:
        raise InvalidImage("corrupt_image", str(error)) from None


def _check_header(image: Image.Image) -> None:
    if image.format not in IMAGE_FORMATS:
        raise InvalidImage("not_an_image", f"format {image.format}")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage("corrupt_image", f"size {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidImage("decompression_bomb", f"declares {width}x{height} pixels")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any mode: transparency is flattened onto white (not black, which is what convert() gives)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    return image.convert("RGB")


def shorter_side_size(size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """The size that makes the shorter side exactly ``shorter_side``, keeping the aspect ratio."""
    width, height = size
    if width <= height:
        return shorter_side, max(1, round(height * shorter_side / width))
    return max(1, round(width * shorter_side / height)), shorter_side


def normalized_jpeg(path: str | Path, resize: int | None = None, quality: int = 90) -> bytes:
    """The image at ``path`` as RGB JPEG bytes, its shorter side scaled to ``resize`` when given.

    A file that already is a baseline RGB JPEG with nothing to change is returned byte for byte, so no
    generation loss is added to the original data. Raises InvalidImage.
    """
    path = Path(path)
    image = open_checked(path)
    unchanged = (
        resize is None
        and image.format == "JPEG"
        and image.mode == "RGB"
        and image.getexif().get(0x0112, 1) == 1  # no EXIF rotation to apply
    )
    if unchanged:
        image.close()
        return path.read_bytes()
    try:
        rgb = to_rgb(image)
        if resize is not None:
            target = shorter_side_size(rgb.size, resize)
            if target != rgb.size:
                rgb = rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()
    finally:
        image.close()
