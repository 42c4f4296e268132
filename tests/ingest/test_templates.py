"""Template datasets (--dataset-from/--study-from/--series-from) get the checks sidecars get.

A template is often an object from elsewhere (a PACS, a CD). Its values were copied into
every converted object after a UTF-8 length check only: a birth date 00010101, a second 60,
a TAB, a PatientSex X or two PatientIDs each made every output fail dciodvfy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.cli import main
from node.errors import ConversionError
from node.ingest import convert as cv
from node.ingest.metadata import load_template
from tests.ingest import corpus
from tests.peers import dciodvfy

BAD_IDENTITY = [
    ("PatientBirthDate", "00010101", "study", "has the year 0001"),
    ("StudyDate", "20230230", "study", "is no calendar date"),
    ("StudyTime", "235960", "study", "has the second 60"),
    ("StudyDescription", "knee\tleft", "study", "control character U+0009"),
    ("PatientSex", "X", "study", "must be one of M, F, O"),
    ("PatientID", ["A", "B"], "study", "takes 1 value(s)"),
    ("Laterality", "X", "series", "must be one of R, L"),
    ("SeriesDate", "2024-01-02", "series", "invalid value"),
    ("PatientName", "Doe\x07^Jane", "dataset", "control character U+0007"),
]


def _template(path: Path, monkeypatch: pytest.MonkeyPatch, **elements: object) -> Path:
    """A template holding invalid values (pydicom's validation off while writing it)."""
    with monkeypatch.context() as patch:
        for mode in ("reading_validation_mode", "writing_validation_mode"):
            patch.setattr(pydicom.config.settings, mode, pydicom.config.IGNORE)
        corpus.template(path, **elements)
    return path


def _photo(folder: Path) -> Path:
    return corpus.write(folder, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))


@pytest.mark.parametrize(("keyword", "value", "scope", "phrase"), BAD_IDENTITY)
def test_bad_identity_value_in_a_template_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keyword: str,
    value: object,
    scope: str,
    phrase: str,
) -> None:
    tpl = _template(tmp_path / "tpl.dcm", monkeypatch, **{"PatientID": "P1", keyword: value})
    with pytest.raises(ConversionError) as err:
        load_template(tpl, scope)  # type: ignore[arg-type]
    message = str(err.value)
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert f"template {tpl}" in message
    assert f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}" in message
    assert phrase in message
    assert f"--key {keyword}=" in message  # says how to fix it


@pytest.mark.dciodvfy
def test_key_replaces_a_bad_template_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The message says ``--key KEYWORD=VALUE`` fixes it: it must."""
    tpl = _template(
        tmp_path / "tpl.dcm", monkeypatch, PatientName="Tpl^Tina", PatientBirthDate="00010101"
    )
    src = _photo(tmp_path)
    args = ["convert", "--study-from", str(tpl), str(src), "-o"]
    keys = [
        arg
        for key, value in corpus.FULL_KEYS
        if key != "PatientName"
        for arg in ("-k", f"{key}={value}")
    ]
    assert main([*args, str(tmp_path / "refused.dcm"), *keys]) == 2
    assert "PatientBirthDate" in capsys.readouterr().err
    assert not (tmp_path / "refused.dcm").exists()
    out = tmp_path / "fixed.dcm"
    assert main([*args, str(out), *keys, "-k", "PatientBirthDate=19800101"]) == 0
    got = pydicom.dcmread(out)
    assert got.PatientBirthDate == "19800101" and got.PatientName == "Tpl^Tina"
    report = dciodvfy(out)
    assert report.errors == [] and report.warnings == [], report.output


@pytest.mark.dciodvfy
def test_dataset_from_leaves_out_bad_values_outside_patient_study_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """--dataset-from copies everything, including other modalities' modules: a bad value
    there is left out with a warning naming it; the patient's data is still taken."""
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    with monkeypatch.context() as patch:
        patch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
        item.ReferencedSOPInstanceUID = "1.2.3.0123"  # a leading zero: not a UID
    tpl = _template(
        tmp_path / "tpl.dcm",
        monkeypatch,
        PatientName="Tpl^Tina",
        PatientID="T1",
        ImageComments="tab\there",  # LT: no TAB
        DerivationDescription="made\x01here",
        ReferencedImageSequence=[item],
        InstitutionName="Good Hospital",
    )
    with caplog.at_level(logging.WARNING, logger="node.ingest.metadata"):
        template = load_template(tpl, "dataset")
    assert "ImageComments" not in template and "DerivationDescription" not in template
    assert "ReferencedImageSequence" not in template
    assert template.InstitutionName == "Good Hospital" and template.PatientID == "T1"
    logged = caplog.text
    assert "(0020,4000) ImageComments" in logged and "U+0009" in logged
    assert "(0008,1140) ReferencedImageSequence left out" in logged
    src = _photo(tmp_path)
    out = tmp_path / "o.dcm"
    keys = tuple(kv for kv in corpus.FULL_KEYS if kv[0] not in ("PatientName", "PatientID"))
    options = cv.ConvertOptions(template=template, keys=keys, fsync=False)
    cv.convert_file(src, out, options, cv.SeriesContext.for_group("t", "2.25"), 1)
    got = pydicom.dcmread(out)
    assert got.PatientName == "Tpl^Tina" and "ImageComments" not in got
    report = dciodvfy(out)
    assert report.errors == [], report.output
