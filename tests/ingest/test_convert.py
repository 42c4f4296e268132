"""The generated corpus through ``convert_file``: dciodvfy, pydicom and DCMTK read-back.

Every output is checked with the real dciodvfy (0 errors and 0 warnings when the values
the conformance bar names are supplied; 0 errors without them), read back with pydicom,
and decoded by pydicom and by DCMTK ``dcmj2pnm``. Pass-through JPEG is compared by bytes
(the coded image inside the DICOM fragment equals the source's), lossless paths pixel for
pixel, decoded JPEG paths against Pillow's decode of the source (the same decoder).
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.encaps import generate_frames

from node.ingest import convert as cv
from node.ingest.jpeg import coded_image, parse_jpeg, strip_segments
from tests.ingest import corpus
from tests.peers import dciodvfy, tool

FULL_KEYS = corpus.FULL_KEYS
CASES = {c.name: c for c in corpus.good_cases()}
KINDS = ("sc", "vlp", "nsc")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, bool], Path]:
    """Every good case converted as sc, vlp and nsc, with and without the full keys."""
    root = tmp_path_factory.mktemp("corpus")
    src = root / "src"
    sources = {name: corpus.write(src, case.filename, case.make()) for name, case in CASES.items()}
    out: dict[tuple[str, str, bool], Path] = {}
    series = cv.SeriesContext.for_group("corpus", "2.25")
    for kind in KINDS:
        for full in (True, False):
            options = cv.ConvertOptions(sop_class=kind, keys=FULL_KEYS if full else (), fsync=False)
            for number, (name, path) in enumerate(sources.items(), start=1):
                case = CASES[name]
                if kind == "vlp" and not case.vlp:
                    continue
                if kind == "nsc" and not full and name not in ("baseline-grey", "png-16bit"):
                    continue
                target = root / f"{kind}-{int(full)}" / f"{name}.dcm"
                cv.convert_file(path, target, options, series, number)
                out[(name, kind, full)] = target
    out[("__src__", "", True)] = src
    return out


def _params(full: bool) -> list[tuple[str, str]]:
    return [
        (name, kind)
        for kind in KINDS
        for name, case in CASES.items()
        if (kind != "vlp" or case.vlp)
        and (full or kind != "nsc" or name in ("baseline-grey", "png-16bit"))
    ]


@pytest.mark.dciodvfy
@pytest.mark.parametrize(("name", "kind"), _params(True))
def test_dciodvfy_clean_with_required_values(
    converted: dict[tuple[str, str, bool], Path], name: str, kind: str
) -> None:
    report = dciodvfy(converted[(name, kind, True)])
    assert report.errors == [] and report.warnings == [], report.output


@pytest.mark.dciodvfy
@pytest.mark.parametrize(("name", "kind"), _params(False))
def test_dciodvfy_no_errors_without_values(
    converted: dict[tuple[str, str, bool], Path], name: str, kind: str
) -> None:
    report = dciodvfy(converted[(name, kind, False)])
    assert report.errors == [], report.output


def _source(converted: dict[tuple[str, str, bool], Path], name: str) -> Path:
    return converted[("__src__", "", True)] / CASES[name].filename


def _expected_pixels(path: Path, case: corpus.Case) -> np.ndarray:
    """What the stored pixels must be, decoded by Pillow (the converter's decoder)."""
    im = Image.open(path)
    im.load()
    im = ImageOps.exif_transpose(im)  # no-op without an EXIF Orientation
    if im.mode in ("RGBA", "P", "CMYK"):
        im = im.convert("RGB")
    elif im.mode in ("1", "LA"):
        im = im.convert("L")
    return np.asarray(im)


def _dcmtk_png(dcm: Path, bits: int) -> np.ndarray:
    png = dcm.with_suffix(".dcmtk.png")
    subprocess.run(
        [tool("dcmj2pnm"), "+on2" if bits == 16 else "+on", str(dcm), str(png)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return np.asarray(Image.open(png))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.dcmtk
@pytest.mark.parametrize("name", list(CASES))
def test_secondary_capture_pixels(converted: dict[tuple[str, str, bool], Path], name: str) -> None:
    case = CASES[name]
    src = _source(converted, name)
    data = src.read_bytes()
    dcm = converted[(name, "sc", True)]
    ds = pydicom.dcmread(dcm)
    assert ds.file_meta.ImplementationClassUID == cv.IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.ImplementationVersionName == cv.IMPLEMENTATION_VERSION_NAME
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.PhotometricInterpretation == case.photometric
    assert ds.SamplesPerPixel == case.samples
    assert ds.BitsAllocated == case.bits and ds.BitsStored == case.bits
    assert ds.HighBit == case.bits - 1 and ds.PixelRepresentation == 0
    if case.path == "passthrough":
        info = parse_jpeg(data)
        want_ts = "1.2.840.10008.1.2.4.51" if info.sof == 0xC1 else "1.2.840.10008.1.2.4.50"
        assert ds.file_meta.TransferSyntaxUID == want_ts
        assert (ds.Rows, ds.Columns) == (info.rows, info.columns)
        frames = list(generate_frames(ds.PixelData, number_of_frames=1))
        assert len(frames) == 1
        frame = frames[0]
        stripped = strip_segments(data, info)
        assert (
            frame.rstrip(b"\x00") == stripped.rstrip(b"\x00") or frame[: len(stripped)] == stripped
        )
        # Tables, frame header and entropy-coded data are byte-identical to the source.
        assert coded_image(frame, parse_jpeg(frame)) == coded_image(data, info)
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        # Tiny images can "compress" to more than their raw size (headers, tables).
        assert float(ds.LossyImageCompressionRatio) > (5 if case.name == "large" else 0)
        # Decoders differ by +-1 on the same stream (IJG vs libjpeg-turbo): compare loosely.
        want = np.asarray(Image.open(src).convert("RGB" if case.samples == 3 else "L"))
        got = ds.pixel_array
        assert got.shape == want.shape
        assert _psnr(got, want) > 40
        assert _psnr(_dcmtk_png(dcm, 8), want) > 40
        return
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    want = _expected_pixels(src, case)
    got = ds.pixel_array
    assert got.dtype == want.dtype or got.dtype.itemsize == want.dtype.itemsize
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_dcmtk_png(dcm, case.bits), want)
    if case.path == "decoded-lossy":
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    else:
        assert ds.LossyImageCompression == "00"
        assert "LossyImageCompressionMethod" not in ds


def test_orientation_is_applied(converted: dict[tuple[str, str, bool], Path]) -> None:
    ds = pydicom.dcmread(converted[("exif-orientation-6", "sc", True)])
    assert (ds.Rows, ds.Columns) == (40, 24)  # 40x24 landscape stored, turned upright
    vlp = pydicom.dcmread(converted[("exif-orientation-6", "vlp", True)])
    assert list(vlp.ImageType) == ["DERIVED", "PRIMARY"]


def test_rgb_jpeg_in_vlp_is_decoded(converted: dict[tuple[str, str, bool], Path]) -> None:
    for name in ("rgb-adobe-transform-0", "rgb-component-ids"):
        ds = pydicom.dcmread(converted[(name, "vlp", True)])
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.PhotometricInterpretation == "RGB"
        assert ds.LossyImageCompression == "01"
        want = _expected_pixels(_source(converted, name), CASES[name])
        np.testing.assert_array_equal(ds.pixel_array, want)


def test_vlp_attributes(converted: dict[tuple[str, str, bool], Path]) -> None:
    ds = pydicom.dcmread(converted[("baseline-420-exif", "vlp", True)])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert ds.Modality == "XC"
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.Manufacturer == "TestCam" and ds.ManufacturerModelName == "Model X"
    assert ds.AcquisitionDateTime == "20230405060708"
    assert (ds.ContentDate, ds.ContentTime) == ("20230405", "060708")
    assert ds.StudyDate == "20240102"  # supplied with -k: EXIF does not replace it
    assert "AcquisitionContextSequence" in ds


def test_exif_date_fills_study_date(converted: dict[tuple[str, str, bool], Path]) -> None:
    ds = pydicom.dcmread(converted[("baseline-420-exif", "sc", False)])
    assert (ds.StudyDate, ds.StudyTime) == ("20230405", "060708")


def test_icc_profile_is_kept(converted: dict[tuple[str, str, bool], Path]) -> None:
    ds = pydicom.dcmread(converted[("icc", "sc", True)])
    assert ds.ICCProfile.rstrip(b"\x00") == corpus.srgb_icc().rstrip(b"\x00")


def test_multiframe_sc_classes(converted: dict[tuple[str, str, bool], Path]) -> None:
    uids = {
        "baseline-420-exif": "1.2.840.10008.5.1.4.1.1.7.4",
        "baseline-grey": "1.2.840.10008.5.1.4.1.1.7.2",
        "png-16bit": "1.2.840.10008.5.1.4.1.1.7.3",
    }
    for name, uid in uids.items():
        ds = pydicom.dcmread(converted[(name, "nsc", True)])
        assert ds.SOPClassUID == uid and ds.NumberOfFrames == 1


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.note])
def test_notes(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    src = corpus.write(tmp_path, case.filename, case.make())
    series = cv.SeriesContext.for_group("notes", "2.25")
    result = cv.convert_file(src, tmp_path / "out.dcm", cv.ConvertOptions(fsync=False), series, 1)
    assert any(case.note in note for note in result.notes), result.notes


def test_keep_appn_keeps_the_file_bytes(tmp_path: Path) -> None:
    case = CASES["baseline-420-exif"]
    data = case.make()
    src = corpus.write(tmp_path, case.filename, data)
    series = cv.SeriesContext.for_group("k", "2.25")
    options = cv.ConvertOptions(keep_appn=True, fsync=False)
    cv.convert_file(src, tmp_path / "keep.dcm", options, series, 1)
    ds = pydicom.dcmread(tmp_path / "keep.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame[: len(data)] == data and set(frame[len(data) :]) <= {0}
    # Default: EXIF (APP1) removed, everything else the same.
    cv.convert_file(src, tmp_path / "strip.dcm", cv.ConvertOptions(fsync=False), series, 1)
    stripped = next(
        generate_frames(pydicom.dcmread(tmp_path / "strip.dcm").PixelData, number_of_frames=1)
    )
    assert b"Exif\x00\x00" in data and b"Exif\x00\x00" not in stripped
    assert b"TestCam" not in stripped


@pytest.mark.dcmtk
def test_compare_with_img2dcm(tmp_path: Path) -> None:
    """img2dcm labels an RGB-coded JPEG YBR_FULL_422; we label it RGB (PS3.5 8.2.1)."""
    data = CASES["rgb-adobe-transform-0"].make()
    src = corpus.write(tmp_path, "rgb.jpg", data)
    theirs = tmp_path / "img2dcm.dcm"
    subprocess.run([tool("img2dcm"), str(src), str(theirs)], check=True, capture_output=True)
    ours = tmp_path / "ours.dcm"
    series = cv.SeriesContext.for_group("cmp", "2.25")
    cv.convert_file(src, ours, cv.ConvertOptions(fsync=False), series, 1)
    t, o = pydicom.dcmread(theirs), pydicom.dcmread(ours)
    assert t.PhotometricInterpretation == "YBR_FULL_422"
    assert o.PhotometricInterpretation == "RGB"
    # Same coded image in both: only the label differs, and ours decodes to the source.
    t_frame = next(generate_frames(t.PixelData, number_of_frames=1))
    o_frame = next(generate_frames(o.PixelData, number_of_frames=1))
    assert coded_image(t_frame, parse_jpeg(t_frame)) == coded_image(o_frame, parse_jpeg(o_frame))
    want = np.asarray(Image.open(io.BytesIO(data)))
    assert _psnr(o.pixel_array, want) > 40


@pytest.mark.dcmtk
@pytest.mark.dciodvfy
def test_twelve_bit_extended_jpeg_made_by_dcmcjpeg(tmp_path: Path) -> None:
    """A 12-bit SOF1 stream (from DCMTK's encoder) passes through as .4.51, 16/12 bits."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    native = Dataset()
    native.file_meta = FileMetaDataset()
    native.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    native.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    native.SOPInstanceUID = generate_uid()
    y, x = np.mgrid[0:24, 0:40]
    pixels = ((x * 97 + y * 53) % 4096).astype("<u2")
    native.Rows, native.Columns = pixels.shape
    native.SamplesPerPixel, native.PhotometricInterpretation = 1, "MONOCHROME2"
    native.BitsAllocated, native.BitsStored, native.HighBit = 16, 12, 11
    native.PixelRepresentation = 0
    native.PixelData = pixels.tobytes()
    native.save_as(tmp_path / "native.dcm", enforce_file_format=True)
    theirs = tmp_path / "dcmtk-12bit.dcm"
    subprocess.run(
        [tool("dcmcjpeg"), "+ee", str(tmp_path / "native.dcm"), str(theirs)],
        check=True,
        capture_output=True,
    )
    frame = next(generate_frames(pydicom.dcmread(theirs).PixelData, number_of_frames=1))
    stream = frame[: frame.rindex(b"\xff\xd9") + 2]
    src = corpus.write(tmp_path, "x12.jpg", stream)
    ours = tmp_path / "ours.dcm"
    options = cv.ConvertOptions(keys=FULL_KEYS, fsync=False)
    cv.convert_file(src, ours, options, cv.SeriesContext.for_group("12", "2.25"), 1)
    ds = pydicom.dcmread(ours)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    ours_frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert ours_frame[: len(stream)] == stream
    report = dciodvfy(ours)
    assert report.errors == [] and report.warnings == [], report.output
    # Same bytes, same decoder: DCMTK renders our object exactly as its own.
    np.testing.assert_array_equal(_dcmtk_png(ours, 16), _dcmtk_png(theirs, 16))
    assert np.abs(ds.pixel_array.astype(int) - pixels).max() < 64  # lossy, but close
    with pytest.raises(cv.UnsupportedInput, match="--sop-class sc"):
        cv.convert_file(
            src,
            tmp_path / "v.dcm",
            cv.ConvertOptions(sop_class="vlp"),
            cv.SeriesContext.for_group("v", "2.25"),
            1,
        )


def test_cmyk_is_logged_as_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    src = corpus.write(tmp_path, "cmyk.jpg", CASES["cmyk"].make())
    series = cv.SeriesContext.for_group("w", "2.25")
    with caplog.at_level(logging.INFO, logger="node.ingest"):
        cv.convert_file(src, tmp_path / "o.dcm", cv.ConvertOptions(fsync=False), series, 1)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("CMYK converted to RGB" in r.getMessage() for r in warned)
    assert pydicom.dcmread(tmp_path / "o.dcm").PhotometricInterpretation == "RGB"


def _multipage_tiff(sizes: list[tuple[int, int]]) -> bytes:
    pages = [corpus.rgb(w, h, seed) for seed, (w, h) in enumerate(sizes)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


@pytest.mark.dcmtk
@pytest.mark.dciodvfy
def test_multipage_tiff_becomes_one_multiframe_object(tmp_path: Path) -> None:
    data = _multipage_tiff([(20, 12)] * 3)
    src = corpus.write(tmp_path, "document.tif", data)
    series = cv.SeriesContext.for_group("mf", "2.25")
    out = tmp_path / "mf.dcm"
    options = cv.ConvertOptions(sop_class="nsc", conversion_type="SD", keys=FULL_KEYS)
    result = cv.convert_file(src, out, options, series, 1)
    assert "3 pages written as 3 frames" in result.notes
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4" and ds.NumberOfFrames == 3
    assert ds.FrameIncrementPointer == 0x00182001 and ds.PageNumberVector == [1, 2, 3]
    assert ds.BurnedInAnnotation == "YES"
    report = dciodvfy(out)
    assert report.errors == [] and report.warnings == [], report.output
    with Image.open(src) as im:
        pages = []
        for i in range(3):
            im.seek(i)
            pages.append(np.asarray(im.convert("RGB")))
    np.testing.assert_array_equal(ds.pixel_array, np.stack(pages))
    subprocess.run(
        [tool("dcmj2pnm"), "+on", "+Fa", str(out), str(tmp_path / "frame")],
        check=True,
        capture_output=True,
    )
    rendered = sorted(tmp_path.glob("frame*.png"))
    assert len(rendered) == 3
    for png, page in zip(rendered, pages, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), page)
    # Single-frame classes refuse it, and pages must match.
    with pytest.raises(cv.UnsupportedInput, match="--sop-class nsc"):
        cv.convert_file(src, tmp_path / "sc.dcm", cv.ConvertOptions(), series, 2)
    mixed = corpus.write(tmp_path, "mixed.tif", _multipage_tiff([(20, 12), (10, 12)]))
    with pytest.raises(cv.UnsupportedInput, match="page 2 is 10x12"):
        cv.convert_file(mixed, tmp_path / "mixed.dcm", options, series, 3)
    assert not (tmp_path / "sc.dcm").exists() and not (tmp_path / "mixed.dcm").exists()
