"""Inputs found by an adversarial sweep: each one was converted wrongly, crashed the
command, or was refused with a misleading reason before its fix.

Checked against the real tools where they can judge: dciodvfy on every output, DCMTK
``dcmj2pnm`` renderings compared with the expected pixels.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps

from node.cli import main
from node.config import Config, config_from_dict
from node.ingest import convert as cv
from node.ingest.pipeline import IngestPipeline
from node.queue import JobStore
from tests.ingest import corpus
from tests.peers import dciodvfy, tool

FULL_KEYS = corpus.FULL_KEYS


def _convert(src: Path, out: Path, **options: object) -> cv.ConvertResult:
    series = cv.SeriesContext.for_group("edge", "2.25")
    opts = cv.ConvertOptions(keys=FULL_KEYS, fsync=False, **options)  # type: ignore[arg-type]
    return cv.convert_file(src, out, opts, series, 1)


def _render(dcm: Path, bits: int = 8) -> np.ndarray:
    png = dcm.with_suffix(".png")
    subprocess.run(
        [tool("dcmj2pnm"), "+on2" if bits > 8 else "+on", str(dcm), str(png)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return np.asarray(Image.open(png))


def _clean(dcm: Path) -> None:
    report = dciodvfy(dcm)
    assert report.errors == [] and report.warnings == [], report.output


# ----------------------------------------------------------------------- size limits


def test_a_side_over_65535_is_refused_and_the_batch_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows/Columns are US: a 70000-pixel-wide PNG used to crash the whole command with a
    struct.error traceback while encoding Columns (the other files were lost too)."""
    src = tmp_path / "in"
    corpus.write(src, "a-panorama.png", corpus.saved(Image.new("L", (70000, 1), 9), "PNG"))
    corpus.write(src, "b-photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    corpus.write(src, "c-edge.png", corpus.saved(Image.new("L", (65535, 1), 7), "PNG"))
    out = tmp_path / "out"
    code = main(["convert", "--processes", "1", "--no-fsync", str(src), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "a-panorama.png: 70000x1 pixels: (0028,0011) Columns" in err
    assert sorted(p.name for p in out.iterdir()) == ["b-photo.dcm", "c-edge.dcm"]
    edge = pydicom.dcmread(out / "c-edge.dcm")
    assert (edge.Rows, edge.Columns) == (1, 65535)


# ----------------------------------------------------------------------- MPO / after EOI


def _mpo(**kwargs: object) -> bytes:
    buf = io.BytesIO()
    corpus.rgb(40, 30).save(
        buf, "MPO", save_all=True, append_images=[corpus.rgb(40, 30, 5)], **kwargs
    )
    return buf.getvalue()


@pytest.mark.dcmtk
@pytest.mark.dciodvfy
@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("orientation", lambda: _mpo(exif=corpus.exif_block(orientation=6))),
        ("progressive", lambda: _mpo(progressive=True)),
    ],
)
def test_mpo_that_must_be_decoded_converts_its_first_image(
    tmp_path: Path, name: str, make: object
) -> None:
    """A camera's MPO (stereo / multi-picture) file whose first image had to be decoded
    was refused as "2 pages/frames ... use --sop-class nsc" (Pillow read the MPF segment),
    although the same MPO without orientation converts; now the first image is decoded,
    and a warning says the second one is not converted."""
    data = make()  # type: ignore[operator]
    src = corpus.write(tmp_path, f"{name}.jpg", data)
    for kind in ("sc", "vlp"):
        out = tmp_path / f"{name}-{kind}.dcm"
        result = _convert(src, out, sop_class=kind)
        assert any("hold another image" in note for note in result.notes), result.notes
        _clean(out)
        with Image.open(src) as im:  # the first image, as a viewer shows it
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        ds = pydicom.dcmread(out)
        assert ds.LossyImageCompression == "01"
        np.testing.assert_array_equal(ds.pixel_array, want)
        np.testing.assert_array_equal(_render(out), want)


def test_bytes_after_eoi_are_reported_not_as_metadata_segments(tmp_path: Path) -> None:
    plain = corpus.jpeg(corpus.rgb(16, 8))
    src = corpus.write(tmp_path, "junk.jpg", plain + b"trailing junk")
    notes = _convert(src, tmp_path / "junk.dcm").notes
    assert notes == ["13 bytes after the JPEG's EOI marker removed"]
    padded = corpus.write(tmp_path, "padded.jpg", plain + b"\x00" * 500)
    assert _convert(padded, tmp_path / "padded.dcm").notes == [
        "500 padding bytes after the JPEG's EOI marker removed"
    ]
    mpo = corpus.write(tmp_path, "mpo.jpg", _mpo())
    notes = _convert(mpo, tmp_path / "mpo.dcm").notes
    assert any(n.startswith("warning:") and "hold another image" in n for n in notes), notes


# ----------------------------------------------------------------------- TIFF / PNG depth


@pytest.mark.dcmtk
@pytest.mark.dciodvfy
def test_sixteen_bit_white_is_zero_tiff_is_not_shown_inverted(tmp_path: Path) -> None:
    """TIFF PhotometricInterpretation 0 (WhiteIsZero): Pillow inverts 8-bit grey itself
    but hands 16-bit samples over as they are, which were written as MONOCHROME2: a
    negative image. The object must render exactly like the same picture stored
    BlackIsZero."""
    raw = (np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 271).astype(np.uint16)
    white = corpus.write(tmp_path, "white.tif", corpus.tiff_raw(raw, 0))
    black = corpus.write(tmp_path, "black.tif", corpus.tiff_raw(65535 - raw, 1))
    for kind in ("sc", "nsc"):
        w_out, b_out = tmp_path / f"w-{kind}.dcm", tmp_path / f"b-{kind}.dcm"
        result = _convert(white, w_out, sop_class=kind)
        _convert(black, b_out, sop_class=kind)
        assert any("WhiteIsZero" in note for note in result.notes)
        _clean(w_out)
        w = pydicom.dcmread(w_out)
        assert pydicom.dcmread(b_out).pixel_array.tolist() == (65535 - raw).tolist()
        assert w.PhotometricInterpretation == "MONOCHROME2" and w.LossyImageCompression == "00"
        np.testing.assert_array_equal(w.pixel_array, 65535 - raw)
        np.testing.assert_array_equal(_render(w_out, 16), _render(b_out, 16))
    # 8-bit WhiteIsZero (inverted by Pillow) must not be inverted a second time.
    raw8 = (np.arange(12 * 20).reshape(12, 20) % 256).astype(np.uint8)
    white8 = corpus.write(tmp_path, "white8.tif", corpus.tiff_raw(raw8, 0))
    _convert(white8, tmp_path / "w8.dcm")
    np.testing.assert_array_equal(pydicom.dcmread(tmp_path / "w8.dcm").pixel_array, 255 - raw8)


@pytest.mark.dciodvfy
@pytest.mark.parametrize("orientation", [2, 6, 8])
def test_a_tiff_orientation_is_recorded_like_a_jpeg_or_png_one(
    tmp_path: Path, orientation: int
) -> None:
    """Pillow 13 turns a TIFF upright while loading it and then forgets the tag: the pixels
    were right but the object did not say so (VL Photographic ImageType ORIGINAL, no note)
    and a non-square pixel kept its stored shape (PixelAspectRatio 1\\2 for a pixel turned
    to 2\\1). The same picture as PNG, with the same EXIF, is the reference."""
    rgb = (np.arange(24 * 40 * 3).reshape(24, 40, 3) % 251).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    made = {}
    for fmt, suffix in (("TIFF", "tif"), ("PNG", "png")):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt, exif=exif, dpi=(72, 144))
        made[fmt] = corpus.write(tmp_path, f"pic.{suffix}", buf.getvalue())
    for kind in ("sc", "vlp"):
        out = {fmt: tmp_path / f"{fmt}-{kind}.dcm" for fmt in made}
        notes = {fmt: _convert(src, out[fmt], sop_class=kind).notes for fmt, src in made.items()}
        tif, png = (pydicom.dcmread(out[fmt]) for fmt in ("TIFF", "PNG"))
        turned = f"EXIF Orientation {orientation} applied (image turned upright)"
        assert turned in notes["TIFF"] and turned in notes["PNG"], notes
        want = np.asarray(ImageOps.exif_transpose(Image.open(made["PNG"])))
        np.testing.assert_array_equal(tif.pixel_array, want)
        np.testing.assert_array_equal(png.pixel_array, want)
        shape = [1, 2] if orientation < 5 else [2, 1]  # 1/144 in high, 1/72 in wide
        assert list(map(int, tif.PixelAspectRatio)) == list(map(int, png.PixelAspectRatio)) == shape
        if kind == "vlp":
            assert list(tif.ImageType) == list(png.ImageType) == ["DERIVED", "PRIMARY"]
        _clean(out["TIFF"])


