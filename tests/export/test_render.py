"""Rendering semantics, PNG output, hostile input and the ``render`` command."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from node.cli import main
from node.config import ExportSection
from node.errors import BadPixelData, ExportError
from node.export import decode, display, png, voi
from node.export.exporter import Exporter, RenderOptions
from tests.export import data
from tests.export.test_dcmtk import TEST_FILES


def exporter(tmp: Path, **kw: object) -> Exporter:
    cfg = dataclasses.replace(ExportSection(), dir=tmp / "out", **kw)  # type: ignore[arg-type]
    return Exporter(cfg, fsync=False)


def outputs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.jsonl")


def render_one(path: Path, choice: display.VoiChoice = display.VoiChoice(), bits: int = 8):
    ds = decode.read(path)
    info = decode.pixel_info(ds, path, 10**9)
    return display.render(ds, info, list(decode.frames(ds, path, info)), path, choice, bits)


def test_monochrome1_is_inverted_relative_to_monochrome2(tmp_path: Path) -> None:
    m1 = render_one(data.cr(tmp_path / "m1.dcm", "MONOCHROME1"))[0].pixels.astype(int)
    m2 = render_one(data.cr(tmp_path / "m2.dcm", "MONOCHROME2"))[0].pixels.astype(int)
    assert np.abs(m1 + m2 - 255).max() <= 1  # same data, opposite polarity
    assert m1.std() > 50


def test_ct_default_uses_first_window_on_hounsfield_units(tmp_path: Path) -> None:
    frame = render_one(data.ct(tmp_path / "ct.dcm"))[0]
    assert frame.voi.startswith("window C=40 W=400")
    ds = pydicom.dcmread(tmp_path / "ct.dcm")
    hu = ds.pixel_array.astype(int) - 1024
    assert (frame.pixels[hu <= -160] == 0).all() and (frame.pixels[hu >= 240] == 255).all()


def test_16_bit_output_keeps_full_voi_precision(tmp_path: Path) -> None:
    path = data.ct(tmp_path / "ct.dcm")
    p8 = render_one(path, bits=8)[0].pixels
    p16 = render_one(path, bits=16)[0].pixels
    assert p16.dtype == np.uint16
    inside = (p8 > 0) & (p8 < 255)
    # every HU inside the 400-wide window keeps its own level: ~400 levels, not 256
    assert len(np.unique(p16[inside])) > 300 > len(np.unique(p8[inside]))
    assert np.abs((p16 >> 8).astype(int) - p8.astype(int)).max() <= 1
    blob = png.encode(p16, {})
    back = np.asarray(Image.open(__import__("io").BytesIO(blob)))
    assert np.array_equal(back.astype(np.uint16), p16)


def test_linear_exact_and_sigmoid_follow_ps33(tmp_path: Path) -> None:
    v = np.array([-200.0, -160.0, 40.0, 239.0, 240.0, 400.0])
    exact = voi._window(v, 40, 400, "LINEAR_EXACT", 0, 255)
    assert list(exact) == [0, 0, 127.5, pytest.approx(254.3625), 255, 255]
    sig = voi._window(v, 40, 400, "SIGMOID", 0, 255)
    assert sig[2] == pytest.approx(127.5)
    assert sig[0] == pytest.approx(255 / (1 + np.exp(2.4))) and sig[-1] > 245


def test_linear_exact_window_narrower_than_one_is_valid(tmp_path: Path) -> None:
    """PS3.3 C.11.2.1.3.2 allows LINEAR_EXACT widths > 0 (LINEAR needs >= 1): W=0.5 is a
    threshold at the centre, not an unusable window."""
    exact = data.ct(
        tmp_path / "e.dcm", WindowCenter=40, WindowWidth=0.5, VOILUTFunction="LINEAR_EXACT"
    )
    frame = render_one(exact, display.VoiChoice("window", 0))[0]
    hu = pydicom.dcmread(exact).pixel_array.astype(int) - 1024
    assert frame.voi == "window C=40 W=0.5"
    assert (frame.pixels[hu <= 39] == 0).all() and (frame.pixels[hu >= 41] == 255).all()
    linear = data.ct(tmp_path / "l.dcm", WindowCenter=40, WindowWidth=0.5)
    with pytest.raises(BadPixelData, match=r"VOILUTFunction LINEAR the width must be >= 1"):
        render_one(linear, display.VoiChoice("window", 0))


def test_enhanced_minmax_is_one_window_over_all_frames_own_rescales(tmp_path: Path) -> None:
    """Min-max over an enhanced object spans every frame's modality values, each frame
    through its own per-frame rescale (one window for the cine, as for classic objects)."""
    path = data.enhanced_ct(tmp_path / "e.dcm")
    rendered = render_one(path, display.VoiChoice("minmax"))
    stored = pydicom.dcmread(path).pixel_array.astype(int)
    hu = [stored[f] + intercept for f, (intercept, _, _) in enumerate(data.ENHANCED_FRAMES)]
    lo, hi = min(int(h.min()) for h in hu), max(int(h.max()) for h in hu)
    labels = {r.voi for r in rendered}
    assert labels == {f"min-max C={(lo + hi + 1) / 2:g} W={hi - lo + 1}"}


def test_voi_lut_entries_beyond_their_bits_saturate_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 12-bit VOI LUT holding 8190: dcmj2pnm keeps the low 12 bits (4096 -> black); we
    saturate (4096 -> white) and say so, naming the elements."""
    ds = pydicom.dcmread(data.voi_lut(tmp_path / "src.dcm"))
    item = ds.VOILUTSequence[0]
    item.LUTDescriptor = [2048, 0, 12]
    item.LUTData = [min(8191, i * 4) for i in range(2048)]
    path = data.write(ds, tmp_path / "over.dcm")
    with caplog.at_level("WARNING"):
        frame = render_one(path, display.VoiChoice("lut", 0))[0]
    stored = ds.pixel_array
    assert (frame.pixels[stored >= 1024] == 255).all()
    assert "(0028,3006) LUTData holds 8188, more than the 12 bits" in caplog.text


