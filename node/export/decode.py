"""Reading DICOM objects for export: header checks first, then pixel data through pydicom.

Pixel data is decoded only by pydicom and its plugins (pylibjpeg-libjpeg, -openjpeg, -rle,
pyjpegls for JPEG-LS); there is no hand-written codec here. Before anything is decoded the
image description is checked against the data, so that hostile or damaged objects fail with
a message naming the file and the element instead of a crash or a silently wrong image:

* (7FE0,0010) Pixel Data missing (or only Float/Double Float Pixel Data present);
* Rows x Columns x Number of Frames x Samples per Pixel over the configured pixel cap;
* native Pixel Data shorter than Rows x Columns x Frames x Samples x Bits Allocated says;
* a High Bit that does not place Bits Stored inside Bits Allocated, and Samples per Pixel
  that does not fit the Photometric Interpretation;
* a JPEG-family frame cut short, or whose frame header disagrees with Rows, Columns or
  Samples per Pixel (:mod:`node.export.streams`);
* a transfer syntax no installed decoder handles, or a decoder that fails.

Stored values are taken where High Bit puts them (High Bit 15 with Bits Stored 12 is the
top 12 bits of each word), as dcmimgle does; pydicom alone would take the low 12.
"""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from node.errors import BadPixelData, ExportError
from node.export import streams

log = logging.getLogger(__name__)

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
RLE = "1.2.840.10008.1.2.5"

#: What pydicom raises on malformed element values when they are converted (lazily, at
#: first access): wrong lengths (BytesLengthException), bad numbers (ValueError), ...
MALFORMED = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    RuntimeError,
    IndexError,
    OverflowError,
    NotImplementedError,  # e.g. an unknown VR from a damaged header
    struct.error,
    BytesLengthException,
)


def quiet_pydicom() -> None:
    """Keep pydicom's decoder tracebacks out of our logs: we report each failure ourselves."""
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)


def _tag(keyword: str) -> str:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - keywords used here are all in the dictionary
        return keyword
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def read(path: Path, header_only: bool = False) -> Dataset:
    """Read ``path`` (with ``header_only``, stop before Pixel Data) or raise ExportError."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=header_only)
            except InvalidDicomError:
                # a bare data set without preamble/file meta (dcm2pnm reads those too)
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=header_only)
                if "SOPClassUID" not in ds and "Rows" not in ds:
                    raise
                _infer_transfer_syntax(ds)
    except InvalidDicomError as exc:
        raise ExportError(f"{path}: not a DICOM file ({exc})") from None
    except (OSError, EOFError, zlib.error, *MALFORMED) as exc:
        raise ExportError(f"{path}: cannot be read as DICOM: {exc}") from None
    for w in caught:
        log.warning("%s: %s", path, w.message)
    return ds


def _infer_transfer_syntax(ds: Dataset) -> None:
    """Give a data set read without file meta the transfer syntax it was read with."""
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit:
        ts = "1.2.840.10008.1.2"
    else:
        ts = "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts


def is_encapsulated_pdf(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == ENCAPSULATED_PDF


def encapsulated_pdf(ds: Dataset, path: Path) -> bytes:
    """The PDF inside an Encapsulated PDF object, byte for byte (without the even-length pad)."""
    data = ds.get("EncapsulatedDocument")
    if not data:
        raise ExportError(
            f"{path}: {_tag('EncapsulatedDocument')} is missing or empty; "
            "the object holds no document to extract"
        )
    raw = bytes(data)
    length = ds.get("EncapsulatedDocumentLength")
    if length and 0 < int(length) <= len(raw):
        raw = raw[: int(length)]
    elif raw.endswith(b"\x00") and len(raw) % 2 == 0:
        raw = raw[:-1]  # the pad byte DICOM adds to odd-length values
    if not raw.startswith(b"%PDF-"):
        raise ExportError(
            f"{path}: {_tag('EncapsulatedDocument')} does not start with %PDF- "
            f"(MIME type {ds.get('MIMETypeOfEncapsulatedDocument', '?')!s})"
        )
    return raw


@dataclass(frozen=True)
class PixelInfo:
    """The Image Pixel description of one object, checked against its data."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    transfer_syntax: str
    high_bit: int = -1  # (0028,0102); -1: Bits Stored - 1

    @property
    def shift(self) -> int:
        """How far the stored bits sit above bit 0 (High Bit + 1 - Bits Stored)."""
        return max(0, self.high_bit + 1 - self.bits_stored)

    @property
    def frame_by_frame(self) -> bool:
        """Whether the frames can be decoded a few at a time (see :func:`_one_by_one`)."""
        return _one_by_one(self.rows * self.columns * self.samples, self.bits_allocated)


