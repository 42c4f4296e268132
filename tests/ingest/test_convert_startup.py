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

from node.errors import ConversionError
from node.ingest import convert as cv
from node.ingest.elements import CORE_DICTIONARY, Elements
from node.ingest.encoder import encode_parts
from tests.ingest import corpus
from tests.peers import dciodvfy

_PROBE = """
import sys
from node.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"pydicom", "numpy", "PIL"})
# standard-library modules the pass-through path does without (argparse's terminal width
# imports shutil, bz2, lzma; a calendar check with datetime.date): ~13 ms of start-up
stdlib = sorted(set(sys.modules) & {"shutil", "datetime"})
print("STDLIB=" + ",".join(stdlib))
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
    *_, stdlib, heavy = res.stdout.strip().splitlines()
    if "--strict" in extra:
        return  # messages name tags via pydicom's dictionary: imported only to refuse
    assert heavy == "HEAVY=", res.stdout
    assert stdlib == "STDLIB=", res.stdout


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

    def spy(elems: Elements, sop_class: str, sop_uid: str, ts: str) -> list[bytes]:
        captured.append((Elements(elems), sop_class, sop_uid, ts))
        return encode_parts(elems, sop_class, sop_uid, ts)

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


_FULL_METADATA = [
    "PatientID=BENCH-01", "PatientName=Doe^Jane=ドウ^ジェーン", "PatientBirthDate=19700101",
    "PatientSex=F", "PatientAge=054Y", "StudyID=7", "StudyDate=20240506", "StudyTime=070809",
    "AccessionNumber=A123", "StudyDescription=Wound care", "SeriesNumber= 2 ",
    "SeriesDescription=Left heel", "InstitutionName=General Hospital", "ImageLaterality=L",
    "BodyPartExamined=FOOT", "ReferringPhysicianName=Who^Doctor", "OperatorsName=Op^One",
]  # fmt: skip


@pytest.mark.dciodvfy
def test_full_metadata_from_keys_needs_no_pydicom_and_passes_dciodvfy(tmp_path: Path) -> None:
    """Patient, study and series data from -k (built-in keywords): checked without
    pydicom, written as pydicom would, and the objects pass dciodvfy with 0/0."""
    src = _camera_folder(tmp_path / "in")
    out = tmp_path / "out"
    keys = [arg for pair in _FULL_METADATA for arg in ("-k", pair)]
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, "convert", str(src), "-o", str(out), "--strict", *keys],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "HEAVY=", res.stdout
    for path in sorted(out.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert (ds.PatientID, str(ds.PatientName), ds.SeriesNumber) == (
            "BENCH-01",
            "Doe^Jane=ドウ^ジェーン",
            2,
        )
        assert (ds.PatientAge, ds.ImageLaterality, ds.StudyDescription) == (
            "054Y",
            "L",
            "Wound care",
        )
        report = dciodvfy(path)
        assert (report.errors, report.warnings) == ([], []), report.output


_SAMPLES = {
    "PatientID": ["P1", "x" * 64, "x" * 65, "a\\b", "", "tab\there", "ü"],
    "PatientName": ["Doe^Jane", "A=B=C", "A=B=C=D", "x" * 64, "x" * 65 + "=y", "^^^^"],
    "StudyID": ["1", "x" * 16, "x" * 17],
    "PatientSex": ["M", "F", "O", "m", "XY Z_1", "x" * 17, "A-B"],
    "PatientAge": ["054Y", "54Y", "054y", "123D", "0540Y"],
    "StudyDate": ["20240506", "2024-05-06", "20241306", "20240506-", "-20240506",
                  "20240101-20241231", "20240506 ", "20240506\n", "20230229", "20240229",
                  "09991231", "30000101"],
    "StudyTime": ["070809", "0708", "07", "240000", "070809.123456", "070809.1234567",
                  "0708-0910", "7:08", "235960", "235959"],
    "SeriesNumber": ["1", " 2 ", "+3", "-4", "1.0", "1.5", "01", "x", "2147483647",
                     "2147483648", "-2147483649", "123456789012", "1234567890123", "1\\2"],
    "StudyInstanceUID": ["1.2.3", "1.02.3", "1..2", "0.1", "1.2.", "1." + "2" * 63, "1.2a"],
    "ImageLaterality": ["L", "R", "U", "B", "l"],
    "AccessionNumber": ["A" * 16, "A" * 17],
    "StudyDescription": ["x" * 64, "x" * 65, "line\nbreak"],
}  # fmt: skip


def test_values_checked_without_pydicom_agree_with_pydicom() -> None:
    """Every sample value: refused by pydicom's path -> also not accepted here (pydicom
    then gives its message); accepted by pydicom -> accepted here (except an IS beyond 32
    bits, left to pydicom) and encoded to the same bytes."""
    from node.ingest import metadata
    from node.ingest.encoder import encode_element

    for keyword, values in _SAMPLES.items():
        for value in values:
            here = metadata._checked_here(keyword, value)
            try:
                ds = metadata.dataset_from_pairs([(keyword, value)], "--key")
            except ConversionError:
                assert here is None, (keyword, value)
                continue
            reference = Elements.from_dataset(ds)
            ((tag, (vr, ref_value)),) = reference.items()
            if here is None:
                assert keyword == "SeriesNumber" and value.strip().lstrip("+-").isdigit()
                assert not -(2**31) <= int(value) < 2**31, (keyword, value)
                continue
            assert here[0] == tag and here[1][0] == vr, (keyword, value)
            assert encode_element(tag, vr, here[1][1]) == encode_element(tag, vr, ref_value), (
                keyword,
                value,
            )


def test_keys_outside_the_built_in_dictionary_still_go_through_pydicom() -> None:
    from node.ingest import metadata

    assert metadata._checked_here("PatientWeight", "70.5") is None  # DS
    assert metadata._checked_here("(0010,0020)", "P1") is None  # a tag, not a keyword
    assert metadata._checked_here("SOPInstanceUID", "1.2.3") is None  # protected: refused there
    keys = metadata.elements_from_pairs([("PatientID", "P1"), ("PatientWeight", "70.5")], "-k")
    assert keys.text("PatientID") == "P1" and str(keys.value("PatientWeight")) == "70.5"