# ----------------------------------------------------------------------- metadata values

#: Values pydicom's validation accepts but dciodvfy flags as errors (measured): they used to
#: go into the object. (keyword, value as given to -k or a sidecar, phrase of the refusal)
_FLAGGED = [
    ("StudyDescription", "line1\nline2", "control character U+000A"),
    ("PatientName", "Doe\x00Jane", "control character U+0000"),
    ("PatientComments", "tab\there", "only LF, FF and CR are allowed"),
    ("PatientID", "A\\B", "takes 1 value(s) (VM 1), got 2"),
    ("ImageType", "DERIVED", "(VM 2-n), got 1"),
    ("StudyDescription", "山" * 22, "66 bytes in UTF-8 where VR LO allows 64"),
    ("PatientName", "Ü" * 33, "66 bytes in UTF-8 where VR PN allows 64"),
    ("PatientSex", "X", "must be one of M, F, O"),
    ("PatientOrientation", "A\\B", "made of the letters L, R, A, P, H, F"),
    ("ReferringPhysicianName", "a^b^c^d^e^f", "more than 5 name components"),
    ("StudyTime", "235960", "the second 60"),
    ("AcquisitionDateTime", "20240102030460", "the second 60"),
    ("StudyDate", "00240102", "the year 0024"),
    ("PatientBirthDate", "30000101", "the year 3000"),
    ("AcquisitionDateTime", "2024010203+0100", "UTC offset after a time not given to the second"),
    ("StudyDate", "20240101-20240131", "is a range"),
]
#: Their accepted neighbours: dciodvfy-clean.
_FINE = [
    ("PatientComments", "line1\r\nline2\fpage 2"),
    ("StudyDescription", "山" * 21),
    ("PatientName", "山田^太郎=ヤマダ^タロウ"),
    ("ImageType", "DERIVED\\SECONDARY\\EXTRA"),
    ("StudyDate", "20240229"),
    ("PatientBirthDate", "10000101"),
    ("StudyTime", "235959.999999"),
    ("AcquisitionDateTime", "29991231235959.5-1200"),
    ("AcquisitionDateTime", "2024"),
]


@pytest.mark.dciodvfy
@pytest.mark.parametrize(("keyword", "value", "phrase"), _FLAGGED)
def test_values_dciodvfy_flags_are_refused_naming_the_tag(
    tmp_path: Path, keyword: str, value: str, phrase: str
) -> None:
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    # -k (and [ingest.defaults]): refused before any file is read.
    with pytest.raises(cv.ConversionError, match=re_escape(phrase)) as err:
        cv.ConvertOptions(keys=((keyword, value),))
    assert keyword in str(err.value)
    # A flat sidecar, and the DICOM JSON model.
    items = value.split("\\")
    flat = {keyword: items if len(items) > 1 else value}
    for table in (flat, _dicom_json(keyword, items)):
        (tmp_path / "photo.json").write_text(json.dumps(table), encoding="utf-8")
        with pytest.raises(cv.ConversionError, match=re_escape(phrase)):
            _convert(src, tmp_path / "photo.dcm")
        assert not (tmp_path / "photo.dcm").exists()
    (tmp_path / "photo.json").unlink()
    # What the refusal protects from: the same value written by pydicom is a dciodvfy error.
    _convert(src, tmp_path / "plain.dcm")
    ds = pydicom.dcmread(tmp_path / "plain.dcm")
    setattr(ds, keyword, items if len(items) > 1 else value)
    if not all(v.isascii() for v in items):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.save_as(tmp_path / "forced.dcm")
    report = dciodvfy(tmp_path / "forced.dcm")
    tag = ds[keyword].tag
    where = f"(0x{tag.group:04x},0x{tag.element:04x})"
    from pydicom.datadict import dictionary_description

    names = (where, keyword.lower(), dictionary_description(tag).lower())
    assert any(any(n in line.lower() for n in names) for line in report.errors), report.output


