"""Modality and VOI transformations (PS3.3 C.11.1, C.11.2), in DCMTK's dcmimgle arithmetic.

* Modality: Modality LUT Sequence (0028,3000) if present, else Rescale Slope/Intercept.
* VOI: a window (0028,1050/1051) with VOI LUT Function (0028,1056) LINEAR, LINEAR_EXACT or
  SIGMOID; or a VOI LUT Sequence (0028,3010) item; or min-max over the image.
* The choice: the user's (``VoiChoice``), else the first window, else the first VOI LUT,
  else min-max; an unusable window or LUT is an error naming the element.

Arithmetic follows dcmimgle, the reference the tests compare against: the LINEAR window
output is truncated, not rounded; min-max uses centre (min+max+1)/2 and width max-min+1;
VOI LUT entries are scaled by 2^out_bits / 2^lut_bits. LINEAR_EXACT follows PS3.3
C.11.2.1.3.2 (DCMTK 3.6.7 treats it as LINEAR). For 8/16-bit stored data and a plain
rescale + window, the whole chain is one cached table (:func:`window_table`).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.errors import BadPixelData, ExportError

log = logging.getLogger(__name__)

VoiKind = Literal["auto", "window", "user", "lut", "minmax"]
BIG_ENDIAN = "1.2.840.10008.1.2.2"


@dataclass(frozen=True)
class VoiChoice:
    """Which VOI transformation to apply (index is 0-based)."""

    kind: VoiKind = "auto"
    index: int = 0
    center: float = 0.0
    width: float = 0.0


def _floats(value: object) -> list[float]:
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out = []
    for item in items:
        try:
            out.append(float(item))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


# ----------------------------------------------------------------------------- LUT items


@dataclass(frozen=True)
class Lut:
    """A LUT Descriptor + LUT Data pair (Modality or VOI LUT Sequence item)."""

    first: int
    data: np.ndarray
    bits: int
    explanation: str

    def lookup(self, values: np.ndarray) -> np.ndarray:
        # float64 first: on (u)int16 input ``values - first`` would wrap around, sending
        # values below the first mapped one to the last entry instead of the first
        inputs = np.trunc(np.asarray(values, dtype=np.float64))
        idx = np.clip(inputs - self.first, 0, len(self.data) - 1).astype(np.int64)
        return self.data[idx].astype(np.float64)


def little_endian(ds: Dataset) -> bool:
    """Whether ``ds`` was encoded little endian (its OB/OW values are in that byte order)."""
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsuid:
        return str(tsuid) != BIG_ENDIAN
    little = ds.original_encoding[1]
    return True if little is None else bool(little)


def ow_as_little_endian(raw: bytes) -> bytes:
    """OW bytes of a big-endian data set in little-endian word order (what pydicom's
    palette code and :func:`_lut_item` read); 8-bit entries packed two to a word come
    back in their order too."""
    even = len(raw) - len(raw) % 2
    return np.frombuffer(raw[:even], dtype=">u2").astype("<u2").tobytes() + raw[even:]


def _lut_item(item: Dataset, path: Path, seq: str, signed: bool, little: bool = True) -> Lut:
    desc = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if not isinstance(desc, MultiValue | list | tuple) or data is None or len(desc) != 3:
        raise BadPixelData(
            f"{path}: {seq} item lacks (0028,3002) LUTDescriptor (3 values) or (0028,3006) LUTData"
        )
    n, first, bits = (int(v) for v in desc)
    n = n or 65536
    if signed and first > 32767:
        first -= 65536
    raw = data
    if isinstance(raw, bytes | bytearray):
        if not little:  # OW in a big-endian file: pydicom leaves the bytes as written
            raw = ow_as_little_endian(bytes(raw))
        arr = np.frombuffer(raw, dtype="<u2" if len(raw) >= 2 * n else "u1")
    else:
        arr = np.asarray(list(raw) if isinstance(raw, MultiValue | list) else [raw])
    if len(arr) < n:
        raise BadPixelData(
            f"{path}: {seq} (0028,3006) LUTData has {len(arr)} entries but (0028,3002) "
            f"LUTDescriptor says {n}"
        )
    arr = arr[:n].astype(np.int64)
    if not 8 <= bits <= 16:
        bits = max(8, int(arr.max()).bit_length())
    elif int(arr.max()) >= 1 << bits:
        # dcmimgle keeps only the low bits (4096 -> 0 in a 12-bit LUT); saturating keeps
        # the LUT monotonic where it was, so say what was done
        log.warning(
            "%s: %s (0028,3006) LUTData holds %d, more than the %d bits of (0028,3002) "
            "LUTDescriptor allow; such entries are shown as the maximum",
            path,
            seq,
            int(arr.max()),
            bits,
        )
    explanation = str(item.get("LUTExplanation", "") or "")
    return Lut(first, arr, bits, explanation)


# ----------------------------------------------------------------------------- modality


def rescale(ds: Dataset) -> tuple[float, float]:
    slope = _floats(ds.get("RescaleSlope"))
    intercept = _floats(ds.get("RescaleIntercept"))
    m = slope[0] if slope and math.isfinite(slope[0]) and slope[0] != 0 else 1.0
    b = intercept[0] if intercept and math.isfinite(intercept[0]) else 0.0
    return m, b


def domain(dtype: np.dtype) -> np.ndarray:
    """Every value of an 8/16-bit integer dtype, in the order of its unsigned view."""
    size = 1 << (8 * dtype.itemsize)
    udt = np.dtype(f"u{dtype.itemsize}")
    return np.arange(size, dtype=np.uint32).astype(udt).view(dtype)


@functools.lru_cache(maxsize=64)
def window_table(
    dtype: str,
    slope: float,
    intercept: float,
    center: float,
    width: float,
    function: str,
    bits: int,
    invert: bool,
) -> np.ndarray:
    """Stored value (unsigned view) -> output, for rescale + window (read-only, cached)."""
    values = domain(np.dtype(dtype)).astype(np.float64) * slope + intercept
    high = (1 << bits) - 1
    low_v, high_v = (float(high), 0.0) if invert else (0.0, float(high))
    out = _window(values, center, width, function, low_v, high_v)
    table = np.clip(out, 0, high).astype(np.uint8 if bits == 8 else np.uint16)
    table.flags.writeable = False
    return table


def output_signed(ds: Dataset, signed: bool, bits_stored: int) -> bool:
    """Whether the Modality LUT output can be negative (the VOI LUT input domain).

    A VOI LUT Descriptor's first mapped value (0028,3002) is read as signed when it is, as
    dcmimgle does: over the range Bits Stored allows, Rescale Slope/Intercept can make
    unsigned stored values negative (CT: 0..4095 - 1024), and a Modality LUT Sequence
    always outputs unsigned values.
    """
    if ds.get("ModalityLUTSequence"):
        return False
    m, b = rescale(ds)
    bits = max(1, min(bits_stored, 32))
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return min(m * lo + b, m * hi + b) < 0


def modality(ds: Dataset, values: np.ndarray, path: Path, signed: bool) -> np.ndarray:
    """Stored values -> modality values (float64)."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        lut = _lut_item(seq[0], path, "(0028,3000) ModalityLUTSequence", signed, little_endian(ds))
        return lut.lookup(values)
    m, b = rescale(ds)
    out = values.astype(np.float64)
    if m != 1.0:
        out *= m
    if b != 0.0:
        out += b
    return out


