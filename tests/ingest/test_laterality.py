"""Laterality (0020,0060), Type 2C, when a template or sidecar brings an empty one."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from node.cli import main
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
