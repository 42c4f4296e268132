"""Image -> DICOM conversion of one file: the library API the CLI and the watcher call.

``convert_file`` reads the input once, decides by magic bytes what it is, and either
encapsulates a baseline/extended JPEG unchanged (fast path: markers parsed, nothing
decoded) or decodes it to native pixels (progressive, CMYK/YCCK, RGB-coded JPEG for VL
Photographic, EXIF Orientation to apply, PNG/BMP/TIFF). Metadata is merged from every
source (see :mod:`node.ingest.metadata`), the IOD is completed (:mod:`node.ingest.iods`),
and the file is written atomically: a reader never sees a partial object, and a refused
input leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from node.config import Config
from node.errors import ConversionError, CorruptInput, MissingMetadata, UnsupportedInput
from node.fsutil import Data, atomic_write
from node.ingest import encoder, iods, metadata, modules
from node.ingest import exif as exif_mod
from node.ingest.elements import Elements
from node.ingest.images import (
    IMAGE_MAGIC,
    TURNED_BY_PILLOW,
    Pixels,
    apply_orientation,
    check_pixel_cap,
    decoded,
    join_frames,
    jpeg_passthrough,
    lossy_ratio,
    open_image,
    pixel_aspect,
    raster_density,
    refuse_reduced_depth,
    white_is_zero,
)
from node.ingest.jpeg import JpegInfo, coded_image, parse_jpeg, strip_segments
from node.ingest.metadata import sidecar_for
from node.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, uid_from_seed

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

__all__ = [
    "ConvertOptions",
    "ConvertResult",
    "SeriesContext",
    "convert_file",
    "detect_format",
    "is_supported_image",
    "sidecar_for",
]


def detect_format(head: bytes) -> str | None:
    """``jpeg``, ``png``, ``bmp``, ``tiff`` from the first bytes, or None.

    A DICOM Part 10 file (``DICM`` at byte 128, when ``head`` reaches that far) is None
    even when its preamble starts like a TIFF file (PS3.10 7.1 allows such dual-format
    preambles, and pydicom's and many scanners' files use one).
    """
    if head[128:132] == b"DICM":
        return None
    for magic, kind, _ in IMAGE_MAGIC:
        if head.startswith(magic):
            return kind
    return None


def is_supported_image(path: Path) -> bool:
    """True if ``path`` starts like an image we convert (magic bytes, not the extension)."""
    try:
        with open(path, "rb") as fh:
            return detect_format(fh.read(132)) is not None
    except OSError:
        return False


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert: built from ``[ingest]`` (``from_config``) or from CLI arguments."""

    sop_class: str = "sc"
    conversion_type: str = "DI"
    keep_appn: bool = False
    strict: bool = False
    max_pixels: int = 200_000_000
    uid_root: str = "2.25"
    defaults: Mapping[str, str] = field(default_factory=dict)
    keys: Sequence[tuple[str, str]] = ()
    template: Dataset | None = None
    fsync: bool = True

    @classmethod
    def from_config(cls, cfg: Config) -> ConvertOptions:
        ing = cfg.ingest
        if ing.filename_pattern:
            # Checked once at start-up: a bad group name would otherwise quarantine every
            # file the pattern matches, one by one.
            for group in re.compile(ing.filename_pattern).groupindex:
                metadata.resolve_tag(group, f"ingest.filename_pattern (?P<{group}>...)")
        return cls(
            sop_class=ing.sop_class,
            conversion_type=ing.conversion_type,
            keep_appn=ing.keep_appn,
            strict=ing.strict,
            max_pixels=ing.max_pixels,
            uid_root=cfg.node.uid_root,
            defaults=dict(ing.defaults),
        )

    def __post_init__(self) -> None:
        if self.conversion_type not in iods.CONVERSION_TYPES:
            known = ", ".join(f"{k} ({v})" for k, v in iods.CONVERSION_TYPES.items())
            raise ConversionError(
                f"(0008,0064) ConversionType {self.conversion_type!r} is not a defined term: "
                f"use one of {known}"
            )
        if self.sop_class not in iods.SOP_KINDS:
            raise ConversionError(
                f"SOP class {self.sop_class!r} unknown (known: {', '.join(iods.SOP_KINDS)})"
            )
        # Parsed once (and validated: a bad keyword fails here, before any file is read).
        # Built-in keywords with valid text values need no pydicom (nor import it).
        defaults = metadata.elements_from_pairs(self.defaults.items(), "[ingest.defaults]")
        keys = metadata.elements_from_pairs(self.keys, "--key")
        if keys.has("SOPInstanceUID"):
            raise ConversionError(
                "--key SOPInstanceUID: derived from the content; it cannot be set"
            )
        object.__setattr__(self, "_defaults", defaults)
        object.__setattr__(self, "_keys", keys)
        object.__setattr__(self, "_template", Elements.from_dataset(self.template))

    def layer(self, name: str) -> Elements:
        """``defaults``, ``keys`` or ``template`` as parsed once (shared: do not modify)."""
        return getattr(self, "_" + name)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SeriesContext:
    """Study and Series Instance UIDs shared by the inputs converted together."""

    study_uid: str
    series_uid: str

    @classmethod
    def for_group(cls, key: str, uid_root: str) -> SeriesContext:
        """UIDs derived from ``key``: the same key always gives the same Study/Series.

        Make the key specific to the content (e.g. the folder path plus the digests of its
        files) so that two different patients dropped under the same folder name never
        share a Study Instance UID.
        """
        return cls(
            study_uid=uid_from_seed(uid_root, "study", key),
            series_uid=uid_from_seed(uid_root, "series", key),
        )


