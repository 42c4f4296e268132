"""Stored pixel values -> display values: grayscale through the PS3.4 N.2 pipeline, colour.

Grayscale (MONOCHROME1/2)::

    stored value -> Modality LUT -> VOI (see :mod:`node.export.voi`)
                 -> Presentation LUT Shape INVERSE / MONOCHROME1 inversion
                 -> 8- or 16-bit output, graphics overlays (60xx) burnt in

Enhanced multi-frame objects take each frame's rescale and windows from their functional
groups (:mod:`node.export.groups`).

For integer stored values of up to 16 bits the whole chain is folded into one lookup table
(256 or 65536 entries) per object, so each pixel costs one table look-up.

Colour: RGB passes through, YBR_FULL/YBR_FULL_422 arrive as RGB from the decoder,
PALETTE COLOR goes through the (possibly segmented) palette; samples wider than the output
are shifted down, narrower ones scaled up. An ICC profile is applied only when asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.errors import BadPixelData
from node.export import overlays
from node.export.decode import MALFORMED, THREE_SAMPLES, PixelInfo
from node.export.groups import frame_view, has_groups, view_key
from node.export.voi import (
    VoiChoice,
    apply_voi,
    domain,
    little_endian,
    modality,
    output_signed,
    ow_as_little_endian,
    plan_voi,
    rescale,
    window_table,
)

log = logging.getLogger(__name__)

__all__ = ["Rendered", "VoiChoice", "render"]


@dataclass(frozen=True)
class Rendered:
    """One display-ready frame: uint8/uint16, (rows, cols) or (rows, cols, 3)."""

    pixels: np.ndarray
    voi: str
    frame: int


GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = THREE_SAMPLES


# ----------------------------------------------------------------------------- grayscale


def _inverted(ds: Dataset, photometric: str) -> bool:
    """An explicit (2050,0020) Presentation LUT Shape wins; without one, MONOCHROME1 implies
    INVERSE (PS3.4 N.2.1.1), as in DX/MG where MONOCHROME1 comes with INVERSE."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if shape in ("INVERSE", "IDENTITY"):
        return shape == "INVERSE"
    return photometric == "MONOCHROME1"


def _is_minmax(view: Dataset, info: PixelInfo, path: Path, choice: VoiChoice) -> bool:
    signed = output_signed(view, info.signed, info.bits_stored)
    return plan_voi(view, choice, path, signed).kind == "minmax"


def gray_span(
    ds: Dataset,
    info: PixelInfo,
    indices: Sequence[int],
    arrays: Callable[[], Iterable[tuple[int, np.ndarray]]],
    path: Path,
    choice: VoiChoice,
) -> tuple[float, float] | None:
    """The range of the modality values of the frames ``indices`` (each through its own
    rescale) when min-max is the VOI of any of them, else None.

    Min-max is one window for the whole object: frames rendered a batch at a time (a
    multi-frame object larger than ``export.max_pixels``) pass this range to
    :func:`render_gray`, computed over frames read one at a time, and come out as they would
    decoded whole. Whether min-max applies is decided from the headers (each frame's
    functional groups) first: ``arrays`` (the frames, decoded) is called only then.
    """
    views: dict[int, Dataset] = {}
    if has_groups(ds):
        plans: dict[tuple[object, ...], bool] = {}  # min-max or not, per group view
        for index in indices:
            view = views[index] = frame_view(ds, index, path)
            key = view_key(view)
            if key not in plans:
                plans[key] = _is_minmax(view, info, path, choice)
        minmax = any(plans.values())
    else:
        minmax = _is_minmax(ds, info, path, choice)
    if not minmax:
        return None
    lows, highs = [], []
    for index, arr in arrays():
        values = modality(views.get(index, ds), arr, path, info.signed)
        lows.append(float(values.min()))
        highs.append(float(values.max()))
    return (min(lows), max(highs)) if lows else None


