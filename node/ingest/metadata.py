"""Where the non-pixel attributes of a converted object come from, and their precedence.

Lowest to highest: built-in defaults (written by the IOD builders) -> ``[ingest.defaults]``
in the config -> template dataset (``--dataset-from``/``--study-from``/``--series-from``)
-> sidecar JSON next to the image (``NAME.json`` or ``NAME.jpg.json``) -> EXIF-derived
values -> file-name pattern overrides -> ``-k/--key``. Each source is a
:class:`~pydicom.dataset.Dataset`; ``merge`` lays them over each other in that order.

Attributes that describe the pixels or identify the instance (Image Pixel module, lossy
compression history, SOP Class/Instance UID, the file meta group) are computed by the
converter; templates never contribute them and the user-facing sources are refused with a
message naming the tag.

pydicom (parsing, validation, the data dictionary) is imported on first use. ``-k``,
``[ingest.defaults]`` and file-name pattern values whose keywords are in the built-in
dictionary (:data:`~node.ingest.elements.CORE_DICTIONARY`: patient, study and series
identification, laterality ...) with a text VR are checked here by the same rules as
pydicom's ``validate_value`` (PS3.5 6.2 lengths and character sets; tested to agree)
without importing it (~0.2 s with numpy); anything else, and any value these checks refuse
(for pydicom's own message), goes through pydicom. Sidecars and templates always do.
What pydicom accepts but dciodvfy reports as an error (control characters, value
multiplicity, UTF-8 byte lengths, enumerated values) is refused by
:mod:`node.ingest.values`.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from node.errors import ConversionError
from node.ingest.elements import CORE_DICTIONARY, Attr, Elements, tag_vr
from node.ingest.values import (
    STRING_VRS,
    check_values,
    describe,
    enumerated_problem,
    form_hint,
    has_bool,
    shown,
    text_problem,
)

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

log = logging.getLogger(__name__)

#: Computed by the converter from the image; no metadata source may set them.
PROTECTED_KEYWORDS = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PlanarConfiguration",
        "NumberOfFrames",
        "PixelData",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "ICCProfile",
        "SpecificCharacterSet",
    }
)
_PROTECTED_TAGS = frozenset(tag_vr(k)[0] for k in PROTECTED_KEYWORDS)

#: Attributes ``--study-from`` copies (Patient, Patient Study and General Study modules).
STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "PatientComments",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "AdmittingDiagnosesDescription",
)
#: ``--series-from`` copies these in addition (General Series module, without Modality).
SERIES_KEYWORDS = (
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "SeriesDescription",
    "Laterality",
    "BodyPartExamined",
    "OperatorsName",
    "PerformingPhysicianName",
    "ProtocolName",
    "PatientPosition",
    "RequestAttributesSequence",
)
#: Per-instance attributes ``--dataset-from`` leaves behind (besides the protected ones).
_INSTANCE_KEYWORDS = frozenset(
    {
        "InstanceNumber",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "ContentDate",
        "ContentTime",
        "AcquisitionDateTime",
        "ImageType",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "WindowCenter",
        "WindowWidth",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
    }
)
_NUMERIC_VRS = {"US": int, "SS": int, "UL": int, "SL": int, "UV": int, "SV": int}
_FLOAT_VRS = {"FL", "FD"}

TemplateScope = Literal["dataset", "study", "series"]


# ----------------------------------------------------------------------- key=value sources


def resolve_tag(name: str, where: str) -> BaseTag:
    """A tag from a keyword (``PatientName``) or ``(gggg,eeee)``/``gggg,eeee``/``ggggeeee``."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    text = name.strip()
    tag = tag_for_keyword(text)
    if tag is not None:
        return Tag(tag)
    hexpart = text.strip("()").replace(",", "")
    if len(hexpart) == 8:
        try:
            return Tag(int(hexpart, 16))
        except ValueError:
            pass
    raise ConversionError(
        f"{where.rstrip(':')}: {name!r} is neither a DICOM keyword nor a (gggg,eeee) tag "
        f"({_did_you_mean(text)}keywords are case-sensitive, e.g. PatientName)"
    )


def _did_you_mean(text: str) -> str:
    import difflib

    from pydicom.datadict import keyword_dict

    close = difflib.get_close_matches(text, list(keyword_dict), n=1, cutoff=0.8)
    return f"did you mean {close[0]}? " if close else ""