@dataclass(frozen=True)
class ConvertResult:
    """What ``convert_file`` wrote."""

    source: Path
    output: Path
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    notes: list[str]


def _read(source: Path) -> bytes:
    try:
        # A FIFO would block the read forever and a device (/dev/zero) never end: only
        # regular files are images. O_NONBLOCK keeps the open itself from waiting on a FIFO.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as fh:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise UnsupportedInput(
                    f"{source}: not a regular file (a FIFO, socket or device); "
                    "save the image to a file first"
                )
            return fh.read()
    except IsADirectoryError:
        raise UnsupportedInput(f"{source}: is a directory, not an image file") from None
    except OSError as exc:
        raise ConversionError(f"{source}: cannot read the file: {exc.strerror}") from None


def convert_file(
    source: Path,
    output: Path,
    options: ConvertOptions,
    series: SeriesContext,
    instance_number: int,
    overrides: Mapping[str, str] | None = None,
    writer: Callable[[Path, Data], None] | None = None,
    instance_key: str | None = None,
) -> ConvertResult:
    """Convert ``source`` into the DICOM file ``output`` (written atomically).

    ``writer`` replaces the default atomic write (temporary file, fsync, rename, fsync of
    the directory); the CLI's batch mode passes a group-commit writer.

    ``instance_key`` names the input within its group (default: the file name; the drop
    folder passes the path inside a dropped folder); it is part of the SOP Instance UID's
    seed, so that two copies of one image in a group (with different sidecars, say) are two
    instances, not one UID for two different objects.

    ``overrides`` (keyword -> value, e.g. from a file-name pattern) rank just below the
    ``-k`` keys. The sidecar (``NAME.json`` / ``NAME.jpg.json``) is read here. Raises a
    :class:`~node.errors.ConversionError` subclass naming the file and the cause; on error
    nothing is written. A failure to write ``output`` itself (disk full, permissions) is an
    ``OSError``: the input is fine, retry later.
    """
    source = Path(source)
    data = _read(source)
    name = str(source)
    if not data:
        raise CorruptInput(
            f"{name}: empty file (0 bytes): its copy failed or was not made; copy it again"
        )
    kind = detect_format(data[:132])
    if kind is None:
        hint = _what_it_is(data)
        raise UnsupportedInput(
            f"{name}: not a JPEG, PNG, BMP or TIFF image{hint}; the format is decided from the "
            "file's content, not its extension"
        )
    notes: list[str] = []
    if kind == "jpeg":
        pixels, exif = _jpeg_pixels(data, name, options, notes)
    else:
        pixels, exif = _raster_pixels(data, name, options, notes)

    sources = _sources(source, options, overrides, exif)
    ds = sources.merged()
    if options.strict:
        _check_strict(ds, name)
    if options.sop_class == "vlp":
        _content_date_time(ds, source, notes)
    study_uid, series_uid = _study_series_uids(sources, ds, series, options.uid_root)
    digest = hashlib.sha256(data).digest()
    key = source.name if instance_key is None else instance_key
    sop_uid = uid_from_seed(options.uid_root, "sop", study_uid, series_uid, digest, key)
    ids = iods.InstanceIds(study_uid, series_uid, sop_uid, instance_number)
    sop_class = iods.build(options.sop_class, ds, pixels, ids, options.conversion_type, name)
    parts = encode(ds, sop_class, sop_uid, pixels.transfer_syntax)
    if writer is not None:
        writer(Path(output), parts)
    else:
        atomic_write(Path(output), parts, fsync=options.fsync)
    for note in pixels.notes:
        log.log(_note_level(note), "%s: %s", name, note)
    return ConvertResult(
        source=source,
        output=Path(output),
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax=pixels.transfer_syntax,
        notes=list(pixels.notes),
    )