def render_gray(
    ds: Dataset,
    info: PixelInfo,
    arrays: list[tuple[int, np.ndarray]],
    path: Path,
    choice: VoiChoice,
    bits: int,
    span: tuple[float, float] | None = None,
) -> list[Rendered]:
    """Render grayscale frames (stored values) through modality, VOI and presentation.

    Enhanced multi-frame objects take each frame's rescale and windows from its functional
    groups (:mod:`node.export.groups`); frames that share them are rendered together.
    ``span``: the min-max range of the whole object (:func:`gray_span`) when these are only
    some of its frames.
    """
    if not has_groups(ds):
        return _render_gray(ds, info, arrays, path, choice, bits, span)
    batches: dict[tuple[object, ...], tuple[Dataset, list[tuple[int, np.ndarray]]]] = {}
    for index, arr in arrays:
        view = frame_view(ds, index, path)
        batches.setdefault(view_key(view), (view, []))[1].append((index, arr))
    if span is None and len(batches) > 1:
        # min-max is one window for the whole object (as without groups)
        span = gray_span(ds, info, [i for i, _ in arrays], lambda: arrays, path, choice)
    out: list[Rendered] = []
    for view, group in batches.values():
        out.extend(_render_gray(view, info, group, path, choice, bits, span))
    return sorted(out, key=lambda r: r.frame)


def _render_gray(
    ds: Dataset,
    info: PixelInfo,
    arrays: list[tuple[int, np.ndarray]],
    path: Path,
    choice: VoiChoice,
    bits: int,
    span: tuple[float, float] | None = None,
) -> list[Rendered]:
    """Render frames that share one modality and VOI description (``ds``); ``span`` is the
    min-max range to use instead of these frames' own."""
    plan = plan_voi(ds, choice, path, output_signed(ds, info.signed, info.bits_stored))
    invert = _inverted(ds, info.photometric)
    high = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    first = arrays[0][1]
    use_table = first.dtype.itemsize <= 2 and first.dtype.kind in "iu"
    udt = np.dtype(f"u{first.dtype.itemsize}")
    if use_table and plan.kind == "window" and "ModalityLUTSequence" not in ds:
        # the common case (a CT/MR series shares it): the whole table is cached
        slope, intercept = rescale(ds)
        table = window_table(
            first.dtype.str, slope, intercept, plan.center, plan.width, plan.function, bits, invert
        )
        return [Rendered(np.take(table, arr.view(udt)), plan.label, i) for i, arr in arrays]
    if use_table:
        mod_table = modality(ds, domain(first.dtype), path, info.signed)
        mod_min = mod_max = 0.0
        if plan.kind == "minmax" and span is not None:
            mod_min, mod_max = span
        elif plan.kind == "minmax":
            present = np.zeros(mod_table.size, dtype=bool)
            for _, arr in arrays:
                present |= np.bincount(arr.view(udt).ravel(), minlength=mod_table.size) > 0
            vals = mod_table[present]
            mod_min, mod_max = float(vals.min()), float(vals.max())
        out_table, label = apply_voi(plan, mod_table, high, invert, mod_min, mod_max)
        table = np.clip(out_table, 0, high).astype(dtype)  # astype truncates like dcmimgle
        return [Rendered(np.take(table, arr.view(udt)), label, i) for i, arr in arrays]
    mods = [(index, modality(ds, arr, path, info.signed)) for index, arr in arrays]
    if span is not None:
        mod_min, mod_max = span
    else:
        mod_min = min(float(m.min()) for _, m in mods)
        mod_max = max(float(m.max()) for _, m in mods)
    out = []
    for index, m in mods:
        vals, label = apply_voi(plan, m, high, invert, mod_min, mod_max)
        out.append(Rendered(np.clip(vals, 0, high).astype(dtype), label, index))
    return out


def burn_overlays(
    ds: Dataset, info: PixelInfo, rendered: list[Rendered], path: Path, bits: int
) -> list[Rendered]:
    """Burn graphics overlays (60xx) into grayscale frames in white ("Replace" mode), as
    dcmj2pnm shows them (:mod:`node.export.overlays`)."""
    planes = overlays.graphics(ds, info, path)
    if not planes:
        return rendered
    out = []
    for r in rendered:
        pixels = r.pixels
        for overlay in planes:
            try:
                plane = overlay.plane(ds, info, r.frame)
            except (*MALFORMED, NotImplementedError) as exc:
                log.warning("%s: overlay group %04X not shown: %s", path, overlay.group, exc)
                continue
            if plane is None:
                continue
            if pixels is r.pixels:
                pixels = pixels.copy()
            overlay.burn(pixels, plane, (1 << bits) - 1)
        out.append(r if pixels is r.pixels else Rendered(pixels, r.voi, r.frame))
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


@dataclass(frozen=True)
class Palette:
    """A palette ready for pydicom's ``apply_color_lut``: its data set, the entries it
    maps and how many bits each entry holds."""

    source: Dataset
    entries: int
    bits: int