def element_from_value(tag: BaseTag, value: Any, where: str) -> DataElement:
    """A DataElement for ``tag`` with ``value`` (str, number, list or None) from ``where``."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import DataElement
    from pydicom.valuerep import validate_value

    if int(tag) in _PROTECTED_TAGS or tag.group == 0x0002:
        raise ConversionError(
            f"{where}: {describe(tag)} {_computed(int(tag))} and cannot be set; remove it"
        )
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise ConversionError(
            f"{where}: {describe(tag)} is not in the DICOM dictionary, so its VR is unknown; "
            "private attributes cannot be set this way"
        ) from None
    if vr == "SQ":
        raise ConversionError(
            f"{where}: {describe(tag)} is a sequence; supply it in a DICOM JSON sidecar "
            "or a template dataset"
        )
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        raise ConversionError(f"{where}: {describe(tag)} has VR {vr}, not settable as text")
    if " or " in vr:
        vr = vr.split(" or ")[0]
    if value is None or value == "":
        return DataElement(tag, vr, None if vr in _NUMERIC_VRS or vr in _FLOAT_VRS else "")
    if has_bool(value):
        raise ConversionError(
            f"{where}: {describe(tag)} (VR {vr}) needs text or a number, got "
            f"{json.dumps(value)} (a JSON/TOML boolean)"
        )
    items = value if isinstance(value, list) else str(value).split("\\")
    try:
        if vr in _NUMERIC_VRS:
            conv: list[Any] = [int(str(v)) for v in items]
        elif vr in _FLOAT_VRS:
            conv = [float(str(v)) for v in items]
        else:
            conv = [str(v) for v in items]
            for v in conv:
                validate_value(vr, v, config.RAISE)
    except ValueError as exc:
        what = "needs numbers" if vr in _NUMERIC_VRS or vr in _FLOAT_VRS else "invalid value"
        reason = re.split(r"\.(?:\s|$)", str(exc))[0]
        from pydicom.datadict import keyword_for_tag

        hint = form_hint(vr, str(value), keyword_for_tag(tag))
        raise ConversionError(
            f"{where}: {describe(tag)} (VR {vr}) {what}, got {shown(value)} ({reason}){hint}"
        ) from None
    check_values(tag, vr, conv, where)
    return DataElement(tag, vr, conv[0] if len(conv) == 1 else conv)


def _computed(tag: int) -> str:
    """How the converter decides a protected attribute, for refusal messages."""
    if tag == 0x00080005:
        return "is chosen by the converter (ISO_IR 192 when any text is not ASCII, else none)"
    if tag in (0x00080016, 0x00080018):
        return (
            "is chosen by the converter (SOP class from --sop-class, instance UID from the content)"
        )
    if tag >> 16 == 0x0002:
        return "belongs to the file meta information the converter writes"
    return "is computed from the image"


def _date_time_range(one: str) -> str:
    """A DA/DT/TM value or range (PS3.4 C.2.2.2.5), as pydicom's ``_range_regex``."""
    return rf"^{one}$|^\-{one} ?$|^{one}\- ?$|^{one}\-{one} ?$"


#: PS3.5 6.2: maximum characters per value, and allowed characters, of the text VRs
#: checked without pydicom (the same limits and expressions as pydicom 3's validators).
_MAX_CHARS = {"AE": 16, "CS": 16, "IS": 12, "LO": 64, "LT": 10240, "SH": 16, "ST": 1024, "UI": 64}
#: Compiled on first use (:func:`_chars`): the DT expression alone takes ~6 ms to compile,
#: paid by every conversion process at start-up when it was compiled at import.
_CHARS = {
    "AE": r"^[\x20-\x7e]*$",
    "AS": r"^\d\d\d[DWMY]$",
    "CS": r"^[A-Z0-9 _]*$",
    "IS": r"^ *[+\-]?\d+ *$",
    "DA": _date_time_range(r"\d{4}(0[1-9]|1[0-2])([0-2]\d|3[01])"),
    "DT": _date_time_range(
        r"\d{4}((0[1-9]|1[0-2])(([0-2]\d|3[01])(([01]\d|2[0-3])"
        r"([0-5]\d((60|[0-5]\d)(\.\d{1,6} ?)?)?)?)?)?)?([+-][01]\d\d\d)?"
    ),
    "TM": _date_time_range(r"([01]\d|2[0-3])([0-5]\d((60|[0-5]\d)(\.\d{1,6} ?)?)?)?"),
    "UI": r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$",
}


def _chars(vr: str) -> re.Pattern[str] | None:
    """The compiled character rule of ``vr`` (None: no rule); ``re`` caches it."""
    source = _CHARS.get(vr)
    return None if source is None else re.compile(source)


