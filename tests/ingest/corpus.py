"""A generated test corpus: every kind of image the converter must handle, small and fast.

``good_cases()`` describes inputs that must convert (and how: pass-through or native, with
which photometric interpretation); ``bad_cases()`` inputs that must be refused, with the
exception class and a phrase the message must contain.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from node.errors import ConversionError, CorruptInput, InputTooLarge, UnsupportedInput

#: Patient/study/series data that makes dciodvfy silent about the optional keys (-k).
FULL_KEYS = (
    ("PatientID", "PID-0001"),
    ("PatientName", "Doe^Jane"),
    ("StudyDate", "20240102"),
    ("StudyTime", "030405"),
    ("StudyID", "STUDY1"),
    ("SeriesNumber", "7"),
    ("ImageLaterality", "U"),
)


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Gradients plus noise, RGB uint8: compresses like a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / 9.0 + seed),
            128 + 100 * np.cos(y / 7.0),
            (x * 3 + y * 2) % 256,
        ],
        axis=-1,
    )
    noise = rng.normal(0, 6, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def exif_block(
    orientation: int = 1, make: str = "TestCam", model: str = "Model X", when: str = ""
) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = make
    exif[0x0110] = model
    if orientation != 1:
        exif[0x0112] = orientation
    if when:
        exif[0x8769] = {0x9003: when}
    return exif


def jpeg(im: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def remove_marker(data: bytes, marker: int) -> bytes:
    """``data`` without its first segment with ``marker`` (e.g. 0xEE: Adobe APP14)."""
    i = data.index(bytes([0xFF, marker]))
    length = int.from_bytes(data[i + 2 : i + 4], "big")
    return data[:i] + data[i + 2 + length :]


def patch_sof_size(data: bytes, width: int, height: int) -> bytes:
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[i + 9 :]


@functools.cache
def srgb_icc() -> bytes:
    """An sRGB profile (cached: littleCMS stamps each new profile with the time)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # type: ignore[no-any-return]


