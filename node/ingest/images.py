"""Pixels for the DICOM Image Pixel module, from any input we accept.

:class:`Pixels` is what an IOD builder needs: geometry, photometric interpretation, bit
depth, the Pixel Data value (native bytes or one encapsulated JPEG frame), the transfer
syntax, and the lossy history. Three producers:

- ``jpeg_passthrough``: a baseline/extended JPEG kept as is (no decode);
- ``decoded``: a Pillow image (PNG/BMP/TIFF, or a JPEG that had to be decoded because it is
  progressive, CMYK/YCCK, RGB-coded for VL Photographic, or needs its EXIF Orientation
  applied) written as native little-endian pixels, bit-exact to what Pillow decoded;
- ``open_raster``: opens PNG/BMP/TIFF safely (pixel cap checked before decoding).

numpy and Pillow are imported on first use: the JPEG pass-through path needs neither.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.errors import ConversionError, CorruptInput, InputTooLarge, UnsupportedInput
from node.ingest.jpeg import JpegInfo

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_METHOD = "ISO_10918_1"

#: EXIF Orientation -> the Pillow transpose (``Image.Transpose`` member) that displays the
#: image upright.
ORIENTATION_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


@dataclass
class Pixels:
    """Everything the Image Pixel module and the file meta need about the pixels."""

    rows: int
    columns: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_data: bytes  # native pixels, or the one JPEG frame when encapsulated
    transfer_syntax: str
    encapsulated: bool = False
    lossy: bool = False
    lossy_ratio: float | None = None
    spatially_transformed: bool = False
    frames: int = 1
    icc: bytes | None = None
    notes: list[str] = field(default_factory=list)
    #: PixelAspectRatio (vertical, horizontal pixel size) when the source's pixels are not
    #: square (JFIF density, PNG pHYs, TIFF/BMP resolution), else None.
    aspect: tuple[int, int] | None = None


def pixel_aspect(density: object, orientation: int = 1) -> tuple[int, int] | None:
    """PixelAspectRatio (0028,0034) from a source's horizontal and vertical pixel density
    (pixels per unit: JFIF Xdensity/Ydensity, PNG pHYs, TIFF X/YResolution, BMP pels per
    metre), or None when the pixels are square or the density is absent or unusable.

    A pixel is 1/Xdensity wide and 1/Ydensity tall, so vertical:horizontal size is
    Xdensity:Ydensity (a fax at 204x98 dpi: 102\\49). An EXIF Orientation of 5 to 8 turns
    the image by 90 degrees, and the two swap.
    """
    x: Any
    y: Any
    try:
        x, y = density  # type: ignore[misc]
        if x == y:
            return None  # square, as nearly every file says (no fractions import needed)
        from fractions import Fraction

        ratio = (Fraction(x) / Fraction(y)).limit_denominator(1000)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if ratio <= 0 or ratio == 1:
        return None
    aspect = (ratio.numerator, ratio.denominator)
    return aspect[::-1] if orientation >= 5 else aspect


def raster_density(im: Image.Image) -> object:
    """The horizontal and vertical pixel density Pillow read from a PNG (pHYs), TIFF or BMP,
    in whatever unit the file gives (only their ratio matters), or None."""
    for key in ("dpi", "aspect", "resolution"):
        value = im.info.get(key)
        if value:
            return value
    return None


def lossy_ratio(rows: int, columns: int, samples: int, bits: int, compressed: int) -> float:
    """Uncompressed size / compressed size, as LossyImageCompressionRatio wants it."""
    raw = rows * columns * samples * ((bits + 7) // 8)
    return raw / max(compressed, 1)


def jpeg_passthrough(frame: bytes, info: JpegInfo, photometric: str) -> Pixels:
    """A JPEG frame encapsulated unchanged (TS .4.50 for 8-bit SOF0, .4.51 otherwise)."""
    ts = JPEG_BASELINE if info.sof == 0xC0 and info.precision == 8 else JPEG_EXTENDED
    bits = info.precision
    return Pixels(
        rows=info.rows,
        columns=info.columns,
        samples=info.samples,
        photometric=photometric,
        bits_allocated=8 if bits == 8 else 16,
        bits_stored=bits,
        pixel_data=frame,
        transfer_syntax=ts,
        encapsulated=True,
        lossy=True,
        lossy_ratio=lossy_ratio(info.rows, info.columns, info.samples, bits, len(frame)),
        aspect=pixel_aspect(info.density),
    )


# ----------------------------------------------------------------------- Pillow side


#: (0028,0010) Rows and (0028,0011) Columns have VR US: neither can exceed 65535.
MAX_SIDE = 0xFFFF


def check_dimensions(name: str, width: int, height: int) -> None:
    """Refuse images that DICOM's Rows/Columns (US) cannot describe."""
    if width > MAX_SIDE or height > MAX_SIDE:
        raise UnsupportedInput(
            f"{name}: {width}x{height} pixels: (0028,0011) Columns and (0028,0010) Rows are "
            f"US in DICOM, at most {MAX_SIDE} each; split, crop or scale the image to at most "
            f"{MAX_SIDE} pixels per side"
        )


