"""A light attribute map for building one instance: ``{tag: (VR, value)}``.

pydicom's Dataset validates and wraps every value on assignment (~20-40 µs per element);
the converter sets ~40 elements per file and aims at >1,000 files/s, so instances are
assembled in this plain dict and encoded by :mod:`node.ingest.encoder`. User input is
parsed and validated once, then copied in: sidecars and templates by pydicom; ``-k``,
``[ingest.defaults]`` and file-name pattern values of keywords in this table with text VRs
by :mod:`node.ingest.metadata` itself (pydicom's rules), anything else by pydicom.

The attributes the converter itself writes are looked up in a small built-in table
(``CORE_DICTIONARY``, checked against pydicom's data dictionary by the tests), so that
converting a JPEG with built-in metadata never imports pydicom (~0.25 s of start-up with
numpy and Pillow); any other keyword is looked up in pydicom's dictionary on first use.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

Attr = tuple[str, Any]


#: ``keyword -> (tag, VR)`` for the attributes the converter writes or reads itself: the
#: same as pydicom's dictionary (first VR where it lists several; tested).
CORE_DICTIONARY: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "ImageType": (0x00080008, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "SeriesDate": (0x00080021, "DA"),
    "ContentDate": (0x00080023, "DA"),
    "AcquisitionDateTime": (0x0008002A, "DT"),
    "StudyTime": (0x00080030, "TM"),
    "SeriesTime": (0x00080031, "TM"),
    "ContentTime": (0x00080033, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "Modality": (0x00080060, "CS"),
    "ConversionType": (0x00080064, "CS"),
    "Manufacturer": (0x00080070, "LO"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "InstitutionName": (0x00080080, "LO"),
    "StudyDescription": (0x00081030, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "OperatorsName": (0x00081070, "PN"),
    "ManufacturerModelName": (0x00081090, "LO"),
    "AnatomicRegionSequence": (0x00082218, "SQ"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSex": (0x00100040, "CS"),
    "PatientAge": (0x00101010, "AS"),
    "IssuerOfPatientID": (0x00100021, "LO"),
    "BodyPartExamined": (0x00180015, "CS"),
    "SecondaryCaptureDeviceManufacturer": (0x00181016, "LO"),
    "SecondaryCaptureDeviceManufacturerModelName": (0x00181018, "LO"),
    "SecondaryCaptureDeviceSoftwareVersions": (0x00181019, "LO"),
    "ProtocolName": (0x00181030, "LO"),
    "PageNumberVector": (0x00182001, "IS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "StudyID": (0x00200010, "SH"),
    "SeriesNumber": (0x00200011, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
    "PatientOrientation": (0x00200020, "CS"),
    "Laterality": (0x00200060, "CS"),
    "ImageLaterality": (0x00200062, "CS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "PhotometricInterpretation": (0x00280004, "CS"),
    "PlanarConfiguration": (0x00280006, "US"),
    "NumberOfFrames": (0x00280008, "IS"),
    "FrameIncrementPointer": (0x00280009, "AT"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "HighBit": (0x00280102, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "PixelAspectRatio": (0x00280034, "IS"),
    "BurnedInAnnotation": (0x00280301, "CS"),
    "RescaleIntercept": (0x00281052, "DS"),
    "RescaleSlope": (0x00281053, "DS"),
    "RescaleType": (0x00281054, "LO"),
    "ICCProfile": (0x00282000, "OB"),
    "LossyImageCompression": (0x00282110, "CS"),
    "LossyImageCompressionRatio": (0x00282112, "DS"),
    "LossyImageCompressionMethod": (0x00282114, "CS"),
    "AcquisitionContextSequence": (0x00400555, "SQ"),
    "PresentationLUTShape": (0x20500020, "CS"),
    "PixelData": (0x7FE00010, "OB"),
}


@cache
def tag_vr(keyword: str) -> tuple[int, str]:
    """``(tag, VR)`` for a dictionary keyword (first VR when the dictionary lists several)."""
    core = CORE_DICTIONARY.get(keyword)
    if core is not None:
        return core
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return int(tag), dictionary_VR(tag).split(" or ")[0]


def empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, list) and not value)


class Elements(dict[int, Attr]):
    """Attributes of one instance by tag; keyword helpers for the module writers."""

    @classmethod
    def from_dataset(cls, ds: Dataset | None) -> Elements:
        out = cls()
        if ds is not None:
            for elem in ds:
                out[int(elem.tag)] = (elem.VR, elem.value)
        return out

    def set(self, keyword: str, value: Any) -> None:
        tag, vr = tag_vr(keyword)
        self[tag] = (vr, value)

    def value(self, keyword: str, default: Any = None) -> Any:
        attr = self.get(tag_vr(keyword)[0])
        return default if attr is None else attr[1]

    def text(self, keyword: str) -> str:
        """The value as text ("" when absent or empty)."""
        value = self.value(keyword)
        if empty(value):
            return ""
        if isinstance(value, list | tuple):
            return "\\".join(str(v) for v in value)
        return str(value)

    def has(self, keyword: str) -> bool:
        return tag_vr(keyword)[0] in self

    def has_value(self, keyword: str) -> bool:
        return not empty(self.value(keyword))

    def present(self, *keywords: str) -> None:
        """Type 2: make each attribute present, empty if nobody gave a value."""
        for kw in keywords:
            tag, vr = tag_vr(kw)
            if tag not in self:
                self[tag] = (vr, None)

    def remove(self, keyword: str) -> None:
        self.pop(tag_vr(keyword)[0], None)

    def to_dataset(self) -> Dataset:
        """A pydicom Dataset with the same content (tests and the reference writer)."""
        from pydicom.dataset import Dataset

        ds = Dataset()
        for tag, (vr, value) in sorted(self.items()):
            ds.add_new(tag, vr, value)
        return ds