def test_multiframe_one_png_per_frame_or_the_chosen_one(tmp_path: Path) -> None:
    path = data.us_multiframe(tmp_path / "us.dcm", frames=3)
    ex = exporter(tmp_path)
    written = ex.export_instance(path)
    assert [p.name[-9:] for p in written] == ["f0001.png", "f0002.png", "f0003.png"]
    ds = pydicom.dcmread(path)
    for i, p in enumerate(written):
        assert np.array_equal(np.asarray(Image.open(p)), ds.pixel_array[i])
    one = Exporter(
        dataclasses.replace(ex.cfg, dir=tmp_path / "one"), RenderOptions(frame=1), fsync=False
    )
    (only,) = one.export_instance(path)
    assert only.name.endswith("-f0002.png")


def test_colour_cine_over_the_cap_is_exported_a_batch_of_frames_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A colour multi-frame object (an ultrasound cine) whose frames together exceed
    export.max_pixels is decoded and written in batches."""
    from node.export import exporter as exporter_module

    path = data.us_multiframe(tmp_path / "us.dcm", frames=12)  # 12 x 30 x 40 x 3 = 43,200
    monkeypatch.setattr(exporter_module, "_BATCH_SAMPLES", 3 * 30 * 40 * 3)  # 3 frames a batch
    decoded: list[list[int]] = []
    real_frames = decode.frames

    def spy(ds: object, p: Path, info: object, indices: list[int] | None = None):  # type: ignore[no-untyped-def]
        decoded.append(list(indices or []))
        return real_frames(ds, p, info, indices)  # type: ignore[arg-type]

    monkeypatch.setattr(decode, "frames", spy)
    ex = exporter(tmp_path, max_pixels=30 * 40 * 3)  # one frame fits, the object does not
    written = ex.export_instance(path)
    assert decoded == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    ds = pydicom.dcmread(path)
    assert [p.name[-9:] for p in written] == [f"f{i:04d}.png" for i in range(1, 13)]
    for i, p in enumerate(written):
        assert np.array_equal(np.asarray(Image.open(p)), ds.pixel_array[i])
    assert [e["frame"] for e in ex.manifest.entries()] == list(range(1, 13))


def _decoded_frames(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The indices of the frames decode.frames yields from now on, in order."""
    decoded: list[int] = []
    real_frames = decode.frames

    def spy(ds: object, p: Path, info: object, indices: list[int] | None = None):  # type: ignore[no-untyped-def]
        for index, arr in real_frames(ds, p, info, indices):  # type: ignore[arg-type]
            decoded.append(index)
            yield index, arr

    monkeypatch.setattr(decode, "frames", spy)
    return decoded


