"""Files as phones, scanners and other devices write them, found by the third sweep: each
one was refused, converted wrongly or held back in the drop folder before its fix.

Outputs are checked with dciodvfy and pixels against Pillow's decoding of the source.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from node.cli import main
from node.config import Config, config_from_dict
from node.ingest import convert as cv
from node.ingest.pipeline import IngestPipeline
from node.ingest.watcher import looks_complete
from node.queue import JobStore
from tests.ingest import corpus
from tests.peers import dciodvfy, tool


def _convert(src: Path, out: Path, **options: object) -> cv.ConvertResult:
    series = cv.SeriesContext.for_group("device", "2.25")
    opts = cv.ConvertOptions(keys=corpus.FULL_KEYS, fsync=False, **options)  # type: ignore[arg-type]
    return cv.convert_file(src, out, opts, series, 1)


def _clean(dcm: Path) -> None:
    report = dciodvfy(dcm)
    assert report.errors == [] and report.warnings == [], report.output


# ----------------------------------------------------------------------- phone JPEGs

_SEFT = b"\x00\x00SEFH" + b"\x01" * 60 + b"\x3c\x00\x00\x00SEFT"  # Samsung's trailer
_MOTION = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x07" * 200  # MP4 video


@pytest.mark.parametrize(
    "trailer", [_SEFT, _MOTION, b""], ids=["samsung-seft", "motion-photo", "plain"]
)
def test_a_phone_jpeg_with_data_after_eoi_is_taken_once_stable(
    tmp_path: Path, trailer: bytes
) -> None:
    """Samsung phones append a SEFT trailer after the JPEG's EOI, Google's Motion Photos an
    MP4 video: the watcher took such a file for a copy still in progress (it does not end
    with EOI), held it for incomplete_seconds (60 s) and then logged it as incomplete."""
    data = corpus.jpeg(corpus.rgb(32, 16)) + trailer
    stable, _ = corpus.watcher_takes(tmp_path, "phone.jpg", data)
    assert stable == ["phone.jpg"]
    result = _convert(corpus.write(tmp_path, "phone.jpg", data), tmp_path / "p.dcm")
    ds = pydicom.dcmread(result.output)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    _clean(result.output)


def test_a_jpeg_cut_inside_its_image_is_still_waited_for(tmp_path: Path) -> None:
    data = corpus.jpeg(corpus.rgb(64, 48)) + _SEFT
    eoi = data.index(b"\xff\xd9")
    for cut in (eoi - 40, eoi, eoi + 1):  # in the scan, before EOI, half of EOI
        assert not looks_complete(corpus.write(tmp_path, f"cut{cut}.jpg", data[:cut]))
    assert looks_complete(corpus.write(tmp_path, "eoi.jpg", data[: eoi + 2 + 5]))
    stable, eventually = corpus.watcher_takes(tmp_path, "cut.jpg", data[: eoi - 40])
    assert (stable, eventually) == ([], ["cut.jpg"])  # then quarantined with a reason


# ----------------------------------------------------------------------- BigTIFF


def _bigtiff(im: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "TIFF", big_tiff=True, **kwargs)
    data = buf.getvalue()
    assert data[:4] == b"II+\x00"
    return data


@pytest.mark.parametrize("sop_class", ["sc", "nsc"])
def test_bigtiff_is_converted(tmp_path: Path, sop_class: str) -> None:
    """A BigTIFF (scanners and microscopes write them, not only above 4 GB) was refused as
    'not a JPEG, PNG, BMP or TIFF image' although Pillow reads it."""
    grey16 = Image.fromarray(np.arange(24 * 10, dtype=np.uint16).reshape(10, 24) * 271)
    for name, im in (("rgb.tif", corpus.rgb(24, 10)), ("grey16.tif", grey16)):
        src = corpus.write(tmp_path, name, _bigtiff(im))
        out = tmp_path / f"{name}.{sop_class}.dcm"
        _convert(src, out, sop_class=sop_class)
        _clean(out)
        pixels = pydicom.dcmread(out).pixel_array
        assert np.array_equal(pixels, np.asarray(im))


def test_a_bigtiff_being_copied_is_waited_for(tmp_path: Path) -> None:
    data = _bigtiff(corpus.rgb(40, 30))
    assert looks_complete(corpus.write(tmp_path, "whole.tif", data))
    for cut in (10, 100, len(data) - 1):  # header, strip data, IFD
        assert not looks_complete(corpus.write(tmp_path, f"cut{cut}.tif", data[:cut]))
    stable, _ = corpus.watcher_takes(tmp_path, "scan.tif", data)
    assert stable == ["scan.tif"]


# ----------------------------------------------------------------------- non-square pixels


def _scaled_height(dcm: Path, width: int) -> int:
    """The height DCMTK draws ``dcm`` at when scaled to ``width`` (dcmj2pnm honours
    PixelAspectRatio when scaling)."""
    out = dcm.with_suffix(".pnm")
    subprocess.run(
        [tool("dcmj2pnm"), "+Sxv", str(width), str(dcm), str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return int(out.read_bytes().split(b"\n")[1].split()[1])


_NON_SQUARE = [
    # A frame grabber's JPEG (passed through), a progressive one (decoded), PNG pHYs, BMP.
    ("grabber.jpg", lambda: corpus.jpeg(corpus.rgb(72, 54), dpi=(72, 144)), "1\\2", 27),
    (
        "prog.jpg",
        lambda: corpus.jpeg(corpus.rgb(72, 54), dpi=(72, 144), progressive=True),
        "1\\2",
        27,
    ),
    ("screen.png", lambda: corpus.saved(corpus.rgb(72, 54), "PNG", dpi=(72, 144)), "1\\2", 27),
    ("scan.bmp", lambda: corpus.saved(corpus.rgb(72, 54), "BMP", dpi=(72, 144)), "1\\2", 27),
    # A fax: 204 x 98 dpi, pixels about twice as tall as wide.
    (
        "fax.tif",
        lambda: corpus.saved(
            corpus.grey(72, 54).convert("1"), "TIFF", dpi=(204, 98), compression="group3"
        ),
        "102\\49",
        112,
    ),
]


@pytest.mark.parametrize(("name", "make", "ratio", "height"), _NON_SQUARE)
@pytest.mark.parametrize("sop_class", ["sc", "vlp", "nsc"])
def test_non_square_pixels_get_a_pixel_aspect_ratio(
    tmp_path: Path, name: str, make: Callable[[], bytes], ratio: str, height: int, sop_class: str
) -> None:
    """PixelAspectRatio (0028,0034) is Type 1C, required when the pixels are not square:
    it was never written, so a fax (204x98 dpi) or a frame grabber's JPEG with a non-square
    JFIF density was shown squashed. img2dcm writes it from the JFIF density (with the
    two values the other way round: YDensity\\XDensity)."""
    src = corpus.write(tmp_path, name, make())
    out = tmp_path / f"{name}.{sop_class}.dcm"
    _convert(src, out, sop_class=sop_class)
    _clean(out)
    assert "\\".join(str(v) for v in pydicom.dcmread(out).PixelAspectRatio) == ratio
    # 72 pixels scaled to 72 columns: DCMTK draws the rows at their physical height.
    assert _scaled_height(out, 72) == height


def test_square_pixels_get_no_pixel_aspect_ratio(tmp_path: Path) -> None:
    for name, data in (
        ("sq.jpg", corpus.jpeg(corpus.rgb(24, 16), dpi=(300, 300))),
        ("plain.jpg", corpus.jpeg(corpus.rgb(24, 16))),
        ("sq.tif", corpus.saved(corpus.rgb(24, 16), "TIFF", dpi=(300, 300))),
        ("none.png", corpus.saved(corpus.rgb(24, 16), "PNG")),
    ):
        out = tmp_path / f"{name}.dcm"
        _convert(corpus.write(tmp_path, name, data), out)
        assert "PixelAspectRatio" not in pydicom.dcmread(out)


def test_pixel_aspect_ratio_follows_the_exif_turn_and_yields_to_the_user(tmp_path: Path) -> None:
    data = corpus.jpeg(corpus.rgb(72, 54), dpi=(72, 144), exif=corpus.exif_block(orientation=6))
    src = corpus.write(tmp_path, "turned.jpg", data)
    _convert(src, tmp_path / "t.dcm")
    ds = pydicom.dcmread(tmp_path / "t.dcm")
    assert (ds.Rows, ds.Columns) == (72, 54)
    assert list(ds.PixelAspectRatio) == [2, 1]  # turned by 90 degrees: the ratio turns too
    series = cv.SeriesContext.for_group("device", "2.25")
    keys = (*corpus.FULL_KEYS, ("PixelAspectRatio", "4\\3"))
    cv.convert_file(src, tmp_path / "k.dcm", cv.ConvertOptions(keys=keys, fsync=False), series, 1)
    assert list(pydicom.dcmread(tmp_path / "k.dcm").PixelAspectRatio) == [4, 3]


def test_pixel_aspect_from_densities() -> None:
    from node.ingest.images import pixel_aspect

    assert pixel_aspect((72, 144)) == (1, 2)
    assert pixel_aspect((204.0, 98.0)) == (102, 49)
    assert pixel_aspect((72.009, 72.009)) is None
    assert pixel_aspect((16, 15), orientation=8) == (15, 16)
    for unusable in (None, (0, 0), (72, 0), (0, 72), (1,), ("a", "b"), (float("nan"), 1)):
        assert pixel_aspect(unusable) is None


# ----------------------------------------------------------------------- Windows sidecars


@pytest.mark.parametrize(
    "encoding", ["utf-8-sig", "utf-16"], ids=["utf8-bom-set-content", "utf16-powershell-redirect"]
)
def test_a_sidecar_written_by_windows_tools_is_applied(tmp_path: Path, encoding: str) -> None:
    """Windows PowerShell's Set-Content -Encoding UTF8 (and older Notepad) start the file
    with a UTF-8 byte order mark, PowerShell 5's '>' writes UTF-16: the sidecar was refused
    ('Unexpected UTF-8 BOM') and the image with it."""
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    text = '{"PatientID": "WIN-1", "PatientName": "Müller^Jörg"}'
    corpus.write(tmp_path, "photo.json", text.encode(encoding))
    out = tmp_path / "photo.dcm"
    series = cv.SeriesContext.for_group("device", "2.25")
    cv.convert_file(src, out, cv.ConvertOptions(fsync=False), series, 1)
    ds = pydicom.dcmread(out)
    assert (ds.PatientID, str(ds.PatientName)) == ("WIN-1", "Müller^Jörg")
    assert ds.SpecificCharacterSet == "ISO_IR 192"


def test_a_latin1_sidecar_is_refused_saying_how_to_fix_it(tmp_path: Path) -> None:
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(16, 8)))
    corpus.write(tmp_path, "photo.json", '{"PatientName": "Müller^J"}'.encode("latin-1"))
    series = cv.SeriesContext.for_group("device", "2.25")
    with pytest.raises(cv.ConversionError, match=r"not UTF-8 text .*save it as UTF-8"):
        cv.convert_file(src, tmp_path / "p.dcm", cv.ConvertOptions(fsync=False), series, 1)
    assert not (tmp_path / "p.dcm").exists()


# ----------------------------------------------------------------------- file names

_LATIN1 = os.fsdecode(b"M\xfcller.jpg")  # a Latin-1 name, as a Windows share may hand it over


def _node(tmp_path: Path, pattern: str = "") -> Config:
    table = {
        "node": {"base_dir": str(tmp_path / "node")},
        "ingest": {
            "defaults": {"ImageLaterality": "U"},
            "stable_seconds": 0.0,
            "incomplete_seconds": 0.0,
            "filename_pattern": pattern,
        },
        "destinations": [{"name": "pacs", "host": "127.0.0.1", "port": 104}],
    }
    return config_from_dict(table, tmp_path)


def test_a_file_name_that_is_not_utf8_is_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name with Latin-1 bytes crashed 'dicom-node convert' with a traceback, converting
    none of the other files; in the drop folder the claim stayed in work/ and was retried
    every few seconds for ever, logged as a disk or permission problem."""
    src = tmp_path / "in"
    corpus.write(src, _LATIN1, corpus.jpeg(corpus.rgb(16, 8)))
    corpus.write(src, "ok.jpg", corpus.jpeg(corpus.rgb(16, 8, 1)))
    out = tmp_path / "out"
    assert main(["convert", "--processes", "1", "--no-fsync", str(src), "-o", str(out)]) == 0
    assert sorted(os.listdir(out)) == sorted([os.fsdecode(b"M\xfcller.dcm"), "ok.dcm"])
    cfg = _node(tmp_path)
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    cfg.ingest.inbox.mkdir(parents=True)
    (cfg.ingest.inbox / _LATIN1).write_bytes(corpus.jpeg(corpus.rgb(16, 8)))
    folder = cfg.ingest.inbox / "visit"
    corpus.write(folder, _LATIN1, corpus.jpeg(corpus.rgb(16, 8, 2)))
    pipeline.take(cfg.ingest.inbox / _LATIN1)
    pipeline.take(folder)
    assert list(cfg.ingest.inbox.iterdir()) == []
    assert pipeline.deferred == set()  # nothing left to retry
    assert len(store.select(kind="deliver")) == 2