_CHECKED_VRS = frozenset(_MAX_CHARS) | frozenset(_CHARS) | {"PN"}
#: Keywords of the built-in dictionary whose VM refuses a single value (tested against
#: pydicom's dictionary): one value for them goes to pydicom's path, which refuses it.
NEEDS_SEVERAL_VALUES = frozenset({"ImageType", "PatientOrientation", "PixelAspectRatio"})


def _valid_text(vr: str, value: str) -> bool:
    if len(value) > _MAX_CHARS.get(vr, len(value)):
        return False
    if vr == "PN":  # up to 3 component groups of up to 64 characters
        groups = value.split("=")
        return len(groups) <= 3 and all(len(g) <= 64 for g in groups)
    pattern = _chars(vr)
    if pattern is not None and value and (not pattern.match(value) or value[-1] == "\n"):
        return False
    # An IS beyond 32 bits: pydicom's own path decides (and says) what happens.
    return vr != "IS" or not value.strip() or -(2**31) <= int(value) < 2**31


def _checked_here(name: str, value: Any) -> tuple[int, Attr] | None:
    """``(tag, (VR, value))`` for a built-in keyword with a text VR and a valid value,
    encoded as pydicom would store it; None: let pydicom handle (or refuse) it."""
    core = CORE_DICTIONARY.get(name.strip())
    if core is None or core[1] not in _CHECKED_VRS or core[0] in _PROTECTED_TAGS:
        return None
    tag, vr = core
    if value is None or value == "":
        return tag, (vr, "")
    if has_bool(value):
        return None
    items = [str(v) for v in (value if isinstance(value, list) else str(value).split("\\"))]
    if len(items) > 1 or name.strip() in NEEDS_SEVERAL_VALUES:
        return None  # the value multiplicity is checked there, against pydicom's dictionary
    if not all(
        _valid_text(vr, v)
        and text_problem(vr, v) is None
        and not enumerated_problem(name.strip(), v)
        for v in items
    ):
        return None
    if vr == "IS":  # pydicom's IS keeps the stripped text
        items = [v.strip() for v in items]
    return tag, (vr, items[0] if len(items) == 1 else items)


def elements_from_pairs(pairs: Iterable[tuple[str, Any]], where: str) -> Elements:
    """:func:`dataset_from_pairs` as :class:`Elements`, without pydicom when every pair is
    a built-in keyword with a valid text value (see the module docstring)."""
    pairs = list(pairs)
    out = Elements()
    for name, value in pairs:
        checked = _checked_here(name, value)
        if checked is None:
            return Elements.from_dataset(dataset_from_pairs(pairs, where))
        out[checked[0]] = checked[1]
    return out


def dataset_from_pairs(pairs: Iterable[tuple[str, Any]], where: str) -> Dataset:
    """A Dataset from (keyword-or-tag, value) pairs; later pairs win."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    for name, value in pairs:
        tag = resolve_tag(name, where)
        ds[tag] = element_from_value(tag, value, f"{where} {name}")
    return ds


def parse_key(text: str) -> tuple[str, str]:
    """``KEYWORD=VALUE`` or ``(gggg,eeee)=VALUE`` from ``-k``; the value may be empty."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConversionError(
            f"--key {text!r}: expected KEYWORD=VALUE or (gggg,eeee)=VALUE, "
            "e.g. --key PatientName=Doe^Jane"
        )
    return name.strip(), value


# ----------------------------------------------------------------------- sidecar JSON


#: The suffixes of sidecar files (exactly these spellings; ``NAME.Json`` is not one).
SIDECAR_SUFFIXES = (".json", ".JSON")


def is_sidecar_name(name: str) -> bool:
    """True for ``NAME.json`` / ``NAME.JSON``: a sidecar, never an image input."""
    return name.endswith(SIDECAR_SUFFIXES)


def sidecar_for(source: Path) -> Path | None:
    """The sidecar of ``source``: ``NAME.json`` or else ``NAME.jpg.json``, if it exists
    (``.JSON`` too: the drop folder and the CLI walk never take a ``*.json``/``*.JSON`` as
    an image, so one spelt ``NAME.JSON`` must be applied, not silently skipped)."""
    candidates = (
        source.with_suffix(".json"),
        source.with_suffix(".JSON"),
        source.with_name(source.name + ".json"),
        source.with_name(source.name + ".JSON"),
    )
    for candidate in candidates:
        try:
            if candidate != source and candidate.is_file():
                return candidate
        except OSError:  # e.g. ENAMETOOLONG: a 255-byte NAME.jpg has no NAME.jpg.json
            continue
    return None