def _one_by_one(frame_samples: int, bits_allocated: int) -> bool:
    """All frames can be decoded one at a time but 1-bit frames that do not end on a byte
    boundary: pydicom unpacks those all at once (see :func:`_decode`)."""
    return not (bits_allocated == 1 and frame_samples % 8)


def _int(ds: Dataset, keyword: str, path: Path, default: int | None = None) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = ds.get(keyword)
        except MALFORMED as exc:  # converted at first access: IS 'inf', a short US
            raise BadPixelData(f"{path}: {_tag(keyword)} cannot be read: {exc}") from None
    for w in caught:
        log.warning("%s: %s: %s", path, _tag(keyword), w.message)
    if value is None or value == "":
        if default is not None:
            return default
        raise BadPixelData(f"{path}: {_tag(keyword)} is missing; the image cannot be described")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadPixelData(f"{path}: {_tag(keyword)} is not a number: {value!r}") from None
    return number


def pixel_info(
    ds: Dataset, path: Path, max_pixels: int, *, frame_by_frame: bool = False
) -> PixelInfo:
    """Check the Image Pixel module against the data and the cap; raise naming the element.

    The cap bounds the samples decoded at once: all frames, or with ``frame_by_frame`` one
    frame (the caller renders the frames in batches, see :attr:`PixelInfo.frame_by_frame`).
    """
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        what = f" (only {', '.join(other)}, which is not rendered)" if other else ""
        raise BadPixelData(f"{path}: {_tag('PixelData')} is missing{what}")
    rows = _int(ds, "Rows", path)
    cols = _int(ds, "Columns", path)
    frames = _int(ds, "NumberOfFrames", path, 1) or 1
    samples = _int(ds, "SamplesPerPixel", path, 1)
    bits_alloc = _int(ds, "BitsAllocated", path)
    bits_stored = _int(ds, "BitsStored", path, bits_alloc)
    signed = _int(ds, "PixelRepresentation", path, 0) == 1
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    for key, value in (("Rows", rows), ("Columns", cols), ("NumberOfFrames", frames)):
        if value <= 0:
            raise BadPixelData(f"{path}: {_tag(key)} is {value}; it must be positive")
    if samples not in (1, 3):
        raise BadPixelData(f"{path}: {_tag('SamplesPerPixel')} is {samples}; expected 1 or 3")
    if bits_alloc not in (1, 8, 16, 32) or not 0 < bits_stored <= bits_alloc:
        raise BadPixelData(
            f"{path}: {_tag('BitsAllocated')} {bits_alloc} / {_tag('BitsStored')} "
            f"{bits_stored} is not a pixel layout that can be rendered"
        )
    high_bit = _int(ds, "HighBit", path, bits_stored - 1)
    if bits_alloc > 1 and not bits_stored - 1 <= high_bit < bits_alloc:
        raise BadPixelData(
            f"{path}: {_tag('HighBit')} {high_bit} does not fit {_tag('BitsStored')} "
            f"{bits_stored} in {_tag('BitsAllocated')} {bits_alloc} (it must be "
            f"{bits_stored - 1}..{bits_alloc - 1}); the stored bits cannot be located"
        )
    if not photometric:
        raise BadPixelData(f"{path}: {_tag('PhotometricInterpretation')} is missing")
    wanted = 1 if photometric in ONE_SAMPLE else 3 if photometric in THREE_SAMPLES else samples
    if samples != wanted:  # before decoding: the decoder's complaint would name another element
        raise BadPixelData(
            f"{path}: {_tag('PhotometricInterpretation')} {photometric} with "
            f"{_tag('SamplesPerPixel')} {samples}; expected {wanted}"
        )
    total = rows * cols * frames * samples
    frame_samples = rows * cols * samples
    if frame_by_frame and _one_by_one(frame_samples, bits_alloc) and frame_samples <= max_pixels:
        pass  # one frame at a time fits
    elif total > max_pixels:
        raise BadPixelData(
            f"{path}: {_tag('Rows')} {rows} x {_tag('Columns')} {cols} x "
            f"{_tag('NumberOfFrames')} {frames} x {_tag('SamplesPerPixel')} {samples} = "
            f"{total} samples exceeds export.max_pixels ({max_pixels}); raise the cap if "
            "the object is genuine"
        )
    meta = getattr(ds, "file_meta", None)
    tsuid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    tsuid = tsuid or "1.2.840.10008.1.2"
    ts = UID(tsuid)
    if not ts.is_transfer_syntax:
        raise ExportError(
            f"{path}: (0002,0010) TransferSyntaxUID {tsuid} is not a transfer syntax this "
            "node knows; its pixel data cannot be decoded"
        )
    if not ts.is_compressed and not ds["PixelData"].is_undefined_length:
        expected = (total * bits_alloc + 7) // 8
        if photometric in SUBSAMPLED:  # two samples per pixel on the wire (C.7.6.3.1.2)
            expected = expected * 2 // 3
        actual = len(ds.PixelData)
        if actual < expected:
            raise BadPixelData(
                f"{path}: {_tag('PixelData')} holds {actual} bytes but {_tag('Rows')} "
                f"{rows} x {_tag('Columns')} {cols} x {_tag('NumberOfFrames')} {frames} x "
                f"{_tag('SamplesPerPixel')} {samples} x {_tag('BitsAllocated')} {bits_alloc} "
                f"needs {expected}: the data is truncated or the description is wrong"
            )
    return PixelInfo(
        rows,
        cols,
        frames,
        samples,
        bits_alloc,
        bits_stored,
        signed,
        photometric,
        tsuid,
        high_bit if bits_alloc > 1 else bits_stored - 1,
    )