def check_pixel_cap(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InputTooLarge(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the cap of "
            f"{max_pixels} (ingest.max_pixels or --max-pixels); "
            "refusing a possible decompression bomb"
        )


def _let_the_cap_decide(max_pixels: int) -> None:
    """Keep Pillow's own bomb limit from overriding ``ingest.max_pixels``.

    ``Image.open`` refuses images over 2 x ``Image.MAX_IMAGE_PIXELS`` (178,956,970 pixels
    by default) before :func:`check_pixel_cap` can look at them: a 180 Mpx panorama under the
    default cap of 200 Mpx, or any image under a raised cap, would be refused with a message
    naming no setting. The limit is only ever raised, to the configured cap (the header is
    still checked against the cap before a single pixel is decoded).
    """
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and 2 * limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2


#: ``im.info`` key :func:`open_image` sets when Pillow turned the image upright while
#: loading it (Pillow 13 does so for a TIFF Orientation 2-8, and then forgets the tag): the
#: orientation it applied, which the object still has to record (DERIVED, pixel shape).
TURNED_BY_PILLOW = "dicom-node:turned-by-pillow"


def _tiff_orientation(im: Image.Image) -> int:
    """A TIFF's Orientation (0112) as Pillow holds it now, 1 for any other image or value."""
    if im.format != "TIFF":
        return 1
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - an unreadable tag is the EXIF reader's to report
        return 1
    return value if 1 <= value <= 8 else 1


def open_image(
    data: bytes,
    name: str,
    max_pixels: int,
    notes: list[str] | None = None,
    multi_frame: bool = False,
) -> Image.Image:
    """Open ``data`` with Pillow and load it, checking the pixel cap before decoding.

    Pillow reports some damage only as a warning ("Truncated File Read"): that is refused
    as CorruptInput; other warnings become notes.
    """
    from PIL import Image, UnidentifiedImageError

    _let_the_cap_decide(max_pixels)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            check_dimensions(name, im.width, im.height)
            check_pixel_cap(name, im.width, im.height, max_pixels)
            frames = int(getattr(im, "n_frames", 1))
            if frames > 1 and not multi_frame:
                raise UnsupportedInput(
                    f"{name}: {frames} pages/frames in one file: convert it with "
                    "--sop-class nsc (one multi-frame object) or split it into one image per file"
                )
            check_pixel_cap(name, im.width, im.height * frames, max_pixels)
            before = _tiff_orientation(im)
            im.load()
            if before != 1 and _tiff_orientation(im) == 1:
                im.info[TURNED_BY_PILLOW] = before
        for w in caught:
            text = str(w.message)
            if "runcated" in text or "orrupt" in text and "EXIF" not in text:
                raise CorruptInput(f"{name}: damaged image: {text}{_AGAIN}")
            if notes is not None:
                notes.append(f"warning: Pillow: {text}")
    except Image.DecompressionBombError as exc:
        raise InputTooLarge(
            f"{name}: {exc} (cap: {max_pixels} pixels, ingest.max_pixels or --max-pixels); "
            "refusing a possible decompression bomb"
        ) from None
    except UnidentifiedImageError:
        kind = _kind_of(data)
        if kind:
            raise UnsupportedInput(
                f"{name}: a {kind} file Pillow cannot read: damaged or truncated, or an "
                "unusual variant (bit depth, number of samples, compression); save it again "
                "as 8-bit grey or RGB, or 16-bit grey"
            ) from None
        raise UnsupportedInput(f"{name}: not an image format Pillow can read") from None
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises anything on damaged files
        # (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error, EOFError ...
        # seen with fuzzed TIFF/PNG); every one of them means "this file is damaged".
        raise CorruptInput(
            f"{name}: cannot decode the image ({type(exc).__name__}: {exc}){_AGAIN}"
        ) from None
    return im


#: The first bytes of each image format converted: (magic, format, what a message calls it).
IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "jpeg", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "png", "PNG"),
    (b"BM", "bmp", "BMP"),
    (b"II*\x00", "tiff", "TIFF"),
    (b"MM\x00*", "tiff", "TIFF"),
    (b"II+\x00", "tiff", "BigTIFF"),  # scanners, microscopes: files over 4 GB
    (b"MM\x00+", "tiff", "BigTIFF"),
)
#: Classic TIFF and BigTIFF, both byte orders.
TIFF_MAGIC = tuple(magic for magic, kind, _ in IMAGE_MAGIC if kind == "tiff")

