"""Stored pixel values -> display values, as PS3.3 C.11 and PS3.4 N.2 describe the pipeline.

Grayscale (MONOCHROME1/2)::

    stored value -> Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence)
                 -> VOI (window LINEAR / LINEAR_EXACT / SIGMOID, or VOI LUT Sequence)
                 -> Presentation LUT Shape INVERSE / MONOCHROME1 inversion
                 -> 8- or 16-bit output

For integer stored values of up to 16 bits the whole chain is folded into one lookup table
(256 or 65536 entries) per object, so each pixel costs one table look-up. The arithmetic
follows DCMTK's dcmimgle (the reference the tests compare against): the linear window
output is truncated, not rounded; min-max uses centre (min+max+1)/2 and width max-min+1.

Colour: RGB passes through, YBR_FULL/YBR_FULL_422 arrive as RGB from the decoder,
PALETTE COLOR goes through the (possibly segmented) palette; samples wider than the output
are shifted down, narrower ones scaled up. An ICC profile is applied only when asked.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.errors import BadPixelData, ExportError
from node.export.decode import PixelInfo

log = logging.getLogger(__name__)

VoiKind = Literal["auto", "window", "user", "lut", "minmax"]


@dataclass(frozen=True)
class VoiChoice:
    """Which VOI transformation to apply (index is 0-based)."""

    kind: VoiKind = "auto"
    index: int = 0
    center: float = 0.0
    width: float = 0.0


@dataclass(frozen=True)
class Rendered:
    """One display-ready frame: uint8/uint16, (rows, cols) or (rows, cols, 3)."""

    pixels: np.ndarray
    voi: str
    frame: int


GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")


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
        idx = np.clip(np.trunc(values) - self.first, 0, len(self.data) - 1).astype(np.int64)
        return self.data[idx].astype(np.float64)


def _lut_item(item: Dataset, path: Path, seq: str, signed: bool) -> Lut:
    desc = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if desc is None or data is None or len(desc) != 3:
        raise BadPixelData(
            f"{path}: {seq} item lacks (0028,3002) LUTDescriptor (3 values) or (0028,3006) LUTData"
        )
    n, first, bits = (int(v) for v in desc)
    n = n or 65536
    if signed and first > 32767:
        first -= 65536
    raw = data
    if isinstance(raw, bytes | bytearray):
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
    explanation = str(item.get("LUTExplanation", "") or "")
    return Lut(first, arr, bits, explanation)


# ----------------------------------------------------------------------------- modality


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope = _floats(ds.get("RescaleSlope"))
    intercept = _floats(ds.get("RescaleIntercept"))
    m = slope[0] if slope and math.isfinite(slope[0]) and slope[0] != 0 else 1.0
    b = intercept[0] if intercept and math.isfinite(intercept[0]) else 0.0
    return m, b


def _domain(dtype: np.dtype) -> np.ndarray:
    """Every value of an 8/16-bit integer dtype, in the order of its unsigned view."""
    size = 1 << (8 * dtype.itemsize)
    udt = np.dtype(f"u{dtype.itemsize}")
    return np.arange(size, dtype=np.uint32).astype(udt).view(dtype)


@functools.lru_cache(maxsize=64)
def _window_table(
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
    values = _domain(np.dtype(dtype)).astype(np.float64) * slope + intercept
    high = (1 << bits) - 1
    low_v, high_v = (float(high), 0.0) if invert else (0.0, float(high))
    out = _window(values, center, width, function, low_v, high_v)
    table = np.clip(out, 0, high).astype(np.uint8 if bits == 8 else np.uint16)
    table.flags.writeable = False
    return table


def modality(ds: Dataset, values: np.ndarray, path: Path, signed: bool) -> np.ndarray:
    """Stored values -> modality values (float64)."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        return _lut_item(seq[0], path, "(0028,3000) ModalityLUTSequence", signed).lookup(values)
    m, b = _rescale(ds)
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
        return outrange / (1.0 + np.exp(-4.0 * (values - center) / width)) + low
    if function == "LINEAR_EXACT":
        out = ((values - center) / width + 0.5) * outrange + low
        out = np.where(values <= center - width / 2, low, out)
        return np.where(values > center + width / 2, high, out)
    # LINEAR (PS3.3 C.11.2.1.2.1), in dcmimgle's arithmetic
    width_1 = width - 1.0
    if width_1 <= 0:
        return np.where(values < center - 0.5, low, high).astype(np.float64)
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
        if not (math.isfinite(c) and math.isfinite(w) and w >= 1):
            if choice.kind == "window":
                raise BadPixelData(
                    f"{path}: window {i + 1} in (0028,1050) WindowCenter / (0028,1051) "
                    f"WindowWidth is not usable (C={c}, W={w}); width must be >= 1"
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
        lut = _lut_item(luts[i], path, "(0028,3010) VOILUTSequence", signed)
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
        if invert:
            looked = float((1 << plan.lut.bits) - 1) - looked
        # dcmimgle scales LUT entries by 2^out_bits / 2^lut_bits (a bit shift)
        return looked * float(high + 1) / float(1 << plan.lut.bits), plan.label
    if plan.kind == "minmax":
        center = (mod_min + mod_max + 1) / 2
        width = mod_max - mod_min + 1
        label = f"min-max C={center:g} W={width:g}"
        return _window(values, center, width, plan.function, low_v, high_v), label
    return _window(values, plan.center, plan.width, plan.function, low_v, high_v), plan.label


# ----------------------------------------------------------------------------- grayscale


def _inverted(ds: Dataset, photometric: str) -> bool:
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if shape == "INVERSE":
        return photometric != "MONOCHROME1"
    return photometric == "MONOCHROME1"


def render_gray(
    ds: Dataset,
    info: PixelInfo,
    arrays: list[tuple[int, np.ndarray]],
    path: Path,
    choice: VoiChoice,
    bits: int,
) -> list[Rendered]:
    """Render grayscale frames (stored values) through modality, VOI and presentation."""
    plan = plan_voi(ds, choice, path, info.signed)
    invert = _inverted(ds, info.photometric)
    high = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    first = arrays[0][1]
    use_table = first.dtype.itemsize <= 2 and first.dtype.kind in "iu"
    udt = np.dtype(f"u{first.dtype.itemsize}")
    if use_table and plan.kind == "window" and "ModalityLUTSequence" not in ds:
        # the common case (a CT/MR series shares it): the whole table is cached
        slope, intercept = _rescale(ds)
        table = _window_table(
            first.dtype.str, slope, intercept, plan.center, plan.width, plan.function, bits, invert
        )
        return [Rendered(np.take(table, arr.view(udt)), plan.label, i) for i, arr in arrays]
    if use_table:
        mod_table = modality(ds, _domain(first.dtype), path, info.signed)
        mod_min = mod_max = 0.0
        if plan.kind == "minmax":
            present = np.zeros(mod_table.size, dtype=bool)
            for _, arr in arrays:
                present |= np.bincount(arr.view(udt).ravel(), minlength=mod_table.size) > 0
            vals = mod_table[present]
            mod_min, mod_max = float(vals.min()), float(vals.max())
        out_table, label = apply_voi(plan, mod_table, high, invert, mod_min, mod_max)
        table = np.clip(out_table, 0, high).astype(dtype)  # astype truncates like dcmimgle
        return [Rendered(np.take(table, arr.view(udt)), label, i) for i, arr in arrays]
    mods = [(index, modality(ds, arr, path, info.signed)) for index, arr in arrays]
    mod_min = min(float(m.min()) for _, m in mods)
    mod_max = max(float(m.max()) for _, m in mods)
    out = []
    for index, m in mods:
        vals, label = apply_voi(plan, m, high, invert, mod_min, mod_max)
        out.append(Rendered(np.clip(vals, 0, high).astype(dtype), label, index))
    return out


def burn_overlays(ds: Dataset, rendered: list[Rendered], path: Path, bits: int) -> list[Rendered]:
    """Burn graphics overlays (60xx,3000) into grayscale frames in white ("Replace" mode)."""
    # Dataset.keys(), not the Dataset: iterating it would convert every element
    tags = ds.keys()  # noqa: SIM118
    groups = sorted(t >> 16 for t in tags if 0x6000 <= t >> 16 <= 0x601E and t & 0xFFFF == 0x3000)
    if not groups:
        return rendered
    high = (1 << bits) - 1
    out = list(rendered)
    for group in groups:
        kind = str(ds.get((group << 16) | 0x0040, "G").value or "G").strip().upper()
        if kind != "G":
            continue
        try:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                mask = ds.overlay_array(group)
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            log.warning("%s: overlay group %04X not shown: %s", path, group, exc)
            continue
        origin = ds.get((group << 16) | 0x0050)
        row0, col0 = (int(v) - 1 for v in origin.value) if origin is not None else (0, 0)
        ifo = ds.get((group << 16) | 0x0051)
        first_frame = int(ifo.value) if ifo is not None and ifo.value else 1
        for i, r in enumerate(out):
            if mask.ndim == 2:
                m = mask
            elif 0 <= r.frame - (first_frame - 1) < len(mask):
                m = mask[r.frame - (first_frame - 1)]
            else:
                continue
            pixels = r.pixels.copy()
            rows, cols = pixels.shape[:2]
            top, left = max(row0, 0), max(col0, 0)
            sub = m[top - row0 : top - row0 + rows - top, left - col0 : left - col0 + cols - left]
            region = pixels[top : top + sub.shape[0], left : left + sub.shape[1]]
            region[sub.astype(bool)] = high
            out[i] = Rendered(pixels, r.voi, r.frame)
    return out


# ----------------------------------------------------------------------------- colour


def _to_bits(arr: np.ndarray, in_bits: int, bits: int) -> np.ndarray:
    dtype = np.uint8 if bits == 8 else np.uint16
    a = arr.astype(np.uint32) if arr.dtype.kind != "u" else arr
    if in_bits == bits:
        return a.astype(dtype)
    if in_bits > bits:
        return (a >> (in_bits - bits)).astype(dtype)
    scale = ((1 << bits) - 1) / ((1 << in_bits) - 1)
    return (a.astype(np.float64) * scale).astype(dtype)


def render_palette(
    ds: Dataset, info: PixelInfo, arrays: list[tuple[int, np.ndarray]], path: Path, bits: int
) -> list[Rendered]:
    """PALETTE COLOR: indices through the (possibly segmented) palette to RGB."""
    from pydicom.pixels import apply_color_lut

    desc = ds.get("RedPaletteColorLookupTableDescriptor")
    if desc is None or len(desc) != 3:
        raise BadPixelData(
            f"{path}: PALETTE COLOR without a 3-value (0028,1101) "
            "RedPaletteColorLookupTableDescriptor"
        )
    n, first, lut_bits = (int(v) for v in desc)
    n = n or 65536
    out = []
    for index, arr in arrays:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < first or hi >= first + n:
            raise BadPixelData(
                f"{path}: frame {index + 1} has palette indices {lo}..{hi} outside the "
                f"{n} entries from {first} described by (0028,1101) "
                "RedPaletteColorLookupTableDescriptor"
            )
        try:
            rgb = apply_color_lut(arr, ds)
        except (ValueError, KeyError, IndexError, AttributeError) as exc:
            raise BadPixelData(
                f"{path}: palette (0028,1201..1203 / 0028,1221..1223) unusable: {exc}"
            ) from None
        in_bits = 8 if rgb.dtype == np.uint8 else (lut_bits if lut_bits in (8, 16) else 16)
        out.append(Rendered(_to_bits(rgb, in_bits, bits), "palette", index))
    return out


def render_colour(
    ds: Dataset,
    info: PixelInfo,
    arrays: list[tuple[int, np.ndarray]],
    path: Path,
    bits: int,
    icc: bool = False,
) -> list[Rendered]:
    """RGB (YBR already converted to RGB by the decoder) to 8/16-bit RGB."""
    out = []
    transform = None
    if icc and "ICCProfile" in ds and info.bits_allocated == 8:
        from pydicom.pixels import create_icc_transform

        try:
            transform = create_icc_transform(ds)
        except (OSError, ValueError) as exc:
            log.warning("%s: (0028,2000) ICCProfile not applied: %s", path, exc)
    for index, arr in arrays:
        if transform is not None:
            from pydicom.pixels import apply_icc_profile

            arr = apply_icc_profile(arr, transform=transform)
        label = "ICC" if transform is not None else "none"
        out.append(Rendered(_to_bits(arr, info.bits_stored, bits), label, index))
    return out


def render(
    ds: Dataset,
    info: PixelInfo,
    arrays: list[tuple[int, np.ndarray]],
    path: Path,
    choice: VoiChoice,
    bits: int,
    icc: bool = False,
    overlays: bool = True,
) -> list[Rendered]:
    """Render decoded frames of one object for display, by Photometric Interpretation."""
    if info.photometric in GRAY:
        if info.samples != 1:
            raise BadPixelData(
                f"{path}: (0028,0004) PhotometricInterpretation {info.photometric} with "
                f"(0028,0002) SamplesPerPixel {info.samples}; expected 1"
            )
        frames = render_gray(ds, info, arrays, path, choice, bits)
        return burn_overlays(ds, frames, path, bits) if overlays else frames
    if info.photometric == "PALETTE COLOR":
        return render_palette(ds, info, arrays, path, bits)
    if info.photometric in COLOUR:
        if info.samples != 3:
            raise BadPixelData(
                f"{path}: (0028,0004) PhotometricInterpretation {info.photometric} with "
                f"(0028,0002) SamplesPerPixel {info.samples}; expected 3"
            )
        return render_colour(ds, info, arrays, path, bits, icc)
    raise BadPixelData(
        f"{path}: (0028,0004) PhotometricInterpretation {info.photometric!r} is not rendered "
        "(supported: MONOCHROME1/2, PALETTE COLOR, RGB, YBR_FULL, YBR_FULL_422, YBR_RCT/ICT)"
    )
