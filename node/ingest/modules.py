"""One writer per DICOM module (PS3.3 Annex C) for the objects the converter builds.

Each writer takes the dataset already holding the user's metadata (every source merged)
and fills in what the module requires: Type 1 values that nobody supplied are invented
(UIDs) or set to the conventional value, Type 2 attributes are made present (empty
allowed), and pixel-derived attributes are always written from the image.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from node import __version__
from node.ingest.images import JPEG_METHOD, Pixels

log = logging.getLogger(__name__)

_VR = {
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "ReferringPhysicianName": "PN",
    "StudyID": "SH",
    "AccessionNumber": "SH",
    "SeriesNumber": "IS",
    "Laterality": "CS",
    "Manufacturer": "LO",
    "InstanceNumber": "IS",
    "PatientOrientation": "CS",
    "ContentDate": "DA",
    "ContentTime": "TM",
    "LossyImageCompression": "CS",
}


def _present(ds: Dataset, *keywords: str) -> None:
    """Type 2: make each attribute present, empty if nobody gave a value."""
    for kw in keywords:
        if kw not in ds:
            ds.add_new(kw, _VR[kw], None)


def _has_value(ds: Dataset, keyword: str) -> bool:
    return keyword in ds and ds[keyword].value not in (None, "", [])


# Patient (C.7.1.1)
def patient(ds: Dataset) -> None:
    _present(ds, "PatientName", "PatientID", "PatientBirthDate", "PatientSex")


# General Study (C.7.2.1)
def general_study(ds: Dataset, study_uid: str) -> None:
    if not _has_value(ds, "StudyInstanceUID"):
        ds.StudyInstanceUID = study_uid
    _present(ds, "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


# General Series (C.7.3.1)
def general_series(ds: Dataset, series_uid: str, modality: str, notes: list[str]) -> None:
    """Modality (forced for IODs that fix it), Series UID, SeriesNumber, Laterality (2C).

    Laterality is Type 2C (required for paired body parts). Without any laterality
    statement (Laterality, ImageLaterality or BodyPartExamined) it is written empty, which
    dciodvfy accepts with a warning; supplying one is the user's clinical claim.
    """
    if not _has_value(ds, "SeriesInstanceUID"):
        ds.SeriesInstanceUID = series_uid
    current = ds.get("Modality", None)
    if modality and current != modality:
        if current:
            notes.append(
                f"(0008,0060) Modality {current!r} replaced by {modality!r} (IOD fixes it)"
            )
        ds.Modality = modality
    elif "Modality" in ds and not current:
        del ds.Modality  # present-but-empty is an error where it is Type 1 or 3
    _present(ds, "SeriesNumber")
    if not any(_has_value(ds, k) for k in ("Laterality", "ImageLaterality", "BodyPartExamined")):
        _present(ds, "Laterality")


# General Equipment (C.7.5.1)
def general_equipment(ds: Dataset) -> None:
    _present(ds, "Manufacturer")


# SC Equipment (C.8.6.1)
def sc_equipment(ds: Dataset, conversion_type: str) -> None:
    if not _has_value(ds, "ConversionType"):
        ds.ConversionType = conversion_type
    ds.SecondaryCaptureDeviceManufacturer = "dicom-node"
    ds.SecondaryCaptureDeviceManufacturerModelName = "dicom-node convert"
    ds.SecondaryCaptureDeviceSoftwareVersions = __version__


# General Image (C.7.6.1) and the lossy compression history (C.7.6.1.1.5)
def general_image(
    ds: Dataset, instance_number: int, pixels: Pixels, image_type: tuple[str, ...]
) -> None:
    if not _has_value(ds, "InstanceNumber"):
        ds.InstanceNumber = instance_number
    _present(ds, "PatientOrientation", "ContentDate", "ContentTime")
    if not _has_value(ds, "ImageType"):
        ds.ImageType = list(image_type)
    if pixels.lossy:
        ds.LossyImageCompression = "01"
        if pixels.lossy_ratio is not None:
            ds.LossyImageCompressionRatio = _ds_string(pixels.lossy_ratio)
        ds.LossyImageCompressionMethod = JPEG_METHOD
    else:
        ds.LossyImageCompression = "00"


def _ds_string(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text[:16]


# Image Pixel (C.7.6.3)
def image_pixel(ds: Dataset, pixels: Pixels) -> None:
    ds.SamplesPerPixel = pixels.samples
    ds.PhotometricInterpretation = pixels.photometric
    ds.Rows = pixels.rows
    ds.Columns = pixels.columns
    ds.BitsAllocated = pixels.bits_allocated
    ds.BitsStored = pixels.bits_stored
    ds.HighBit = pixels.bits_stored - 1
    ds.PixelRepresentation = 0
    if pixels.samples > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = pixels.pixel_data
    elem = ds["PixelData"]
    if pixels.encapsulated:
        elem.VR = "OB"
        elem.is_undefined_length = True
    else:
        elem.VR = "OW" if pixels.bits_allocated > 8 else "OB"


# Multi-frame (C.7.6.6), single frame
def multi_frame(ds: Dataset) -> None:
    ds.NumberOfFrames = 1


# SC Multi-frame Image (C.8.6.3)
def sc_multiframe_image(ds: Dataset, pixels: Pixels) -> None:
    """BurnedInAnnotation (Type 1; default NO, override with -k) and the grey LUT attributes."""
    if not _has_value(ds, "BurnedInAnnotation"):
        ds.BurnedInAnnotation = "NO"
    if pixels.samples == 1:
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"


# Acquisition Context (C.7.6.14)
def acquisition_context(ds: Dataset) -> None:
    if "AcquisitionContextSequence" not in ds:
        ds.AcquisitionContextSequence = Sequence()


# ICC Profile (C.11.15)
def icc_profile(ds: Dataset, pixels: Pixels) -> None:
    if pixels.icc and pixels.samples == 3:
        ds.ICCProfile = pixels.icc + (b"\x00" if len(pixels.icc) % 2 else b"")


# SOP Common (C.12.1)
def sop_common(ds: Dataset, sop_class_uid: str, sop_instance_uid: str) -> None:
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    if _needs_utf8(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet


def _needs_utf8(ds: Dataset) -> bool:
    for elem in ds.iterall():
        if (
            elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC")
            and elem.value is not None
            and not str(elem.value).isascii()
        ):
            return True
    return False