@pytest.mark.parametrize(
    ("keyword", "value", "phrase"),
    [
        ("StudyDate", "20230229", "2023-02-29 does not exist"),
        ("PatientBirthDate", "19991131", "1999-11-31 does not exist"),
        ("AcquisitionDateTime", "20240230120000", "2024-02-30 does not exist"),
        ("AcquisitionDateTime", "20240101120000+1500", "the UTC offset +1500"),
    ],
)
def test_dates_the_calendar_does_not_have_are_refused(
    tmp_path: Path, keyword: str, value: str, phrase: str
) -> None:
    """pydicom's pattern and dciodvfy check digits only: 20230229 went into the object.
    PS3.5 6.2: a DA is a date of the Gregorian calendar; a DT offset lies in -1200..+1400."""
    with pytest.raises(cv.ConversionError, match=re_escape(phrase)) as err:
        cv.ConvertOptions(keys=((keyword, value),))
    assert keyword in str(err.value)
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    (tmp_path / "photo.json").write_text(json.dumps({keyword: value}), encoding="utf-8")
    with pytest.raises(cv.ConversionError, match=re_escape(phrase)):
        _convert(src, tmp_path / "photo.dcm")
    assert not (tmp_path / "photo.dcm").exists()


@pytest.mark.dciodvfy
@pytest.mark.parametrize(("keyword", "value"), _FINE)
def test_neighbouring_values_still_convert_clean(tmp_path: Path, keyword: str, value: str) -> None:
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    out = tmp_path / "photo.dcm"
    cv.convert_file(
        src,
        out,
        cv.ConvertOptions(keys=(*FULL_KEYS, (keyword, value)), fsync=False),
        cv.SeriesContext.for_group("fine", "2.25"),
        1,
    )
    _clean(out)
    got = pydicom.dcmread(out)[keyword].value
    want = value.split("\\")
    assert (list(got) if len(want) > 1 else [str(got)]) == want


def _dicom_json(keyword: str, items: list[str]) -> dict[str, object]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    values: list[object] = [{"Alphabetic": v} for v in items] if vr == "PN" else list(items)
    return {f"{tag:08X}": {"vr": vr, "Value": values}}


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(
    ("table", "phrase"),
    [
        ({"PatientID": True}, "needs text or a number, got true"),
        ({"00100020": {"vr": "XX", "Value": ["a"]}}, "unknown VR 'XX'"),
        ({"00100020": {"vr": "US", "Value": [5]}}, "dictionary says LO"),
        ({"PatientNmae": "x"}, "did you mean PatientName?"),
        ({"StudyInstanceUID": "1.2.03.x"}, "Invalid value for VR UI: '1.2.03.x'"),
        ({"PatientComments": "x" * 11000}, "... (11000 characters)"),
        ({"SpecificCharacterSet": "ISO_IR 100"}, "chosen by the converter (ISO_IR 192 when"),
    ],
)
def test_sidecar_type_errors_are_refused_clearly(
    tmp_path: Path, table: dict[str, object], phrase: str
) -> None:
    """A DICOM JSON sidecar with an unknown VR crashed the whole command (NotImplementedError
    in the element writer); one with the wrong VR wrote an object dciodvfy rejects; a JSON
    boolean became the text "True"; a long value was echoed whole into the message."""
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    (tmp_path / "photo.json").write_text(json.dumps(table), encoding="utf-8")
    with pytest.raises(cv.ConversionError) as err:
        _convert(src, tmp_path / "photo.dcm")
    message = str(err.value)
    assert phrase in message and "photo.json" in message and "::" not in message
    assert len(message) < 400
    assert not (tmp_path / "photo.dcm").exists()


@pytest.mark.parametrize("charset", [["ISO_IR 100"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]])
def test_dicom_json_sidecar_character_set_is_ignored(tmp_path: Path, charset: list[str]) -> None:
    """A DICOM JSON sidecar exported from a PACS (dcm2json, DICOMweb) always carries
    (0008,0005), naming the source object's character set (CP-2518); its values are Unicode
    whatever it says. It was refused; the converter now picks the output's own."""
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    table = {
        "00080005": {"vr": "CS", "Value": charset},
        "00081030": {"vr": "LO", "Value": ["Wundkontrolle Knöchel"]},
    }
    (tmp_path / "photo.json").write_text(json.dumps(table), encoding="utf-8")
    _convert(src, tmp_path / "photo.dcm")
    ds = pydicom.dcmread(tmp_path / "photo.dcm")
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.StudyDescription == "Wundkontrolle Knöchel"


@pytest.mark.parametrize("mode", ["P", "L", "RGB"])
def test_png_transparency_dropped_is_noted(tmp_path: Path, mode: str) -> None:
    """A PNG whose transparency is a tRNS chunk (palette entries, or one grey/RGB colour)
    lost it without a word, where RGBA/LA inputs get an "alpha channel dropped" note."""
    im = corpus.rgb(16, 8).convert(mode)
    transparency = 0 if mode in ("P", "L") else (0, 0, 0)
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=transparency)
    src = corpus.write(tmp_path, "clip.png", buf.getvalue())
    notes = _convert(src, tmp_path / "clip.dcm").notes
    assert any(note.startswith("transparency dropped (PNG tRNS)") for note in notes), notes


def test_palette_transparency_as_bytes_raises_no_library_warning(tmp_path: Path) -> None:
    """A palette PNG with several tRNS entries made Pillow warn "Palette images with
    Transparency expressed in bytes should be converted to RGBA images" into the node's log
    (py.warnings) on every file, though the drop is intended and noted."""
    import warnings

    im = corpus.rgb(16, 8).convert("P")
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=bytes([0, 128, 255] + [255] * 13))
    src = corpus.write(tmp_path, "pal.png", buf.getvalue())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notes = _convert(src, tmp_path / "pal.dcm").notes
    assert [str(w.message) for w in caught] == []
    assert "transparency dropped (PNG tRNS): transparent pixels keep their colour" in notes
    assert not any("Pillow" in note for note in notes), notes


def test_single_value_refusals_known_without_pydicom_match_its_dictionary() -> None:
    from pydicom.datadict import dictionary_VM

    from node.ingest.elements import CORE_DICTIONARY
    from node.ingest.metadata import NEEDS_SEVERAL_VALUES
    from node.ingest.values import vm_allows

    several = {k for k, (tag, _) in CORE_DICTIONARY.items() if not vm_allows(dictionary_VM(tag), 1)}
    assert several == NEEDS_SEVERAL_VALUES


def test_value_multiplicity_rules() -> None:
    from node.ingest.values import vm_allows

    assert vm_allows("1", 1) and not vm_allows("1", 2)
    assert vm_allows("2", 2) and not vm_allows("2", 1) and not vm_allows("2", 3)
    assert vm_allows("1-n", 5) and vm_allows("2-n", 2) and not vm_allows("2-n", 1)
    assert vm_allows("2-2n", 4) and not vm_allows("2-2n", 3)
    assert vm_allows("3-3n", 6) and not vm_allows("3-3n", 4)
    assert vm_allows("1-3", 3) and not vm_allows("1-3", 4)


# ----------------------------------------------------------------------- EXIF values


