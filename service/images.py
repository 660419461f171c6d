"""An uploaded photo, scan or drawing of one digit -> LeNet's input (the preprocessing: `preprocessing.py`).

Decoding is bounded before it is paid: a pixel cap read from the header, JPEGs decoded at reduced size, one
decode at a time per worker on a thread of its own, off the event loop.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from preprocessing import UPSCALE, ImageRejected, ink_high, normalise

__all__ = ["UPSCALE", "ImageRejected", "decode", "ink_high", "normalise", "to_lenet_input", "to_lenet_input_async"]

FORMATS = ("PNG", "JPEG")
# Pixels decoded at most (a 4K screen, 3840x2160, fits): checked from the header, before decoding. At the
# cap an RGBA PNG of noise took 0.44 s and 62 MB more than its bytes (BENCHMARKS.md: make bench).
MAX_PIXELS = 2**23
# A JPEG larger than this is decoded at 1/2, 1/4 or 1/8 of its size (Image.draft: the DCT's own scaling,
# no full decode): a 48-megapixel photo costs a 3-megapixel decode. The digit is read at 32x32.
JPEG_DRAFT = (1024, 1024)
# Image decodes at once per worker, off its event loop: probes and other requests are answered meanwhile.
DECODERS = 1
# Pillow's own bomb check reads the header as well; ours, lower, names our limit (its error would be a 415).
Image.MAX_IMAGE_PIXELS = None
_decoding = ThreadPoolExecutor(max_workers=DECODERS, thread_name_prefix="tinyserve-decode")


def decode(data: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> grayscale float array in [0, 1] (H, W); at most MAX_PIXELS are decoded."""
    if not data:
        raise ImageRejected("image: the uploaded file is empty; expected a PNG or JPEG image")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in FORMATS:
            raise ImageRejected(
                f"image: expected a PNG or JPEG image, got {image.format or 'an unknown format'}", status=415
            )
        width, height = image.size
        if image.format == "JPEG":
            image.draft("L", JPEG_DRAFT)  # from the header: sets the scale the decoder will use
        if image.size[0] * image.size[1] > MAX_PIXELS:
            raise ImageRejected(
                f"image: expected at most {MAX_PIXELS} pixels ({MAX_PIXELS / 1e6:.1f} megapixels), "
                f"got {width}x{height}",
                status=413,
            )
        gray = ImageOps.exif_transpose(image).convert("L")
    except ImageRejected:
        raise
    except UnidentifiedImageError as e:
        raise ImageRejected("image: expected a PNG or JPEG image, got data that is not an image", 415) from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt files
        raise ImageRejected(f"image: the file is damaged or truncated ({str(e)[:200]})") from e
    return np.asarray(gray, dtype=np.float32) / 255.0


async def to_lenet_input_async(data: bytes) -> np.ndarray:
    """`to_lenet_input` on the decoding thread (DECODERS per worker): the event loop turns meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_decoding, to_lenet_input, data)


def to_lenet_input(data: bytes) -> np.ndarray:
    """Upload bytes -> float32 (1, 32, 32), ink high, in [0, 1]."""
    return normalise(ink_high(decode(data)))[None]