def test_file_name_pattern_values_are_nfc_text_or_refused(tmp_path: Path) -> None:
    """macOS hands names over decomposed (u + U+0308): PatientName was written so, and a
    PACS search for Müller did not find it. A Latin-1 byte in a pattern value crashed the
    conversion; it is quarantined naming the tag, keyword and what to do."""
    cfg = _node(tmp_path, r"(?P<PatientName>[^_]+)_(?P<PatientID>[^_.]+)\.jpg")
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    inbox = cfg.ingest.inbox
    inbox.mkdir(parents=True)
    decomposed = "Mu\u0308ller^Jo\u0308rg_123.jpg"
    latin1 = os.fsdecode(b"M\xfcller_456.jpg")
    for name in (decomposed, latin1):
        (inbox / name).write_bytes(corpus.jpeg(corpus.rgb(16, 8)))
        pipeline.take(inbox / name)
    (job,) = store.select(kind="deliver")
    ds = pydicom.dcmread(job.payload["path"])
    assert (str(ds.PatientName), ds.PatientID) == ("Müller^Jörg", "123")
    reason = (cfg.ingest.quarantine / (latin1 + ".error.txt")).read_bytes()
    assert b"file: M\xfcller_456.jpg" in reason
    assert b"(0010,0010) PatientName (VR PN) holds byte 0xFC, which is not UTF-8" in reason
    assert b"rename the file" in reason
    assert pipeline.deferred == set()
