"""The JPEG pass-through path runs without pydicom, numpy or Pillow (start-up time).

The converter's own attributes are looked up in ``elements.CORE_DICTIONARY`` instead of
pydicom's data dictionary; these tests check that table against pydicom, that a batch of
camera JPEGs really converts without importing pydicom/numpy/PIL, and that the objects
written that way are the ones pydicom's writer produces (values that come from pydicom
datasets, such as a template's PersonName or MultiValue, are still encoded the same).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from node.ingest import convert as cv
from node.ingest.elements import CORE_DICTIONARY, Elements
from node.ingest.encoder import encode_file
from tests.ingest import corpus

_PROBE = """
import sys
from node.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"pydicom", "numpy", "PIL"})
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def test_core_dictionary_matches_pydicom() -> None:
    for keyword, (tag, vr) in CORE_DICTIONARY.items():
        assert tag_for_keyword(keyword) == tag, keyword
        assert dictionary_VR(tag).split(" or ")[0] == vr, keyword


def _camera_folder(folder: Path) -> Path:
    when = "2024:05:06 07:08:09"
    for i, (w, h, sub) in enumerate([(64, 48, 2), (33, 17, 1), (16, 16, 0)]):
        data = corpus.jpeg(
            corpus.rgb(w, h, seed=i), quality=90, subsampling=sub, exif=corpus.exif_block(when=when)
        )
        corpus.write(folder, f"IMG_{i}.jpg", data)
    corpus.write(folder, "grey.jpg", corpus.jpeg(corpus.grey(20, 10)))
    return folder


@pytest.mark.parametrize(
    "extra",
    [[], ["--sop-class", "vlp"], ["--sop-class", "nsc"], ["--keep-appn", "--strict"]],
)
def test_pass_through_imports_neither_pydicom_numpy_nor_pillow(
    tmp_path: Path, extra: list[str]
) -> None:
    src = _camera_folder(tmp_path / "in")
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, "convert", str(src), "-o", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "--strict" in extra:  # refused for missing metadata, named without pydicom
        assert res.returncode == 1, res.stderr
        assert "(0010,0020) PatientID" in res.stderr
    else:
        assert res.returncode == 0, res.stderr
        assert len(list(out.glob("*.dcm"))) == 4
        for path in out.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    heavy = res.stdout.strip().splitlines()[-1]
    if "--strict" in extra:
        return  # messages name tags via pydicom's dictionary: imported only to refuse
    assert heavy == "HEAVY=", res.stdout


def test_user_metadata_still_validated_by_pydicom(tmp_path: Path) -> None:
    src = _camera_folder(tmp_path / "in")
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, "convert", str(src), "-o", str(tmp_path / "o")]
        + ["-k", "StudyDate=2024-01-01"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert "(0008,0020) StudyDate" in res.stderr


def test_template_and_sidecar_values_encode_like_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PersonName and MultiValue values (template, DICOM JSON sidecar) take the lazy path."""
    template = corpus.template(
        tmp_path / "t.dcm",
        PatientName="Doe^Jane",
        PatientID="T1",
        OtherPatientIDs=["A", "B"],
        PatientWeight="70.5",
    )
    src = _camera_folder(tmp_path / "in") / "IMG_0.jpg"
    (src.parent / "IMG_0.json").write_text(
        json.dumps(
            {
                "00081030": {"vr": "LO", "Value": ["Study ä"]},
                "00200011": {"vr": "IS", "Value": [3]},
                "00181063": {"vr": "DS", "Value": [33.3]},
                "00280034": {"vr": "IS", "Value": [1, 1]},
            }
        )
    )
    captured: list[tuple[Elements, str, str, str]] = []

    def spy(elems: Elements, sop_class: str, sop_uid: str, ts: str) -> bytes:
        captured.append((Elements(elems), sop_class, sop_uid, ts))
        return encode_file(elems, sop_class, sop_uid, ts)

    monkeypatch.setattr(cv, "encode", spy)
    options = cv.ConvertOptions(
        template=cv.metadata.load_template(template, "dataset"),
        keys=(("OtherPatientIDs", "X\\Y"), ("SeriesNumber", "")),
        fsync=False,
    )
    cv.convert_file(src, tmp_path / "o.dcm", options, cv.SeriesContext.for_group("t", "2.25"), 1)
    elems, sop_class, sop_uid, ts = captured[0]
    assert (tmp_path / "o.dcm").read_bytes() == cv.encode_with_pydicom(
        elems, sop_class, sop_uid, ts
    )
    out = pydicom.dcmread(tmp_path / "o.dcm")
    assert out.PatientName == "Doe^Jane"
    assert out.OtherPatientIDs == ["X", "Y"]
    assert out.StudyDescription == "Study ä"
    assert out.PixelAspectRatio == [1, 1]
