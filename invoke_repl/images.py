"""Loading an init image (`-I FILE`) into the RGB picture img2img starts from.

Whatever a user points -I at — a phone photo with EXIF rotation, a palette GIF, a transparent PNG, a CMYK JPEG,
a 16-bit scan — comes out as an upright 8-bit RGB image, and anything unusable fails with one line that names
the file. No torch here: the session loads (and rejects) init images before the model is needed.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["InitImageError", "load_init_image"]

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class InitImageError(ValueError):
    """The init image cannot be used; the message is one line naming the path."""


def load_init_image(path: str | os.PathLike[str]) -> Image.Image:
    """The image at `path` as an upright, fully loaded 8-bit RGB image (transparent areas over white)."""
    where = Path(path)
    if not where.exists() and where.is_symlink():  # exists() is False for a loop too: it is not "not found"
        raise InitImageError(f"init image is a link that loops or leads nowhere: {where}")
    if not where.exists():
        from invoke_repl.paths import fire_drawing

        shipped = fire_drawing()
        if where.name == shipped.name and shipped.is_file():  # the README's walkthrough, typed in another folder
            raise InitImageError(f"init image not found: {where} (the one that ships with invoke-repl is {shipped})")
        raise InitImageError(f"init image not found: {where}")
    if where.is_dir():
        raise InitImageError(f"init image is a directory, not a file: {where}")
    if not where.is_file():  # a FIFO, /dev/stdin or a device would block the session or never end
        raise InitImageError(f"init image is not a regular file: {where}")
    try:
        try:
            image = _open_upright(where)
        except ValueError as err:
            if not _text_chunk_refusal(err):
                raise
            # A workflow chunk over Pillow's 1 MiB text limit (ComfyUI, InvokeAI) made the pixels unreadable;
            # img2img reads no metadata, so the image is opened without its text chunks.
            from invoke_repl.pngtext import without_text_chunks

            image = _open_upright(io.BytesIO(without_text_chunks(where.read_bytes())))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InitImageError(
            f"init image is too large to open safely: {where} (over Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels)"
        ) from None
    except UnidentifiedImageError:
        raise InitImageError(f"init image is not an image file Pillow can read: {where}") from None
    except (OSError, SyntaxError, ValueError) as err:
        # Truncated or corrupt data ("image file is truncated", broken chunks), unreadable file.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InitImageError(f"init image could not be read: {where} ({reason})") from None
    return _to_rgb(image)


def _open_upright(source: Path | io.BytesIO) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow only warns between 1× and 2× MAX_IMAGE_PIXELS; treat that as the limit too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as opened:
            opened.load()
            return _upright(opened)


def _text_chunk_refusal(err: ValueError) -> bool:
    """Whether Pillow refused a PNG for its text chunks' size (its messages in PngImagePlugin, Pillow 9 to 13)."""
    return "Decompressed data too large" in str(err) or "Too much memory used in text chunks" in str(err)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phone photos are stored sideways); a broken EXIF block is ignored."""
    try:
        upright = ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError):
        upright = None
    return (upright if upright is not None else image).copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if mode in _ALPHA_MODES or mode == "P" or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, RGB, CMYK, YCbCr, LAB, HSV


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale scaled to 8 bits (Pillow's own convert clips I;16 at 255 instead of scaling)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        values = values * 255.0 if values.size and values.max() <= 1.0 else values
    elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = values / 257.0  # 65535 → 255 exactly; 16-bit data read as mode "I" by older Pillows too
    pixels = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L").convert("RGB")