def _is_dicom_json(table: Mapping[str, Any]) -> bool:
    return bool(table) and all(
        len(k) == 8 and all(c in "0123456789abcdefABCDEF" for c in k) and isinstance(v, dict)
        for k, v in table.items()
    )


def load_sidecar(path: Path) -> Dataset:
    """Read a sidecar: ``{keyword: value}`` or the DICOM JSON model (PS3.18 F.2).

    UTF-8, with or without a byte order mark; UTF-16/32 with one (JSON's own detection):
    Windows PowerShell's ``Set-Content -Encoding UTF8`` and older Notepad write a UTF-8 BOM,
    PowerShell 5's ``>`` UTF-16. Such sidecars were refused, and their images with them.
    """
    try:
        table = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConversionError(f"sidecar {path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(
            f"sidecar {path}: not UTF-8 text ({exc.reason} at byte {exc.start}, "
            "e.g. Latin-1/Windows-1252): save it as UTF-8"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"sidecar {path}: not valid JSON: {exc}") from None
    if not isinstance(table, dict):
        raise ConversionError(f"sidecar {path}: expected a JSON object of keyword -> value")
    if _is_dicom_json(table):
        from pydicom.dataset import Dataset

        try:
            ds = Dataset.from_json(table)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConversionError(f"sidecar {path}: invalid DICOM JSON model: {exc}") from None
        if 0x00080005 in ds:
            # DICOM JSON is Unicode whatever (0008,0005) says: it names the character set
            # of the object the JSON was made from (CP-2518), as dcm2json and PACS exports
            # always write it. The converter chooses the output's own character set.
            log.info(
                "sidecar %s: (0008,0005) SpecificCharacterSet %s ignored: JSON values are "
                "Unicode; the object gets ISO_IR 192 when any text is not ASCII",
                path,
                list(ds[0x00080005].value) if ds[0x00080005].VM > 1 else ds[0x00080005].value,
            )
            del ds[0x00080005]
        for elem in ds:
            if int(elem.tag) in _PROTECTED_TAGS or elem.tag.group == 0x0002:
                raise ConversionError(
                    f"sidecar {path}: {describe(elem.tag)} {_computed(int(elem.tag))}; remove it"
                )
            _check_json_element(elem, f"sidecar {path}")
        return ds
    for key, value in table.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
        ):
            raise ConversionError(
                f"sidecar {path}: {key}: nested values need the DICOM JSON model "
                '({"ggggeeee": {"vr": ..., "Value": [...]}})'
            )
    return dataset_from_pairs(table.items(), f"sidecar {path}:")


def _check_json_element(elem: DataElement, where: str) -> None:
    """The checks of :func:`element_from_value` for an element of a DICOM JSON sidecar
    (pydicom's ``from_json`` validates nothing); sequence items are checked recursively."""
    check_element(elem, where, 'correct the "vr"')


