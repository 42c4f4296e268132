"""What a value must be to pass dciodvfy, beyond what pydicom's validation checks.

pydicom 3 accepts values that dciodvfy reports as errors (all measured with dicom3tools'
``dciodvfy``): control characters (none in short text such as LO, SH, PN; only LF, FF and
CR in ST, LT, UT), text within the VR's length in characters but not in bytes of the UTF-8
the converter writes, a value multiplicity the data dictionary does not allow (``A\\B`` is
two values), values outside an attribute's enumerated values, and person names with more
than five components. :func:`check_values` refuses them with a message naming the tag, the
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


def text_problem(vr: str, value: str) -> str | None:
    """Why ``value`` cannot be written with ``vr`` although pydicom accepts it: a control
    character, or too many bytes once encoded as UTF-8; None when it is fine."""
    if vr not in STRING_VRS:
        return None
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
