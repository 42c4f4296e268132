"""One writer per DICOM module (PS3.3 Annex C) for the objects the converter builds.

Each writer takes the dataset already holding the user's metadata (every source merged)
and fills in what the module requires: Type 1 values that nobody supplied are invented
(UIDs) or set to the conventional value, Type 2 attributes are made present (empty
allowed), and pixel-derived attributes are always written from the image.
"""

from __future__ import annotations

import logging

from node import __version__
from node.errors import ConversionError
from node.ingest import anatomy
from node.ingest.elements import Elements
from node.ingest.images import JPEG_METHOD, Pixels

log = logging.getLogger(__name__)


# Patient (C.7.1.1)
def patient(ds: Elements) -> None:
    ds.present("PatientName", "PatientID", "PatientBirthDate", "PatientSex")


# General Study (C.7.2.1)
def general_study(ds: Elements, study_uid: str) -> None:
    if not ds.has_value("StudyInstanceUID"):
        ds.set("StudyInstanceUID", study_uid)
    ds.present("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


# General Series (C.7.3.1)
def general_series(
    ds: Elements, series_uid: str, modality: str, notes: list[str], name: str = "input"
) -> None:
    """Modality (forced for IODs that fix it), Series UID, SeriesNumber, Laterality (2C).

    Laterality is Type 2C (required for paired body parts). It is left alone when Laterality
    or ImageLaterality is given, absent for unpaired anatomy (BodyPartExamined or the
    Anatomic Region Sequence code, :mod:`node.ingest.anatomy`), and otherwise
    written empty (dciodvfy: a warning, not an error) with a note when the body part is
    paired. Supplying a laterality is the user's clinical claim; it is never invented.
    """
    if not ds.has_value("SeriesInstanceUID"):
        ds.set("SeriesInstanceUID", series_uid)
    current = ds.text("Modality")
    if modality and current != modality:
        if current:
            notes.append(
                f"(0008,0060) Modality {current!r} replaced by {modality!r} (IOD fixes it)"
            )
        ds.set("Modality", modality)
    elif ds.has("Modality") and not current:
        ds.remove("Modality")  # present-but-empty is an error where it is Type 1 or 3
    ds.present("SeriesNumber")
    region = anatomy.coded_region(ds.value("AnatomicRegionSequence"))
    anatomy.check_single_item(ds.value("AnatomicRegionSequence"), name)
    body_part = ds.text("BodyPartExamined").upper()
    unpaired = _unpaired_anatomy(ds)
    what = _anatomy_name(body_part, region)
    if ds.has_value("Laterality"):
        _one_laterality(ds, unpaired, what, notes, name)
        return
    if ds.has_value("ImageLaterality") or unpaired:
        # Laterality must then be absent: an empty one (e.g. from a template such as a CT,
        # or a sidecar) is a dciodvfy error next to ImageLaterality (Type 2C condition).
        if ds.has("Laterality"):
            ds.remove("Laterality")
            notes.append(
                "empty (0020,0060) Laterality removed: it must be absent when "
                "(0020,0062) ImageLaterality is given or the body part is unpaired"
            )
        return
    if what:
        notes.append(
            f"warning: {what} is a paired (or unknown) body part: supply (0020,0060) "
            "Laterality R/L or (0020,0062) ImageLaterality"
        )
    ds.present("Laterality")


def _anatomy_name(body_part: str, region: tuple[str, str] | None) -> str:
    """The anatomy named, for notes: the body part, else the coded region."""
    if body_part:
        return f"(0018,0015) BodyPartExamined {body_part}"
    if region is not None:
        return f"(0008,2218) AnatomicRegionSequence code {region[1]} ({region[0]})"
    return ""


def _unpaired_anatomy(ds: Elements) -> bool:
    """True when BodyPartExamined or the coded anatomic region is an unpaired body part."""
    region = anatomy.coded_region(ds.value("AnatomicRegionSequence"))
    return ds.text("BodyPartExamined").upper() in UNPAIRED_BODY_PARTS or (
        region is not None and anatomy.is_unpaired(region)
    )


def _one_laterality(ds: Elements, unpaired: bool, what: str, notes: list[str], name: str) -> None:
    """Laterality (series) given with ImageLaterality or an unpaired body part.

    dciodvfy reports Laterality as "present when condition unsatisfied" (an error) next to
    ImageLaterality or unpaired anatomy (BodyPartExamined or the Anatomic Region Sequence's
    code). The same side given twice keeps ImageLaterality alone; Laterality with unpaired
    anatomy becomes ImageLaterality (the same claim, made for the image); two different
    sides are a contradiction that only the user can resolve.
    """
    side = ds.text("Laterality")
    image_side = ds.text("ImageLaterality")
    if image_side:
        if image_side != side:
            raise ConversionError(
                f"{name}: (0020,0060) Laterality {side} contradicts (0020,0062) "
                f"ImageLaterality {image_side}: give one of them (ImageLaterality for an "
                "image of one side)"
            )
        ds.remove("Laterality")
        notes.append(
            f"(0020,0060) Laterality {side} left out: (0020,0062) ImageLaterality {side} "
            "says the same, and DICOM allows only one of them here"
        )
    elif unpaired:
        ds.remove("Laterality")
        ds.set("ImageLaterality", side)
        notes.append(
            f"(0020,0060) Laterality {side} written as (0020,0062) ImageLaterality: "
            f"{what} is not a paired body part, so Laterality must be absent"
        )


#: BodyPartExamined defined terms that are not paired (measured: dciodvfy accepts them
#: without Laterality); any other value (paired or not a defined term) needs a laterality.
UNPAIRED_BODY_PARTS = frozenset(
    [
        "ABDOMEN",
        "ABDOMENPELVIS",
        "AORTA",
        "BACK",
        "BLADDER",
        "BRAIN",
        "CEREBELLUM",
        "CSPINE",
        "CTSPINE",
        "CERVIX",
        "CHEST",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "CIRCLEOFWILLIS",
        "COCCYX",
        "COLON",
        "CORONARYARTERY",
        "DUODENUM",
        "WHOLEBODY",
        "ESOPHAGUS",
        "FACE",
        "GALLBLADDER",
        "HEAD",
        "HEADNECK",
        "HEART",
        "ILEUM",
        "ILIUM",
        "JAW",
        "JEJUNUM",
        "LARYNX",
        "LIVER",
        "LSPINE",
        "LSSPINE",
        "MAXILLA",
        "MEDIASTINUM",
        "MOUTH",
        "NECK",
        "NECKCHEST",
        "NOSE",
        "PANCREAS",
        "PELVIS",
        "PENIS",
        "PHARYNX",
        "PROSTATE",
        "RECTUM",
        "SSPINE",
        "SCALP",
        "SKULL",
        "SPINE",
        "SPLEEN",
        "STERNUM",
        "STOMACH",
        "THYMUS",
        "THYROID",
        "TONGUE",
        "TRACHEA",
        "TSPINE",
        "TLSPINE",
        "URETER",
        "URETHRA",
        "UTERUS",
        "VAGINA",
        "VULVA",
    ]
)


def has_laterality_statement(ds: Elements) -> bool:
    """Laterality or ImageLaterality given, or unpaired anatomy (BodyPartExamined or the
    Anatomic Region Sequence's code)."""
    return ds.has_value("Laterality") or ds.has_value("ImageLaterality") or _unpaired_anatomy(ds)


# General Equipment (C.7.5.1)
def general_equipment(ds: Elements) -> None:
    ds.present("Manufacturer")


# SC Equipment (C.8.6.1)
def sc_equipment(ds: Elements, conversion_type: str) -> None:
    if not ds.has_value("ConversionType"):
        ds.set("ConversionType", conversion_type)
    ds.set("SecondaryCaptureDeviceManufacturer", "dicom-node")
    ds.set("SecondaryCaptureDeviceManufacturerModelName", "dicom-node convert")
    ds.set("SecondaryCaptureDeviceSoftwareVersions", __version__)


# General Image (C.7.6.1) and the lossy compression history (C.7.6.1.1.5)
def general_image(
    ds: Elements, instance_number: int, pixels: Pixels, image_type: tuple[str, ...]
) -> None:
    if not ds.has_value("InstanceNumber"):
        ds.set("InstanceNumber", instance_number)
    ds.present("PatientOrientation", "ContentDate", "ContentTime")
    if not ds.has_value("ImageType"):
        ds.set("ImageType", list(image_type))
    if pixels.lossy:
        ds.set("LossyImageCompression", "01")
        if pixels.lossy_ratio is not None:
            ds.set("LossyImageCompressionRatio", _ds_string(pixels.lossy_ratio))
        ds.set("LossyImageCompressionMethod", JPEG_METHOD)
    else:
        ds.set("LossyImageCompression", "00")


def _ds_string(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text[:16]


# Image Pixel (C.7.6.3)
def image_pixel(ds: Elements, pixels: Pixels) -> None:
    ds.set("SamplesPerPixel", pixels.samples)
    ds.set("PhotometricInterpretation", pixels.photometric)
    ds.set("Rows", pixels.rows)
    ds.set("Columns", pixels.columns)
    ds.set("BitsAllocated", pixels.bits_allocated)
    ds.set("BitsStored", pixels.bits_stored)
    ds.set("HighBit", pixels.bits_stored - 1)
    ds.set("PixelRepresentation", 0)
    if pixels.samples > 1:
        ds.set("PlanarConfiguration", 0)
    if pixels.aspect is not None and not ds.has_value("PixelAspectRatio"):
        # Type 1C: required when the pixels are not square (and no pixel spacing is given).
        ds.set("PixelAspectRatio", [str(v) for v in pixels.aspect])
        pixels.notes.append(
            "non-square pixels: PixelAspectRatio {}\\{} (vertical\\horizontal) from the "
            "image's resolution".format(*pixels.aspect)
        )
    # Encapsulated: OB of undefined length (the encoder adds the sequence delimiter).
    vr = "OW" if pixels.bits_allocated > 8 and not pixels.encapsulated else "OB"
    ds[PIXEL_DATA] = (
        vr,
        EncapsulatedPixels(pixels.pixel_data) if pixels.encapsulated else pixels.pixel_data,
    )


class EncapsulatedPixels:
    """Compressed frames, written as undefined-length Pixel Data: an empty Basic Offset
    Table item, then one fragment per frame (padded with 0x00 after EOI to even length)."""

    __slots__ = ("frames",)

    def __init__(self, *frames: bytes) -> None:
        self.frames = frames


PIXEL_DATA = 0x7FE00010


# Multi-frame (C.7.6.6) and Frame Pointers (C.7.6.9): pages of a document
def multi_frame(ds: Elements, pixels: Pixels) -> None:
    ds.set("NumberOfFrames", pixels.frames)
    if pixels.frames > 1:
        ds[0x00280009] = ("AT", 0x00182001)  # FrameIncrementPointer -> PageNumberVector
        ds.set("PageNumberVector", [str(i) for i in range(1, pixels.frames + 1)])


# SC Multi-frame Image (C.8.6.3)
def sc_multiframe_image(ds: Elements, pixels: Pixels, conversion_type: str) -> None:
    """BurnedInAnnotation (Type 1) and the grey LUT attributes.

    BurnedInAnnotation defaults to NO for camera files (ConversionType DI) and to YES for
    everything else (screenshots, scanned documents/images may show identifying text),
    so that de-identification treats such pixels with care; override with -k.
    """
    if not ds.has_value("BurnedInAnnotation"):
        ds.set("BurnedInAnnotation", "NO" if conversion_type == "DI" else "YES")
    if pixels.samples == 1:
        ds.set("PresentationLUTShape", "IDENTITY")
        ds.set("RescaleIntercept", "0")
        ds.set("RescaleSlope", "1")
        ds.set("RescaleType", "US")


# Acquisition Context (C.7.6.14)
def acquisition_context(ds: Elements) -> None:
    if not ds.has("AcquisitionContextSequence"):
        ds.set("AcquisitionContextSequence", [])


# ICC Profile (C.11.15)
def icc_profile(ds: Elements, pixels: Pixels) -> None:
    """The source's ICC profile, when it describes the pixels written: colour pixels and a
    whole profile whose data colour space (header bytes 16-19) is RGB. A CMYK file's profile
    describes CMYK, not the RGB the converter made of it, and is left out (noted); so is an
    incomplete or damaged profile (a warning)."""
    if not pixels.icc or pixels.samples != 3:
        return
    icc = pixels.icc
    problem = _icc_damage(icc)
    if problem:
        pixels.notes.append(
            f"warning: ICC profile left out: {problem}; colours are shown as plain sRGB. "
            "Export the image again (or with the profile embedded anew) to keep it"
        )
        return
    icc = icc[: int.from_bytes(icc[:4], "big")]  # without padding after the profile
    space = icc[16:20]
    if space != b"RGB ":
        pixels.notes.append(
            f"ICC profile of colour space {space.decode('latin-1').strip()!r} left out: it "
            "does not describe the RGB pixels written"
        )
        return
    ds.set("ICCProfile", icc + (b"\x00" if len(icc) % 2 else b""))


def _icc_damage(icc: bytes) -> str | None:
    """Why ``icc`` is not a whole ICC profile (ICC.1 7.2: a 128-byte header giving the
    profile's size at bytes 0-3 and ``acsp`` at 36-39), or None. A JPEG carries a large
    profile in several APP2 chunks: one of them lost leaves a profile that colour-managed
    viewers refuse or misread."""
    if len(icc) < 128 or icc[36:40] != b"acsp":
        return f"{len(icc)} bytes without an ICC profile header (no 'acsp' signature)"
    declared = int.from_bytes(icc[:4], "big")
    if declared < 128 or declared > len(icc):
        return (
            f"incomplete: its header gives {declared} bytes, {len(icc)} are present "
            "(a chunk of it is missing from the file)"
        )
    return None


# SOP Common (C.12.1)
def sop_common(ds: Elements, sop_class_uid: str, sop_instance_uid: str) -> None:
    ds.set("SOPClassUID", sop_class_uid)
    ds.set("SOPInstanceUID", sop_instance_uid)
    if _needs_utf8(ds):
        ds.set("SpecificCharacterSet", "ISO_IR 192")
    else:
        ds.remove("SpecificCharacterSet")


_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})


def _needs_utf8(ds: Elements) -> bool:
    for vr, value in ds.values():
        if vr in _TEXT_VRS and value is not None and not str(value).isascii():
            return True
        if vr == "SQ" and value:
            for item in value:
                for elem in item.iterall():
                    if elem.VR in _TEXT_VRS and not str(elem.value).isascii():
                        return True
    return False
