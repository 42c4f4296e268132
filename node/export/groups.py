"""Per-frame grayscale attributes of enhanced multi-frame objects (PS3.3 C.7.6.16).

Enhanced CT, MR, PET, XA ... objects carry Rescale Slope/Intercept and the windows not at
the top level but in functional group macros, shared by all frames or given per frame:

* (0028,9145) Pixel Value Transformation Sequence: Rescale Intercept, Slope and Type;
* (0028,9132) Frame VOI LUT Sequence: Window Center/Width (+ Explanation), VOI LUT
  Function, and in the "with LUT" variant a VOI LUT Sequence.

:func:`frame_view` returns, for one frame, a small data set holding the attributes the
grayscale pipeline reads (:mod:`node.export.voi`, :mod:`node.export.display`): the top-level
ones, overlaid by the Shared Functional Groups item and then by the frame's own Per-Frame
Functional Groups item (the per-frame value wins, PS3.3 C.7.6.16.1). Frames with the same
attributes share one view, so a series-wide rescale still folds into one cached table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: Top-level attributes the grayscale pipeline reads.
PIPELINE = (
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
    "PresentationLUTShape",
)
#: Functional group macros whose item attributes replace the top-level ones.
MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def has_groups(ds: Dataset) -> bool:
    """True when ``ds`` carries functional groups that may hold rescale or windows."""
    return "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _overlay(view: Dataset, group: Dataset | None) -> None:
    if group is None:
        return
    for macro in MACROS:
        item = _first_item(group, macro)
        if item is None:
            continue
        for elem in item:
            view[elem.tag] = elem


def frame_view(ds: Dataset, index: int, path: Path | str = "") -> Dataset:
    """The pipeline attributes of frame ``index`` (0-based): top level < shared < per-frame."""
    view = Dataset()
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        view.file_meta = meta  # the transfer syntax: byte order of OW LUT Data
    implicit, little = ds.original_encoding
    view.set_original_encoding(implicit, little, ds.original_character_set)
    for keyword in PIPELINE:
        elem = ds.data_element(keyword) if keyword in ds else None
        if elem is not None:
            view[elem.tag] = elem
    _overlay(view, _first_item(ds, "SharedFunctionalGroupsSequence"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        if index < len(per_frame):
            _overlay(view, per_frame[index])
        elif index == len(per_frame):  # say it once per object, not once per frame
            log.warning(
                "%s: (5200,9230) PerFrameFunctionalGroupsSequence has %d item(s), fewer than "
                "the frames; frames from %d on use the shared and top-level values",
                path,
                len(per_frame),
                index + 1,
            )
    return view


def view_key(view: Dataset) -> tuple[object, ...]:
    """Equal for frames whose views render alike (sequences compared by identity)."""
    key: list[object] = []
    for elem in view:
        value = id(elem.value) if elem.VR == "SQ" else str(elem.value)
        key.append((elem.tag, value))
    return tuple(key)