#: JPEG transfer syntaxes whose 8-bit streams decode with IJG-compatible arithmetic through
#: Pillow (libjpeg-turbo), as DCMTK's own IJG-based codec does; pylibjpeg is the fallback.
_IJG_FIRST = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def ybr_to_rgb(arr: np.ndarray, bits: int, subsampled: bool = False) -> np.ndarray:
    """YBR_FULL(_422) -> RGB (PS3.3 C.7.6.3.1.2) with dcmimgle's arithmetic.

    DCMTK converts 8-bit YBR_FULL through integer tables (each term truncated on its own)
    and YBR_FULL_422 and wider samples in double precision (the sum truncated); both are
    reproduced exactly, so native YBR renders like dcmj2pnm.
    """
    top = float((1 << bits) - 1)
    dtype = np.uint8 if bits <= 8 else np.uint16
    if bits == 8 and not subsampled:
        i = np.arange(256, dtype=np.float64)
        r_cr = np.trunc(1.4020 * i - 0.7010 * top).astype(np.int32)
        g_cb = np.trunc(-0.3441 * i).astype(np.int32)
        g_cr = np.trunc(-0.7141 * i + 0.5291 * top).astype(np.int32)
        b_cb = np.trunc(1.7720 * i - 0.8859 * top).astype(np.int32)
        luma = arr[..., 0].astype(np.int32)
        blue, red = arr[..., 1], arr[..., 2]
        rgb = np.stack(
            [luma + r_cr[red], luma + g_cb[blue] + g_cr[red], luma + b_cb[blue]], axis=-1
        )
        return np.clip(rgb, 0, 255).astype(np.uint8)
    ybr = arr.astype(np.float64)
    y, cb, cr = ybr[..., 0], ybr[..., 1], ybr[..., 2]
    r = y + 1.4020 * cr - 0.7010 * top
    g = y - 0.3441 * cb - 0.7141 * cr + 0.5291 * top
    b = y + 1.7720 * cb - 0.8859 * top
    out = np.clip(np.stack([r, g, b], axis=-1), 0, top)
    return out.astype(dtype)


def ybr_partial_to_rgb(arr: np.ndarray, bits: int) -> np.ndarray:
    """YBR_PARTIAL_422 (retired; Y 16..235, Cb/Cr 16..240 for 8 bits) -> RGB.

    The BT.601 expansion with the coefficients and the truncation dcmimage uses, so native
    data renders as dcmj2pnm renders it (the chroma of each pixel pair is shared).
    """
    top = float((1 << bits) - 1)
    ybr = arr.astype(np.float64)
    y, cb, cr = ybr[..., 0] * 1.1631, ybr[..., 1], ybr[..., 2]
    r = y + 1.5969 * cr - 0.8713 * top
    g = y - 0.3913 * cb - 0.8121 * cr + 0.5290 * top
    b = y + 2.0177 * cb - 1.0820 * top
    out = np.clip(np.stack([r, g, b], axis=-1), 0, top)
    return out.astype(np.uint8 if bits <= 8 else np.uint16)