@pytest.mark.dcmtk
def test_grayscale_multiframe_over_the_cap_is_exported_in_batches_with_one_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grayscale multi-frame object over export.max_pixels (a breast tomosynthesis) goes
    a batch of frames at a time, and its min-max window still spans all frames: the PNGs are
    those of the object decoded whole, and dcmj2pnm's +Wm over all frames (+Fa). Each frame
    here has its own range, so a window per batch would differ."""
    import subprocess

    from node.export import exporter as exporter_module
    from tests.peers import tool

    rng = np.random.default_rng(21)
    ramps = [rng.integers(100 * i, 100 * i + 60, (24, 28)) for i in range(12)]
    pix = np.stack(ramps).astype(np.uint16)
    path = data.write(data.dataset(pix, modality="MG", bits_stored=12), tmp_path / "dbt.dcm")
    whole = exporter(tmp_path / "whole").export_instance(path)
    monkeypatch.setattr(exporter_module, "_BATCH_SAMPLES", 5 * 24 * 28)  # 5 frames a batch
    decoded = _decoded_frames(monkeypatch)
    ex = exporter(tmp_path / "batched", max_pixels=24 * 28)  # one frame fits, 12 do not
    batched = ex.export_instance(path)
    assert decoded == [*range(12), *range(12)]  # the range pass, then the batches
    assert [p.name for p in batched] == [p.name for p in whole]
    ref = tmp_path / "ref.png"  # dcmj2pnm writes ref.png.0.png, ref.png.1.png ...
    subprocess.run(
        [tool("dcmj2pnm"), "+Wm", "+Fa", "+on", "-il", str(path), str(ref)], check=True, timeout=60
    )
    for i, (a, b) in enumerate(zip(whole, batched, strict=True)):
        ours = np.asarray(Image.open(b))
        assert np.array_equal(np.asarray(Image.open(a)), ours)
        dcmtk = np.asarray(Image.open(f"{ref}.{i}.png"))
        assert np.array_equal(ours, dcmtk), f"frame {i + 1}"
    assert Image.open(batched[0]).text["Window"].startswith("min-max")
    assert np.asarray(Image.open(batched[0])).max() < 40  # frame 1 sits low in the range


@pytest.mark.parametrize(
    ("max_pixels", "window", "passes"),
    [
        (12 * 24 * 28, {}, [*range(12)]),  # fits the cap: decoded whole, once
        (24 * 28, {"WindowCenter": 600, "WindowWidth": 1200}, [*range(12)]),  # no min-max
    ],
)
def test_grayscale_multiframe_is_decoded_once_when_no_range_pass_is_needed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    max_pixels: int,
    window: dict,
    passes: list[int],
) -> None:
    """Batching made every grayscale object over 16 Mi samples (a 512 x 512 x 100 cine) be
    decoded twice, range pass then batches, though it fitted export.max_pixels whole; and
    the range pass ran before anyone asked whether a window was min-max."""
    from node.export import exporter as exporter_module

    rng = np.random.default_rng(22)
    pix = rng.integers(0, 1200, (12, 24, 28)).astype(np.uint16)
    ds = data.dataset(pix, modality="MG", bits_stored=12, **window)
    path = data.write(ds, tmp_path / "mf.dcm")
    whole = exporter(tmp_path / "whole").export_instance(path)
    monkeypatch.setattr(exporter_module, "_BATCH_SAMPLES", 5 * 24 * 28)  # 5 frames a batch
    decoded = _decoded_frames(monkeypatch)
    out = exporter(tmp_path / "out", max_pixels=max_pixels).export_instance(path)
    assert decoded == passes
    for a, b in zip(whole, out, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_a_cine_failing_in_a_later_batch_leaves_no_png_and_no_manifest_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.export import exporter as exporter_module

    path = data.us_multiframe(tmp_path / "us.dcm", frames=6)
    monkeypatch.setattr(exporter_module, "_BATCH_SAMPLES", 2 * 30 * 40 * 3)
    real_frames = decode.frames

    def failing(ds: object, p: Path, info: object, indices: list[int] | None = None):  # type: ignore[no-untyped-def]
        if indices and 4 in indices:
            raise BadPixelData(f"{p}: frame 5 is damaged")
        return real_frames(ds, p, info, indices)  # type: ignore[arg-type]

    monkeypatch.setattr(decode, "frames", failing)
    ex = exporter(tmp_path)
    with pytest.raises(BadPixelData, match="frame 5"):
        ex.export_instance(path)
    assert outputs(ex.root) == [] and ex.manifest.entries() == []


def test_png_chunks_are_whitelisted_and_manifest_records_each_file(tmp_path: Path) -> None:
    path = data.ct(tmp_path / "ct.dcm")
    ex = exporter(tmp_path)
    (out,) = ex.export_instance(path)
    image = Image.open(out)
    assert set(image.text) == {"Modality", "StudyDate", "SeriesDescription", "Window", "Software"}
    assert image.text["Window"] == "window C=40 W=400"
    assert image.text["StudyDate"] == "2024-01-02" and image.text["Modality"] == "CT"
    raw = out.read_bytes()
    for secret in data.PATIENT.values():
        assert secret.encode() not in raw
    ds = pydicom.dcmread(path)
    assert out.relative_to(ex.root).parts[:2] == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    (entry,) = ex.manifest.entries()
    assert entry["sop_instance_uid"] == ds.SOPInstanceUID
    assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
    assert entry["output"] == str(out) and entry["voi"] == "window C=40 W=400"


def test_png_text_beyond_latin_1_is_kept_as_utf_8(tmp_path: Path) -> None:
    """A Greek or Japanese Series Description (ISO_IR 192, ISO 2022 IR 87) became '????'
    in the Latin-1 tEXt chunk; it now goes into an iTXt chunk (UTF-8), Latin-1 stays tEXt."""
    for charset, description in (
        ("ISO_IR 192", "Ελληνικά Русский"),
        (["", "ISO 2022 IR 87"], "頭部 単純"),
        ("ISO_IR 100", "Schädel"),
    ):
        path = data.ct(tmp_path / "in" / "ct.dcm", SpecificCharacterSet=charset)
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        data.write(ds, path)
        (out,) = exporter(tmp_path / str(len(description))).export_instance(path)
        image = Image.open(out)
        assert image.text["SeriesDescription"] == description
        raw = out.read_bytes()
        assert (b"iTXtSeriesDescription" in raw) == (charset != "ISO_IR 100"), charset
        assert raw.count(b"tEXt") + raw.count(b"iTXt") == 5


def test_encapsulated_pdf_is_extracted_unchanged(tmp_path: Path) -> None:
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(tmp_path / "doc.pdf"))
    c.drawString(72, 720, "report body")
    c.save()
    pdf = (tmp_path / "doc.pdf").read_bytes() + b"\n"
    if len(pdf) % 2 == 0:
        pdf += b"%"  # an odd length, so the DICOM pad byte must be stripped
    path = data.encapsulated_pdf(tmp_path / "pdf.dcm", pdf)
    (out,) = exporter(tmp_path).export_instance(path)
    assert out.suffix == ".pdf" and out.read_bytes() == pdf


# ------------------------------------------------------------------ hostile and odd input


def _bad(tmp: Path, name: str, **changes: object) -> Path:
    ds = pydicom.dcmread(data.ct(tmp / f"{name}-src.dcm"))
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return data.write(ds, tmp / f"{name}.dcm")


@pytest.mark.parametrize(
    ("case", "changes", "element"),
    [
        ("truncated", {"Rows": 200}, r"\(7FE0,0010\) PixelData holds \d+ bytes"),
        ("frames", {"NumberOfFrames": 5}, r"\(0028,0008\) NumberOfFrames 5"),
        ("no-pixels", {"PixelData": None}, r"\(7FE0,0010\) PixelData is missing"),
        ("cap", {"Rows": 60000, "Columns": 60000}, r"exceeds export.max_pixels"),
        ("no-rows", {"Rows": None}, r"\(0028,0010\) Rows is missing"),
        ("bits", {"BitsAllocated": 12}, r"\(0028,0100\) BitsAllocated 12"),
        ("photometric", {"PhotometricInterpretation": "CMYK"}, r"\(0028,0004\)"),
        ("samples", {"SamplesPerPixel": 3}, r"MONOCHROME2 with \(0028,0002\) SamplesPerPixel 3"),
        # dcmj2pnm: "invalid combination of values for BitsAllocated, BitsStored and HighBit"
        ("high-bit-low", {"HighBit": 3}, r"\(0028,0102\) HighBit 3 does not fit"),
        ("high-bit-high", {"HighBit": 16}, r"\(0028,0102\) HighBit 16 does not fit"),
    ],
)
def test_hostile_input_is_refused_by_element_without_output(
    tmp_path: Path, case: str, changes: dict[str, object], element: str
) -> None:
    path = _bad(tmp_path, case, **changes)
    ex = exporter(tmp_path, max_pixels=50_000_000)
    with pytest.raises(ExportError, match=element) as info:
        ex.export_instance(path)
    assert str(path) in str(info.value)
    assert outputs(ex.root) == [] and ex.manifest.entries() == []


def test_palette_index_beyond_lut_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(TEST_FILES / "examples_palette.dcm")
    desc = list(ds.RedPaletteColorLookupTableDescriptor)
    ds.RedPaletteColorLookupTableDescriptor = [16, desc[1], desc[2]]
    path = data.write(ds, tmp_path / "pal.dcm")
    with pytest.raises(BadPixelData, match=r"\(0028,1101\) RedPaletteColorLookupTableDescriptor"):
        exporter(tmp_path).export_instance(path)


def test_undecodable_transfer_syntax_names_it(tmp_path: Path) -> None:
    ds = pydicom.dcmread(TEST_FILES / "JPEG-lossy.dcm")
    path = data.write(ds, tmp_path / "lossy.dcm")
    with pytest.raises(ExportError, match=r"JPEG Extended"):
        exporter(tmp_path).export_instance(path)
    ds = pydicom.dcmread(TEST_FILES / "JPEG2000.dcm")
    for uid, found in (
        ("1.2.840.10008.1.2.4.100", r"MPEG2 .*cannot be decoded here"),
        ("1.2.3.4.5", r"\(0002,0010\) TransferSyntaxUID 1.2.3.4.5 is not a transfer syntax"),
    ):
        ds.file_meta.TransferSyntaxUID = uid
        path = data.write(ds, tmp_path / f"{uid}.dcm")
        with pytest.raises(ExportError, match=found):
            exporter(tmp_path).export_instance(path)
    assert outputs(tmp_path / "out") == []


def test_palette_colour_and_jpeg2000_render(tmp_path: Path) -> None:
    pal = render_one(TEST_FILES / "examples_palette.dcm")[0].pixels
    assert pal.shape[-1] == 3 and pal.dtype == np.uint8
    assert len(np.unique(pal.reshape(-1, 3), axis=0)) > 10  # colour, not grey
    segmented = TEST_FILES / "MR_small_jp2klossless.dcm"
    assert render_one(segmented)[0].pixels.shape == (64, 64)


# ------------------------------------------------------------------ the command


def test_render_command_batch_continues_and_exits_nonzero(tmp_path: Path) -> None:
    good = [data.ct(tmp_path / "in" / f"ct{i}.dcm", InstanceNumber=i + 1) for i in range(4)]
    bad = _bad(tmp_path / "bad", "broken", Rows=300)
    out = tmp_path / "out"
    argv = ["render", str(tmp_path / "in"), str(bad), "-o", str(out), "-j", "2"]
    rc = main([*argv, "--window", "0", "80"])
    assert rc == 1
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == len(good)
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 4 and {e["voi"] for e in entries} == {"window C=0 W=80 (user)"}
    assert str(bad) not in {e["source"] for e in entries}
    assert not list(out.rglob(".tmp-*"))


def test_render_command_default_voi_and_16_bits(tmp_path: Path) -> None:
    path = data.voi_lut(tmp_path / "voi.dcm")
    rc = main(["render", str(path), "-o", str(tmp_path / "o"), "--bits", "16"])
    assert rc == 0
    (out,) = list((tmp_path / "o").rglob("*.png"))
    image = Image.open(out)
    assert image.text["Window"] == "VOI LUT 1 GAMMA" and image.mode.startswith("I")


def test_non_image_objects_are_skipped_not_failed(tmp_path: Path) -> None:
    ex = exporter(tmp_path)
    assert ex.export_instance(TEST_FILES / "test-SR.dcm") == []
    assert outputs(ex.root) == []


def test_frame_out_of_range_names_number_of_frames(tmp_path: Path) -> None:
    path = data.us_multiframe(tmp_path / "us.dcm", frames=2)
    rc = main(["render", str(path), "-o", str(tmp_path / "o"), "--frames", "3"])
    assert rc == 1 and not list((tmp_path / "o").rglob("*.png"))
    ex = Exporter(dataclasses.replace(ExportSection(), dir=tmp_path / "x"), RenderOptions(frame=2))
    with pytest.raises(ExportError, match=r"frame 3 requested but \(0028,0008\) NumberOfFrames"):
        ex.export_instance(path)


def test_export_study_makes_one_pdf_per_series_from_the_archive_layout(tmp_path: Path) -> None:
    archive = tmp_path / "archive" / data.STUDY_UID
    for series in ("2", "5"):
        uid = f"{data.STUDY_UID}.{series}"
        for i in range(2):
            ds = pydicom.dcmread(data.ct(tmp_path / f"s{series}-{i}.dcm", InstanceNumber=i + 1))
            ds.SeriesInstanceUID, ds.SeriesNumber = uid, int(series)
            data.write(ds, archive / uid / f"{ds.SOPInstanceUID}.dcm")
    (archive / f"{data.STUDY_UID}.2" / ".tmp-partial").write_bytes(b"half")
    ex = exporter(tmp_path)
    written = ex.export_study(archive)
    assert sorted(p.name for p in written) == [f"{data.STUDY_UID}.2.pdf", f"{data.STUDY_UID}.5.pdf"]
    assert all(p.parent == ex.root / data.STUDY_UID for p in written)
    kinds = [e["kind"] for e in ex.manifest.entries()]
    assert kinds == ["pdf", "pdf"] and ex.failures == 0
    assert exporter(tmp_path, pdf="none").export_study(archive) == []


def test_segmented_palette_expands_to_colour(tmp_path: Path) -> None:
    """DCMTK 3.6.7 ignores segmented palettes, so the expected ramps are checked directly."""
    path = data.segmented_palette(tmp_path / "seg.dcm")
    index = pydicom.dcmread(path).pixel_array.astype(int)
    rgb = render_one(path)[0].pixels.astype(int)
    assert np.array_equal(rgb[..., 0], index)  # linear 0..65535, shifted to 8 bits
    assert np.array_equal(rgb[..., 1], 255 - index)
    blue = rgb[..., 2]
    assert blue[index == 0].max() == 0 and blue[index == 127].min() == 255
    assert (blue[index == 255] == 0).all()


def test_bare_data_set_without_file_meta_renders(tmp_path: Path) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(data.ct(tmp_path / "ct.dcm"))
    del ds.file_meta
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(fp.getvalue())  # no preamble, no file meta: a bare data set
    frame = render_one(bare)[0]
    assert np.array_equal(frame.pixels, render_one(tmp_path / "ct.dcm")[0].pixels)
    with pytest.raises(ExportError, match="not a DICOM file"):
        decode.read(Path(__file__))


def test_damaged_files_fail_cleanly(tmp_path: Path) -> None:
    """Truncated, bit-flipped and zeroed copies of the bundled files: each either exports or
    raises ExportError; nothing else escapes, and a failure writes nothing."""
    import random

    rng = random.Random(20240102)
    sources = [p for p in sorted(TEST_FILES.glob("*.dcm")) if p.stat().st_size < 300_000]
    ex = exporter(tmp_path, max_pixels=20_000_000)
    for n in range(150):
        raw = bytearray(rng.choice(sources).read_bytes())
        where = rng.randrange(len(raw))
        if n % 3 == 0:
            raw = raw[:where]
        elif n % 3 == 1:
            for _ in range(rng.randint(1, 16)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        else:
            raw[where : where + 64] = bytes(len(raw[where : where + 64]))
        path = tmp_path / "in" / f"damaged{n}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes(raw))
        before = len(outputs(ex.root))
        try:
            ex.export_instance(path)
        except ExportError as exc:
            assert str(path) in str(exc)
            assert len(outputs(ex.root)) == before
    assert not list(ex.root.rglob(".tmp-*"))


def test_export_config_values_are_checked(tmp_path: Path) -> None:
    from node.errors import ConfigError

    with pytest.raises(ConfigError, match="export.png_compress_level"):
        exporter(tmp_path, png_compress_level=12)
    with pytest.raises(ConfigError, match="export.workers"):
        exporter(tmp_path, workers=-1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_jpeg2000_ybr_full_renders_as_its_native_twin(tmp_path: Path, dtype: type) -> None:
    """YBR_FULL components stored as such in JPEG 2000 (no multi-component transform):
    16-bit was refused (pydicom converts YBR only for 8-bit samples), 8-bit came out up to
    2 off (pydicom's arithmetic, not dcmimgle's). Lossless: equal to the native object."""
    from pydicom.uid import JPEG2000Lossless

    top = np.iinfo(dtype).max + 1
    y, x = np.mgrid[0:64, 0:64]
    ybr = np.stack([(x * 900) % top, (y * 800) % top, ((x + y) * 400) % top], -1).astype(dtype)
    native = data.write(
        data.dataset(ybr, photometric="YBR_FULL", modality="OT", sop_class=data.SC),
        tmp_path / "native.dcm",
    )
    ds = pydicom.dcmread(native)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", use_mct=False)
    assert ds.PhotometricInterpretation == "YBR_FULL"
    j2k = data.write(ds, tmp_path / "j2k.dcm")
    assert np.array_equal(render_one(j2k)[0].pixels, render_one(native)[0].pixels)


def test_rescale_intercept_without_slope_is_applied(tmp_path: Path) -> None:
    """Rescale Intercept -1024 without Rescale Slope (invalid: both Type 1C): the slope is
    taken as 1, so the HU window lands where it does with both (DCMTK drops the rescale)."""
    both = data.ct(tmp_path / "both.dcm")
    ds = pydicom.dcmread(both)
    del ds.RescaleSlope
    only = data.write(ds, tmp_path / "intercept-only.dcm")
    assert np.array_equal(render_one(only)[0].pixels, render_one(both)[0].pixels)


def test_segmented_palette_of_more_than_256_8_bit_entries(tmp_path: Path) -> None:
    """1024 8-bit entries in discrete segments of 128, 16-bit indices: pydicom indexed them
    with uint8 (index 958 showed entry 958 % 256). DCMTK has no segmented palettes, so the
    expected colours are the entries themselves. Indirect segments are refused by name."""
    rng = np.random.default_rng(28)
    index = rng.integers(0, 1024, (10, 12)).astype(np.uint16)
    ds = data.dataset(index, photometric="PALETTE COLOR", modality="OT", sop_class=data.SC)
    entries = {}
    for colour in ("Red", "Green", "Blue"):
        entries[colour] = rng.integers(0, 256, 1024).astype(np.uint8)
        segments: list[int] = []
        for k in range(8):  # 8-bit segment lengths stop at 255
            segments += [0, 128, *entries[colour][k * 128 : (k + 1) * 128].tolist()]
        ds.add_new(
            data.pydicom_tag(f"{colour}PaletteColorLookupTableDescriptor"), "US", [1024, 0, 8]
        )
        ds.add_new(
            data.pydicom_tag(f"Segmented{colour}PaletteColorLookupTableData"), "OW", bytes(segments)
        )
    path = data.write(ds, tmp_path / "segmented.dcm")
    expected = np.stack([entries[c][index] for c in ("Red", "Green", "Blue")], axis=-1)
    assert np.array_equal(render_one(path)[0].pixels, expected)
    ds.SegmentedBluePaletteColorLookupTableData = bytes([0, 1, 7, 2, 1, 0, 0, 0, 0] + [0] * 1023)
    indirect = data.write(ds, tmp_path / "indirect.dcm")
    with pytest.raises(
        BadPixelData, match=r"indirect.dcm: \(0028,1221..1223\) .* indirect segments"
    ):
        render_one(indirect)


def test_overlay_origin_of_one_value_is_named_in_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """(6000,0050) Overlay Origin with one value: the overlay was dropped with "'int' object
    is not iterable", naming no element; the image itself still renders."""
    from tests.export.test_dcmtk import _overlay

    ds = pydicom.dcmread(data.ct(tmp_path / "src.dcm"))
    _overlay(ds, np.ones((8, 8), np.uint8), origin=(3,))
    path = data.write(ds, tmp_path / "overlay.dcm")
    with caplog.at_level("WARNING", logger="node.export.overlays"):
        frames = render_one(path)
    assert len(frames) == 1
    assert "(6000,0050) OverlayOrigin is 3; it must be two numbers" in caplog.text


