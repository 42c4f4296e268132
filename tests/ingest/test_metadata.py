"""Metadata sources and precedence, UIDs, character sets and --strict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.config import config_from_dict
from node.errors import ConversionError, MissingMetadata
from node.ingest import convert as cv
from node.ingest.metadata import sidecar_for
from tests.ingest import corpus
from tests.peers import dciodvfy


def _jpeg(folder: Path, name: str = "photo.jpg", seed: int = 0, **kwargs: object) -> Path:
    return corpus.write(folder, name, corpus.jpeg(corpus.rgb(16, 8, seed), **kwargs))


def _convert(src: Path, options: cv.ConvertOptions, n: int = 1, **kw: object) -> Dataset:
    out = src.with_suffix(f".{n}.dcm")
    series = cv.SeriesContext.for_group(str(src.parent), options.uid_root)
    cv.convert_file(src, out, options, series, n, **kw)  # type: ignore[arg-type]
    return pydicom.dcmread(out)


def _template(path: Path) -> Path:
    ds = Dataset()
    ds.PatientName = "Template^Tina"
    ds.PatientID = "TPL-1"
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.SeriesInstanceUID = "1.2.3.4.5.6"
    ds.SeriesDescription = "from template"
    ds.StudyDescription = "template study"
    ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.InstanceNumber = 99
    ds.Rows = 5
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_precedence_defaults_template_sidecar_exif_overrides_keys(tmp_path: Path) -> None:
    src = _jpeg(tmp_path, exif=corpus.exif_block(make="ExifMake", when="2022:01:02 03:04:05"))
    (tmp_path / "photo.json").write_text(
        json.dumps(
            {
                "PatientName": "Sidecar^Sam",
                "Manufacturer": "SidecarMake",
                "AccessionNumber": "SIDE-ACC",
                "StudyDescription": "sidecar study",
            }
        )
    )
    from node.ingest.metadata import load_template

    options = cv.ConvertOptions(
        defaults={"PatientID": "DEF-ID", "InstitutionName": "Default Hospital", "StudyID": "D1"},
        template=load_template(_template(tmp_path / "t.dcm"), "study"),
        keys=(("StudyID", "KEY-1"), ("(0008,0080)", "Key Hospital")),
        fsync=False,
    )
    ds = _convert(src, options, overrides={"AccessionNumber": "PATTERN-ACC"})
    assert ds.PatientID == "TPL-1"  # template over defaults
    assert ds.PatientName == "Sidecar^Sam"  # sidecar over template
    assert ds.StudyDescription == "sidecar study"
    assert ds.Manufacturer == "ExifMake"  # EXIF over sidecar
    assert ds.AccessionNumber == "PATTERN-ACC"  # file-name pattern over sidecar
    assert ds.StudyID == "KEY-1"  # -k over everything
    assert ds.InstitutionName == "Key Hospital"  # (gggg,eeee) form
    assert ds.StudyInstanceUID == "1.2.3.4.5"  # from the --study-from template
    assert "SeriesDescription" not in ds  # series level is not copied by --study-from
    assert ds.StudyDate == "20220102"  # nobody supplied it: EXIF fills it


def test_template_never_copies_instance_identity(tmp_path: Path) -> None:
    from node.ingest.metadata import load_template

    tpl = _template(tmp_path / "t.dcm")
    options = cv.ConvertOptions(template=load_template(tpl, "dataset"), fsync=False)
    a = _convert(_jpeg(tmp_path, "a.jpg", 1), options, 1)
    b = _convert(_jpeg(tmp_path, "b.jpg", 2), options, 2)
    template = pydicom.dcmread(tpl)
    assert a.SOPInstanceUID != template.SOPInstanceUID != b.SOPInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert (a.InstanceNumber, b.InstanceNumber) == (1, 2)
    assert a.Rows == 8  # pixel description from the image, not the template
    assert a.SeriesInstanceUID == "1.2.3.4.5.6" and a.SeriesDescription == "from template"


def test_dicom_json_sidecar(tmp_path: Path) -> None:
    src = _jpeg(tmp_path)
    sidecar = tmp_path / "photo.jpg.json"
    sidecar.write_text(
        json.dumps(
            {
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": "山田^太郎"}]},
                "00100020": {"vr": "LO", "Value": ["JSON-ID"]},
            }
        ),
        encoding="utf-8",
    )
    assert sidecar_for(src) == sidecar
    ds = _convert(src, cv.ConvertOptions(fsync=False))
    assert ds.PatientName == "山田^太郎" and ds.PatientID == "JSON-ID"
    assert ds.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.dciodvfy
@pytest.mark.parametrize("name", ["Müller^Jörg", "山田^太郎"])
def test_non_ascii_round_trips(tmp_path: Path, name: str) -> None:
    src = _jpeg(tmp_path)
    ds = _convert(src, cv.ConvertOptions(keys=(("PatientName", name),), fsync=False))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == name
    assert dciodvfy(src.with_suffix(".1.dcm")).errors == []


def test_ascii_only_has_no_character_set(tmp_path: Path) -> None:
    ds = _convert(_jpeg(tmp_path), cv.ConvertOptions(keys=(("PatientName", "Doe^J"),), fsync=False))
    assert "SpecificCharacterSet" not in ds


def test_uids_are_deterministic_and_context_dependent(tmp_path: Path) -> None:
    src = _jpeg(tmp_path)
    options = cv.ConvertOptions(fsync=False)
    series = cv.SeriesContext.for_group("folder-a", "2.25")
    r1 = cv.convert_file(src, tmp_path / "1.dcm", options, series, 1)
    r2 = cv.convert_file(src, tmp_path / "2.dcm", options, series, 1)
    assert r1.sop_instance_uid == r2.sop_instance_uid
    assert (tmp_path / "1.dcm").read_bytes() == (tmp_path / "2.dcm").read_bytes()
    other = cv.SeriesContext.for_group("folder-b", "2.25")
    r3 = cv.convert_file(src, tmp_path / "3.dcm", options, other, 1)
    assert r3.sop_instance_uid != r1.sop_instance_uid
    assert r3.study_uid != r1.study_uid
    _jpeg(tmp_path, seed=5)  # different content, same name and context
    r4 = cv.convert_file(src, tmp_path / "4.dcm", options, series, 1)
    assert r4.sop_instance_uid != r1.sop_instance_uid
    assert all(len(r.sop_instance_uid) <= 64 for r in (r1, r3, r4))


def test_uid_root_from_config(tmp_path: Path) -> None:
    cfg = config_from_dict({"node": {"uid_root": "1.2.826.0.1.3680043.10.999"}}, tmp_path)
    options = cv.ConvertOptions.from_config(cfg)
    series = cv.SeriesContext.for_group("x", options.uid_root)
    result = cv.convert_file(_jpeg(tmp_path), tmp_path / "o.dcm", options, series, 1)
    assert result.sop_instance_uid.startswith("1.2.826.0.1.3680043.10.999.")
    assert series.study_uid.startswith("1.2.826.0.1.3680043.10.999.")


def test_strict_names_what_is_missing(tmp_path: Path) -> None:
    src = _jpeg(tmp_path)
    options = cv.ConvertOptions(strict=True, keys=(("PatientID", "X1"),), fsync=False)
    with pytest.raises(MissingMetadata) as err:
        _convert(src, options)
    msg = str(err.value)
    assert "(0010,0010) PatientName" in msg and "(0008,0020) StudyDate" in msg
    assert "laterality" in msg and "--key" in msg and str(src) in msg
    assert "(0010,0020)" not in msg  # PatientID was supplied
    assert not list(tmp_path.glob("*.dcm"))
    full = cv.ConvertOptions(
        strict=True,
        keys=(
            ("PatientID", "X1"),
            ("PatientName", "Doe^Jane"),
            ("StudyDate", "20240101"),
            ("Laterality", "R"),
        ),
        fsync=False,
    )
    assert _convert(src, full).Laterality == "R"


def test_bad_keys_are_refused_with_the_tag(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="neither a DICOM keyword"):
        cv.ConvertOptions(keys=(("PatientsName", "x"),))
    with pytest.raises(ConversionError, match=r"\(0028,0010\) Rows"):
        cv.ConvertOptions(keys=(("Rows", "5"),))
    with pytest.raises(ConversionError, match="SOPInstanceUID"):
        cv.ConvertOptions(keys=(("SOPInstanceUID", "1.2.3"),))
    with pytest.raises(ConversionError, match=r"\(0020,1208\).*invalid value"):
        cv.ConvertOptions(defaults={"NumberOfStudyRelatedInstances": "many"})
    src = _jpeg(tmp_path)
    (tmp_path / "photo.json").write_text("{not json")
    with pytest.raises(ConversionError, match="sidecar .*photo.json"):
        _convert(src, cv.ConvertOptions(fsync=False))


def test_vlp_content_date_without_exif_comes_from_study(tmp_path: Path) -> None:
    src = _jpeg(tmp_path)
    keys = (("StudyDate", "20200101"), ("StudyTime", "111111"))
    ds = _convert(src, cv.ConvertOptions(sop_class="vlp", keys=keys, fsync=False))
    assert (ds.ContentDate, ds.ContentTime) == ("20200101", "111111")


def test_sixteen_bit_refused_for_vlp(tmp_path: Path) -> None:
    case = next(c for c in corpus.good_cases() if c.name == "png-16bit")
    src = corpus.write(tmp_path, case.filename, case.make())
    with pytest.raises(ConversionError, match="--sop-class sc"):
        _convert(src, cv.ConvertOptions(sop_class="vlp", fsync=False))
    assert not list(tmp_path.glob("*.dcm"))


@pytest.mark.dciodvfy
def test_sequence_from_dicom_json_sidecar(tmp_path: Path) -> None:
    src = _jpeg(tmp_path)
    region = {
        "00082218": {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": ["T-D1100"]},
                    "00080102": {"vr": "SH", "Value": ["SRT"]},
                    "00080104": {"vr": "LO", "Value": ["Hand, Jörg's"]},
                }
            ],
        },
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    }
    (tmp_path / "photo.json").write_text(json.dumps(region), encoding="utf-8")
    ds = _convert(src, cv.ConvertOptions(sop_class="vlp", fsync=False))
    item = ds.AnatomicRegionSequence[0]
    assert item.CodeValue == "T-D1100" and item.CodeMeaning == "Hand, Jörg's"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert dciodvfy(src.with_suffix(".1.dcm")).errors == []


def test_template_in_latin1_is_rewritten_as_utf8(tmp_path: Path) -> None:
    from node.ingest.metadata import load_template

    tpl = tmp_path / "latin1.dcm"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jörg"
    ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tpl, enforce_file_format=True)
    assert "Müller".encode("latin-1") in tpl.read_bytes()
    options = cv.ConvertOptions(template=load_template(tpl, "study"), fsync=False)
    got = _convert(_jpeg(tmp_path), options)
    assert got.SpecificCharacterSet == "ISO_IR 192" and got.PatientName == "Müller^Jörg"


def test_conversion_type_is_validated_and_drives_burned_in_annotation(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"\(0008,0064\) ConversionType 'CAMERA'"):
        cv.ConvertOptions(conversion_type="CAMERA")
    src = _jpeg(tmp_path)
    ds = _convert(src, cv.ConvertOptions(sop_class="nsc", conversion_type="WSD", fsync=False))
    assert ds.ConversionType == "WSD" and ds.BurnedInAnnotation == "YES"
    ds = _convert(src, cv.ConvertOptions(sop_class="nsc", fsync=False), 2)
    assert ds.ConversionType == "DI" and ds.BurnedInAnnotation == "NO"


@pytest.mark.dcmtk
def test_dcmtk_reads_the_utf8_name(tmp_path: Path) -> None:
    import subprocess

    from tests.peers import tool

    _convert(_jpeg(tmp_path), cv.ConvertOptions(keys=(("PatientName", "Müller^Jörg"),)))
    out = subprocess.run(
        [tool("dcmdump"), "+U8", str(tmp_path / "photo.1.dcm")],
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8")
    assert "[Müller^Jörg]" in out and "[ISO_IR 192]" in out


@pytest.mark.dciodvfy
@pytest.mark.parametrize(
    ("keys", "laterality_written"),
    [
        ((("BodyPartExamined", "CHEST"),), False),  # unpaired: Laterality must be absent
        ((("BodyPartExamined", "HAND"),), True),  # paired, no laterality: empty + warning
        ((("BodyPartExamined", "HAND"), ("Laterality", "L")), True),
        ((("ImageLaterality", "B"),), False),
    ],
)
def test_laterality_rules_give_no_dciodvfy_errors(
    tmp_path: Path, keys: tuple[tuple[str, str], ...], laterality_written: bool
) -> None:
    src = _jpeg(tmp_path)
    ds = _convert(src, cv.ConvertOptions(sop_class="vlp", keys=keys, fsync=False))
    assert ("Laterality" in ds) == laterality_written
    assert dciodvfy(src.with_suffix(".1.dcm")).errors == []
    strict = cv.ConvertOptions(
        strict=True,
        keys=(*keys, ("PatientID", "1"), ("PatientName", "A^B"), ("StudyDate", "20240101")),
        fsync=False,
    )
    if dict(keys).get("BodyPartExamined") == "HAND" and "Laterality" not in dict(keys):
        with pytest.raises(MissingMetadata, match="unpaired"):
            _convert(src, strict, 2)
    else:
        _convert(src, strict, 2)


def test_one_folder_two_patients_are_two_studies(tmp_path: Path) -> None:
    """Per-image sidecars naming different patients in one folder gave both patients one
    Study and Series Instance UID (a PACS merges such studies or refuses the second)."""
    from node.cli import main

    folder = tmp_path / "clinic-day"
    for name, seed, patient in (("a", 1, "A1"), ("b", 2, "B2"), ("c", 3, "A1")):
        _jpeg(folder, f"{name}.jpg", seed)
        (folder / f"{name}.json").write_text(json.dumps({"PatientID": patient}))
    study = {"StudyInstanceUID": "1.2.3.9", "StudyDescription": "own study"}
    _jpeg(folder, "d.jpg", 4)
    (folder / "d.json").write_text(json.dumps(study))
    out = tmp_path / "out"
    assert main(["convert", str(folder), "-o", str(out)]) == 0
    a, b, c, d = (pydicom.dcmread(out / f"{n}.dcm") for n in "abcd")
    assert a.StudyInstanceUID == c.StudyInstanceUID != b.StudyInstanceUID
    assert a.SeriesInstanceUID == c.SeriesInstanceUID != b.SeriesInstanceUID
    assert d.StudyInstanceUID == "1.2.3.9"
    assert d.SeriesInstanceUID not in (a.SeriesInstanceUID, b.SeriesInstanceUID)
    assert [x.InstanceNumber for x in (a, b, c, d)] == [1, 2, 3, 4]
    # Without per-file patient data a folder stays one study and one series.
    plain = tmp_path / "plain"
    for name, seed in (("a", 1), ("b", 2)):
        _jpeg(plain, f"{name}.jpg", seed)
    keys = ["-k", "PatientID=A1"]
    assert main(["convert", str(plain), "-o", str(tmp_path / "p"), *keys]) == 0
    pa, pb = (pydicom.dcmread(tmp_path / "p" / f"{n}.dcm") for n in "ab")
    assert (pa.StudyInstanceUID, pa.SeriesInstanceUID) == (
        pb.StudyInstanceUID,
        pb.SeriesInstanceUID,
    )


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("PatientSex", "m", "CS values are upper case: write 'M'"),
        ("PatientSex", "x", "write one of M, F, O"),
        ("PatientAge", "45", "write 045Y for 45 years"),
        ("StudyDate", "2024-01-02", "write a date YYYYMMDD"),
        ("StudyTime", "10:11", "write a time HHMMSS"),
        ("Modality", "xc", "CS values are upper case: write 'XC'"),
        ("ImageLaterality", "left", "write one of R, L, U, B"),
    ],
)
def test_a_refused_value_says_how_to_write_it(
    tmp_path: Path, key: str, value: str, hint: str
) -> None:
    """The refusal named the tag but only repeated pydicom's "Invalid value for VR CS"."""
    with pytest.raises(ConversionError, match=rf"--key {key}: .*{key}.*; {re.escape(hint)}"):
        cv.ConvertOptions(keys=((key, value),))
    src = _jpeg(tmp_path)
    (tmp_path / "photo.json").write_text(json.dumps({key: value}))
    with pytest.raises(ConversionError, match=rf"sidecar .*{key}.*; {re.escape(hint)}"):
        _convert(src, cv.ConvertOptions(fsync=False))


def test_calendar_dates_as_datetime_knows_them() -> None:
    import datetime

    from node.ingest.values import is_calendar_date

    for year in (1000, 1900, 2000, 2023, 2024, 2999):
        for month in range(0, 14):
            for day in range(0, 33):
                try:
                    datetime.date(year, month, day)
                    real = True
                except ValueError:
                    real = False
                assert is_calendar_date(year, month, day) == real, (year, month, day)
