"""PNG writer: 8- or 16-bit grayscale, 24-bit RGB, with a whitelist of text chunks only.

The only tEXt chunks written are those in :data:`TEXT_KEYS`; callers pass values already
filtered by :mod:`node.export.deid`, and anything else is dropped here as a second line of
defence. No time chunk, no ICC/EXIF chunk, non-interlaced. The bytes are returned, so the
caller writes them atomically.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from node.errors import ExportError

log = logging.getLogger(__name__)

#: The text chunks a rendered PNG may carry (PNG keywords, PS3.15-safe values only).
TEXT_KEYS = ("Modality", "StudyDate", "SeriesDescription", "Window", "Software")


def encode(pixels: np.ndarray, text: dict[str, str], compress_level: int = 6) -> bytes:
    """PNG bytes for a uint8/uint16 grayscale or uint8 RGB array."""
    if pixels.ndim == 2 and pixels.dtype == np.uint8:
        image = Image.fromarray(np.ascontiguousarray(pixels))  # L
    elif pixels.ndim == 2 and pixels.dtype == np.uint16:
        image = Image.fromarray(np.ascontiguousarray(pixels.astype("<u2", copy=False)))  # I;16
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        rgb = pixels if pixels.dtype == np.uint8 else (pixels >> 8).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(rgb))  # RGB
    else:
        raise ExportError(f"cannot write PNG from an array of shape {pixels.shape}")
    info = PngInfo()
    for key in TEXT_KEYS:
        value = text.get(key, "")
        if value:
            info.add_text(key, value.encode("latin-1", "replace").decode("latin-1"))
    dropped = sorted(set(text) - set(TEXT_KEYS))
    if dropped:
        log.debug("PNG text chunks not on the whitelist dropped: %s", ", ".join(dropped))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()
