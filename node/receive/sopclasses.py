"""The storage SOP classes the SCP accepts.

pynetdicom's list (``AllStoragePresentationContexts``, 170 classes) leaves out the retired
storage classes, yet older modalities still send them: an ultrasound of the 1990s-2000s
sends Ultrasound (Multi-frame) Image Storage under the retired UIDs ``...1.1.6`` and
``...1.1.3``, an old NM camera ``...1.1.5``. DCMTK 3.6.7's storescp accepts these by
default, and so does Orthanc 1.10 (which takes DCMTK's list); a node refusing them loses
those studies. :data:`EXTRA_STORAGE_CLASSES` is every storage class storescp accepts with
its defaults that pynetdicom does not list (measured by proposing each storage UID of
pydicom's dictionary to both: 25, see tests/receive/test_sop_classes.py); they are
registered with pynetdicom's storage service so its own path (Storage Commitment
associations, ``fast_path = false``) serves them too.

Private SOP classes (Siemens CSA Non-Image, GE, Philips ...) are refused, as storescp
and Orthanc do by default.
"""

from __future__ import annotations

import logging

from pynetdicom import AllStoragePresentationContexts
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import register_uid, uid_to_service_class

log = logging.getLogger(__name__)

#: UID -> keyword (pydicom's) of the storage classes DCMTK accepts and pynetdicom omits.
EXTRA_STORAGE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.5": "NuclearMedicineImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.8": "StandaloneOverlayStorage",
    "1.2.840.10008.5.1.4.1.1.9": "StandaloneCurveStorage",
    "1.2.840.10008.5.1.4.1.1.9.1": "WaveformStorageTrial",
    "1.2.840.10008.5.1.4.1.1.10": "StandaloneModalityLUTStorage",
    "1.2.840.10008.5.1.4.1.1.11": "StandaloneVOILUTStorage",
    "1.2.840.10008.5.1.4.1.1.12.3": "XRayAngiographicBiPlaneImageStorage",
    "1.2.840.10008.5.1.4.1.1.77.1": "VLImageStorageTrial",
    "1.2.840.10008.5.1.4.1.1.77.2": "VLMultiFrameImageStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.1": "TextSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.2": "AudioSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.3": "DetailSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.4": "ComprehensiveSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.129": "StandalonePETCurveStorage",
    "1.2.840.10008.5.1.4.1.1.501.1": "DICOSCTImageStorage",
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOSDigitalXRayImageStorageForPresentation",
    "1.2.840.10008.5.1.4.1.1.501.2.2": "DICOSDigitalXRayImageStorageForProcessing",
    "1.2.840.10008.5.1.4.1.1.501.3": "DICOSThreatDetectionReportStorage",
    "1.2.840.10008.5.1.4.1.1.501.4": "DICOS2DAITStorage",
    "1.2.840.10008.5.1.4.1.1.501.5": "DICOS3DAITStorage",
    "1.2.840.10008.5.1.4.1.1.501.6": "DICOSQuadrupoleResonanceStorage",
    "1.2.840.10008.5.1.4.1.1.601.1": "EddyCurrentImageStorage",
    "1.2.840.10008.5.1.4.1.1.601.2": "EddyCurrentMultiFrameImageStorage",
}


def _register() -> None:
    """Make pynetdicom's storage service serve the extra classes (once per process)."""
    for uid, keyword in EXTRA_STORAGE_CLASSES.items():
        if uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, keyword, StorageServiceClass)


_register()

#: Every storage SOP class UID the SCP accepts, in the order its contexts are offered.
STORAGE_CLASS_UIDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax]
        + list(EXTRA_STORAGE_CLASSES)
    )
)