# ----------------------------------------------------------------------------- VOI


def _window(
    values: np.ndarray, center: float, width: float, function: str, low: float, high: float
) -> np.ndarray:
    outrange = high - low
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp -> inf far below the centre: output low
            return outrange / (1.0 + np.exp(-4.0 * (values - center) / width)) + low
    if function == "LINEAR_EXACT":
        out = ((values - center) / width + 0.5) * outrange + low
        out = np.where(values <= center - width / 2, low, out)
        return np.where(values > center + width / 2, high, out)
    # LINEAR (PS3.3 C.11.2.1.2.1), in dcmimgle's arithmetic
    width_1 = width - 1.0
    if width_1 <= 0:
        # PS3.3 C.11.2.1.2.1 with w = 1: x <= c - 0.5 -> min, else max (a constant image's
        # min-max window, c = x + 0.5, puts x at the boundary: black, as dcmimgle)
        return np.where(values <= center - 0.5, low, high).astype(np.float64)
    left = center - 0.5 - width_1 / 2
    right = center - 0.5 + width_1 / 2
    offset = high - ((center - 0.5) / width_1 + 0.5) * outrange
    gradient = outrange / width_1
    out = offset + values * gradient
    out = np.where(values <= left, low, out)
    return np.where(values > right, high, out)


def _windows(ds: Dataset) -> list[tuple[float, float, str]]:
    centers = _floats(ds.get("WindowCenter"))
    widths = _floats(ds.get("WindowWidth"))
    explanations = ds.get("WindowCenterWidthExplanation")
    if isinstance(explanations, MultiValue | list):
        expl = [str(e) for e in explanations]
    else:
        expl = [str(explanations or "")]
    out = []
    for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
        out.append((c, w, expl[i] if i < len(expl) else ""))
    return out


