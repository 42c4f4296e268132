"""A data set cut short (its sender's file was truncated) is refused, never stored.

The sender marks its last fragment as the last whatever its file held: the SCP must see
that the data set ends inside an element, answer 0xC000 and store nothing, on both the
data phase and pynetdicom's path.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom.encaps import encapsulate
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

from node.receive.header import truncation
from tests.receive.helpers import archived, echoscu, image_dataset, running_scp
from tests.receive.test_dataphase import _dataset_bytes, _store, _wait_empty, _wire

pytestmark = pytest.mark.dcmtk


def _native() -> tuple[object, bytes]:
    ds = image_dataset(64, 64, b"\x05" * 4096)
    return ds, _dataset_bytes(ds)


def _encapsulated() -> tuple[object, bytes]:
    ds = image_dataset(64, 64, b"")
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x11" * 3000 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds, _dataset_bytes(ds)


def _no_pixels() -> tuple[object, bytes]:
    ds = image_dataset(4, 4, b"")
    del ds.PixelData
    ds.ImageComments = "c" * 3000  # (0020,4000) after the UIDs
    return ds, _dataset_bytes(ds)


def _un_sequence(explicit_inside: bool = False) -> tuple[object, bytes]:
    """A private sequence written UN of undefined length before the UIDs, its item
    Implicit VR LE (PS3.5 6.2.2, CP-246), as an explicit-VR router writes a sequence it does
    not know. The truncation walk gave up on it ("proves nothing"): such an object cut
    short in its Pixel Data was stored and acknowledged."""
    ds, data = _native()
    if explicit_inside:  # a non-conformant writer: explicit-VR elements inside the item
        body = struct.pack("<HH", 9, 0x10) + b"LO" + struct.pack("<H", 4) + b"ACME"
    else:
        body = struct.pack("<HHI", 9, 0x10, 4) + b"ACME" + struct.pack("<HHI", 9, 0x1001, 2) + b"ab"
    un = (
        struct.pack("<HH", 9, 0x10) + b"LO" + struct.pack("<H", 4) + b"ACME"
        + struct.pack("<HH", 9, 0x1010) + b"UN\0\0" + struct.pack("<L", 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )  # fmt: skip
    at = data.index(struct.pack("<HH", 0x0010, 0x0020))  # before (0010,0020) PatientID
    return ds, data[:at] + un + data[at:]


KINDS = {
    "native": _native,
    "encapsulated": _encapsulated,
    "no-pixels": _no_pixels,
    "un-sequence": _un_sequence,
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_truncated_data_set_is_refused(tmp_path: Path, kind: str, fast_path: bool) -> None:
    ds, data = KINDS[kind]()
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, store, _):
        wire, ids = _wire(scp.port, SecondaryCaptureImageStorage)
        cx = ids[str(SecondaryCaptureImageStorage)]
        outcome = wire.store(
            cx,
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            msg_id=3,
            data=data[:-1000],
        )
        assert outcome.status == 0xC000, outcome
        # The same object complete, on the same association: stored.
        outcome = wire.store(
            cx,
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            msg_id=4,
            data=data,
        )
        assert outcome.delivered and outcome.status == 0, outcome
        wire.release()
        (stored,) = archived(scp.archive_root)
        assert stored.read_bytes().endswith(data)
        assert len(store.select(kind="export_instance")) == 1
        _wait_empty(scp.archive_root / ".incoming")
        assert echoscu(scp.port).returncode == 0


def test_truncation_walk() -> None:
    for make in KINDS.values():
        _, data = make()
        assert truncation(data, False, True) is None
        assert truncation(data + b"\x00\x00", False, True) is None  # stray zero padding
        for cut in (1, 7, 9, 500):
            assert truncation(data[:-cut], False, True) is not None, (make.__name__, cut)
    # Explicit-VR items inside a UN of undefined length: not walked, so no false alarm.
    _, data = _un_sequence(explicit_inside=True)
    assert truncation(data, False, True) is None
    assert truncation(data[:-500], False, True) is None
    # Garbage proves nothing (the header check refuses it on its own).
    assert truncation(b"\x01\x02\x03\x04AB" + struct.pack("<H", 2) + b"xx", False, True) is None


def test_truncation_walk_from_pixel_data_agrees_with_the_whole_walk() -> None:
    """The handler starts the walk at Pixel Data (the header's walk covered what precedes
    it): for every kind and cut, the same verdict as a walk from the first element."""
    from node.receive.header import read_header_prefix

    compared = 0
    for make in KINDS.values():
        _, data = make()
        for cut in (0, 1, 7, 9, 500, len(data) // 2):
            part = data[: len(data) - cut]
            header = read_header_prefix(part, False, True, complete=True)
            if header is None or header.pixel_pos is None:
                continue
            assert truncation(part, False, True, header.pixel_pos) == truncation(
                part, False, True
            ), (make.__name__, cut)
            compared += 1
    assert compared >= 10  # native and encapsulated, each cut


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("kind", ["native", "encapsulated", "no-pixels"])
def test_data_set_of_odd_length_is_refused(tmp_path: Path, kind: str, fast_path: bool) -> None:
    """A stray byte after the last element (here a NUL, which the walk accepts as padding).

    It was stored and acknowledged, with an odd length no DICOM data set can have; DCMTK's
    storescp aborts on it, and every forward of it to a DCMTK-based PACS was refused (odd
    last PDV): retried until queue.max_age_seconds. Now 0xC000 naming the length."""
    ds, data = {"native": _native, "encapsulated": _encapsulated, "no-pixels": _no_pixels}[kind]()
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, store, _):
        wire, ids = _wire(scp.port, SecondaryCaptureImageStorage)
        outcome = _store(wire, ids, ds, data + b"\x00")
        wire.release()
        assert outcome.status == 0xC000, outcome
        assert f"odd length ({len(data) + 1} bytes)" in outcome.comment
        assert archived(scp.archive_root) == []
        assert store.select(kind="export_instance") == []
        _wait_empty(scp.archive_root / ".incoming")
