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