def _function(ds: Dataset) -> str:
    fn = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    return fn if fn in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"


@dataclass(frozen=True)
class VoiPlan:
    """The VOI step resolved for one object: a window or a LUT, and its description."""

    kind: Literal["window", "lut", "minmax"]
    center: float = 0.0
    width: float = 0.0
    function: str = "LINEAR"
    lut: Lut | None = None
    label: str = ""


def plan_voi(ds: Dataset, choice: VoiChoice, path: Path, signed: bool) -> VoiPlan:
    """Resolve ``choice`` against what the object carries; raise naming the element."""
    windows = _windows(ds)
    seq = ds.get("VOILUTSequence")
    luts = list(seq) if seq else []
    fn = _function(ds)
    if choice.kind == "user":
        if not choice.width > 0:
            raise ExportError(f"--window: width must be positive, got {choice.width}")
        return VoiPlan(
            "window",
            choice.center,
            choice.width,
            fn,
            label=f"window C={choice.center:g} W={choice.width:g} (user)",
        )
    if choice.kind == "minmax":
        return VoiPlan("minmax", function=fn, label="min-max")
    if choice.kind == "window" or (choice.kind == "auto" and windows):
        i = choice.index if choice.kind == "window" else 0
        if i >= len(windows):
            raise ExportError(
                f"{path}: window {i + 1} requested but (0028,1050) WindowCenter / (0028,1051) "
                f"WindowWidth hold {len(windows)}"
            )
        c, w, expl = windows[i]
        # PS3.3 C.11.2.1.2: width >= 1 for LINEAR (and SIGMOID, as dcmimgle), > 0 for
        # LINEAR_EXACT (C.11.2.1.3.2)
        narrowest = "> 0" if fn == "LINEAR_EXACT" else ">= 1"
        usable = w > 0 if fn == "LINEAR_EXACT" else w >= 1
        if not (math.isfinite(c) and math.isfinite(w) and usable):
            if choice.kind == "window":
                raise BadPixelData(
                    f"{path}: window {i + 1} in (0028,1050) WindowCenter / (0028,1051) "
                    f"WindowWidth is not usable (C={c}, W={w}); with (0028,1056) "
                    f"VOILUTFunction {fn} the width must be {narrowest}"
                )
            log.warning("%s: window 1 (C=%s, W=%s) unusable, falling back", path, c, w)
        else:
            tail = f" {expl}" if expl else ""
            return VoiPlan("window", c, w, fn, label=f"window C={c:g} W={w:g}{tail}".strip())
    if choice.kind == "lut" or (choice.kind == "auto" and luts):
        i = choice.index if choice.kind == "lut" else 0
        if i >= len(luts):
            raise ExportError(
                f"{path}: VOI LUT {i + 1} requested but (0028,3010) VOILUTSequence holds "
                f"{len(luts)} item(s)"
            )
        lut = _lut_item(luts[i], path, "(0028,3010) VOILUTSequence", signed, little_endian(ds))
        label = f"VOI LUT {i + 1}" + (f" {lut.explanation}" if lut.explanation else "")
        return VoiPlan("lut", lut=lut, label=label)
    return VoiPlan("minmax", function=fn, label="min-max")


def apply_voi(
    plan: VoiPlan, values: np.ndarray, high: int, invert: bool, mod_min: float, mod_max: float
) -> tuple[np.ndarray, str]:
    """Modality values -> output values in [0, high] (float64, before truncation)."""
    low_v, high_v = (float(high), 0.0) if invert else (0.0, float(high))
    if plan.kind == "lut":
        assert plan.lut is not None
        looked = plan.lut.lookup(values)
        # dcmimgle: low + entry * (high - low + 1) / 2^lut_bits, with low/high swapped when
        # inverting; i.e. 2^out_bits / 2^lut_bits (a bit shift) normally, and
        # high - entry * (high - 1) / 2^lut_bits inverted (entry 0 -> high, never 0)
        scale = float(high + 1) if not invert else -float(high - 1)
        return low_v + looked * scale / float(1 << plan.lut.bits), plan.label
    if plan.kind == "minmax":
        center = (mod_min + mod_max + 1) / 2
        width = mod_max - mod_min + 1
        label = f"min-max C={center:g} W={width:g}"
        return _window(values, center, width, plan.function, low_v, high_v), label
    return _window(values, plan.center, plan.width, plan.function, low_v, high_v), plan.label