def _exif_app1(make: bytes, model: bytes, when: bytes) -> bytes:
    """An APP1 EXIF segment written by hand: IFD0 Make/Model (raw bytes, as cameras write
    them, UTF-8 or Latin-1), and the EXIF sub-IFD's DateTimeOriginal."""
    import struct

    def ifd(entries: list[tuple[int, int, bytes]], base: int) -> bytes:
        # (tag, type, payload); ASCII payloads go after the IFD.
        head = struct.pack("<H", len(entries))
        tail = b""
        data_at = base + 2 + 12 * len(entries) + 4
        for tag, kind, payload in entries:
            if kind == 4:
                head += struct.pack("<HHI", tag, kind, 1) + payload
            elif len(payload) < 4:  # up to 4 bytes sit in the entry itself
                value = payload + b"\x00"
                head += struct.pack("<HHI", tag, kind, len(value)) + value.ljust(4, b"\x00")
            else:
                value = payload + b"\x00"
                head += struct.pack("<HHII", tag, kind, len(value), data_at + len(tail))
                tail += value + b"\x00" * (len(value) % 2)
        return head + b"\x00\x00\x00\x00" + tail

    sub_entries = [(0x9003, 2, when)]
    first = [(0x010F, 2, make), (0x0110, 2, model), (0x8769, 4, b"\x00\x00\x00\x00")]
    ifd0 = ifd(first, 8)
    sub_at = 8 + len(ifd0)
    first[2] = (0x8769, 4, struct.pack("<I", sub_at))
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd(first, 8) + ifd(sub_entries, sub_at)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


@pytest.mark.dciodvfy
@pytest.mark.parametrize(
    ("make", "model", "when", "manufacturer", "model_name", "content_date"),
    [
        (b"Cam\tX", b"M\r\nY", b"2024:01:02 03:04:05", "Cam X", "M Y", "20240102"),
        (b"A\\B", b"C\\D", b"2024:13:45 25:61:61", "A B", "C D", None),
        ("Müller Optik".encode(), "é".encode("latin-1") * 64, b"", "Müller Optik", "é" * 32, None),
        ("山".encode() * 30, b"ok", b"0000:00:00 00:00:00", "山" * 21, "ok", None),
        (b"Cam", b"M", b"2024:01:02 03:04:60", "Cam", "M", None),
        (b"Cam", b"M", b"0001:01:01 00:00:00", "Cam", "M", None),
        (b"Cam", b"M", b"2023:02:29 12:00:00", "Cam", "M", None),
        (b"Cam", b"M", b"2024:02:29 23:59:59", "Cam", "M", "20240229"),
    ],
)
def test_exif_text_and_dates_become_valid_dicom_values(
    tmp_path: Path,
    make: bytes,
    model: bytes,
    when: bytes,
    manufacturer: str,
    model_name: str,
    content_date: str | None,
) -> None:
    """Camera text went into Manufacturer/ManufacturerModelName as it was (tabs, CR/LF,
    a backslash that splits the value in two, Latin-1 read as-is, 64 characters of UTF-8
    over LO's 64 bytes) and an impossible DateTimeOriginal into ContentDate/Time and
    AcquisitionDateTime: dciodvfy errors on a camera file that is itself fine."""
    plain = corpus.jpeg(corpus.rgb(16, 8))
    src = corpus.write(tmp_path, "cam.jpg", plain[:2] + _exif_app1(make, model, when) + plain[2:])
    out = tmp_path / "cam.dcm"
    _convert(src, out, sop_class="vlp")
    _clean(out)
    ds = pydicom.dcmread(out)
    assert (ds.Manufacturer, ds.ManufacturerModelName) == (manufacturer, model_name)
    if content_date:
        assert ds.ContentDate == content_date and ds.AcquisitionDateTime.startswith(content_date)
    else:
        assert "AcquisitionDateTime" not in ds


# ----------------------------------------------------------------------- drop folder


@pytest.fixture
def node_cfg(tmp_path: Path) -> Config:
    table = {
        "node": {"base_dir": str(tmp_path)},
        "ingest": {
            "defaults": {"ImageLaterality": "U"},
            "stable_seconds": 0.0,
            "incomplete_seconds": 0.0,
        },
        "destinations": [{"name": "pacs", "host": "127.0.0.1", "port": 104}],
    }
    return config_from_dict(table, tmp_path)


def _states(cfg: Config, store: JobStore) -> tuple[list[str], list[str], int]:
    """(names left in the inbox, quarantined inputs, delivery jobs)."""
    inbox = sorted(p.name for p in cfg.ingest.inbox.iterdir())
    quarantined = sorted(
        p.name[: -len(".error.txt")] for p in cfg.ingest.quarantine.glob("*.error.txt")
    )
    assert all(os.path.lexists(cfg.ingest.quarantine / name) for name in quarantined)
    return inbox, quarantined, len(store.select(kind="deliver"))


def test_names_of_255_bytes_are_converted_or_quarantined_not_stuck(node_cfg: Config) -> None:
    """NAME.jpg.json (sidecar look-up), NAME.jpg.dcm (outgoing) and NAME.error.txt
    (quarantine) of a 255-byte name exceed NAME_MAX: the input stayed in the inbox (the
    watcher failed to take it at every scan), a folder holding one stayed in work/ with
    no record, and an orphan sidecar could not be quarantined."""
    from node.ingest.watcher import DropFolderWatcher

    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    inbox = node_cfg.ingest.inbox
    inbox.mkdir(parents=True)
    jpg = corpus.jpeg(corpus.rgb(16, 8))
    long_jpg = "ü" * 125 + ".jpg"  # 254 bytes
    assert len(long_jpg.encode()) == 254
    (inbox / long_jpg).write_bytes(jpg)
    (inbox / ("t" * 255)).write_bytes(b"not an image")
    (inbox / ("s" * 250 + ".json")).write_text("{}")  # a sidecar without image
    folder = inbox / "visit"
    folder.mkdir()
    (folder / ("d" * 251 + ".jpg")).write_bytes(jpg)
    (folder / "x.jpg").write_bytes(corpus.jpeg(corpus.rgb(16, 8, 1)))
    watcher = DropFolderWatcher(
        node_cfg.ingest, pipeline.take, on_orphan=pipeline.orphan_sidecar, clock=lambda: 0.0
    )
    for _ in range(3):
        watcher.scan()
    left, quarantined, jobs = _states(node_cfg, store)
    assert left == []
    assert jobs == 3  # the long-named JPEG and both files of the folder
    assert len(quarantined) == 2  # the text file and the orphan sidecar
    for reason in node_cfg.ingest.quarantine.glob("*.error.txt"):
        text = reason.read_text()
        assert ("t" * 255) in text or ("s" * 250 + ".json") in text  # the original name
        assert len(reason.name.encode()) <= 255
    outputs = [Path(j.payload["path"]) for j in store.select(kind="deliver")]
    assert all(p.is_file() and len(p.name.encode()) <= 255 for p in outputs)
    assert len({p.name for p in outputs}) == 3


