"""Laterality (0020,0060), Type 2C, when a template or sidecar brings an empty one, and
when the anatomy is coded (Anatomic Region Sequence)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from node.cli import main
from node.errors import ConversionError
from node.ingest import convert as cv
from tests.ingest import corpus
from tests.peers import dciodvfy


@pytest.mark.dciodvfy
@pytest.mark.parametrize(
    "keys",
    [["-k", "ImageLaterality=U"], ["-k", "BodyPartExamined=CHEST"]],
    ids=["image-laterality", "unpaired-body-part"],
)
def test_empty_laterality_from_a_template_is_dropped_when_it_must_be_absent(
    tmp_path: Path, keys: list[str]
) -> None:
    """pydicom's CT (like many modality files) carries an empty Laterality.

    Taken over by --dataset-from next to ImageLaterality it made dciodvfy report "Attribute
    present when condition unsatisfied ... Laterality": an error, where 0 are promised.
    """
    template = get_testdata_file("CT_small.dcm")
    assert template is not None
    assert pydicom.dcmread(template).get("Laterality", None) == ""
    src = corpus.write(tmp_path, "photo.jpg", corpus.saved(corpus.rgb(64, 48), "JPEG"))
    out = tmp_path / "o.dcm"
    assert main(["convert", "--dataset-from", str(template), *keys, str(src), "-o", str(out)]) == 0
    assert "Laterality" not in pydicom.dcmread(out)
    report = dciodvfy(out)
    assert report.errors == [], report.output


def _coded_sidecar(folder: Path, codes: list[tuple[str, str]], laterality: str | None) -> Path:
    """photo.jpg with a DICOM JSON sidecar giving AnatomicRegionSequence (and Laterality:
    None absent, "" empty)."""
    src = corpus.write(folder, "photo.jpg", corpus.saved(corpus.rgb(64, 48), "JPEG"))
    items = [
        {
            "00080100": {"vr": "SH", "Value": [code]},
            "00080102": {"vr": "SH", "Value": [scheme]},
            "00080104": {"vr": "LO", "Value": ["region"]},
        }
        for scheme, code in codes
    ]
    sidecar: dict[str, object] = {"00082218": {"vr": "SQ", "Value": items}}
    if laterality is not None:
        sidecar["00200060"] = {"vr": "CS", **({"Value": [laterality]} if laterality else {})}
    (folder / "photo.json").write_text(json.dumps(sidecar))
    return src


@pytest.mark.dciodvfy
@pytest.mark.parametrize("sop_class", ["vlp", "sc"])
@pytest.mark.parametrize(
    ("code", "laterality", "written"),
    [
        (("SCT", "85562004"), None, ("Laterality", "")),  # hand: paired, asked for
        (("SCT", "85562004"), "L", ("Laterality", "L")),
        (("SCT", "51185008"), None, None),  # chest: unpaired, Laterality absent
        (("SCT", "51185008"), "", None),  # an empty one removed
        (("SCT", "51185008"), "R", ("ImageLaterality", "R")),
        (("SRT", "T-D3000"), None, None),  # chest, retired SNOMED-RT code
        (("SCT", "69536005"), "", None),  # head
    ],
)
def test_coded_anatomy_decides_laterality_as_dciodvfy_does(
    tmp_path: Path,
    sop_class: str,
    code: tuple[str, str],
    laterality: str | None,
    written: tuple[str, str] | None,
) -> None:
    """An Anatomic Region Sequence (a DICOM JSON sidecar) without a laterality was left
    without Laterality: an error for a paired region (hand), and an empty Laterality from
    the sidecar was kept next to an unpaired one (chest): an error too."""
    src = _coded_sidecar(tmp_path, [code], laterality)
    out = tmp_path / "o.dcm"
    keys = [
        arg for kv in corpus.FULL_KEYS if kv[0] != "ImageLaterality" for arg in ("-k", "=".join(kv))
    ]
    assert main(["convert", "--sop-class", sop_class, *keys, str(src), "-o", str(out)]) == 0
    ds = pydicom.dcmread(out)
    got = [(k, ds[k].value or "") for k in ("Laterality", "ImageLaterality") if k in ds]
    assert got == ([written] if written else [])
    report = dciodvfy(out)
    assert report.errors == [], report.output
    if written != ("Laterality", ""):  # (SRT itself is a deprecated scheme: a warning)
        assert [w for w in report.warnings if "deprecated" not in w] == [], report.output


def test_more_than_one_anatomic_region_is_refused(tmp_path: Path) -> None:
    src = _coded_sidecar(tmp_path, [("SCT", "51185008"), ("SCT", "85562004")], None)
    with pytest.raises(ConversionError, match=r"\(0008,2218\) AnatomicRegionSequence has 2"):
        cv.convert_file(
            src,
            tmp_path / "o.dcm",
            cv.ConvertOptions(fsync=False),
            cv.SeriesContext("1.2", "1.3"),
            1,
        )


def test_strict_takes_an_unpaired_coded_region_as_a_laterality_statement(tmp_path: Path) -> None:
    src = _coded_sidecar(tmp_path, [("SCT", "51185008")], None)
    keys = tuple(kv for kv in corpus.FULL_KEYS if kv[0] != "ImageLaterality")
    options = cv.ConvertOptions(strict=True, keys=keys, fsync=False)
    cv.convert_file(src, tmp_path / "o.dcm", options, cv.SeriesContext("1.2", "1.3"), 1)