_AGAIN = ": the file is damaged or incomplete; copy or export it again"


def _kind_of(data: bytes) -> str:
    for magic, _, label in IMAGE_MAGIC:
        if data.startswith(magic):
            return label
    return ""


def apply_orientation(im: Image.Image, orientation: int, notes: list[str]) -> Image.Image:
    """Turn ``im`` upright per EXIF Orientation (a lossless pixel permutation)."""
    from PIL import Image

    method = ORIENTATION_TRANSPOSE.get(orientation)
    if method is None:
        return im
    notes.append(f"EXIF Orientation {orientation} applied (image turned upright)")
    return im.transpose(Image.Transpose[method])


def decoded(
    im: Image.Image,
    name: str,
    *,
    lossy: bool,
    ratio: float | None,
    notes: list[str],
    icc: bytes | None = None,
    transformed: bool = False,
    white: int | None = None,
) -> Pixels:
    """Native pixels from a loaded Pillow image; values are exactly Pillow's, except that
    ``white`` (see :func:`white_is_zero`) inverts WhiteIsZero grey into MONOCHROME2."""
    import numpy as np

    mode = im.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        notes.append(f"alpha channel dropped ({mode} -> {mode.rstrip('Aa') or 'RGB'})")
    elif "transparency" in im.info:  # PNG tRNS / GIF-style: a palette entry or one colour
        notes.append("transparency dropped (PNG tRNS): transparent pixels keep their colour")
    if mode == "1":
        notes.append("bilevel image written as 8-bit MONOCHROME2 (0 and 255)")
        im = im.convert("L")
    elif mode in ("LA", "La"):
        im = im.convert("L")
    elif mode in ("P", "PA"):
        notes.append("palette image expanded to RGB")
        with warnings.catch_warnings():
            # "Palette images with Transparency expressed in bytes should be converted to
            # RGBA": the transparency is dropped on purpose, and noted above.
            warnings.simplefilter("ignore", UserWarning)
            im = im.convert("RGB")
    elif mode in ("CMYK", "YCbCr", "RGBA", "RGBa", "RGBX"):
        if mode == "CMYK":
            notes.append("warning: CMYK converted to RGB (colours approximate, no ICC transform)")
        im = im.convert("RGB")
    if im.mode in _WIDE_GREY:
        arr = np.asarray(im)
        if white is not None:
            # TIFF WhiteIsZero: Pillow inverts 1- and 8-bit grey itself, not wider samples.
            arr = white - arr.astype(np.int64)
            notes.append(
                "TIFF WhiteIsZero grey turned into MONOCHROME2 (values inverted, lossless)"
            )
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
            raise UnsupportedInput(
                f"{name}: integer pixels from {arr.min()} to {arr.max()}, outside 0..65535"
                f"{' once WhiteIsZero is inverted' if white is not None else ''}: save the "
                "image as 16-bit unsigned grey"
            )
        arr = arr.astype("<u2", copy=False)
        stored = significant_bits(im)
        if arr.size and int(arr.max()) >> stored:
            stored = 16  # samples beyond the declared depth: keep them all
        elif stored < 16:
            notes.append(f"{stored}-bit grey written with BitsStored {stored}")
        return _native(
            arr, 1, "MONOCHROME2", 16, lossy, ratio, notes, icc, transformed, stored=stored
        )
    if im.mode == "L":
        return _native(np.asarray(im), 1, "MONOCHROME2", 8, lossy, ratio, notes, icc, transformed)
    if im.mode == "RGB":
        return _native(np.asarray(im), 3, "RGB", 8, lossy, ratio, notes, icc, transformed)
    what = _MODE_NAMES.get(im.mode, f"Pillow image mode {im.mode!r}")
    raise UnsupportedInput(
        f"{name}: {what} is not supported: save the image as 8-bit grey or RGB, or 16-bit grey"
    )


_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_MODE_NAMES = {
    "F": "32-bit floating-point grey (Pillow mode 'F')",
    "LAB": "CIELab colour (Pillow mode 'LAB')",
    "HSV": "HSV colour (Pillow mode 'HSV')",
    "I;16S": "signed 16-bit grey",
}


