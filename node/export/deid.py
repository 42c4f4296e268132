"""What an export may say about its source: PS3.15 Annex E basic profile, for exports.

Exports never copy a dataset; they carry a handful of values into file names, PNG text
chunks, PDF captions and PDF metadata. This module decides those values:

* **Patient identifiers** (Patient's Name, Patient ID, Other Patient IDs, Birth Date,
  Accession Number, Institution, Referring Physician) appear only with
  ``export.allow_patient_identifiers = true`` and never with ``export.deidentify``.
* With ``export.deidentify`` (Annex E basic profile, Table E.1-1 actions X/Z/D/U):

  - UIDs (Study, Series, SOP Instance) are replaced by a SHA-256 based hash (action U);
    the same UID always gives the same hash, so series stay together;
  - dates are removed (action X/Z), or shifted by ``export.date_shift_days`` when
    ``export.date_policy = "shift"`` (the *Retain Longitudinal Temporal Information with
    Modified Dates* option); times are removed;
  - descriptions (Study/Series Description) are removed unless
    ``export.keep_descriptions`` (the *Retain/Clean Descriptors* options: the operator
    vouches that they hold no identifying text);
  - Modality, Instance Number and the window used are kept (not identifying).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset

from node.config import ExportSection
from node.fsutil import is_valid_uid

log = logging.getLogger(__name__)

#: Attributes never shown unless patient identifiers are allowed (and no de-identification).
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
)


def uid_hash(uid: str) -> str:
    """A stable, non-reversible stand-in for a UID: 20 hex digits of SHA-256."""
    return hashlib.sha256(f"dicom-node-export:{uid}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Policy:
    """The de-identification decisions of one export configuration."""

    deidentify: bool = False
    allow_patient_identifiers: bool = False
    date_policy: str = "remove"
    date_shift_days: int = 0
    keep_descriptions: bool = False

    @classmethod
    def from_config(cls, cfg: ExportSection) -> Policy:
        return cls(
            deidentify=cfg.deidentify,
            allow_patient_identifiers=cfg.allow_patient_identifiers,
            date_policy=cfg.date_policy,
            date_shift_days=cfg.date_shift_days,
            keep_descriptions=cfg.keep_descriptions,
        )

    @property
    def identifiers_allowed(self) -> bool:
        return self.allow_patient_identifiers and not self.deidentify

    def name_part(self, uid: str, prefix: str) -> str:
        """A file-name component for a UID: the UID itself, or its hash when de-identifying.

        A UID that is not a valid UID (it came from a peer) is always hashed, so nothing but
        digits, dots and hex ever reaches the file system.
        """
        if self.deidentify or not is_valid_uid(uid):
            return f"{prefix}{uid_hash(uid)}"
        return uid

    def date(self, value: object) -> str:
        """A DA value as YYYY-MM-DD for display, shifted or removed per policy ('' if none)."""
        text = str(value or "").strip()
        if len(text) < 8 or not text[:8].isdigit():
            return ""
        try:
            day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return ""
        if self.deidentify:
            if self.date_policy == "keep":
                pass
            elif self.date_policy == "shift":
                day = day + dt.timedelta(days=self.date_shift_days)
            else:
                return ""
        return day.isoformat()

    def time(self, value: object) -> str:
        text = str(value or "").strip()
        if self.deidentify or len(text) < 4 or not text[:4].isdigit():
            return ""
        return f"{text[:2]}:{text[2:4]}"

    def description(self, value: object) -> str:
        text = " ".join(str(value or "").split())
        if self.deidentify and not self.keep_descriptions:
            return ""
        return text

    def identifiers(self, ds: Dataset) -> dict[str, str]:
        """Patient identifiers to show, or {} (the default)."""
        if not self.identifiers_allowed:
            return {}
        out = {}
        for keyword in PATIENT_KEYWORDS:
            value = ds.get(keyword)
            if value:
                out[keyword] = " ".join(str(value).split())
        return out


@dataclass(frozen=True)
class Facts:
    """The values of one object an export may show, already filtered by the policy."""

    modality: str
    study_date: str
    study_time: str
    study_description: str
    series_description: str
    series_number: str
    instance_number: str
    identifiers: dict[str, str]


def facts(ds: Dataset, policy: Policy) -> Facts:
    """Collect the showable values of ``ds`` under ``policy``."""

    def num(keyword: str) -> str:
        try:  # IS values are converted at first access: 'inf' raises OverflowError there
            value = ds.get(keyword)
            return str(int(value)) if value not in (None, "") else ""
        except (TypeError, ValueError, OverflowError):
            return ""  # not shown (captions and file names use 0 / '?')

    modality = str(ds.get("Modality", "") or "").strip()
    return Facts(
        modality="".join(ch for ch in modality if ch.isalnum())[:16],
        study_date=policy.date(ds.get("StudyDate") or ds.get("SeriesDate") or ""),
        study_time=policy.time(ds.get("StudyTime")),
        study_description=policy.description(ds.get("StudyDescription")),
        series_description=policy.description(ds.get("SeriesDescription")),
        series_number=num("SeriesNumber"),
        instance_number=num("InstanceNumber"),
        identifiers=policy.identifiers(ds),
    )