def saved(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


@dataclass(frozen=True)
class Case:
    """One input and what the converter must make of it."""

    name: str
    filename: str
    make: Callable[[], bytes]
    path: str  # "passthrough", "decoded-lossy" (JPEG decoded), "lossless"
    photometric: str  # for sop class sc
    bits: int = 8
    samples: int = 3
    vlp: bool = True  # VL Photographic accepts it
    note: str = ""  # a phrase expected in the notes


def rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(picture(w, h, seed), "RGB")


def grey(w: int, h: int, seed: int = 0) -> Image.Image:
    return rgb(w, h, seed).convert("L")


def good_cases() -> list[Case]:
    when = "2023:04:05 06:07:08"
    return [
        Case(
            "baseline-420-exif",
            "camera.jpg",
            lambda: jpeg(rgb(64, 48), quality=90, subsampling=2, exif=exif_block(when=when)),
            "passthrough",
            "YBR_FULL_422",
            note="metadata segment",
        ),
        Case(
            "baseline-grey",
            "grey.jpg",
            lambda: jpeg(grey(40, 30)),
            "passthrough",
            "MONOCHROME2",
            samples=1,
        ),
        Case(
            "baseline-444",
            "s444.jpg",
            lambda: jpeg(rgb(33, 17), subsampling=0),
            "passthrough",
            "YBR_FULL_422",
        ),
        Case(
            "baseline-422",
            "s422.jpg",
            lambda: jpeg(rgb(31, 21), subsampling=1),
            "passthrough",
            "YBR_FULL_422",
        ),
        Case(
            "restart-intervals",
            "restart.jpg",
            lambda: jpeg(rgb(64, 40), restart_marker_blocks=1),
            "passthrough",
            "YBR_FULL_422",
        ),
        Case("odd-size", "odd.jpg", lambda: jpeg(rgb(19, 7)), "passthrough", "YBR_FULL_422"),
        Case("one-pixel", "one.jpg", lambda: jpeg(rgb(1, 1)), "passthrough", "YBR_FULL_422"),
        Case(
            "one-pixel-grey",
            "one-grey.jpg",
            lambda: jpeg(grey(1, 1)),
            "passthrough",
            "MONOCHROME2",
            samples=1,
        ),
        Case(
            "large",
            "large.jpg",
            lambda: jpeg(rgb(2400, 1600), quality=80),
            "passthrough",
            "YBR_FULL_422",
        ),
        Case(
            "icc",
            "icc.jpg",
            lambda: jpeg(rgb(24, 16), icc_profile=srgb_icc()),
            "passthrough",
            "YBR_FULL_422",
        ),
        Case(
            "rgb-adobe-transform-0",
            "adobe-rgb.jpg",
            lambda: jpeg(rgb(32, 24), keep_rgb=True),
            "passthrough",
            "RGB",
        ),
        Case(
            "rgb-component-ids",
            "ids-rgb.jpg",
            lambda: remove_marker(jpeg(rgb(32, 24), keep_rgb=True), 0xEE),
            "passthrough",
            "RGB",
        ),
        Case(
            "progressive",
            "progressive.jpg",
            lambda: jpeg(rgb(48, 32), progressive=True),
            "decoded-lossy",
            "RGB",
            note="progressive",
        ),
        Case(
            "optimized-huffman-q100",
            "optimized.jpg",
            lambda: jpeg(rgb(37, 23), quality=100, optimize=True),
            "passthrough",
            "YBR_FULL_422",
        ),
        Case(
            "extended-sof1-8bit",
            "sof1.jpg",
            lambda: jpeg(rgb(24, 16)).replace(b"\xff\xc0", b"\xff\xc1", 1),
            "passthrough",
            "YBR_FULL_422",
        ),
        Case(
            "progressive-grey",
            "progressive-grey.jpg",
            lambda: jpeg(grey(30, 20), progressive=True),
            "decoded-lossy",
            "MONOCHROME2",
            samples=1,
            note="progressive",
        ),
        Case(
            "cmyk",
            "cmyk.jpg",
            lambda: jpeg(rgb(24, 16).convert("CMYK")),
            "decoded-lossy",
            "RGB",
            note="CMYK",
        ),
        Case(
            "exif-orientation-6",
            "rotated.jpg",
            lambda: jpeg(rgb(40, 24), exif=exif_block(orientation=6, when=when)),
            "decoded-lossy",
            "RGB",
            note="Orientation 6",
        ),
        Case("png-rgb", "rgb.png", lambda: saved(rgb(23, 11), "PNG"), "lossless", "RGB"),
        Case(
            "png-rgba",
            "rgba.png",
            lambda: saved(
                Image.fromarray(np.dstack([picture(20, 10), np.full((10, 20), 77, np.uint8)])),
                "PNG",
            ),
            "lossless",
            "RGB",
            note="alpha",
        ),
        Case(
            "png-grey",
            "grey.png",
            lambda: saved(grey(21, 13), "PNG"),
            "lossless",
            "MONOCHROME2",
            samples=1,
        ),
        Case(
            "png-16bit",
            "g16.png",
            lambda: saved(
                Image.fromarray(np.arange(30 * 20, dtype=np.uint16).reshape(20, 30) * 109),
                "PNG",
            ),
            "lossless",
            "MONOCHROME2",
            bits=16,
            samples=1,
            vlp=False,
        ),
        Case(
            "png-palette",
            "palette.png",
            lambda: saved(rgb(25, 15).quantize(16), "PNG"),
            "lossless",
            "RGB",
            note="palette",
        ),
        Case(
            "png-orientation-8",
            "turned.png",
            lambda: saved(rgb(18, 10), "PNG", exif=exif_block(orientation=8)),
            "lossless",
            "RGB",
            note="Orientation 8",
        ),
        Case(
            "png-bilevel",
            "bilevel.png",
            lambda: saved(grey(20, 12).convert("1"), "PNG"),
            "lossless",
            "MONOCHROME2",
            samples=1,
            note="bilevel",
        ),
        Case(
            "png-grey-alpha",
            "la.png",
            lambda: saved(grey(12, 10).convert("LA"), "PNG"),
            "lossless",
            "MONOCHROME2",
            samples=1,
            note="alpha",
        ),
        Case("bmp", "image.bmp", lambda: saved(rgb(27, 9), "BMP"), "lossless", "RGB"),
        Case("tiff", "image.tif", lambda: saved(rgb(26, 14), "TIFF"), "lossless", "RGB"),
        Case(
            "tiff-jpeg-compressed",
            "jpeg.tif",
            lambda: saved(rgb(32, 16), "TIFF", compression="jpeg"),
            "decoded-lossy",
            "RGB",
            note="marked lossy",
        ),
        Case(
            "tiff-16bit-grey",
            "g16.tif",
            lambda: saved(
                Image.fromarray(np.arange(16 * 12, dtype=np.uint16).reshape(12, 16) * 300),
                "TIFF",
            ),
            "lossless",
            "MONOCHROME2",
            bits=16,
            samples=1,
            vlp=False,
        ),
    ]


def _truncated() -> bytes:
    data = jpeg(rgb(64, 48))
    return data[: len(data) // 2]


def _bomb() -> bytes:
    return patch_sof_size(jpeg(grey(8, 8)), 60000, 60000)


def bad_cases() -> list[tuple[str, str, Callable[[], bytes], type[ConversionError], str]]:
    """(name, filename, make, exception, phrase in the message)."""
    return [
        ("empty", "empty.jpg", lambda: b"", CorruptInput, "empty file"),
        (
            "truncated",
            "truncated.jpg",
            _truncated,
            CorruptInput,
            "): the file is damaged or incomplete; copy or export it again",
        ),
        ("no-eoi", "noeoi.jpg", lambda: jpeg(rgb(16, 16))[:-2], CorruptInput, "EOI"),
        (
            "text",
            "notes.jpg",
            lambda: b"Dear colleague,\nthis is not a picture.\n",
            UnsupportedInput,
            "text",
        ),
        ("gif", "anim.jpg", lambda: saved(rgb(8, 8), "GIF"), UnsupportedInput, "it is a GIF image"),
        ("bomb", "bomb.jpg", _bomb, InputTooLarge, "decompression bomb"),
        ("dicom", "already.jpg", _dicom_file, UnsupportedInput, "already a DICOM file"),
        (
            "sof-disagrees",
            "liar.jpg",
            lambda: patch_sof_size(jpeg(rgb(16, 16)), 4000, 3000),
            CorruptInput,
            "too short",
        ),
        (
            "png-16bit-colour",
            "rgb48.png",
            lambda: _png_rgb16(),
            UnsupportedInput,
            "16-bit colour",
        ),
        (
            "png-16bit-grey-alpha",
            "la32.png",
            _grey_alpha_png16,
            UnsupportedInput,
            "16-bit grey PNG with an alpha channel",
        ),
        (
            "wider-than-us",
            "panorama.png",
            lambda: saved(Image.new("L", (70000, 1), 9), "PNG"),
            UnsupportedInput,
            "(0028,0011) Columns",
        ),
        (
            "taller-than-us",
            "strip.tif",
            lambda: saved(Image.new("L", (1, 65536), 9), "TIFF"),
            UnsupportedInput,
            "at most 65535",
        ),
        (
            "arithmetic-sof9",
            "arith.jpg",
            lambda: jpeg(rgb(16, 16)).replace(b"\xff\xc0", b"\xff\xc9", 1),
            UnsupportedInput,
            "arithmetic (SOF9) JPEG is not supported (baseline, extended and progressive "
            "Huffman JPEG are): re-save it as baseline JPEG",
        ),
        (
            "png-cut-in-the-pixels",
            "half.png",
            lambda: (lambda d: d[: len(d) // 2])(saved(rgb(64, 48), "PNG")),
            CorruptInput,
            "the file is damaged or incomplete; copy or export it again",
        ),
        (
            "png-header-only",
            "cut.png",
            lambda: saved(rgb(64, 48), "PNG")[:40],
            UnsupportedInput,
            "a PNG file Pillow cannot read: damaged or truncated",
        ),
        (
            "tiff-signed-16",
            "signed.tif",
            lambda: tiff_raw(np.arange(-6, 6, dtype=np.int16).reshape(3, 4), 1, 2),
            UnsupportedInput,
            "signed integer samples (SampleFormat 2)",
        ),
        (
            "tiff-signed-8",
            "signed8.tif",
            lambda: tiff_raw(np.arange(-6, 6, dtype=np.int8).reshape(3, 4), 1, 2),
            UnsupportedInput,
            "signed integer samples (SampleFormat 2)",
        ),
        (
            "tiff-float",
            "float.tif",
            lambda: tiff_raw(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), 1, 3),
            UnsupportedInput,
            "floating-point samples (SampleFormat 3)",
        ),
    ]


def _dicom_file() -> bytes:
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x00\x00\x00\x00"


def _png_rgb16() -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    w, h = 4, 3
    return png_raw(w, h, 16, 2, b"".join(b"\x00" + bytes(range(w * 6)) for _ in range(h)))


def png_raw(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: ``rows`` are the filtered scanlines (filter byte first)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def tiff_raw(
    pixels: np.ndarray,
    photometric: int,
    sample_format: int = 1,
    extra_samples: int | None = None,
    bits: int | None = None,
) -> bytes:
    """An uncompressed little-endian one-strip TIFF written by hand (rows x columns
    [x samples]), for sample layouts Pillow cannot write (WhiteIsZero 16-bit, signed ...).
    ``bits`` (e.g. 12): grey samples packed MSB first at that depth, each row padded to a
    whole byte (TIFF 6.0 section 4)."""
    import struct

    height, width = pixels.shape[:2]
    spp = pixels.shape[2] if pixels.ndim == 3 else 1
    if bits is None:
        bits = pixels.dtype.itemsize * 8
        data = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    else:
        shifts = np.arange(bits - 1, -1, -1)
        rows = [((row[:, None].astype(np.int64) >> shifts) & 1).ravel() for row in pixels]
        data = b"".join(np.packbits(r.astype(np.uint8)).tobytes() for r in rows)
    data += b"\x00" * (len(data) % 2)
    bits_offset = 8 + len(data)
    bits_array = struct.pack(f"<{spp}H", *([bits] * spp))
    ifd_offset = bits_offset + len(bits_array)
    bits_entry = (
        (3, spp, bits) if spp == 1 else (3, spp, bits | bits << 16) if spp == 2 else (3, spp, -1)
    )
    entries = {
        256: (4, 1, width),
        257: (4, 1, height),
        258: bits_entry,
        259: (3, 1, 1),
        262: (3, 1, photometric),
        273: (4, 1, 8),
        277: (3, 1, spp),
        278: (4, 1, height),
        279: (4, 1, len(data)),
        339: (3, 1, sample_format),
    }
    if extra_samples is not None:
        entries[338] = (3, 1, extra_samples)
    ifd = struct.pack("<H", len(entries))
    for tag in sorted(entries):
        kind, count, value = entries[tag]
        if tag == 258 and spp > 2:
            ifd += struct.pack("<HHII", tag, kind, count, bits_offset)
        elif kind == 3 and count == 1:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += b"\x00\x00\x00\x00"
    return b"II*\x00" + struct.pack("<I", ifd_offset) + data + bits_array + ifd


def _grey_alpha_png16() -> bytes:
    """16-bit grey + alpha (colour type 4), which Pillow reads as 8-bit RGBA."""
    w, h = 5, 3
    samples = np.arange(w * h * 2, dtype=">u2").reshape(h, w * 2) * 1000
    return png_raw(w, h, 16, 4, b"".join(b"\x00" + row.tobytes() for row in samples))


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def template(path: Path, **elements: object) -> Path:
    """A DICOM template file (``convert --template``): an SC object with ``elements``."""
    import pydicom

    ds = pydicom.Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = "1.2.3.4"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def watcher_takes(tmp_path: Path, name: str, data: bytes) -> tuple[list[str], list[str]]:
    """Drop ``data`` as ``name`` into a fresh inbox (stable_seconds 1) and scan with a fake
    clock: what the watcher hands over once the file was stable, and then once it was
    unchanged for incomplete_seconds (a file still incomplete goes to quarantine then)."""
    from node.config import config_from_dict
    from node.ingest.watcher import DropFolderWatcher

    cfg = config_from_dict(
        {"node": {"base_dir": str(tmp_path)}, "ingest": {"stable_seconds": 1.0}}, tmp_path
    )
    inbox = cfg.ingest.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_bytes(data)
    now = [0.0]
    taken: list[str] = []
    watcher = DropFolderWatcher(cfg.ingest, lambda p: taken.append(p.name), clock=lambda: now[0])
    watcher.scan()
    now[0] = 2.0
    watcher.scan()
    stable = list(taken)
    now[0] = 2.0 + cfg.ingest.incomplete_seconds
    watcher.scan()
    return stable, taken