def _note_level(note: str) -> int:
    """Warnings as WARNING; routine stripping at DEBUG (one line per file in a batch)."""
    if note.startswith("warning"):
        return logging.WARNING
    routine = "metadata segment" in note or "padding bytes" in note
    return logging.DEBUG if routine else logging.INFO


def _what_it_is(data: bytes) -> str:
    """A hint for refused inputs: what the file looks like, if we can tell."""
    if data[128:132] == b"DICM":
        return " (it is already a DICOM file: send it as it is)"
    for magic, what in (
        (b"GIF8", "a GIF image"),
        (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 file"),
        (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
        (b"%PDF", "a PDF document"),
    ):
        if data.startswith(magic):
            return f" (it is {what})"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return " (it is a WebP image)"
    if data[4:8] == b"ftyp":
        return f" (it is an ISO media file, brand {data[8:12].decode('latin-1')!r}, e.g. HEIC)"
    return " (it looks like text)" if _looks_like_text(data[:512]) else ""


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ----------------------------------------------------------------------- pixels


def _jpeg_pixels(
    data: bytes, name: str, options: ConvertOptions, notes: list[str]
) -> tuple[Pixels, exif_mod.ExifValues]:
    try:
        info = parse_jpeg(data, name)
    except CorruptInput as exc:
        raise CorruptInput(
            f"{exc}: the file is damaged or incomplete; copy or export it again"
        ) from None
    check_pixel_cap(name, info.columns, info.rows, options.max_pixels)
    _check_frame(info, name)
    exif = exif_mod.read_exif(info.exif)
    if exif.problem:
        notes.append(f"warning: {exif.problem}")
    colour = info.colour_space
    reasons = []
    if info.sof == 0xC2:
        reasons.append("progressive JPEG (never wrapped in the retired syntax .4.55)")
    if colour in ("CMYK", "YCCK"):
        reasons.append(f"{colour} JPEG (never written as CMYK)")
    if colour == "RGB" and options.sop_class in ("vlp", "nsc"):
        reasons.append(
            f"RGB-coded JPEG: {options.sop_class} allows only YBR_FULL_422 with JPEG syntaxes"
        )
    if exif.orientation != 1:
        reasons.append(f"EXIF Orientation {exif.orientation} must be applied")
    if not options.keep_appn or reasons:
        _note_after_eoi(data, info, notes)
    if not reasons:
        frame = data if options.keep_appn else strip_segments(data, info)
        if not options.keep_appn and info.metadata_segments:
            notes.append(f"{len(info.metadata_segments)} metadata segment(s) removed")
        photometric = {"GRAY": "MONOCHROME2", "YCbCr": "YBR_FULL_422", "RGB": "RGB"}[colour]
        pixels = jpeg_passthrough(frame, info, photometric)
        pixels.icc = info.icc
        pixels.notes = notes
        return pixels, exif
    if info.precision != 8:
        raise UnsupportedInput(
            f"{name}: {info.precision}-bit {info.process} JPEG would have to be decoded "
            f"({reasons[0]}), which is only supported for 8-bit JPEG: re-save it as "
            "sequential (not progressive) JPEG without an EXIF rotation, or as 16-bit PNG/TIFF"
        )
    for reason in reasons:
        notes.append(f"decoded to native pixels: {reason}")
    if options.keep_appn and info.metadata_segments:
        notes.append(
            "warning: --keep-appn cannot keep the APPn/COM segments of a decoded JPEG "
            "(native pixels carry no JPEG segments)"
        )
    # Only the first image, without its metadata segments and what follows its EOI: from
    # an MPO's MPF segment (APP2) Pillow would read the file as several frames and refuse
    # it. Nothing removed matters to decoding (JFIF, ICC and Adobe stay; the orientation
    # was read from EXIF above).
    im = open_image(strip_segments(data, info), name, options.max_pixels, notes)
    if im.size != (info.columns, info.rows):
        raise CorruptInput(
            f"{name}: the frame header says {info.columns}x{info.rows} but the image "
            f"decodes to {im.width}x{im.height}"
        )
    im = apply_orientation(im, exif.orientation, notes)
    ratio = lossy_ratio(info.rows, info.columns, info.samples, 8, len(coded_image(data, info)))
    pixels = decoded(
        im,
        name,
        lossy=True,
        ratio=ratio,
        notes=notes,
        icc=info.icc,
        transformed=exif.orientation != 1,
    )
    pixels.aspect = pixel_aspect(info.density, exif.orientation)
    return pixels, exif


def _note_after_eoi(data: bytes, info: JpegInfo, notes: list[str]) -> None:
    """Say what is dropped after the first image's EOI (MPO images, padding, junk)."""
    extra = len(data) - info.eoi
    if extra <= 0:
        return
    tail = data[info.eoi :]
    if not tail.strip(b"\x00\xff"):
        notes.append(f"{extra} padding bytes after the JPEG's EOI marker removed")
    elif b"\xff\xd8\xff" in tail:
        notes.append(
            f"warning: {extra} bytes after the JPEG's EOI marker hold another image (an MPO "
            "or multi-picture file): only the first image is converted"
        )
    else:
        notes.append(f"{extra} bytes after the JPEG's EOI marker removed")


def _check_frame(info: JpegInfo, name: str) -> None:
    """Refuse processes we do not carry, and frames the scan data cannot possibly fill."""
    if info.sof not in (0xC0, 0xC1, 0xC2):
        raise UnsupportedInput(
            f"{name}: {info.process} JPEG is not supported (baseline, extended and "
            "progressive Huffman JPEG are): re-save it as baseline JPEG, or as PNG/TIFF to "
            "keep it lossless"
        )
    if info.precision not in (8, 12) or (info.sof == 0xC0 and info.precision != 8):
        raise CorruptInput(f"{name}: {info.process} with {info.precision}-bit samples is invalid")
    if info.samples not in (1, 3, 4):
        raise UnsupportedInput(f"{name}: JPEG with {info.samples} components is not supported")
    for comp in info.components:
        if not (1 <= comp.h <= 4 and 1 <= comp.v <= 4):
            raise CorruptInput(f"{name}: invalid sampling factors in the frame header (SOF)")
    if info.sof != 0xC2:
        # Huffman-coded sequential data needs at least 2 bits per 8x8 block (DC + EOB).
        hmax = max(c.h for c in info.components)
        vmax = max(c.v for c in info.components)
        blocks = sum(
            -(-info.columns * c.h // (hmax * 8)) * -(-info.rows * c.v // (vmax * 8))
            for c in info.components
        )
        if info.entropy_bytes * 4 < blocks:
            raise CorruptInput(
                f"{name}: the frame header says {info.columns}x{info.rows} but the scan data "
                f"({info.entropy_bytes} bytes) is too short for {blocks} blocks"
            )


def _raster_pixels(
    data: bytes, name: str, options: ConvertOptions, notes: list[str]
) -> tuple[Pixels, exif_mod.ExifValues]:
    multi = options.sop_class == "nsc"
    im = open_image(data, name, options.max_pixels, notes, multi_frame=multi)
    refuse_reduced_depth(data, im, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF; we note it below
            raw = im.getexif()
            exif = exif_mod.exif_values(dict(raw), dict(raw.get_ifd(0x8769)))
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, IndexError) as exc:
        exif = exif_mod.ExifValues(problem=f"EXIF unreadable ({exc})")
        notes.append(f"warning: {exif.problem}")
    icc = im.info.get("icc_profile") or None
    turned = im.info.get(TURNED_BY_PILLOW)
    if turned is not None:  # upright already; the object records it like any other turn
        exif = dataclasses.replace(exif, orientation=turned)
        notes.append(f"EXIF Orientation {turned} applied (image turned upright)")
    aspect = pixel_aspect(raster_density(im), exif.orientation)
    count = int(getattr(im, "n_frames", 1))
    frames = []
    lossy_pages = []
    for index in range(count):
        if index:
            try:
                im.seek(index)
                im.load()
            except (OSError, ValueError, EOFError) as exc:
                raise CorruptInput(f"{name}: page {index + 1} cannot be decoded: {exc}") from None
        # Each page has its own Compression: one JPEG page makes the whole object lossy.
        if "jpeg" in str(im.info.get("compression", "")).lower():
            lossy_pages.append(index + 1)
        page = im if turned else apply_orientation(im, exif.orientation, [] if index else notes)
        frames.append(
            decoded(
                page,
                name,
                lossy=False,
                ratio=None,
                notes=notes if index == 0 else [],
                icc=icc,
                transformed=exif.orientation != 1,
                white=white_is_zero(im),
            )
        )
    pixels = join_frames(frames, name) if count > 1 else frames[0]
    pixels.aspect = aspect
    if count > 1:
        notes.append(f"{count} pages written as {count} frames")
    if lossy_pages:
        which = "" if count == 1 else f" (page {', '.join(map(str, lossy_pages))} of {count})"
        notes.append(f"TIFF with JPEG compression{which}: marked lossy (LossyImageCompression 01)")
        ratio = lossy_ratio(pixels.rows * count, pixels.columns, pixels.samples, 8, len(data))
        pixels = dataclasses.replace(pixels, lossy=True, lossy_ratio=ratio)
    return pixels, exif


# ----------------------------------------------------------------------- metadata


def _sources(
    source: Path,
    options: ConvertOptions,
    overrides: Mapping[str, str] | None,
    exif: exif_mod.ExifValues,
) -> metadata.MetadataSources:
    sidecar_path = sidecar_for(source)
    sidecar = metadata.load_sidecar(sidecar_path) if sidecar_path else None
    over = (
        metadata.elements_from_pairs(overrides.items(), "file-name pattern") if overrides else None
    )
    partial = metadata.MetadataSources(
        defaults=options.layer("defaults"),
        template=options.layer("template"),
        sidecar=Elements.from_dataset(sidecar),
        exif=None,
        overrides=over,
        keys=options.layer("keys"),
    )
    exif_el = Elements()
    if exif.make:
        exif_el.set("Manufacturer", exif.make)
    if exif.model:
        exif_el.set("ManufacturerModelName", exif.model)
    if exif.datetime:
        exif_el.set("AcquisitionDateTime", exif.datetime)
        exif_el.set("ContentDate", exif.date)
        exif_el.set("ContentTime", exif.time)
        if not partial.supplied("StudyDate"):
            exif_el.set("StudyDate", exif.date)
            if not partial.supplied("StudyTime"):
                exif_el.set("StudyTime", exif.time)
    return dataclasses.replace(partial, exif=exif_el)


#: Who the patient is, for the Study Instance UID of a group whose files name patients.
_PATIENT_KEYWORDS = ("PatientID", "IssuerOfPatientID", "PatientName")


def _study_series_uids(
    sources: metadata.MetadataSources, ds: Elements, series: SeriesContext, uid_root: str
) -> tuple[str, str]:
    """The Study and Series Instance UIDs of one file of a group.

    Supplied UIDs win. Otherwise the group's (one folder: one study, one series), except
    where a file's own sources (its sidecar, its file-name pattern values) make it differ
    from the rest of the group: a file naming its patient gets a study of the group *and
    that patient* (two patients' photos in one folder are two studies, never one Study
    Instance UID shared by two patients, which PACS merge or refuse), and a file whose
    study is its own gets a series of that study (a series belongs to one study).
    """
    per_file = [layer for layer in (sources.sidecar, sources.overrides) if layer]
    study_uid = ds.text("StudyInstanceUID")
    own_study = any(layer.has_value("StudyInstanceUID") for layer in per_file)
    if not study_uid:
        study_uid = series.study_uid
        if any(layer.has_value(k) for layer in per_file for k in _PATIENT_KEYWORDS):
            patient = [ds.text(k) for k in _PATIENT_KEYWORDS]
            study_uid = uid_from_seed(uid_root, "study", series.study_uid, *patient)
            own_study = True
    series_uid = ds.text("SeriesInstanceUID")
    if not series_uid:
        series_uid = series.series_uid
        if own_study:
            series_uid = uid_from_seed(uid_root, "series", series.series_uid, study_uid)
    return study_uid, series_uid


def _content_date_time(ds: Elements, source: Path, notes: list[str]) -> None:
    """VL Image needs ContentDate/ContentTime (Type 1C): EXIF, else the study's, else mtime."""
    if ds.text("ContentTime") and ds.text("ContentDate"):
        return
    if ds.text("StudyDate") and ds.text("StudyTime"):
        ds.set("ContentDate", ds.text("StudyDate"))
        ds.set("ContentTime", ds.text("StudyTime"))
        notes.append("ContentDate/ContentTime taken from StudyDate/StudyTime (no EXIF date)")
        return
    try:
        stamp = time.localtime(source.stat().st_mtime)
    except OSError:
        stamp = time.localtime()
    ds.set("ContentDate", time.strftime("%Y%m%d", stamp))
    ds.set("ContentTime", time.strftime("%H%M%S", stamp))
    notes.append("ContentDate/ContentTime taken from the file's modification time (no EXIF date)")


_STRICT = (
    ("PatientID", "the patient's ID"),
    ("PatientName", "the patient's name, e.g. Doe^Jane"),
    ("StudyDate", "the study date YYYYMMDD"),
)


def _check_strict(ds: Elements, name: str) -> None:
    missing = []
    for keyword, what in _STRICT:
        if not ds.text(keyword):
            tag = metadata.resolve_tag(keyword, "strict")
            missing.append(f"{metadata.describe(tag)} ({what}): --key {keyword}=...")
    if not modules.has_laterality_statement(ds):
        missing.append(
            "laterality: (0020,0062) ImageLaterality R/L/B/U, (0020,0060) Laterality R/L or "
            "an unpaired (0018,0015) BodyPartExamined: --key ImageLaterality=U"
        )
    if missing:
        raise MissingMetadata(
            f"{name}: --strict: missing "
            + "; ".join(missing)
            + " (or put them in the sidecar NAME.json or [ingest.defaults])"
        )


# ----------------------------------------------------------------------- encoding


def encode(ds: Elements, sop_class: str, sop_uid: str, transfer_syntax: str) -> list[bytes]:
    """The complete Part 10 file (preamble, file meta with our implementation UID, dataset),
    as pieces in file order: the writers ``writev`` them, the pixel data is never copied."""
    return encoder.encode_parts(ds, sop_class, sop_uid, transfer_syntax)


def encode_with_pydicom(
    elements: Elements, sop_class: str, sop_uid: str, transfer_syntax: str
) -> bytes:
    """The same file written by pydicom's ``dcmwrite`` (reference for the fast encoder)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import UID

    copy = Elements(elements)
    pixel = copy.get(0x7FE00010)
    if pixel is not None and isinstance(pixel[1], modules.EncapsulatedPixels):
        copy[0x7FE00010] = ("OB", encapsulate(list(pixel[1].frames), has_bot=False))
    ds = copy.to_dataset()
    if pixel is not None and isinstance(pixel[1], modules.EncapsulatedPixels):
        ds["PixelData"].is_undefined_length = True
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
