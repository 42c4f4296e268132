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

Private SOP classes (Siemens CSA Non-Image, GE, Philips ...) are refused by default, as
storescp and Orthanc do. ``receive.extra_sop_classes`` lists those a site wants stored
(storescp's association profile, Orthanc's ``AcceptedSopClasses``):
:func:`accepted_storage_classes` checks them, registers them with pynetdicom's storage
service as :data:`EXTRA_STORAGE_CLASSES` are, and returns the SCP's whole list. They are
accepted with the same transfer syntaxes as every storage class, stored as received and
recorded the same way; the export finds no pixels in them and skips them.
"""

from __future__ import annotations

import logging

from pydicom.uid import UID_dictionary
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import register_uid, uid_to_service_class

from node.errors import ReceiveError

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


def check_extra_classes(extra: list[str]) -> list[str]:
    """The ``receive.extra_sop_classes`` not already accepted, in order, without repeats.

    ReceiveError for a UID DICOM defines as something other than a storage SOP class (a
    transfer syntax, Verification, Storage Commitment, a query/retrieve model ...):
    accepting it as storage would misroute its messages. Syntax was checked by the config.
    """
    standard = set(STORAGE_CLASS_UIDS)
    added: list[str] = []
    for i, uid in enumerate(extra):
        if uid in standard or uid in added:
            continue
        service = uid_to_service_class(uid)
        entry = UID_dictionary.get(uid)
        not_storage = entry is not None and (
            entry[1] != "SOP Class" or "Storage" not in entry[0] or "Commitment" in entry[0]
        )
        if not_storage or service not in (ServiceClass, StorageServiceClass):
            what = f"{entry[0]} ({entry[1]})" if entry is not None else service.__name__
            raise ReceiveError(
                f"receive.extra_sop_classes[{i}]: {uid} is {what}, not a storage SOP class: "
                "remove it (the list takes the SOP Class UIDs of objects to store, e.g. "
                "1.3.12.2.1107.5.9.1 for Siemens CSA Non-Image)"
            )
        added.append(uid)
    return added


def accepted_storage_classes(extra: list[str]) -> tuple[str, ...]:
    """:data:`STORAGE_CLASS_UIDS` plus the ``receive.extra_sop_classes`` ``extra``.

    Each extra UID is checked (:func:`check_extra_classes`) and registered with
    pynetdicom's storage service, so its own path serves it too; one already accepted is
    logged and ignored.
    """
    added = check_extra_classes(extra)
    for i, uid in enumerate(extra):
        if uid in STORAGE_CLASS_UIDS:
            log.warning(
                "receive.extra_sop_classes[%d]: %s (%s) is a storage class accepted anyway: "
                "the entry changes nothing",
                i,
                uid,
                UID_dictionary.get(uid, (uid,))[0],
            )
    for uid in added:
        if uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, "ExtraStorage_" + uid.replace(".", "_"), StorageServiceClass)
    return STORAGE_CLASS_UIDS + tuple(added)
