"""The IODs the converter writes, and which modules each one is made of.

- ``sc``: Secondary Capture Image Storage (PS3.3 A.8.1): any bit depth and colour.
- ``nsc``: the multi-frame SC family (A.8.2-A.8.5), chosen from the pixels: Grayscale Byte
  (8-bit grey), Grayscale Word (9-16 bit grey), True Colour (8-bit, 3 samples).
- ``vlp``: VL Photographic Image Storage (A.32.4): Modality XC, 8 bits only, and with a
  JPEG transfer syntax only YBR_FULL_422 (so RGB-coded JPEGs are decoded first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from node.errors import UnsupportedInput
from node.ingest import modules
from node.ingest.elements import Elements
from node.ingest.images import Pixels

log = logging.getLogger(__name__)

SC = "1.2.840.10008.5.1.4.1.1.7"
MF_GRAYSCALE_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
MF_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"

SopKind = Literal["sc", "nsc", "vlp"]
#: (0008,0064) ConversionType defined terms (PS3.3 C.8.6.1).
CONVERSION_TYPES = {
    "DV": "digitized video",
    "DI": "digital interface",
    "DF": "digitized film",
    "WSD": "workstation",
    "SD": "scanned document",
    "SI": "scanned image",
    "DRW": "drawing",
    "SYN": "synthetic image",
}
SOP_KINDS: tuple[str, ...] = ("sc", "nsc", "vlp")


@dataclass(frozen=True)
class InstanceIds:
    """The identifiers one instance gets (user-supplied UIDs in the metadata win)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    instance_number: int


def sop_class_for(kind: str, pixels: Pixels, name: str) -> str:
    """The SOP Class UID for ``kind`` and these pixels; UnsupportedInput if they cannot fit."""
    if kind == "sc":
        return SC
    if kind == "vlp":
        if pixels.bits_allocated != 8:
            raise UnsupportedInput(
                f"{name}: {pixels.bits_stored}-bit pixels; VL Photographic allows 8 bits only "
                "(BitsAllocated 8): convert with --sop-class sc to keep all bits"
            )
        return VL_PHOTOGRAPHIC
    if kind == "nsc":
        if pixels.samples == 3 and pixels.bits_allocated == 8:
            return MF_TRUE_COLOR_SC
        if pixels.samples == 1 and pixels.bits_allocated == 8:
            return MF_GRAYSCALE_BYTE_SC
        if pixels.samples == 1 and pixels.bits_allocated == 16:
            return MF_GRAYSCALE_WORD_SC
        raise UnsupportedInput(
            f"{name}: {pixels.samples} samples at {pixels.bits_stored} bits fit no multi-frame "
            "SC class; use --sop-class sc"
        )
    raise UnsupportedInput(f"unknown SOP class {kind!r} (known: {', '.join(SOP_KINDS)})")


def build(
    kind: str,
    ds: Elements,
    pixels: Pixels,
    ids: InstanceIds,
    conversion_type: str,
    name: str,
) -> str:
    """Complete ``ds`` (holding the merged metadata) into an instance; returns the SOP class."""
    uid = sop_class_for(kind, pixels, name)
    notes = pixels.notes
    # Patient
    modules.patient(ds)
    # General Study
    modules.general_study(ds, ids.study_uid)
    if kind == "vlp":
        # General Series (Modality XC), General Equipment, Acquisition Context
        modules.general_series(ds, ids.series_uid, "XC", notes, name)
        modules.general_equipment(ds)
        image_type = (
            ("DERIVED", "PRIMARY") if pixels.spatially_transformed else ("ORIGINAL", "PRIMARY")
        )
        modules.acquisition_context(ds)
    else:
        # General Series (Modality OT unless supplied), SC Equipment
        modality = "" if ds.has("Modality") else "OT"
        modules.general_series(ds, ids.series_uid, modality, notes, name)
        modules.general_equipment(ds)
        modules.sc_equipment(ds, conversion_type)
        image_type = ("DERIVED", "SECONDARY")
    # General Image (+ lossy history), Image Pixel, ICC Profile
    modules.general_image(ds, ids.instance_number, pixels, image_type)
    modules.image_pixel(ds, pixels)
    modules.icc_profile(ds, pixels)
    if kind == "nsc":
        # Multi-frame, SC Multi-frame Image
        modules.multi_frame(ds, pixels)
        modules.sc_multiframe_image(ds, pixels, conversion_type)
    # SOP Common
    modules.sop_common(ds, uid, ids.sop_instance_uid)
    return uid