def _palette_source(ds: Dataset, first: int, path: Path) -> Palette:
    """The palette of ``ds`` as pydicom's ``apply_color_lut`` reads it right.

    ``ds`` itself when it can; else a copy of the palette elements (the values shared, not
    copied) with the first mapped value 0, the caller passing indices minus ``first``
    (pydicom reads a descriptor written US, 65436, as it stands where the pixels are
    signed and it means -100), and, for a big-endian file, the OW Palette Color LUT Data
    in little-endian order (pydicom reads them in the machine's byte order; segmented
    ones it reads in the transfer syntax's, so they stay as they are), and 8-bit entries
    packed two to a word, more than 256 of them, widened to one per word (pydicom indexes
    8-bit palettes with uint8 indices: entry 958 came out as entry 958 % 256). LUT Data
    whose length disagrees with the descriptor, or entries of other than 8 or 16 bits
    (12-bit palettes), are read as words (:func:`_odd_palette`), as dcmimage reads them.
    """
    big = not little_endian(ds)
    entries, _, lut_bits = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    entries = entries or 65536
    red = ds.get("RedPaletteColorLookupTableData")
    if red is None and lut_bits not in (8, 16):
        raise BadPixelData(
            f"{path}: (0028,1101) RedPaletteColorLookupTableDescriptor gives {lut_bits} bits "
            "per entry; segmented palettes (0028,1221..1223) must use 8 or 16"
        )
    words = _odd_palette(ds, entries, lut_bits, path) if red is not None else None
    if words is not None:
        entries = words
    packed_wide = words is None and entries > 256 and red is not None and len(red) < 2 * entries
    segmented_wide = entries > 256 and lut_bits == 8 and red is None
    if segmented_wide:
        _check_segments_widen(ds, big, path)
    if first == 0 and not big and not packed_wide and not segmented_wide and words is None:
        return Palette(ds, entries, lut_bits)
    copy = Dataset()
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        copy.file_meta = meta
    implicit, little = ds.original_encoding
    copy.set_original_encoding(implicit, little, ds.original_character_set)
    for colour in ("Red", "Green", "Blue", "Alpha"):
        desc = f"{colour}PaletteColorLookupTableDescriptor"
        if desc in ds:
            n, _, bits = (int(v) for v in ds[desc].value)
            if words is not None:
                n, bits = entries, 16
            copy.add_new(ds[desc].tag, "US", [n, 0, 16 if segmented_wide else bits])
        for data in (
            f"{colour}PaletteColorLookupTableData",
            f"Segmented{colour}PaletteColorLookupTableData",
        ):
            if data not in ds:
                continue
            value = ds[data].value
            if value and not data.startswith("Segmented"):
                if big:
                    value = ow_as_little_endian(bytes(value))
                if packed_wide:
                    value = np.frombuffer(value, np.uint8)[:entries].astype("<u2").tobytes()
                elif words is not None:
                    value = bytes(value)[: 2 * entries]
            elif value and segmented_wide:  # each byte (opcode, length, value) as a word
                value = np.frombuffer(value, np.uint8).astype("<u2").tobytes()
            copy.add_new(ds[data].tag, "OW", value)
    return Palette(copy, entries, lut_bits)


