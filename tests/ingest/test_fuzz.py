"""Damaged inputs never crash the converter: a ConversionError or a valid object, nothing else."""

from __future__ import annotations

import random
from pathlib import Path

import pydicom
import pytest

from node.errors import ConversionError
from node.ingest import convert as cv
from tests.ingest import corpus

SOURCES = {
    "jpeg": lambda: corpus.jpeg(
        corpus.rgb(24, 16), exif=corpus.exif_block(when="2020:01:01 00:00:00")
    ),
    "progressive": lambda: corpus.jpeg(corpus.rgb(24, 16), progressive=True),
    "png": lambda: corpus.saved(corpus.rgb(12, 8), "PNG"),
    "tiff": lambda: corpus.saved(corpus.rgb(12, 8), "TIFF"),
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_damaged_files(tmp_path: Path, kind: str) -> None:
    original = SOURCES[kind]()
    rng = random.Random(kind)
    options = cv.ConvertOptions(fsync=False, max_pixels=1_000_000)
    series = cv.SeriesContext.for_group("fuzz", "2.25")
    outcomes = {"ok": 0, "refused": 0}
    for i in range(60):
        data = bytearray(original)
        if i % 3 == 0:
            data = data[: rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        src = corpus.write(tmp_path, f"{i}.img", bytes(data))
        out = tmp_path / f"{i}.dcm"
        try:
            cv.convert_file(src, out, options, series, i + 1)
        except ConversionError as exc:
            assert str(src) in str(exc)
            assert not out.exists()
            outcomes["refused"] += 1
        else:
            ds = pydicom.dcmread(out)
            assert ds.Rows > 0 and ds.Columns > 0
            outcomes["ok"] += 1
    assert outcomes["refused"] > 0
