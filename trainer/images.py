"""Training images read as they look: every image mode PIL opens becomes 8-bit RGB by a stated rule, or is refused
by name.

- 8-bit colour and greyscale modes (``RGB``, ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``): PIL's own
  conversion to RGB.
- 16-bit greyscale (``I;16`` and its byte orders; ``I`` with values in 0..65535, as older Pillows open 16-bit PNGs):
  scaled by 255/65535 (value / 257, rounded), not clipped at 255 (which turns most of a 16-bit picture white).
- 32-bit float (``F``): values in [0, 1] scaled by 255; any other range is refused (a float image has no agreed
  white).
- Transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, a palette or colour key with
  ``transparency``): composited over white, as a viewer shows it on a white page.
- Anything else (``LAB``: PIL's conversion keeps only the lightness; ``I`` outside 0..65535): refused.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

PLAIN_MODES = {"RGB", "L", "1", "P", "CMYK", "YCbCr", "HSV", "RGBX"}
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
SIXTEEN_BIT_MAX = 65535
# What a damaged or unsupported file raises from Image.open/load besides OSError (PIL's own decoders' errors).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ImageReadError(ValueError):
    """An image that cannot be read or converted faithfully; the message names the file and what to do."""


def _from_grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")


def _over_white(im: Image.Image) -> Image.Image:
    rgba = (im.convert("LA") if im.mode == "La" else im).convert("RGBA")  # PIL has no La -> RGBA
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(im: Image.Image, name: str) -> Image.Image:
    """``im`` (loaded) as 8-bit RGB by the module's rule; :class:`ImageReadError` naming ``name`` otherwise."""
    mode = im.mode
    if mode.startswith("I;16"):
        return _from_grey(np.rint(np.asarray(im, dtype=np.float64) / 257.0))
    if mode == "I":
        values = np.asarray(im)
        lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
        if lo < 0 or hi > SIXTEEN_BIT_MAX:
            raise ImageReadError(
                f"{name} is a 32-bit integer image with values {lo}..{hi}, outside the 16-bit range 0..65535 "
                "that is read as greyscale: save it as an 8- or 16-bit PNG"
            )
        return _from_grey(np.rint(values.astype(np.float64) / 257.0))
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            found = f"{np.nanmin(values):g}..{np.nanmax(values):g}" if values.size else "none"
            raise ImageReadError(
                f"{name} is a 32-bit float image with values {found}, outside [0, 1] (the range read as black to "
                "white): save it as an 8- or 16-bit PNG"
            )
        return _from_grey(np.rint(values * 255.0))
    if mode in ALPHA_MODES or (mode in PLAIN_MODES and "transparency" in im.info):
        return _over_white(im)
    if mode in PLAIN_MODES:
        return im.convert("RGB")
    raise ImageReadError(
        f"{name} has image mode {mode}, which is not converted to RGB faithfully here (PIL's conversion "
        "would drop its colour or range): save it as an RGB or greyscale PNG or JPEG"
    )


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """A truncated file fails to load even where another library switched PIL's LOAD_TRUNCATED_IMAGES on."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def read_rgb(path: Path) -> Image.Image:
    """The whole image decoded and converted (:func:`to_rgb`); :class:`ImageReadError` naming the file if it is not
    an image, is damaged or truncated, is a decompression bomb (PIL's ``Image.MAX_IMAGE_PIXELS`` rule) or has a mode
    that is refused."""
    name = Path(path).name
    try:
        with _strict_decoding(), Image.open(path) as im:
            im.load()
            return to_rgb(im, name)
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{name} is refused as a possible decompression bomb: {e}") from None
    except ImageReadError:
        raise
    except DECODE_ERRORS as e:
        raise ImageReadError(f"{name} cannot be read as an image (damaged, truncated or not an image: {e})") from None
