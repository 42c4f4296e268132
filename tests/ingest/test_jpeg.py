"""The JPEG marker parser and segment stripping, on streams written by libjpeg (Pillow)."""

from __future__ import annotations

import pytest

from node.errors import CorruptInput, UnsupportedInput
from node.ingest.jpeg import coded_image, parse_jpeg, strip_segments
from tests.ingest import corpus


def test_frame_header_and_sampling() -> None:
    for sub, name in ((0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")):
        info = parse_jpeg(corpus.jpeg(corpus.rgb(33, 17), subsampling=sub))
        assert (info.sof, info.precision, info.rows, info.columns) == (0xC0, 8, 17, 33)
        assert info.samples == 3 and info.subsampling == name
        assert info.colour_space == "YCbCr" and info.jfif
    grey = parse_jpeg(corpus.jpeg(corpus.grey(5, 3)))
    assert grey.samples == 1 and grey.colour_space == "GRAY"


def test_colour_spaces_from_adobe_and_component_ids() -> None:
    adobe = corpus.jpeg(corpus.rgb(8, 8), keep_rgb=True)
    info = parse_jpeg(adobe)
    assert info.adobe_transform == 0 and info.colour_space == "RGB"
    ids_only = corpus.remove_marker(adobe, 0xEE)
    info = parse_jpeg(ids_only)
    assert info.adobe_transform is None
    assert [c.ident for c in info.components] == [ord("R"), ord("G"), ord("B")]
    assert info.colour_space == "RGB"
    cmyk = parse_jpeg(corpus.jpeg(corpus.rgb(8, 8).convert("CMYK")))
    assert cmyk.samples == 4 and cmyk.colour_space == "CMYK"


def test_progressive_restart_exif_icc() -> None:
    prog = parse_jpeg(corpus.jpeg(corpus.rgb(16, 16), progressive=True))
    assert prog.sof == 0xC2 and prog.scans > 1
    rst = parse_jpeg(corpus.jpeg(corpus.rgb(64, 16), restart_marker_blocks=1))
    assert rst.restart_interval > 0 and rst.scans == 1
    data = corpus.jpeg(
        corpus.rgb(16, 16), exif=corpus.exif_block(orientation=6), icc_profile=corpus.srgb_icc()
    )
    info = parse_jpeg(data)
    assert info.exif is not None and info.exif[:2] in (b"II", b"MM")
    assert info.icc == corpus.srgb_icc()


def test_strip_keeps_tables_and_scans_byte_identical() -> None:
    data = corpus.jpeg(
        corpus.rgb(40, 24),
        exif=corpus.exif_block(when="2020:01:01 00:00:00"),
        icc_profile=corpus.srgb_icc(),
        comment=b"patient Jane Doe",
        xmp=b"<x:xmpmeta>GPS 51.5N 0.1W</x:xmpmeta>",
    )
    data += b"trailing junk after EOI"
    info = parse_jpeg(data)
    out = strip_segments(data, info)
    assert b"Exif" not in out and b"Jane Doe" not in out and b"junk" not in out
    assert b"GPS 51.5N" in data and b"GPS 51.5N" not in out  # XMP (APP1) removed
    assert b"ICC_PROFILE" in out and b"JFIF" in out
    assert out.endswith(b"\xff\xd9")
    again = parse_jpeg(out)
    assert coded_image(out, again) == coded_image(data, info)
    assert [s.marker for s in again.segments if s.marker < 0xE0] == [
        s.marker for s in info.segments if s.marker < 0xE0
    ]


def test_nothing_to_strip_returns_the_same_bytes() -> None:
    data = corpus.jpeg(corpus.grey(8, 8))
    assert strip_segments(data, parse_jpeg(data)) is data


@pytest.mark.parametrize(
    ("data", "exc", "phrase"),
    [
        (b"\xff\xd8\xff", CorruptInput, "truncated"),
        (b"GIF89a", UnsupportedInput, "no SOI"),
        (corpus.jpeg(corpus.rgb(16, 16))[:-2], CorruptInput, "no EOI"),
        (corpus.jpeg(corpus.rgb(16, 16))[:300], CorruptInput, "truncated"),
        (b"\xff\xd8\xff\xd9", CorruptInput, "frame header"),
    ],
)
def test_broken_streams(data: bytes, exc: type[Exception], phrase: str) -> None:
    with pytest.raises(exc, match=phrase):
        parse_jpeg(data, "x.jpg")


def _tiff(order: str, entries: list[tuple[int, int, int, bytes]], sub_at: int = 0) -> bytes:
    import struct

    head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    body = struct.pack(order + "H", len(entries))
    for tag, typ, count, value in entries:
        body += struct.pack(order + "HHI", tag, typ, count) + value.ljust(4, b"\x00")
    return head + body + b"\x00\x00\x00\x00"


def test_exif_parser_big_endian_and_damaged() -> None:
    import struct

    from node.ingest.exif import read_exif

    make = b"Nikon\x00"
    entries = [
        (0x010F, 2, len(make), struct.pack(">I", 8 + 2 + 12 * 2 + 4)),
        (0x0112, 3, 1, struct.pack(">H", 8)),
    ]
    raw = _tiff(">", entries) + make
    values = read_exif(raw)
    assert values.make == "Nikon" and values.orientation == 8 and not values.problem
    broken = read_exif(b"MM\x00\x2a\x00\x00\xff\xff")
    assert broken.problem and broken.orientation == 1
    assert read_exif(b"garbage").problem
