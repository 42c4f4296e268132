"""A light attribute map for building one instance: ``{tag: (VR, value)}``.

pydicom's Dataset validates and wraps every value on assignment (~20-40 µs per element);
the converter sets ~40 elements per file and aims at >1,000 files/s, so instances are
assembled in this plain dict and encoded by :mod:`node.ingest.encoder`. User input
(``-k``, sidecars, templates) is still parsed and validated by pydicom once, then copied in.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

Attr = tuple[str, Any]


@cache
def tag_vr(keyword: str) -> tuple[int, str]:
    """``(tag, VR)`` for a dictionary keyword (first VR when the dictionary lists several)."""
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
        ds = Dataset()
        for tag, (vr, value) in sorted(self.items()):
            ds.add_new(tag, vr, value)
        return ds
