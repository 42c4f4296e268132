"""node.filemeta: the meta header walker agrees with pydicom, and refuses what it must."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom.dsutils import split_dataset

from node.filemeta import FileMetaError, read_file_meta


def _part10_files() -> list[Path]:
    out = []
    for name in sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm")):
        with open(name, "rb") as fh:
            head = fh.read(132)
        if head[128:132] == b"DICM":
            out.append(name)
    return out


PART10 = _part10_files()


def test_there_are_many_pydicom_files() -> None:
    assert len(PART10) > 50


@pytest.mark.parametrize("path", PART10, ids=lambda p: p.name)
def test_agrees_with_pydicom(path: Path) -> None:
    try:
        meta, offset = split_dataset(path)
    except Exception:
        pytest.skip("pydicom itself cannot read this meta header")
    want = {
        "sop_class_uid": str(meta.get("MediaStorageSOPClassUID", "") or "").strip(),
        "sop_instance_uid": str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip(),
        "transfer_syntax": str(meta.get("TransferSyntaxUID", "") or "").strip(),
    }
    if not all(want.values()):
        with pytest.raises(FileMetaError, match=r"\(0002,00(02|03|10)\)"):
            read_file_meta(path)
        return
    got = read_file_meta(path)
    assert got.as_dict() == want
    assert got.data_offset == offset


def _meta_bytes(elements: list[tuple[int, bytes, bytes]]) -> bytes:
    out = b""
    for element, vr, value in elements:
        if vr in (b"OB", b"UN", b"UT"):
            out += struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value
        else:
            out += struct.pack("<HH2sH", 2, element, vr, len(value)) + value
    return b"\0" * 128 + b"DICM" + out


def _uid(text: str) -> bytes:
    raw = text.encode()
    return raw + b"\0" if len(raw) % 2 else raw


def _standard(extra: list[tuple[int, bytes, bytes]] | None = None) -> bytes:
    return _meta_bytes(
        [
            (0x0001, b"OB", b"\0\1"),
            (0x0002, b"UI", _uid(SecondaryCaptureImageStorage)),
            (0x0003, b"UI", _uid("1.2.3.4")),
            (0x0010, b"UI", _uid(ExplicitVRLittleEndian)),
            *(extra or []),
        ]
    )


DATASET = struct.pack("<HH2sH", 8, 0x16, b"UI", 26) + _uid(SecondaryCaptureImageStorage)


def test_offset_points_at_the_data_set(tmp_path: Path) -> None:
    meta = _standard()
    f = tmp_path / "a.dcm"
    f.write_bytes(meta + DATASET)
    got = read_file_meta(f)
    assert got.data_offset == len(meta)
    assert got.sop_instance_uid == "1.2.3.4"  # trailing NUL padding removed
    assert got.transfer_syntax == ExplicitVRLittleEndian


def test_meta_longer_than_the_first_read(tmp_path: Path) -> None:
    meta = _standard([(0x0102, b"OB", b"x" * 20000)])  # PrivateInformation, 20 KB
    f = tmp_path / "big.dcm"
    f.write_bytes(meta + DATASET)
    assert read_file_meta(f).data_offset == len(meta) == split_dataset(f)[1]


def test_empty_data_set(tmp_path: Path) -> None:
    meta = _standard()
    f = tmp_path / "empty.dcm"
    f.write_bytes(meta)
    assert read_file_meta(f).data_offset == len(meta)


def test_not_dicom(tmp_path: Path) -> None:
    f = tmp_path / "x.dcm"
    f.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 400)
    with pytest.raises(FileMetaError, match="not a DICOM file"):
        read_file_meta(f)
    f.write_bytes(b"")
    with pytest.raises(FileMetaError, match="not a DICOM file"):
        read_file_meta(f)


def test_missing_transfer_syntax_names_the_tag(tmp_path: Path) -> None:
    f = tmp_path / "nots.dcm"
    f.write_bytes(
        _meta_bytes(
            [
                (0x0002, b"UI", _uid(SecondaryCaptureImageStorage)),
                (0x0003, b"UI", _uid("1.2.3.4")),
            ]
        )
        + DATASET
    )
    with pytest.raises(FileMetaError, match=r"\(0002,0010\) TransferSyntaxUID is missing"):
        read_file_meta(f)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_file_meta(tmp_path / "gone.dcm")


def test_implicit_vr_meta_goes_to_pydicom(tmp_path: Path) -> None:
    """A non-conformant implicit VR meta header: the walker hands it to pydicom."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    f = tmp_path / "ok.dcm"
    ds.save_as(f, enforce_file_format=True)
    raw = f.read_bytes()
    meta_end = split_dataset(f)[1]
    # rewrite group 0002 as implicit VR: tag, 4-byte length, value
    implicit = b""
    pos = 132
    while pos < meta_end:
        group, element, vr = struct.unpack_from("<HH2s", raw, pos)
        if vr in (b"OB", b"UN", b"UT"):
            (length,) = struct.unpack_from("<I", raw, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", raw, pos + 6)
            start = pos + 8
        implicit += struct.pack("<HHI", group, element, length) + raw[start : start + length]
        pos = start + length
    g = tmp_path / "implicit.dcm"
    g.write_bytes(raw[:132] + implicit + raw[meta_end:])
    try:
        want_meta, want_offset = split_dataset(g)
    except Exception:  # pydicom cannot read it either: a clear error, not a guess
        with pytest.raises(FileMetaError, match="damaged file meta information"):
            read_file_meta(g)
        return
    got = read_file_meta(g)
    assert got.sop_instance_uid == str(want_meta.MediaStorageSOPInstanceUID) == "1.2.3.4.5"
    assert got.data_offset == want_offset


@pytest.mark.parametrize("cut", [133, 140, 150, 170, 200, 240])
def test_cut_off_meta_never_passes_silently(tmp_path: Path, cut: int) -> None:
    """A meta header cut short: a clear error, or pydicom's answer, never a wrong offset."""
    raw = _standard() + DATASET
    f = tmp_path / "cut.dcm"
    f.write_bytes(raw[:cut])
    meta_end = len(_standard())
    if cut < meta_end:
        with pytest.raises(FileMetaError):
            read_file_meta(f)
    else:
        assert read_file_meta(f).data_offset == meta_end