def significant_bits(im: Image.Image) -> int:
    """The bits per sample of wide grey (9 to 16): a TIFF's BitsPerSample (12-bit scanners
    and cameras write 12), else 16. Pillow reads 12-bit TIFF samples unscaled (0..4095):
    as BitsStored 16 they render nearly black wherever no window is applied (dcm2pnm)."""
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    if im.mode not in _WIDE_GREY or not isinstance(bits, int) or not 9 <= bits <= 16:
        return 16
    return bits


def white_is_zero(im: Image.Image) -> int | None:
    """The maximum sample value of a TIFF WhiteIsZero grey image that Pillow did not invert
    (16-bit and wider samples; it inverts 1- and 8-bit ones itself), else None."""
    tags = getattr(im, "tag_v2", None)
    if tags is None or tags.get(262) != 0 or im.mode not in _WIDE_GREY:
        return None
    bits = tags.get(258, 16)
    if isinstance(bits, tuple):
        bits = bits[0]
    return (1 << int(bits)) - 1


def _native(
    arr: np.ndarray,
    samples: int,
    photometric: str,
    bits: int,
    lossy: bool,
    ratio: float | None,
    notes: list[str],
    icc: bytes | None,
    transformed: bool,
    stored: int | None = None,
) -> Pixels:
    import numpy as np

    data = np.ascontiguousarray(arr).tobytes()
    if len(data) % 2:
        data += b"\x00"
    return Pixels(
        rows=int(arr.shape[0]),
        columns=int(arr.shape[1]),
        samples=samples,
        photometric=photometric,
        bits_allocated=bits,
        bits_stored=stored or bits,
        pixel_data=data,
        transfer_syntax=EXPLICIT_VR_LE,
        lossy=lossy,
        lossy_ratio=ratio,
        spatially_transformed=transformed,
        icc=icc,
        notes=notes,
    )


def join_frames(frames: list[Pixels], name: str) -> Pixels:
    """One multi-frame Pixels from single frames that share geometry and depth."""
    first = frames[0]
    for i, other in enumerate(frames[1:], start=2):
        if (other.rows, other.columns, other.samples, other.photometric, other.bits_allocated) != (
            first.rows,
            first.columns,
            first.samples,
            first.photometric,
            first.bits_allocated,
        ):
            raise UnsupportedInput(
                f"{name}: page {i} is {other.columns}x{other.rows} {other.photometric} "
                f"{other.bits_allocated}-bit, page 1 {first.columns}x{first.rows} "
                f"{first.photometric} {first.bits_allocated}-bit: one multi-frame object "
                "needs pages of the same size and kind"
            )
    size = first.rows * first.columns * first.samples * (first.bits_allocated // 8)
    data = b"".join(f.pixel_data[:size] for f in frames)
    if len(data) % 2:
        data += b"\x00"
    # A 12-bit page next to a 16-bit one: BitsStored must hold the widest.
    stored = max(f.bits_stored for f in frames)
    return dataclasses.replace(first, pixel_data=data, frames=len(frames), bits_stored=stored)


def refuse_reduced_depth(data: bytes, im: Image.Image, name: str) -> None:
    """Refuse 16-bit colour, which Pillow would silently reduce to 8 bits."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 26:
        depth, colour_type = data[24], data[25]
        if depth == 16 and colour_type in (2, 6):
            raise UnsupportedInput(
                f"{name}: 16-bit colour PNG; Pillow would reduce it to 8 bits, so it is "
                "refused rather than silently degraded (save it as 8-bit RGB or 16-bit grey)"
            )
        if depth == 16 and colour_type == 4:
            raise UnsupportedInput(
                f"{name}: 16-bit grey PNG with an alpha channel; Pillow would reduce it to "
                "8-bit colour, so it is refused rather than silently degraded (save it as "
                "16-bit grey without alpha)"
            )
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        formats = tags.get(339, 1)
        kind = max(formats) if isinstance(formats, tuple) else formats
        if kind in (2, 3):
            what = "signed integer" if kind == 2 else "floating-point"
            raise UnsupportedInput(
                f"{name}: TIFF with {what} samples (SampleFormat {kind}); they would be "
                "misread or cannot be stored as DICOM pixels here: save the image with "
                "unsigned 8- or 16-bit samples"
            )
        bps = tags.get(258)
        spp = tags.get(277, 1)
        if isinstance(bps, tuple) and spp and int(spp) >= 3 and max(bps) > 8:
            raise UnsupportedInput(
                f"{name}: {max(bps)}-bit colour TIFF is not supported (it would lose bits)"
            )
