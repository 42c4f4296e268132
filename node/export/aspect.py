"""The shape of one pixel: how much taller than wide it is shown (PS3.3 C.7.6.3.1.7).

An ultrasound, a scanned film or a CR plate may have pixels that are not square: drawn
one sample per point, the anatomy is squeezed. The PDF pages draw each image with its
physical proportions (the embedded samples stay native); PNGs stay one sample per pixel,
as dcm2pnm writes them.

Where the ratio comes from, in the order PS3.3 gives precedence: Pixel Spacing (0028,0030)
(top level, or the Pixel Measures of an enhanced object's Shared Functional Groups, else
of the frame's own Per-Frame Functional Groups item), Imager Pixel Spacing (0018,1164),
Nominal Scanned Pixel Spacing (0018,2010), then Pixel Aspect Ratio (0028,0034), which the
standard requires only when none of those is given.
Each is "row spacing \\ column spacing" (vertical \\ horizontal).
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: A ratio outside [1/LIMIT, LIMIT] is a wrong value, not a pixel shape: drawn square.
LIMIT = 16.0

_SOURCES = (
    ("(0018,1164)", "ImagerPixelSpacing"),
    ("(0018,2010)", "NominalScannedPixelSpacing"),
    ("(0028,0034)", "PixelAspectRatio"),
)


def _ratio(value: Any) -> float | None:
    """vertical / horizontal of a two-valued element, None when it does not give one."""
    try:
        vertical, horizontal = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (vertical > 0 and horizontal > 0):
        return None
    return vertical / horizontal


def _measured_spacing(groups: Any) -> Any:
    """Pixel Spacing of a functional groups item's Pixel Measures, or None."""
    try:
        return groups.PixelMeasuresSequence[0].PixelSpacing
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _pixel_spacing(ds: Dataset, frame: int) -> Any:
    if "PixelSpacing" in ds:
        return ds.PixelSpacing
    for keyword, index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", frame),
    ):
        items = ds.get(keyword)
        if items is not None and 0 <= index < len(items):
            spacing = _measured_spacing(items[index])
            if spacing is not None:
                return spacing
    return None


def pixel_aspect(ds: Dataset, frame: int = 0, warned: set[str] | None = None) -> float:
    """How many times taller than wide one pixel of frame ``frame`` (0-based) of ``ds`` is
    shown; 1.0 when unknown.

    An element present with an unusable value (one number, zero, text) is passed over
    for the next source, and a ratio beyond 16:1 is logged and ignored; with ``warned``
    (one set per document), once per element and value.
    """
    candidates = [("(0028,0030)", "PixelSpacing", _pixel_spacing(ds, frame))]
    candidates += [(tag, keyword, ds.get(keyword)) for tag, keyword in _SOURCES]
    for tag, keyword, value in candidates:
        if value is None:
            continue
        ratio = _ratio(value)
        if ratio is None:
            continue
        if not 1 / LIMIT <= ratio <= LIMIT:
            text = "\\".join(str(v) for v in value)
            seen = f"{keyword}={text}"
            if warned is None or seen not in warned:
                log.warning(
                    "%s %s %s gives pixels %.3g times taller than wide: ignored, drawn square",
                    tag,
                    keyword,
                    text,
                    ratio,
                )
            if warned is not None:
                warned.add(seen)
            return 1.0
        return ratio
    return 1.0