def _raw(ds: pydicom.Dataset, keyword: str | int, vr: str, value: bytes) -> None:
    """Put ``value`` into ``ds`` as written in a file (converted at first access)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(data.pydicom_tag(keyword) if isinstance(keyword, str) else keyword)
    value += b" " * (len(value) % 2)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def test_values_that_fail_on_first_access_are_named(tmp_path: Path) -> None:
    """IS 'inf' (pydicom raises OverflowError when it converts it) in Number of Frames gave
    "malformed element value: cannot convert float infinity to integer" naming no element,
    and in Instance Number refused the whole object; a one-value Red Palette Color LUT
    Descriptor gave "object of type 'int' has no len()"."""
    ex = exporter(tmp_path)
    ds = pydicom.dcmread(data.ct(tmp_path / "ct.dcm"))
    _raw(ds, "NumberOfFrames", "IS", b"inf")
    with pytest.raises(BadPixelData, match=r"\(0028,0008\) NumberOfFrames cannot be read"):
        ex.export_instance(data.write(ds, tmp_path / "frames.dcm"))
    ds = pydicom.dcmread(data.ct(tmp_path / "ct.dcm"))
    _raw(ds, "InstanceNumber", "IS", b"1e400")
    _raw(ds, "SeriesNumber", "IS", b"inf")
    (png_path,) = ex.export_instance(data.write(ds, tmp_path / "number.dcm"))
    assert png_path.name.startswith("00000-")
    assert ex.export_series_pdf([tmp_path / "number.dcm"])
    ds = pydicom.dcmread(data.segmented_palette(tmp_path / "pal.dcm"))
    _raw(ds, "RedPaletteColorLookupTableDescriptor", "US", b"\x00\x01")
    with pytest.raises(BadPixelData, match=r"3-value \(0028,1101\) RedPaletteColorLookup"):
        ex.export_instance(data.write(ds, tmp_path / "pal1.dcm"))


def test_bad_lut_descriptor_and_overlay_values_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-value (0028,3002) LUT Descriptor in a VOI LUT item gave "object of type 'int'
    has no len()"; IS 'inf' in (6000,0015) Number of Frames in Overlay refused the whole
    image with "cannot convert float infinity to integer". Now the LUT is refused by name
    and the overlay alone is left out, named."""
    from tests.export.test_dcmtk import _overlay

    ds = pydicom.dcmread(data.voi_lut(tmp_path / "voi.dcm"))
    _raw(ds.VOILUTSequence[0], "LUTDescriptor", "US", b"\x00\x01")
    with pytest.raises(BadPixelData, match=r"VOILUTSequence item lacks \(0028,3002\)"):
        render_one(data.write(ds, tmp_path / "voi1.dcm"), display.VoiChoice("lut"))
    ds = pydicom.dcmread(data.ct(tmp_path / "src.dcm"))
    _overlay(ds, np.ones((8, 8), np.uint8))
    _raw(ds, 0x60000015, "IS", b"inf")  # Number of Frames in Overlay
    path = data.write(ds, tmp_path / "overlay.dcm")
    with caplog.at_level("WARNING", logger="node.export.overlays"):
        assert len(exporter(tmp_path).export_instance(path)) == 1
    assert "overlay group 6000 not shown: (6000,0015) cannot be read" in caplog.text


def test_a_pydicom_warning_is_logged_once_with_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydicom logs a warning and raises it as a Python warning too (``warn_and_log``), and
    repeats it for every frame decoded: a 3-frame object with 100 bytes of padding after its
    pixels printed the line four times, three of them without the file's name."""
    pix = np.stack([np.full((8, 8), 100 * i, np.uint16) for i in range(3)])
    ds = data.dataset(pix, WindowCenter=100, WindowWidth=400)
    ds.PixelData = ds.PixelData + b"\0" * 100
    src = data.write(ds, tmp_path / "in" / "padded.dcm")
    assert main(["render", str(src), "-o", str(tmp_path / "out"), "--no-fsync"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "excess padding" in line]
    assert len(lines) == 1 and f"node.export.decode: {src}: " in lines[0], lines
