"""DICOM files dropped into the inbox: what validation refuses before they are queued."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from node.ingest.dicom_inputs import DicomInputError, validate_dicom

FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "SC_rgb_rle.dcm",
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
]


def _testfile(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, name
    return Path(str(found))


@pytest.mark.parametrize("name", FILES)
def test_complete_files_are_accepted(tmp_path: Path, name: str) -> None:
    assert validate_dicom(_testfile(name))


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("keep", [0.6, 0.98, "header"])
def test_truncated_files_are_refused(tmp_path: Path, name: str, keep: float | str) -> None:
    """A copy broken off half-way (pixel data short, or even inside the header) is refused.

    pydicom alone reads such files without complaint, so they used to be queued and sent.
    """
    data = _testfile(name).read_bytes()
    cut = 1000 if keep == "header" else int(len(data) * float(keep))
    broken = tmp_path / name
    broken.write_bytes(data[:cut])
    with pytest.raises(DicomInputError, match="truncated|not a readable") as err:
        validate_dicom(broken)
    assert name in str(err.value)


def test_dicom_file_with_a_tiff_preamble_is_not_taken_for_an_image(tmp_path: Path) -> None:
    """PS3.10 lets the preamble make a file look like TIFF ("II*\\0"), as pydicom's CT does.

    convert used to try it as a TIFF ("not an image format Pillow can read") instead of
    saying it is already DICOM.
    """
    from node.errors import UnsupportedInput
    from node.ingest import convert as cv

    src = _testfile("CT_small.dcm")
    assert src.read_bytes()[:4] == b"II*\x00"
    assert not cv.is_supported_image(src)
    series = cv.SeriesContext.for_group("d", "2.25")
    with pytest.raises(UnsupportedInput, match="already a DICOM file"):
        cv.convert_file(src, tmp_path / "o.dcm", cv.ConvertOptions(fsync=False), series, 1)