def _stored_bits(words: np.ndarray, info: PixelInfo) -> np.ndarray:
    """Whole unsigned words -> the Bits Stored field ending at High Bit, sign-extended."""
    size = words.dtype.itemsize
    values = (words >> info.shift) & ((1 << info.bits_stored) - 1)
    if not info.signed:
        return values
    sign = 1 << (info.bits_stored - 1)
    signed = values.astype(np.int64)
    signed = np.where(signed & sign, signed - (sign << 1), signed)
    return signed.astype(f"i{size}")


ONE_SAMPLE = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
THREE_SAMPLES = (
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_422",
    "YBR_RCT",
    "YBR_ICT",
    "YBR_PARTIAL_420",
)
#: Native 4:2:2 data: Y1 Y2 Cb Cr for each two pixels of a row.
SUBSAMPLED = ("YBR_FULL_422", "YBR_PARTIAL_422")

#: Compressed syntaxes whose decoders return YBR_FULL samples as stored (no colour
#: transform): RLE, JPEG-LS, JPEG 2000 (its own transforms are labelled YBR_RCT/YBR_ICT).
_AS_STORED = (
    RLE,
    *(f"1.2.840.10008.1.2.4.{n}" for n in (80, 81, 90, 91, 92, 93, 201, 202, 203)),
)
#: JPEG syntaxes (DCT and lossless): pydicom converts their YBR only for 8-bit samples
_JPEG = tuple(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70))


def check_stream(ds: Dataset, info: PixelInfo, index: int, path: Path) -> None:
    """Refuse a JPEG-family frame that is cut short or is not the image the header
    describes, before a decoder fills it up or fails in terms of array shapes
    (:mod:`node.export.streams`)."""
    if not streams.checked(info.transfer_syntax):
        return
    eot = ds.get("ExtendedOffsetTable")
    lengths = ds.get("ExtendedOffsetTableLengths")
    try:
        frame = get_frame(
            ds.PixelData,
            index,
            extended_offsets=(eot, lengths) if eot and lengths else None,
            number_of_frames=info.frames,
        )
    except MALFORMED:
        return  # the decoder reports damaged encapsulation itself
    streams.check_frame(
        bytes(frame),
        info.transfer_syntax,
        UID(info.transfer_syntax).name,
        (info.columns, info.rows, info.samples),
        index + 1,
        path,
    )


