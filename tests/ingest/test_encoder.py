"""The fast Part 10 writer produces exactly what pydicom's dcmwrite produces."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from node.ingest import convert as cv
from node.ingest.elements import Elements
from node.ingest.encoder import encode_parts
from tests.ingest import corpus


@pytest.mark.parametrize(
    ("kind", "filename", "make"),
    [
        ("sc", "a.jpg", lambda: corpus.jpeg(corpus.rgb(17, 9), icc_profile=corpus.srgb_icc())),
        (
            "vlp",
            "b.jpg",
            lambda: corpus.jpeg(
                corpus.rgb(8, 8), exif=corpus.exif_block(when="2021:02:03 04:05:06")
            ),
        ),
        ("nsc", "c.png", lambda: corpus.saved(corpus.grey(7, 5), "PNG")),
        ("sc", "d.png", lambda: corpus.saved(corpus.grey(8, 4).convert("I;16"), "PNG")),
    ],
)
def test_byte_identical_to_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, filename: str, make: object
) -> None:
    src = corpus.write(tmp_path, filename, make())  # type: ignore[operator]
    captured: list[tuple[Elements, str, str, str]] = []

    def spy(ds: Elements, sop_class: str, sop_uid: str, ts: str) -> list[bytes]:
        captured.append((Elements(ds), sop_class, sop_uid, ts))
        return encode_parts(ds, sop_class, sop_uid, ts)

    monkeypatch.setattr(cv, "encode", spy)
    keys = (("PatientName", "Müller^Jörg"), ("OtherPatientIDs", "A\\B"), ("SeriesNumber", "3"))
    options = cv.ConvertOptions(sop_class=kind, keys=keys, fsync=False)
    series = cv.SeriesContext.for_group("enc", "2.25")
    cv.convert_file(src, tmp_path / "o.dcm", options, series, 4)
    ours = (tmp_path / "o.dcm").read_bytes()
    elements, sop_class, sop_uid, ts = captured[0]
    theirs = cv.encode_with_pydicom(elements, sop_class, sop_uid, ts)
    assert ours == theirs
    ds = pydicom.dcmread(tmp_path / "o.dcm")
    assert ds.OtherPatientIDs == ["A", "B"] and ds.InstanceNumber == 4


#: Values that are equal or hash alike across types (1 == 1.0 == True), per VR.
_LOOK_ALIKES = {"DS": ("1", 1, 1.0, "1.0"), "IS": (7, "7", 7.0), "US": (1, 7), "PN": (None, "")}


@pytest.mark.parametrize(
    ("tag", "vr", "value"),
    [(0x00181050, "DS", v) for v in _LOOK_ALIKES["DS"]]  # SpatialResolution
    + [(0x00200013, "IS", v) for v in _LOOK_ALIKES["IS"]]  # InstanceNumber
    + [(0x00280010, "US", v) for v in _LOOK_ALIKES["US"]]  # Rows
    + [(0x00100010, "PN", v) for v in (*_LOOK_ALIKES["PN"], "Müller^Jörg")],
)
def test_memoised_element_encodings_keep_the_value_type(tag: int, vr: str, value: object) -> None:
    """Scalars are encoded once per batch; the cache must not serve 1.0 for "1" (or 7 for "7")."""
    from node.ingest import encoder

    reference = encoder._encode(tag, vr, value)  # not memoised
    for other in _LOOK_ALIKES[vr]:  # fill the cache with the look-alikes first
        encoder.encode_element(tag, vr, other)
    assert encoder.encode_element(tag, vr, value) == reference
    assert encoder.encode_element(tag, vr, value) == reference  # from the cache
