"""What a value must be to pass dciodvfy, beyond what pydicom's validation checks.

pydicom 3 accepts values that dciodvfy reports as errors (all measured with dicom3tools'
``dciodvfy``): control characters (none in short text such as LO, SH, PN; only LF, FF and
CR in ST, LT, UT), text within the VR's length in characters but not in bytes of the UTF-8
the converter writes, a value multiplicity the data dictionary does not allow (``A\\B`` is
two values), values outside an attribute's enumerated values, and person names with more
than five components, and dates and times with a year outside 1000-2999 or a second 60
(pydicom does not check the calendar at all: ``20230230`` passes both, and is refused here
too). :func:`check_values` refuses them with a message naming the tag, the
keyword and how to fix the value; the other functions are its parts, also used by the
checks that run without pydicom (:mod:`node.ingest.metadata`).

pydicom is imported only by :func:`check_values` and :func:`describe`.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from node.errors import ConversionError

if TYPE_CHECKING:
    from pydicom.tag import BaseTag

log = logging.getLogger(__name__)


def describe(tag: BaseTag) -> str:
    """``(0010,0010) PatientName`` for messages."""
    from pydicom.datadict import keyword_for_tag

    kw = keyword_for_tag(tag) or "private/unknown"
    return f"({tag.group:04X},{tag.element:04X}) {kw}"


def has_bool(value: Any) -> bool:
    """True for a JSON/TOML boolean (or a list holding one): never a DICOM value."""
    return isinstance(value, bool) or (
        isinstance(value, list) and any(isinstance(v, bool) for v in value)
    )


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened for messages (a sidecar value may be kilobytes long)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f"{text[:limit]}... ({size} characters)"


#: Control characters dciodvfy refuses (measured): none at all in the short text VRs,
#: only LF, FF and CR in ST/LT/UT (not TAB). ESC is refused too: the converter writes
#: ASCII or UTF-8 (ISO_IR 192), where ISO 2022 escape sequences have no place.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x09\x0b\x0e-\x1f\x7f]")
_LONG_TEXT_VRS = frozenset({"ST", "LT", "UT"})
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
#: PS3.5 6.2 maximum lengths that dciodvfy checks in bytes (UTF-8 may need 3 per character).
MAX_BYTES = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "PN": 64}


#: The years dciodvfy accepts in DA and DT values (measured: 0999 and 3000 are errors).
YEARS = (1000, 2999)
_DT_PARTS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_TM_PARTS = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


def date_time_problem(vr: str, value: str) -> str | None:
    """Why a DA, DT or TM value is no date or time of a stored object although pydicom's
    pattern accepts it; None when it is fine (or not one of those VRs).

    Refused: a range (``20240101-20240131`` is query syntax, PS3.4 C.2.2.2.5; dciodvfy:
    "Length invalid"), a day the calendar does not have (``20230230``; PS3.5 6.2: a date of
    the Gregorian calendar), a year outside 1000-2999 and second 60 (dciodvfy: "Character
    invalid for this VR"), a UTC offset outside -1200..+1400 (PS3.5 6.2), and an offset after
    a DT not given to the second (dciodvfy refuses ``2024010112+0100``)."""
    if vr not in ("DA", "DT", "TM") or not value.strip():
        return None
    text = value.rstrip(" ")
    m = (_TM_PARTS if vr == "TM" else _DT_PARTS).match(text)
    if m is None or vr != "DT" and "-" in text:
        if "-" in text:  # a single DT may end in a negative offset; that matched above
            what = {"DA": "date YYYYMMDD", "TM": "time HHMMSS", "DT": "date-time"}[vr]
            return f"is a range (query syntax), not a value an object can hold: give one {what}"
        return None  # pydicom's pattern says what is wrong
    if vr == "TM":
        return _clock_problem(*m.groups()[:3])
    year, month, day, hour, minute, second, _, offset = m.groups()
    if vr == "DA" and (month is None or day is None or hour is not None):
        return None  # not YYYYMMDD: pydicom's pattern says what is wrong
    if not YEARS[0] <= int(year) <= YEARS[1]:
        return (
            f"has the year {year}: dciodvfy accepts {YEARS[0]}-{YEARS[1]} "
            "(is a digit missing or wrong?)"
        )
    if (
        month is not None
        and day is not None
        and not is_calendar_date(int(year), int(month), int(day))
    ):
        return f"is no calendar date ({year}-{month}-{day} does not exist)"
    problem = _clock_problem(hour, minute, second)
    if problem:
        return problem
    if offset is not None:
        if second is None:
            return (
                "has a UTC offset after a time not given to the second: write "
                "YYYYMMDDHHMMSS&ZZXX (dciodvfy refuses the offset otherwise)"
            )
        minutes = int(offset[1:3]) * 60 + int(offset[3:])
        limit = 12 * 60 if offset[0] == "-" else 14 * 60
        if int(offset[3:]) > 59 or minutes > limit:
            return f"has the UTC offset {offset}, outside -1200..+1400"
    return None


_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_calendar_date(year: int, month: int, day: int) -> bool:
    """A day of the Gregorian calendar (PS3.5 6.2). Not ``datetime.date``: importing
    ``datetime`` costs each conversion process ~5-7 ms, and every camera file's EXIF date
    passes through here."""
    if not 1 <= month <= 12:
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return 1 <= day <= (29 if month == 2 and leap else _DAYS_IN_MONTH[month - 1])


def _clock_problem(hour: str | None, minute: str | None, second: str | None) -> str | None:
    if hour is not None and int(hour) > 23 or minute is not None and int(minute) > 59:
        return None  # pydicom's pattern refuses these itself
    if second is not None and int(second) > 59:
        return f"has the second {second}: dciodvfy and many systems refuse a leap second, use 59"
    return None


def text_problem(vr: str, value: str) -> str | None:
    """Why ``value`` cannot be written with ``vr`` although pydicom accepts it: a control
    character, too many bytes once encoded as UTF-8, or a date or time that does not exist
    or that dciodvfy refuses (:func:`date_time_problem`); None when it is fine."""
    if vr not in STRING_VRS:
        return None
    if not value.isascii():
        undecodable = _not_utf8(value)
        if undecodable:
            return undecodable
    when = date_time_problem(vr, value)
    if when:
        return when
    found = (_CONTROL_IN_TEXT if vr in _LONG_TEXT_VRS else _CONTROL).search(value)
    if found:
        allowed = " (only LF, FF and CR are allowed in it)" if vr in _LONG_TEXT_VRS else ""
        return f"contains the control character U+{ord(found.group()):04X}{allowed}"
    if vr == "PN" and any(group.count("^") > 4 for group in value.split("=")):
        return "has more than 5 name components (family^given^middle^prefix^suffix)"
    limit = MAX_BYTES.get(vr)
    if limit is not None and not value.isascii():
        parts = value.split("=") if vr == "PN" else [value]
        size = max(len(part.encode("utf-8")) for part in parts)
        if size > limit:
            unit = "a name component group" if vr == "PN" else "the value"
            return (
                f"is {size} bytes in UTF-8 where VR {vr} allows {limit} for {unit} "
                "(dciodvfy and many systems count bytes, not characters): shorten it"
            )
    return None


def _not_utf8(value: str) -> str | None:
    """Why ``value`` is not text: it holds bytes that were not UTF-8 (Python keeps them as
    lone surrogates: a Latin-1 file name from a Windows share, an argument typed in a
    Latin-1 terminal). Writing it crashed the conversion (or, in the drop folder, left
    the claim in work/ and retried it for ever)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        what = f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        return (
            f"holds {what}, which is not UTF-8 text (Latin-1 or Windows-1252?): give the "
            "value in UTF-8 (from a file name: rename the file, or copy it with a tool that "
            "keeps its characters)"
        )
    return None


#: What a value of these VRs looks like (PS3.5 6.2), for messages about a value refused.
_FORMS = {
    "DA": "a date YYYYMMDD, e.g. 20240131",
    "TM": "a time HHMMSS (HH, HHMM and .FFFFFF allowed), e.g. 143005",
    "DT": "a date-time YYYYMMDDHHMMSS (shorter allowed, optional .FFFFFF and &ZZXX)",
    "AS": "three digits and D, W, M or Y (days, weeks, months, years), e.g. 045Y",
    "CS": "upper-case letters, digits, space and _ (at most 16)",
    "IS": "a whole number, e.g. 3",
    "DS": "a decimal number, e.g. 1.5 (at most 16 characters)",
    "UI": "digits and dots, no leading zero in a component, e.g. 1.2.840.10008",
}


def form_hint(vr: str, value: str, keyword: str = "") -> str:
    """How to write a value of ``vr`` that pydicom refused: ``; write ...``, or ''."""
    form = _FORMS.get(vr)
    if form is None:
        return ""
    allowed = ENUMERATED.get(keyword)
    if vr == "CS" and value.upper() != value and (allowed is None or value.upper() in allowed):
        return f"; CS values are upper case: write {value.upper()!r}"
    if allowed is not None:
        return f"; write one of {', '.join(allowed)}"
    if vr == "AS" and value.strip().isdigit() and len(value.strip()) <= 3:
        return f"; write {int(value):03d}Y for {int(value)} years (AS: {form})"
    return f"; write {form}"


#: Enumerated values (PS3.3) of attributes a user commonly sets on these objects: dciodvfy
#: reports anything else as an error. PatientOrientation values are made of these letters.
ENUMERATED = {
    "PatientSex": ("M", "F", "O"),
    "Laterality": ("R", "L"),
    "ImageLaterality": ("R", "L", "U", "B"),
    "BurnedInAnnotation": ("YES", "NO"),
    "RecognizableVisualFeatures": ("YES", "NO"),
    "PatientIdentityRemoved": ("YES", "NO"),
}
_ORIENTATION_LETTERS = frozenset("LRAPHF")


def enumerated_problem(keyword: str, value: str) -> str | None:
    """Why ``value`` is not one of ``keyword``'s enumerated values; None when it is."""
    allowed = ENUMERATED.get(keyword)
    if allowed is not None and value and value not in allowed:
        return f"must be one of {', '.join(allowed)} (enumerated values)"
    if keyword == "PatientOrientation" and value and not set(value) <= _ORIENTATION_LETTERS:
        return "must be made of the letters L, R, A, P, H, F (e.g. A\\F)"
    return None


def vm_allows(vm: str, count: int) -> bool:
    """Whether ``count`` values fit a dictionary VM such as ``1``, ``2``, ``1-n``, ``2-2n``."""
    low_text, _, high_text = vm.partition("-")
    high_text = high_text or low_text
    try:
        low = int(low_text)
        if high_text.endswith("n"):
            step = int(high_text[:-1] or 1)
            return count >= low and count % step == 0
        return low <= count <= int(high_text)
    except ValueError:
        return True  # a VM this parser does not know: do not refuse on it


def check_values(tag: BaseTag, vr: str, values: list[Any], where: str) -> None:
    """Refuse what pydicom accepts but dciodvfy would flag: a value multiplicity the
    dictionary does not allow (``A\\B`` is two values), control characters, and text too
    long once encoded as UTF-8."""
    from pydicom.datadict import dictionary_VM

    try:
        vm = dictionary_VM(tag)
    except KeyError:
        vm = ""
    if vm and values and not vm_allows(vm, len(values)):
        raise ConversionError(
            f"{where}: {describe(tag)} takes {vm} value(s) (VM {vm}), got {len(values)}: "
            f"{shown(values)} (a backslash \\ or a JSON list separates values)"
        )
    from pydicom.datadict import keyword_for_tag

    keyword = keyword_for_tag(tag)
    for value in values:
        text = str(value) if isinstance(value, str) or vr == "PN" else None
        problem = text_problem(vr, text) if text is not None else None
        if problem is None and text is not None:
            problem = enumerated_problem(keyword, text)
        if problem:
            raise ConversionError(
                f"{where}: {describe(tag)} (VR {vr}) {problem}, got {shown(text)}"
            )