def check_element(elem: DataElement, where: str, vr_fix: str) -> None:
    """Refuse an element read from a file (DICOM JSON sidecar, template) whose VR is not
    the dictionary's, or whose value pydicom's validation or :func:`check_values` refuses
    (dciodvfy would flag it); sequence items are checked recursively. ``vr_fix`` says how
    to correct a wrong VR."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR
    from pydicom.multival import MultiValue
    from pydicom.valuerep import VR, validate_value

    if elem.VR not in {m for m in VR.__members__ if "_" not in m}:
        raise ConversionError(
            f"{where}: {describe(elem.tag)} has the unknown VR {elem.VR!r} (PS3.5 6.2 lists "
            "the value representations)"
        )
    try:
        expected = [v.strip() for v in dictionary_VR(elem.tag).split(" or ")]
    except KeyError:
        expected = []  # a private or unknown tag: its VR is the file's to say
    if expected and elem.VR not in expected:
        raise ConversionError(
            f"{where}: {describe(elem.tag)} has VR {elem.VR!r}, but the DICOM "
            f"dictionary says {' or '.join(expected)}: {vr_fix}"
        )
    if elem.VR == "SQ":
        for item in elem.value or []:
            for inner in item:
                check_element(inner, where, vr_fix)
        return
    if elem.VR not in STRING_VRS or elem.value is None or elem.value == "":
        return
    values = list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]
    for value in values:
        try:
            validate_value(elem.VR, str(value), config.RAISE)
        except ValueError as exc:
            reason = re.split(r"\.(?:\s|$)", str(exc))[0]
            hint = form_hint(elem.VR, str(value), elem.keyword)
            raise ConversionError(
                f"{where}: {describe(elem.tag)} (VR {elem.VR}) invalid value, got "
                f"{shown(str(value))} ({reason}){hint}"
            ) from None
    check_values(elem.tag, elem.VR, values, where)


# ----------------------------------------------------------------------- template dataset


def load_template(path: Path, scope: TemplateScope, overridden: Collection[int] = ()) -> Dataset:
    """Attributes to take from a template DICOM file (never its SOP Instance UID).

    Every attribute taken is checked as sidecar values are (:func:`check_element`: pydicom's
    validation, value multiplicity, enumerated values, control characters, UTF-8 lengths,
    impossible dates and times). A template is often an object from elsewhere (a PACS, a
    CD) and may hold values dciodvfy refuses; copied unchanged, each would be an error in
    every object made from it. A bad patient, study or series attribute (what
    ``--study-from``/``--series-from`` copy) is refused, naming the template, the tag and
    how to fix it; ``overridden`` (tags set by ``-k``, which replaces them anyway) are not
    checked. Any other attribute ``--dataset-from`` would copy with a bad value (e.g. from
    another modality's modules) is left out with a warning.
    """
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():
        # pydicom warns about values it finds invalid while reading; the checks below
        # refuse or leave out each of them with a message naming the tag instead.
        warnings.simplefilter("ignore")
        try:
            src = dcmread(path, stop_before_pixels=True)
            src.decode()
        except (OSError, InvalidDicomError) as exc:
            raise ConversionError(f"template {path}: cannot read it as DICOM: {exc}") from None
    out = Dataset()
    if scope == "dataset":
        for elem in src:
            kw = elem.keyword
            if (
                int(elem.tag) in _PROTECTED_TAGS
                or kw in _INSTANCE_KEYWORDS
                or elem.tag.group in (0x0002, 0x0028)
                or 0x6000 <= elem.tag.group <= 0x60FF
                or elem.tag.is_private
            ):
                continue
            out.add(elem)
    else:
        keywords = STUDY_KEYWORDS + (SERIES_KEYWORDS if scope == "series" else ())
        for kw in keywords:
            if kw in src:
                out.add(src[kw])
    _check_template(out, path, frozenset(int(t) for t in overridden))
    return out


#: What a template's patient, study and series attributes are: refused when bad.
_IDENTITY_KEYWORDS = frozenset(STUDY_KEYWORDS + SERIES_KEYWORDS)


def _check_template(ds: Dataset, path: Path, overridden: frozenset[int]) -> None:
    """Refuse bad identity attributes, leave out other bad ones (see :func:`load_template`)."""
    where = f"template {path}"
    for elem in list(ds):
        if int(elem.tag) in overridden:
            continue
        try:
            check_element(elem, where, "it was written with the wrong VR")
        except ConversionError as exc:
            keyword = elem.keyword or ""
            if keyword in _IDENTITY_KEYWORDS:
                raise ConversionError(
                    f"{exc}; correct it in the template (e.g. DCMTK dcmodify -m "
                    f'"{keyword}=..." {path}) or replace it with --key {keyword}=VALUE '
                    f"(--key {keyword}= leaves it empty)"
                ) from None
            del ds[elem.tag]
            how = (
                "a DICOM JSON sidecar"
                if elem.VR == "SQ"
                else f"--key {keyword or describe(elem.tag).split()[0]}=VALUE"
            )
            log.warning(
                "%s; %s left out of the converted objects (not patient, study or series "
                "data: supply it with %s to have it)",
                exc,
                describe(elem.tag) if elem.VR == "SQ" else "the attribute",
                how,
            )


# ----------------------------------------------------------------------- merging


@dataclass(frozen=True)
class MetadataSources:
    """Every metadata source for one file, lowest precedence first."""

    defaults: Elements
    template: Elements | None
    sidecar: Elements | None
    exif: Elements | None
    overrides: Elements | None
    keys: Elements | None

    def merged(self) -> Elements:
        out = Elements()
        for layer in (
            self.defaults,
            self.template,
            self.sidecar,
            self.exif,
            self.overrides,
            self.keys,
        ):
            if layer:
                out.update(layer)
        return out

    def supplied(self, keyword: str) -> bool:
        """True if any source other than EXIF gives ``keyword`` a non-empty value."""
        for layer in (self.defaults, self.template, self.sidecar, self.overrides, self.keys):
            if layer and layer.has_value(keyword):
                return True
        return False
