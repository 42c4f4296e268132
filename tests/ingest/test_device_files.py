"""Files as phones, scanners and other devices write them, found by the third sweep: each
one was refused, converted wrongly or held back in the drop folder before its fix.

Outputs are checked with dciodvfy and pixels against Pillow's decoding of the source.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from node.config import config_from_dict
from node.ingest import convert as cv
from node.ingest.watcher import DropFolderWatcher, looks_complete
from tests.ingest import corpus
from tests.peers import dciodvfy


def _convert(src: Path, out: Path, **options: object) -> cv.ConvertResult:
    series = cv.SeriesContext.for_group("device", "2.25")
    opts = cv.ConvertOptions(keys=corpus.FULL_KEYS, fsync=False, **options)  # type: ignore[arg-type]
    return cv.convert_file(src, out, opts, series, 1)


def _clean(dcm: Path) -> None:
    report = dciodvfy(dcm)
    assert report.errors == [] and report.warnings == [], report.output


def _taken_after(tmp_path: Path, name: str, data: bytes) -> tuple[list[str], list[str]]:
    """What the watcher hands over once ``name`` was stable for stable_seconds, and then
    once it was unchanged for incomplete_seconds."""
    cfg = config_from_dict(
        {"node": {"base_dir": str(tmp_path)}, "ingest": {"stable_seconds": 1.0}}, tmp_path
    )
    inbox = cfg.ingest.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_bytes(data)
    now = [0.0]
    taken: list[str] = []
    watcher = DropFolderWatcher(cfg.ingest, lambda p: taken.append(p.name), clock=lambda: now[0])
    watcher.scan()
    now[0] = 2.0
    watcher.scan()
    stable = list(taken)
    now[0] = 2.0 + cfg.ingest.incomplete_seconds
    watcher.scan()
    return stable, taken


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
    stable, _ = _taken_after(tmp_path, "phone.jpg", data)
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
    stable, eventually = _taken_after(tmp_path, "cut.jpg", data[: eoi - 40])
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
    stable, _ = _taken_after(tmp_path, "scan.tif", data)
    assert stable == ["scan.tif"]