def test_an_unexpected_error_quarantines_the_file_and_the_folder_goes_on(
    node_cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while converting one file (any exception outside the expected ones) used to
    escape the claim: the whole folder stayed in work/ without a record, retried and
    failing again at every start. Now that file is quarantined with the error."""
    from node.ingest import pipeline as pipeline_mod

    real = pipeline_mod.convert_file

    def flaky(src: Path, *args: object, **kwargs: object) -> cv.ConvertResult:
        if src.name == "poison.jpg":
            raise RuntimeError("decoder exploded")
        return real(src, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline_mod, "convert_file", flaky)
    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    folder = node_cfg.ingest.inbox / "visit"
    folder.mkdir(parents=True)
    for seed, name in enumerate(("a.jpg", "poison.jpg", "z.jpg")):
        (folder / name).write_bytes(corpus.jpeg(corpus.rgb(16, 8, seed)))
    pipeline.take(folder)
    left, quarantined, jobs = _states(node_cfg, store)
    assert (left, quarantined, jobs) == ([], ["poison.jpg"], 2)
    reason = (node_cfg.ingest.quarantine / "poison.jpg.error.txt").read_text()
    assert "internal error while converting (RuntimeError: decoder exploded)" in reason
    assert [p.name for p in node_cfg.ingest.work.glob("*/claim.json")] == ["claim.json"]


def test_fit_name_keeps_short_names_and_shortens_long_ones_distinctly() -> None:
    from node.ingest.names import fit_name

    assert fit_name("photo.jpg", ".dcm") == "photo.jpg.dcm"
    a = fit_name("山" * 84 + "a.jpg", ".error.txt")
    b = fit_name("山" * 84 + "b.jpg", ".error.txt")
    assert a != b
    for name in (a, b):
        assert len(name.encode()) <= 255 and name.endswith(".jpg.error.txt")
        name.encode().decode("utf-8")  # cut on a character boundary


def test_convert_writes_outputs_for_255_byte_input_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 255-byte name (no extension, or photo.jpg next to photo.png) gave "cannot write
    ...: File name too long" although the input is fine; so did -o out.dcm, because the
    sidecar look-up NAME.jpg.json raised ENAMETOOLONG."""
    src = tmp_path / "in"
    jpg = corpus.jpeg(corpus.rgb(16, 8))
    corpus.write(src, "n" * 255, jpg)
    corpus.write(src, "p" * 251 + ".jpg", jpg)
    corpus.write(src, "p" * 251 + ".png", corpus.saved(corpus.rgb(16, 8), "PNG"))
    out = tmp_path / "out"
    assert main(["convert", "--processes", "1", "--no-fsync", str(src), "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 3 and all(len(n.encode()) <= 255 for n in names), names
    assert all(n.endswith(".dcm") for n in names)
    single = tmp_path / "one.dcm"
    assert main(["convert", "--no-fsync", str(src / ("p" * 251 + ".jpg")), "-o", str(single)]) == 0
    assert pydicom.dcmread(single).Rows == 8


@pytest.mark.dciodvfy
@pytest.mark.parametrize("kind", ["sc", "vlp", "nsc"])
def test_laterality_given_twice_gives_a_clean_object_or_a_clear_refusal(
    tmp_path: Path, kind: str
) -> None:
    """Laterality next to ImageLaterality or an unpaired BodyPartExamined was written as
    given: dciodvfy "Attribute present when condition unsatisfied" (an error)."""
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    base = tuple(kv for kv in FULL_KEYS if kv[0] != "ImageLaterality")

    def convert(*extra: tuple[str, str]) -> tuple[pydicom.Dataset, list[str]]:
        out = tmp_path / f"{kind}-{len(list(tmp_path.iterdir()))}.dcm"
        options = cv.ConvertOptions(sop_class=kind, keys=base + extra, fsync=False)
        series = cv.SeriesContext.for_group("lat", "2.25")
        result = cv.convert_file(src, out, options, series, 1)
        _clean(out)
        return pydicom.dcmread(out), result.notes

    ds, notes = convert(("Laterality", "R"), ("ImageLaterality", "R"))
    assert "Laterality" not in ds and ds.ImageLaterality == "R"
    assert any("says the same" in n for n in notes)
    ds, notes = convert(("Laterality", "L"), ("BodyPartExamined", "CHEST"))
    assert "Laterality" not in ds and ds.ImageLaterality == "L"
    assert any("written as (0020,0062) ImageLaterality" in n for n in notes)
    ds, _ = convert(("Laterality", "L"), ("BodyPartExamined", "HAND"))
    assert ds.Laterality == "L"
    with pytest.raises(cv.ConversionError, match="Laterality R contradicts .* ImageLaterality L"):
        convert(("Laterality", "R"), ("ImageLaterality", "L"))


def _dicom_object() -> bytes:
    """A small Secondary Capture object as Part 10 bytes (native 8-bit grey)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1234"
    ds.PatientName, ds.PatientID = "Doe^Jane", "P1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 16, 32, 1, 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * 2
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "complete"),
    [
        ("empty.jpg", b"", False),
        ("whole.png", corpus.saved(corpus.rgb(20, 10), "PNG"), True),
        ("cut.png", corpus.saved(corpus.rgb(20, 10), "PNG")[:-12], False),
        ("appended.png", corpus.saved(corpus.rgb(20, 10), "PNG") + b"extra data", True),
        ("whole.bmp", corpus.saved(corpus.rgb(20, 10), "BMP"), True),
        ("cut.bmp", corpus.saved(corpus.rgb(20, 10), "BMP")[:-100], False),
        ("whole.tif", corpus.saved(corpus.rgb(20, 10), "TIFF"), True),
        ("cut.tif", corpus.saved(corpus.rgb(20, 10), "TIFF")[:-1], False),
        (
            "cut-lzw.tif",
            corpus.saved(corpus.rgb(64, 48), "TIFF", compression="tiff_lzw")[:-200],
            False,
        ),
        (
            "pages.tif",
            corpus.saved(
                corpus.rgb(20, 10), "TIFF", save_all=True, append_images=[corpus.rgb(20, 10)]
            ),
            True,
        ),
        ("whole.dcm", _dicom_object(), True),
        ("cut-pixels.dcm", _dicom_object()[:-100], False),
        ("cut-header.dcm", _dicom_object()[:400], False),
        ("padded.dcm", _dicom_object() + b"\0" * 10, True),
    ],
)
def test_watcher_waits_for_files_still_being_written(
    tmp_path: Path, name: str, data: bytes, complete: bool
) -> None:
    """Only JPEGs were checked for completeness: a PNG, BMP, TIFF or DICOM file whose copy
    paused longer than stable_seconds (a slow share), or a file just created and still
    empty, was taken at once and quarantined as truncated/empty instead of being waited
    for."""
    from node.ingest.watcher import looks_complete

    assert looks_complete(corpus.write(tmp_path / "probe", name, data)) is complete
    stable, taken = corpus.watcher_takes(tmp_path, name, data)
    assert stable == ([name] if complete else [])
    # unchanged that long and still incomplete: handed over for quarantine
    assert taken == [name]


def test_upper_case_sidecar_is_applied_not_skipped(
    tmp_path: Path, node_cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """photo.JSON was skipped as an input (a sidecar) but never looked up as one: the
    image was converted without its patient data, silently."""
    src = tmp_path / "in"
    corpus.write(src, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    corpus.write(src, "photo.JSON", b'{"PatientID": "UPPER"}')
    corpus.write(src, "scan.PNG", corpus.saved(corpus.rgb(16, 8), "PNG"))
    corpus.write(src, "scan.PNG.JSON", b'{"PatientID": "UPPER2"}')
    corpus.write(src, "other.Json", b'{"PatientID": "MIXED"}')  # not a sidecar spelling
    out = tmp_path / "out"
    assert main(["convert", "--processes", "1", "--no-fsync", str(src), "-o", str(out)]) == 1
    assert "other.Json: not a JPEG, PNG, BMP or TIFF image" in capsys.readouterr().err
    assert pydicom.dcmread(out / "photo.dcm").PatientID == "UPPER"
    assert pydicom.dcmread(out / "scan.dcm").PatientID == "UPPER2"
    # The drop folder takes it along with its image.
    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    inbox = node_cfg.ingest.inbox
    inbox.mkdir(parents=True)
    (inbox / "photo.jpg").write_bytes(corpus.jpeg(corpus.rgb(16, 8)))
    (inbox / "photo.JSON").write_text('{"PatientID": "DROPPED"}')
    pipeline.take(inbox / "photo.jpg")
    assert list(inbox.iterdir()) == []
    (job,) = store.select(kind="deliver")
    assert pydicom.dcmread(job.payload["path"]).PatientID == "DROPPED"


def test_a_sidecar_shared_by_two_images_applies_to_both_in_the_drop_folder(
    node_cfg: Config,
) -> None:
    """photo.json beside photo.jpg and photo.png: the CLI applies it to both, but the drop
    folder moved it away with the first image claimed, and the second one was converted
    without its patient data."""
    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    inbox = node_cfg.ingest.inbox
    inbox.mkdir(parents=True)
    (inbox / "photo.jpg").write_bytes(corpus.jpeg(corpus.rgb(16, 8)))
    (inbox / "photo.png").write_bytes(corpus.saved(corpus.rgb(16, 8, 3), "PNG"))
    (inbox / "photo.json").write_text('{"PatientID": "SHARED"}')
    pipeline.take(inbox / "photo.jpg")
    assert (inbox / "photo.json").exists()  # still needed by photo.png
    pipeline.take(inbox / "photo.png")
    assert list(inbox.iterdir()) == []
    jobs = store.select(kind="deliver")
    assert len(jobs) == 2
    assert {pydicom.dcmread(j.payload["path"]).PatientID for j in jobs} == {"SHARED"}


def test_a_fifo_in_the_inbox_neither_hangs_the_watcher_nor_stays(node_cfg: Config) -> None:
    """Checking whether a file was complete opened it: a FIFO dropped into the inbox
    blocked the watcher forever, and no other file was taken again. ``convert FIFO`` or
    ``convert /dev/zero`` hung (or read without end) as well."""
    import threading

    from node.ingest.watcher import DropFolderWatcher

    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    inbox = node_cfg.ingest.inbox
    inbox.mkdir(parents=True)
    os.mkfifo(inbox / "pipe.jpg")
    (inbox / "photo.jpg").write_bytes(corpus.jpeg(corpus.rgb(16, 8)))
    (inbox / "gone.jpg").symlink_to(inbox / "nowhere.jpg")  # stayed in the inbox for ever
    folder = inbox / "visit"
    folder.mkdir()
    os.mkfifo(folder / "pipe2.jpg")
    (folder / "x.jpg").write_bytes(corpus.jpeg(corpus.rgb(16, 8, 1)))
    watcher = DropFolderWatcher(node_cfg.ingest, pipeline.take, clock=lambda: 0.0)
    scans = threading.Thread(target=lambda: [watcher.scan() for _ in range(3)], daemon=True)
    scans.start()
    scans.join(20)
    assert not scans.is_alive(), "the watcher hangs on the FIFO"
    left, quarantined, jobs = _states(node_cfg, store)
    assert (left, quarantined, jobs) == ([], ["gone.jpg", "pipe.jpg", "pipe2.jpg"], 2)
    reason = (node_cfg.ingest.quarantine / "pipe.jpg.error.txt").read_text()
    assert "not a regular file (a FIFO, socket or device)" in reason
    series = cv.SeriesContext.for_group("dev", "2.25")
    with pytest.raises(cv.UnsupportedInput, match="not a regular file"):
        cv.convert_file(
            Path("/dev/zero"), node_cfg.ingest.work / "z.dcm", cv.ConvertOptions(), series, 1
        )


def test_folder_inputs_whose_flat_names_collide_are_all_delivered(node_cfg: Config) -> None:
    """visit/a/x.jpg and visit/a_x.jpg both became outgoing/visit_a_x.jpg.dcm: the second
    output replaced the first, whose image was never delivered."""
    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    folder = node_cfg.ingest.inbox / "visit"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.jpg").write_bytes(corpus.jpeg(corpus.rgb(16, 8, 1)))
    (folder / "a_x.jpg").write_bytes(corpus.jpeg(corpus.rgb(24, 8, 2)))
    pipeline.take(folder)
    jobs = store.select(kind="deliver")
    paths = sorted(Path(j.payload["path"]) for j in jobs)
    assert [p.name for p in paths] == ["visit_a_x.jpg.dcm", "visit_a_x.jpg~2.dcm"]
    assert sorted(pydicom.dcmread(p).Columns for p in paths) == [16, 24]


def test_keep_appn_says_when_it_cannot_keep_the_segments(tmp_path: Path) -> None:
    data = corpus.jpeg(corpus.rgb(24, 16), exif=corpus.exif_block(orientation=6))
    src = corpus.write(tmp_path, "turned.jpg", data)
    notes = _convert(src, tmp_path / "t.dcm", keep_appn=True).notes
    assert any("--keep-appn cannot keep" in n for n in notes), notes


def test_two_copies_of_one_image_in_a_group_are_two_instances(
    tmp_path: Path, node_cfg: Config
) -> None:
    """The SOP Instance UID was derived from the bytes and the Study/Series only: a.jpg and
    b.jpg with the same bytes in one folder, one with a.json (PatientID P1) and one with
    b.json (P2), became two objects of different patients under one SOP Instance UID; in
    the drop folder the second was not even delivered."""
    jpg = corpus.jpeg(corpus.rgb(16, 8))
    src = tmp_path / "in"
    for name, pid in (("a", "P1"), ("b", "P2")):
        corpus.write(src, f"{name}.jpg", jpg)
        corpus.write(src, f"{name}.json", json.dumps({"PatientID": pid}).encode())
    out = tmp_path / "out"
    argv = ["convert", "--processes", "1", "--no-fsync", str(src), "-o", str(out)]
    assert main(argv) == 0
    a, b = (pydicom.dcmread(out / f"{n}.dcm") for n in "ab")
    assert (a.PatientID, b.PatientID) == ("P1", "P2")
    assert a.SOPInstanceUID != b.SOPInstanceUID
    first = a.SOPInstanceUID
    assert main(argv) == 0  # converting again: the same UIDs
    assert pydicom.dcmread(out / "a.dcm").SOPInstanceUID == first
    # Drop folder: one series across sub-folders, the same name in two of them.
    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    folder = node_cfg.ingest.inbox / "visit"
    for sub in ("left", "right"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "x.jpg").write_bytes(jpg)
    pipeline.take(folder)
    uids = {pydicom.dcmread(j.payload["path"]).SOPInstanceUID for j in store.select(kind="deliver")}
    assert len(uids) == 2


@pytest.mark.dciodvfy
def test_latin1_template_text_that_overflows_in_utf8_is_refused(tmp_path: Path) -> None:
    """A Latin-1 template's accented name of 33 characters fits PN's 64 bytes there but
    is 65 bytes in the UTF-8 the converter writes: every object made from it failed
    dciodvfy ("Length invalid for this VR")."""
    from node.ingest.metadata import load_template

    def template(name: str) -> Path:
        tpl = tmp_path / f"t{len(name)}.dcm"
        corpus.template(tpl, SpecificCharacterSet="ISO_IR 100", PatientName=name)
        assert name.encode("latin-1") in tpl.read_bytes()
        return tpl

    with pytest.raises(
        cv.ConversionError, match=r"\(0010,0010\) PatientName \(VR PN\) is 65 bytes"
    ):
        load_template(template("ü" * 16 + "^" + "ü" * 16), "study")
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    out = tmp_path / "ok.dcm"
    keys = tuple(kv for kv in FULL_KEYS if kv[0] != "PatientName")
    options = cv.ConvertOptions(
        template=load_template(template("ü" * 16 + "^" + "ü" * 15), "study"),
        keys=keys,
        fsync=False,
    )
    cv.convert_file(src, out, options, cv.SeriesContext.for_group("t", "2.25"), 1)
    assert pydicom.dcmread(out).PatientName == "ü" * 16 + "^" + "ü" * 15
    _clean(out)


def test_wide_white_is_zero_is_range_checked_after_inversion() -> None:
    """Inverting 32-bit WhiteIsZero samples gives values far above 65535; they were clipped
    to 65535 (a white image) instead of being refused."""
    from node.ingest.images import decoded

    im = Image.fromarray(np.arange(12, dtype=np.int32).reshape(3, 4) * 100, "I")
    with pytest.raises(cv.UnsupportedInput, match="outside 0..65535 once WhiteIsZero"):
        decoded(im, "w.tif", lossy=False, ratio=None, notes=[], white=2**32 - 1)
    pixels = decoded(im, "w.tif", lossy=False, ratio=None, notes=[], white=0xFFFF)
    got = np.frombuffer(pixels.pixel_data, "<u2").reshape(3, 4)
    np.testing.assert_array_equal(got, 0xFFFF - np.arange(12).reshape(3, 4) * 100)


@pytest.mark.dciodvfy
@pytest.mark.parametrize("sop_class", ["sc", "nsc"])
def test_twelve_bit_tiff_is_written_with_bits_stored_12(tmp_path: Path, sop_class: str) -> None:
    """A 12-bit grey TIFF (scanners, scientific cameras) was written with BitsStored 16:
    its samples (0..4095) then render nearly black wherever no window is applied (dcm2pnm
    gave 2..13 for an image spanning 37..214)."""
    raw = (np.arange(7 * 5).reshape(5, 7) * 117 % 4096).astype(np.uint16)
    src = corpus.write(tmp_path, "scan.tif", corpus.tiff_raw(raw, 1, bits=12))
    out = tmp_path / "scan.dcm"
    result = _convert(src, out, sop_class=sop_class)
    ds = pydicom.dcmread(out)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    np.testing.assert_array_equal(ds.pixel_array, raw)
    assert any("12-bit grey" in n for n in result.notes), result.notes
    _clean(out)
    rendered = _render(out).astype(int)  # DCMTK, no VOI window: 0..4095 -> 0..255
    assert np.abs(rendered - raw.astype(float) * 255 / 4095).max() <= 1


def test_multi_frame_bits_stored_is_the_widest_page() -> None:
    from node.ingest.images import decoded, join_frames

    def page(bits: int) -> cv.Pixels:
        im = Image.fromarray(np.full((2, 3), (1 << bits) - 1, np.uint16))
        pixels = decoded(im, "p.tif", lossy=False, ratio=None, notes=[])
        return dataclasses.replace(pixels, bits_stored=bits)

    assert join_frames([page(12), page(16)], "p.tif").bits_stored == 16
    assert join_frames([page(12), page(12)], "p.tif").bits_stored == 12


def _tiff_pages(compressions: list[str]) -> bytes:
    """A multi-page RGB TIFF whose pages have the given compressions, in that order."""
    from PIL import TiffImagePlugin

    buf = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buf) as tiff:
        for seed, compression in enumerate(compressions):
            corpus.rgb(16, 8, seed).save(tiff, "TIFF", compression=compression)
            tiff.newFrame()
    return buf.getvalue()


@pytest.mark.dciodvfy
def test_a_jpeg_compressed_later_page_makes_the_object_lossy(tmp_path: Path) -> None:
    """Only page 1's Compression was looked at: a scan whose page 2 is JPEG-compressed was
    written with LossyImageCompression 00 (PS3.3 C.7.6.1.1.5: once lossy, always lossy)."""
    for name, pages, lossy in (
        ("lzw-jpeg", ["tiff_lzw", "jpeg"], "01"),
        ("jpeg-lzw", ["jpeg", "tiff_lzw"], "01"),
        ("lzw-lzw", ["tiff_lzw", "tiff_lzw"], "00"),
    ):
        src = corpus.write(tmp_path, f"{name}.tif", _tiff_pages(pages))
        out = tmp_path / f"{name}.dcm"
        result = _convert(src, out, sop_class="nsc")
        ds = pydicom.dcmread(out)
        assert (ds.NumberOfFrames, ds.LossyImageCompression) == (2, lossy), name
        if lossy == "01":
            assert ds.LossyImageCompressionMethod == "ISO_10918_1"
            assert float(ds.LossyImageCompressionRatio) > 0
            assert any("of 2): marked lossy" in n for n in result.notes), result.notes
        else:
            assert "LossyImageCompressionRatio" not in ds
        _clean(out)


def _cmyk_profile() -> bytes:
    """An ICC header claiming a CMYK data colour space (enough for where it is read)."""
    header = bytearray(128)
    header[0:4] = (128 + 4).to_bytes(4, "big")
    header[12:16] = b"prtr"
    header[16:20] = b"CMYK"
    header[20:24] = b"Lab "
    header[36:40] = b"acsp"
    return bytes(header) + b"\x00\x00\x00\x00"


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_a_cmyk_profile_is_not_attached_to_the_rgb_pixels(tmp_path: Path, fmt: str) -> None:
    """CMYK input is converted to RGB, but its CMYK ICC profile was written as the
    object's ICCProfile, which must describe the RGB pixel data: a colour-managed viewer
    would render it wrongly."""
    cmyk = corpus.rgb(16, 8).convert("CMYK")
    src = corpus.write(
        tmp_path, f"cmyk.{fmt.lower()}", corpus.saved(cmyk, fmt, icc_profile=_cmyk_profile())
    )
    result = _convert(src, tmp_path / "c.dcm")
    ds = pydicom.dcmread(tmp_path / "c.dcm")
    assert ds.PhotometricInterpretation == "RGB" and "ICCProfile" not in ds
    assert any("colour space 'CMYK' left out" in n for n in result.notes), result.notes
    # An RGB profile still goes with RGB pixels.
    rgb = corpus.write(
        tmp_path, "rgb.jpg", corpus.jpeg(corpus.rgb(16, 8), icc_profile=corpus.srgb_icc())
    )
    _convert(rgb, tmp_path / "r.dcm")
    assert pydicom.dcmread(tmp_path / "r.dcm").ICCProfile[16:20] == b"RGB "


def _with_icc_chunks(jpeg: bytes, chunks: list[bytes], count: int) -> bytes:
    """``jpeg`` with APP2 ICC_PROFILE segments carrying ``chunks`` (sequence numbers 1..,
    total ``count``) right after SOI."""
    segments = b"".join(
        b"\xff\xe2"
        + (2 + 14 + len(chunk)).to_bytes(2, "big")
        + b"ICC_PROFILE\x00"
        + bytes([number, count])
        + chunk
        for number, chunk in enumerate(chunks, start=1)
    )
    return jpeg[:2] + segments + jpeg[2:]


def test_an_icc_profile_missing_a_chunk_is_left_out(tmp_path: Path) -> None:
    """A profile split over several APP2 segments (as large camera and printer profiles
    are) with one segment lost was joined and written as ICCProfile: a profile littleCMS
    refuses, and colour-managed viewers with it. Whole profiles still go in, without
    padding after their declared size."""
    from PIL import ImageCms

    icc = corpus.srgb_icc()
    halves = [icc[:300], icc[300:]]
    plain = corpus.jpeg(corpus.rgb(16, 8))
    whole = corpus.write(tmp_path, "whole.jpg", _with_icc_chunks(plain, halves, 2))
    _convert(whole, tmp_path / "whole.dcm")
    assert pydicom.dcmread(tmp_path / "whole.dcm").ICCProfile == icc
    padded = corpus.write(tmp_path, "pad.jpg", _with_icc_chunks(plain, [icc + b"\0" * 6], 1))
    _convert(padded, tmp_path / "pad.dcm")
    assert pydicom.dcmread(tmp_path / "pad.dcm").ICCProfile == icc

    lost = corpus.write(tmp_path, "lost.jpg", _with_icc_chunks(plain, halves[:1], 2))
    result = _convert(lost, tmp_path / "lost.dcm")
    ds = pydicom.dcmread(tmp_path / "lost.dcm")
    assert "ICCProfile" not in ds
    assert any(
        n.startswith("warning: ICC profile left out: incomplete") and "588" in n
        for n in result.notes
    ), result.notes
    _clean(tmp_path / "lost.dcm")
    # What used to be written: littleCMS cannot colour-manage with it; the whole one works.
    srgb = ImageCms.createProfile("sRGB")
    ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb, "RGB", "RGB")
    with pytest.raises(ImageCms.PyCMSError):
        ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(halves[0])), srgb, "RGB", "RGB")


def test_reason_files_name_the_inbox_path_not_the_claim(node_cfg: Config) -> None:
    """Reasons named the claimed copy (.../work/20261122T...-1a2b3c4d/src/visit/bad.json),
    a path the user never saw."""
    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    folder = node_cfg.ingest.inbox / "visit"
    folder.mkdir(parents=True)
    (folder / "bad.jpg").write_bytes(corpus.jpeg(corpus.rgb(16, 8)))
    (folder / "bad.json").write_text('{"PatientSex": "X"}')
    pipeline.take(folder)
    reason = (node_cfg.ingest.quarantine / "bad.jpg.error.txt").read_text()
    assert "sidecar visit/bad.json: PatientSex" in reason
    assert reason.startswith("file: visit/bad.jpg\n")
    assert str(node_cfg.ingest.work) not in reason


def test_a_folder_without_any_input_is_quarantined_not_removed(node_cfg: Config) -> None:
    """A dropped folder holding only sidecars, partial or hidden files finished as an
    empty claim, and its folder was removed without a trace."""
    store = JobStore(node_cfg.node.state_dir)
    pipeline = IngestPipeline(node_cfg, store)
    folder = node_cfg.ingest.inbox / "visit"
    folder.mkdir(parents=True)
    (folder / "notes.json").write_text('{"PatientID": "X"}')
    (folder / "scan.jpg.part").write_bytes(b"partial")
    pipeline.take(folder)
    kept = node_cfg.ingest.quarantine / "visit"
    assert sorted(p.name for p in kept.iterdir()) == ["notes.json", "scan.jpg.part"]
    reason = (node_cfg.ingest.quarantine / "visit.error.txt").read_text()
    assert "holds no image or DICOM file to convert (only: notes.json, scan.jpg.part)" in reason
    assert list(node_cfg.ingest.work.iterdir()) == []