def _decode(
    ds: Dataset, info: PixelInfo, index: int, cache: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    which = index if info.frames > 1 else None
    frame_bits = info.rows * info.columns * info.samples
    if info.bits_allocated == 1 and which is not None and frame_bits % 8:
        # 1-bit frames that do not end on a byte boundary: pydicom cannot find frame N on
        # its own, so unpack all frames once and take N
        cache = {} if cache is None else cache
        if "all" not in cache:
            cache["all"] = pydicom.pixels.pixel_array(ds)
        return cache["all"][index]
    # pydicom reads the low Bits Stored bits; when High Bit says they sit higher (High Bit
    # 15, Bits Stored 12), take whole words and extract the field here, as dcmimgle does
    whole: dict[str, Any] = {}
    if info.shift and info.bits_allocated in (8, 16, 32):
        whole = {"bits_stored": info.bits_allocated, "pixel_representation": 0}
    # (0028,0006) Planar Configuration does not apply to compressed data: the codec's own
    # stream layout does (PS3.5 8.2: it "shall be 0"; dcmimage ignores it there). pydicom
    # applied a mislabelled 1 to what the JPEG decoders return, scrambling the colours
    opts: dict[str, Any] = dict(whole)
    if info.samples > 1 and UID(info.transfer_syntax).is_compressed:
        opts["planar_configuration"] = 0
    ybr = info.photometric in ("YBR_FULL", "YBR_FULL_422")
    # the samples of native, RLE, JPEG-LS and JPEG 2000 data are YBR as stored (DCMTK
    # converts them with dcmimgle's arithmetic); JPEG decoders convert their own YCbCr as
    # DCMTK's IJG codec does
    native_ybr = ybr and not (
        UID(info.transfer_syntax).is_compressed and info.transfer_syntax not in _AS_STORED
    )
    if info.photometric == "YBR_PARTIAL_422" and not UID(info.transfer_syntax).is_compressed:
        # pydicom expands 4:2:2 only under the YBR_FULL_422 name; the samples are the same
        raw = pydicom.pixels.pixel_array(
            ds, index=which, raw=True, photometric_interpretation="YBR_FULL_422", **opts
        )
        return ybr_partial_to_rgb(_stored_bits(raw, info) if whole else raw, info.bits_stored)
    # JPEG colour wider than 8 bits (12-bit lossy, 16-bit lossless): the decoders leave
    # YCbCr as is and pydicom converts only 8-bit samples, so convert here as for native
    native_ybr |= ybr and info.transfer_syntax in _JPEG and info.bits_stored > 8
    if native_ybr:
        raw = pydicom.pixels.pixel_array(ds, index=which, raw=True, **opts)
        if whole:
            raw = _stored_bits(raw, info)
        return ybr_to_rgb(raw, info.bits_stored, info.photometric == "YBR_FULL_422")
    if info.transfer_syntax in _IJG_FIRST and info.bits_stored <= 8 and not whole:
        try:
            return pydicom.pixels.pixel_array(ds, index=which, decoding_plugin="pillow", **opts)
        except (RuntimeError, ValueError, OSError) as exc:
            log.debug("Pillow could not decode, trying pylibjpeg: %s", exc)
    arr = pydicom.pixels.pixel_array(ds, index=which, **opts)
    if whole:
        return _stored_bits(arr, info)
    if (
        info.samples == 1
        and info.bits_stored < info.bits_allocated
        and UID(info.transfer_syntax).is_compressed
    ):
        # a stream may carry more than Bits Stored: dcmcjpls writes JPEG-LS of precision 16
        # when bits above Bits Stored are set (junk, embedded overlays), and CharLS returns
        # them; dcmimgle keeps only the Bits Stored field, and so do we
        return _stored_bits(arr, info)
    return arr


def whole_words(ds: Dataset, info: PixelInfo, index: int) -> np.ndarray:
    """Frame ``index`` as unsigned words with every bit of Bits Allocated (8 or 16): the
    bits outside Bits Stored too, where embedded overlays (60xx,0102) live."""
    which = index if info.frames > 1 else None
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        arr = pydicom.pixels.pixel_array(
            ds, index=which, raw=True, bits_stored=info.bits_allocated, pixel_representation=0
        )
    return arr[0] if arr.ndim == 3 and info.frames == 1 else arr


def frames(
    ds: Dataset, path: Path, info: PixelInfo, indices: list[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, array)`` for each wanted frame (all when ``indices`` is None).

    Arrays are stored values (sign-extended, masked to Bits Stored) for grayscale and
    palette, RGB for colour: YBR_FULL(_422) native or RLE data is converted here with
    dcmimgle's arithmetic, JPEG-family decoders convert their own colour space.
    """
    wanted = list(range(info.frames)) if indices is None else indices
    cache: dict[str, np.ndarray] = {}
    said: set[str] = set()  # pydicom repeats a warning for every frame: logged once
    for index in wanted:
        if not 0 <= index < info.frames:
            raise ExportError(
                f"{path}: frame {index + 1} requested but {_tag('NumberOfFrames')} is {info.frames}"
            )
        check_stream(ds, info, index, path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                arr = _decode(ds, info, index, cache)
        except NotImplementedError as exc:
            raise ExportError(
                f"{path}: transfer syntax {info.transfer_syntax} "
                f"({UID(info.transfer_syntax).name}) cannot be decoded here: {exc}"
            ) from None
        except (zlib.error, *MALFORMED) as exc:
            raise BadPixelData(
                f"{path}: {_tag('PixelData')} frame {index + 1} could not be decoded "
                f"(transfer syntax {UID(info.transfer_syntax).name}): {exc}"
            ) from None
        except BaseException as exc:  # a decoder extension panicking (Rust: PanicException)
            if type(exc).__name__ != "PanicException":
                raise
            raise BadPixelData(
                f"{path}: {_tag('PixelData')} frame {index + 1}: the decoder for "
                f"{UID(info.transfer_syntax).name} failed on this data ({exc}); it is corrupt"
            ) from None
        for text in (str(w.message) for w in caught):
            if text not in said:
                said.add(text)
                log.warning("%s: %s", path, text)
        if info.frames == 1 and arr.ndim == (3 if info.samples == 1 else 4):
            # more frames in the encapsulated data than (0028,0008) NumberOfFrames (absent:
            # 1) says; pydicom warns and returns them all: the object's one frame is the first
            arr = arr[0]
        yield index, arr