def _odd_palette(ds: Dataset, entries: int, bits: int, path: Path) -> int | None:
    """For Palette Color LUT Data that pydicom cannot size (it takes the bits per entry
    from the data length over the descriptor's count: 400 bytes for 256 entries became
    'uint12'), the entries to read as one word each; None when the data fits the
    descriptor (8-bit entries packed or one per word, or 16-bit ones).

    As dcmimage: 12-bit (or any other width) entries are words, and data shorter than the
    descriptor says is taken at its own length (a warning names both); of longer data only
    the entries described are used (dcmimage uses them all; an index beyond the descriptor
    is refused either way). The three colours must then hold as many words each.
    """
    lengths = {}
    for colour in ("Red", "Green", "Blue"):
        value = ds.get(f"{colour}PaletteColorLookupTableData")
        lengths[colour] = len(value) if value is not None else 0
    size = lengths["Red"]
    fits = size == 2 * entries or (bits == 8 and size in (entries, entries + 1))
    if bits in (8, 16) and fits and len(set(lengths.values())) == 1:
        return None
    if len({n // 2 for n in lengths.values()}) != 1 or size < 2:
        shown = ", ".join(f"{c} {n} bytes" for c, n in lengths.items())
        raise BadPixelData(
            f"{path}: (0028,1201..1203) Red/Green/Blue PaletteColorLookupTableData differ in "
            f"length ({shown}) and do not fit (0028,1101) RedPaletteColorLookupTableDescriptor "
            f"({entries} entries of {bits} bits); the palette cannot be read"
        )
    words = size // 2
    if words != entries:
        log.warning(
            "%s: (0028,1201) RedPaletteColorLookupTableData holds %d words but (0028,1101) "
            "RedPaletteColorLookupTableDescriptor says %d entries of %d bits; using %d",
            path,
            words,
            entries,
            bits,
            min(words, entries),
        )
    return min(words, entries)


def _check_segments_widen(ds: Dataset, big: bool, path: Path) -> None:
    """8-bit segmented palettes of more than 256 entries are read as 16-bit ones (each byte
    a word; pydicom would index them with uint8): possible for discrete and linear segments
    in a little-endian file; an indirect segment (its offset spans 4 bytes) or big-endian
    8-bit segments are refused rather than shown wrong."""
    where = f"{path}: (0028,1221..1223) Segmented Palette Color LUT Data with 8-bit entries"
    if big:
        raise BadPixelData(f"{where}, more than 256, in a big-endian file: not rendered")
    for colour in ("Red", "Green", "Blue"):
        data = bytes(ds.get(f"Segmented{colour}PaletteColorLookupTableData") or b"")
        pos = 0
        while pos + 1 < len(data):
            opcode, length = data[pos], data[pos + 1]
            if opcode == 2:
                raise BadPixelData(f"{where}, more than 256, with indirect segments: not rendered")
            pos += 2 + (length if opcode == 0 else 1)


def _from_zero(arr: np.ndarray, first: int, entries: int) -> np.ndarray:
    """Palette indices (checked to lie in ``first .. first + entries - 1``) counted from 0."""
    dtype = np.uint8 if entries <= 256 else (np.uint16 if entries <= 65536 else np.uint32)
    return (arr.astype(np.int64) - first).astype(dtype)


def render_palette(
    ds: Dataset, info: PixelInfo, arrays: list[tuple[int, np.ndarray]], path: Path, bits: int
) -> list[Rendered]:
    """PALETTE COLOR: indices through the (possibly segmented) palette to RGB."""
    from pydicom.pixels import apply_color_lut

    desc = ds.get("RedPaletteColorLookupTableDescriptor")
    if not isinstance(desc, list | tuple | MultiValue) or len(desc) != 3:
        raise BadPixelData(
            f"{path}: PALETTE COLOR without a 3-value (0028,1101) "
            "RedPaletteColorLookupTableDescriptor"
        )
    n, first, lut_bits = (int(v) for v in desc)
    n = n or 65536
    if info.signed and first > 32767:  # written US where the indices are signed (US or SS)
        first -= 65536
    palette = _palette_source(ds, first, path)
    source, n = palette.source, palette.entries
    out = []
    for index, arr in arrays:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < first or hi >= first + n:
            raise BadPixelData(
                f"{path}: frame {index + 1} has palette indices {lo}..{hi} outside the "
                f"{n} entries from {first} of the palette ((0028,1101) "
                "RedPaletteColorLookupTableDescriptor, (0028,1201..1203) LUT Data)"
            )
        try:
            rgb = apply_color_lut(arr if source is ds else _from_zero(arr, first, n), source)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise BadPixelData(
                f"{path}: palette (0028,1201..1203 / 0028,1221..1223) unusable: {exc}"
            ) from None
        in_bits = 8 if rgb.dtype == np.uint8 else (lut_bits if 8 <= lut_bits <= 16 else 16)
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
    span: tuple[float, float] | None = None,
) -> list[Rendered]:
    """Render decoded frames of one object for display, by Photometric Interpretation
    (``span``: see :func:`render_gray`)."""
    if info.photometric in GRAY:
        if info.samples != 1:
            raise BadPixelData(
                f"{path}: (0028,0004) PhotometricInterpretation {info.photometric} with "
                f"(0028,0002) SamplesPerPixel {info.samples}; expected 1"
            )
        frames = render_gray(ds, info, arrays, path, choice, bits, span)
        return burn_overlays(ds, info, frames, path, bits) if overlays else frames
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
        "(supported: MONOCHROME1/2, PALETTE COLOR, RGB, YBR_FULL, YBR_FULL_422, "
        "YBR_PARTIAL_422, YBR_RCT/ICT)"
    )
