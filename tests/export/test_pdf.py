"""PDF export checked with poppler (pdftoppm, pdftotext, pdfinfo), and de-identification."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from node.cli import main
from node.config import ExportSection, config_from_dict
from node.errors import ConfigError
from node.export import pdf as pdf_mod
from node.export.deid import uid_hash
from node.export.exporter import Exporter
from tests.export import data
from tests.peers import tool


def series(tmp: Path, n: int = 3) -> list[Path]:
    return [data.ct(tmp / "in" / f"ct{i}.dcm", InstanceNumber=n - i) for i in range(n)]


def exporter(tmp: Path, **kw: object) -> Exporter:
    cfg = dataclasses.replace(ExportSection(), dir=tmp / "out", **kw)  # type: ignore[arg-type]
    return Exporter(cfg, fsync=False)


def pdftext(path: Path) -> str:
    res = subprocess.run([tool("pdftotext"), str(path), "-"], capture_output=True, check=True)
    return res.stdout.decode()


def pdfinfo(path: Path) -> str:
    res = subprocess.run([tool("pdfinfo"), str(path)], capture_output=True, check=True)
    return res.stdout.decode("latin-1")


def raster(path: Path, tmp: Path, renderer: str = "pdftocairo") -> list[np.ndarray]:
    """Pages at 72 dpi (1 image pixel = 1 point). pdftocairo maps pixels exactly; pdftoppm's
    Splash rasteriser resamples images even at 1:1, so it is compared with a tolerance."""
    prefix = tmp / renderer
    subprocess.run(
        [tool(renderer), "-r", "72", "-png", str(path), str(prefix)],
        check=True,
        capture_output=True,
    )
    pages = [np.asarray(Image.open(p)) for p in sorted(tmp.glob(f"{renderer}-*.png"))]
    for page in pages:  # poppler may write gray as RGB with equal channels
        assert page.ndim == 2 or (page == page[..., :1]).all()
    return [page if page.ndim == 2 else page[..., 0] for page in pages]


def test_series_pdf_pages_show_the_png_pixels_exactly(tmp_path: Path) -> None:
    files = series(tmp_path)
    ex = exporter(tmp_path)
    pngs = [ex.export_instance(p)[0] for p in files]
    (target,) = ex.export_series_pdf(files)
    assert target.name.endswith(".pdf")
    pages = raster(target, tmp_path)
    assert len(pages) == 3
    by_number = {int(p.name[:5]): np.asarray(Image.open(p)) for p in pngs}
    top, left = int(pdf_mod.MARGIN + pdf_mod.HEADER), int(pdf_mod.MARGIN)
    splash = raster(target, tmp_path, "pdftoppm")
    for number, page, view in zip((1, 2, 3), pages, splash, strict=True):  # InstanceNumber
        expected = by_number[number]
        h, w = expected.shape
        assert np.array_equal(page[top : top + h, left : left + w], expected)
        seen = view[top : top + h, left : left + w].astype(float)
        assert view.shape == page.shape and np.corrcoef(seen.ravel(), expected.ravel())[0, 1] > 0.9
    listing = subprocess.run(
        [tool("pdfimages"), "-list", str(target)], capture_output=True, text=True, check=True
    ).stdout.splitlines()[2:]
    assert [line.split()[3:8] for line in listing] == [["64", "64", "gray", "1", "8"]] * 3
    text = pdftext(target)
    for number in (1, 2, 3):
        assert f"Series 3 AXIAL 5MM - Image {number}" in text
    assert "CT - 2024-01-02 - window C=40 W=400" in text
    assert "CT study 2024-01-02 10:15 HEAD ROUTINE" in text
    for secret in data.PATIENT.values():
        assert secret not in text and secret.encode() not in target.read_bytes()
    info = pdfinfo(target)
    assert "Title:" in info and "AXIAL 5MM" in info


def test_contact_sheet_layout_and_study_scope(tmp_path: Path) -> None:
    files = series(tmp_path, 5)
    ex = exporter(tmp_path, pdf="study", pdf_layout="contact")
    (target,) = ex.export_study(tmp_path / "in")
    assert target.name == "study.pdf"
    pages = raster(target, tmp_path)
    assert len(pages) == 1 and pages[0].shape[1] > pages[0].shape[0]  # landscape sheet
    text = pdftext(target)
    assert all(f"Image {i}" in text for i in range(1, 6))
    assert len(files) == 5


def test_identifiers_only_when_allowed(tmp_path: Path) -> None:
    files = series(tmp_path, 1)
    ex = exporter(tmp_path, allow_patient_identifiers=True)
    (target,) = ex.export_series_pdf(files)
    text = pdftext(target)
    assert "SECRETPERSON^JANE" in text and "PIDSECRET123" in text and "1970-01-01" in text


def test_deidentified_exports_leak_no_patient_data(tmp_path: Path) -> None:
    files = series(tmp_path, 2)
    pdf_doc = data.encapsulated_pdf(tmp_path / "in" / "doc.dcm", b"%PDF-1.4\n%%EOF\n")
    out = tmp_path / "out"
    argv = ["render", str(tmp_path / "in"), "-o", str(out), "--deidentify"]
    assert main([*argv, "-j", "1"]) == 0
    assert main([*argv, "--format", "pdf", "--date-shift", "-10"]) == 0
    produced = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.jsonl"]
    assert len([p for p in produced if p.suffix == ".png"]) == 2
    pdfs = [p for p in produced if p.suffix == ".pdf"]
    assert len(pdfs) == 1  # the series PDF; a document's own text cannot be de-identified
    uids = set()
    for f in [*files, pdf_doc]:
        ds = pydicom.dcmread(f)
        uids |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    secrets = [*data.PATIENT.values(), "19700101", "1970-01-01", "HEAD ROUTINE", "AXIAL 5MM"]
    for path in produced:
        rel = str(path.relative_to(out))
        assert not any(uid in rel for uid in uids), rel
        assert not any(s in rel for s in secrets)
        raw = path.read_bytes()
        assert not any(s.encode() in raw for s in secrets), path
        if path.suffix == ".png":
            text = Image.open(path).text
            assert set(text) <= {"Modality", "StudyDate", "Window", "Software"}
            assert not any(s in v for v in text.values() for s in secrets)
    series_pdf = next(p for p in pdfs if p.parent.name.startswith("st-"))
    text = pdftext(series_pdf) + pdfinfo(series_pdf)
    assert not any(s in text for s in secrets)
    assert "2023-12-23" in text and "2024-01-02" not in text  # shifted by -10 days
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    assert series_pdf.parent.name == f"st-{uid_hash(study)}"


def test_render_pdf_batch_one_pdf_per_series_in_parallel(tmp_path: Path) -> None:
    for series in ("2", "7"):
        for i in range(2):
            ds = pydicom.dcmread(data.ct(tmp_path / "src" / f"{series}-{i}.dcm"))
            ds.SeriesInstanceUID, ds.SeriesNumber = f"{data.STUDY_UID}.{series}", int(series)
            data.write(ds, tmp_path / "in" / f"{series}-{i}.dcm")
    out = tmp_path / "out"
    assert main(["render", str(tmp_path / "in"), "-o", str(out), "--format", "pdf", "-j", "2"]) == 0
    pdfs = sorted(out.rglob("*.pdf"))
    assert [p.name for p in pdfs] == [f"{data.STUDY_UID}.2.pdf", f"{data.STUDY_UID}.7.pdf"]
    assert "Series 7 AXIAL 5MM - Image 1" in pdftext(pdfs[1])


def test_captions_in_any_script_are_real_text(tmp_path: Path) -> None:
    """Descriptions and (when allowed) patient names decoded from their Specific Character
    Set: Latin-1, UTF-8 Greek/Cyrillic/Latin Extended, ISO 2022 IR 87 Japanese, Korean and
    Chinese. Every character beyond Latin-1 came out as '?'; pdftotext now reads them all."""
    cases = {
        "latin1": ("ISO_IR 100", "Schädel nativ", "Müller^Jörg"),
        "utf8": ("ISO_IR 192", "Ελληνικά Łódź Русский", "Ivanov^Ivan=Иванов^Иван"),
        "jis": (["", "ISO 2022 IR 87"], "頭部 単純", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        "korean": ("ISO_IR 192", "뇌 CT", "Hong^Gildong=洪^吉洞=홍^길동"),
        "chinese": ("ISO_IR 192", "头部 平扫", "Zhang^Wei=张^伟"),
    }
    ex = exporter(tmp_path, allow_patient_identifiers=True)
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    for name, (charset, description, patient) in cases.items():
        ds = data.dataset(pixels, SpecificCharacterSet=charset, series_uid=data.STUDY_UID + ".9")
        ds.SeriesDescription, ds.PatientName = description, patient
        path = data.write(ds, tmp_path / "in" / f"{name}.dcm")
        assert pydicom.dcmread(path).SeriesDescription == description  # encoded and decoded
        (target,) = ex.export_series_pdf([path])
        text = pdftext(target)
        assert f"Series 3 {description} - Image 1" in text, (name, text)
        assert f"Patient {patient}" in text, (name, text)
        info = subprocess.run(
            [tool("pdfinfo"), "-enc", "UTF-8", str(target)], capture_output=True, check=True
        ).stdout.decode()
        assert f"CT series {description} 2024-01-02" in info, name  # Title
        assert "?" not in text, (name, text)


def _word_boxes(path: Path) -> tuple[float, list[tuple[float, float, str]]]:
    """The first page's width and (top, right edge, word) of each word pdftotext finds."""
    import re

    res = subprocess.run(
        [tool("pdftotext"), "-bbox", str(path), "-"], capture_output=True, check=True
    ).stdout.decode()
    width = float(re.findall(r'<page width="([\d.]+)"', res)[0])
    found = re.findall(r'yMin="([\d.]+)" xMax="([\d.]+)"[^>]*>([^<]*)</word>', res)
    return width, [(float(top), float(right), word) for top, right, word in found]


def test_long_header_and_caption_lines_stay_on_the_page_and_in_their_cell(
    tmp_path: Path,
) -> None:
    """A 64-pixel image with long identifiers and descriptions: the page layout page was as
    wide as the image (or 456 points), cutting the rest of the header off at the page edge;
    contact sheet captions (70 characters) ran into the next cell. Now the page is as wide
    as its longest line, and a caption is shortened to its cell, ending in '...'."""
    institution = "UNIVERSITAETSKLINIKUM HAMBURG-EPPENDORF DIAGNOSTISCHE RADIOLOGIE"
    description = "THORAX ABDOMEN BECKEN MIT KONTRASTMITTEL VENOES 5MM WEICHTEILE"
    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    ds = data.dataset(pixels, SeriesDescription=description, InstitutionName=institution)
    path = data.write(ds, tmp_path / "in" / "long.dcm")
    (page,) = exporter(tmp_path, allow_patient_identifiers=True).export_series_pdf([path])
    width, words = _word_boxes(page)
    assert max(right for _, right, _ in words) <= width - pdf_mod.MARGIN + 1
    assert width > 456 and institution in pdftext(page)
    (sheet,) = exporter(tmp_path / "c", pdf_layout="contact").export_series_pdf([path])
    cell = (pdf_mod.landscape(pdf_mod.A4)[0] - 2 * pdf_mod.MARGIN) / pdf_mod.GRID[0]
    _, words = _word_boxes(sheet)
    captions = [right for top, right, _ in words if top > pdf_mod.MARGIN + pdf_mod.HEADER]
    assert captions and max(captions) <= pdf_mod.MARGIN + cell
    assert "..." in pdftext(sheet)


def test_study_pdf_names_every_modality_and_the_study(tmp_path: Path) -> None:
    """A PET/CT study: the study PDF's header and title said "CT study" and the first
    series' description, as if the PET series were not in it."""
    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    files = [
        data.write(
            data.dataset(pixels, modality="CT", series_uid=data.STUDY_UID + ".21"),
            tmp_path / "in" / "ct.dcm",
        ),
        data.write(
            data.dataset(
                pixels,
                modality="PT",
                series_uid=data.STUDY_UID + ".22",
                SeriesNumber=4,
                SeriesDescription="PET WB",
            ),
            tmp_path / "in" / "pt.dcm",
        ),
    ]
    (target,) = exporter(tmp_path, pdf="study").export_study_pdf(files)
    text = pdftext(target)
    assert "CT/PT study 2024-01-02 10:15 HEAD ROUTINE" in text
    assert "Series 4 PET WB - Image 1" in text
    info = pdfinfo(target)
    assert "CT/PT study HEAD ROUTINE 2024-01-02" in info and "AXIAL 5MM" not in info
    (series_pdf,) = exporter(tmp_path / "s").export_series_pdf(files[1:])
    assert "PT series PET WB 2024-01-02" in pdfinfo(series_pdf)


def test_a_series_of_more_images_than_pdf_max_images_is_split_into_parts(tmp_path: Path) -> None:
    """Five images, at most two per PDF: three parts, in order, each naming its part; a
    re-export that fits in one PDF again removes the parts (and the reverse)."""
    files = series(tmp_path, 5)
    parts = exporter(tmp_path, pdf_max_images=2).export_series_pdf(files)
    assert [p.name.split("-part")[1] for p in parts] == ["1of3.pdf", "2of3.pdf", "3of3.pdf"]
    assert [pdf_pages(p) for p in parts] == [2, 2, 1]
    first, last = pdftext(parts[0]), pdftext(parts[2])
    assert "5 image(s) (part" not in first and "2 image(s) (part 1 of 3)" in first
    assert "Image 1" in first and "Image 2" in first and "Image 5" in last
    assert "(part 3 of 3)" in pdfinfo(parts[2])
    (whole,) = exporter(tmp_path).export_series_pdf(files)
    assert "-part" not in whole.name and pdf_pages(whole) == 5
    assert sorted(p.name for p in whole.parent.glob("*.pdf")) == [whole.name]
    again = exporter(tmp_path, pdf_max_images=3).export_series_pdf(files)
    assert sorted(p.name for p in whole.parent.glob("*.pdf")) == sorted(p.name for p in again)
    assert len(again) == 2


def test_pdf_max_images_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="export.pdf_max_images"):
        config_from_dict({"export": {"pdf_max_images": 0}}, tmp_path)


def pdf_pages(path: Path) -> int:
    return int(re.search(r"Pages:\s+(\d+)", pdfinfo(path)).group(1))  # type: ignore[union-attr]


def test_a_series_number_that_cannot_be_read_keeps_the_instances_in_order(
    tmp_path: Path,
) -> None:
    """IS 'inf' in Series Number (pydicom raises when converting it) made every sort key
    (0, '', 0, path): the PDF pages followed the file names, not the Instance Numbers."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    paths = []
    for name, number in (("a", 3), ("b", 1), ("c", 2)):
        ds = pydicom.dcmread(data.ct(tmp_path / "src.dcm", InstanceNumber=number))
        tag = Tag(0x00200011)
        ds[tag] = RawDataElement(tag, "IS", 4, b"inf ", 0, False, True)
        paths.append(data.write(ds, tmp_path / "in" / f"{name}.dcm"))
    (pdf,) = exporter(tmp_path).export_series_pdf(paths)
    text = pdftext(pdf)
    found = [text.index(f"Image {n}\n") for n in (1, 2, 3)]
    assert found == sorted(found), text


def test_the_header_counts_only_the_images(tmp_path: Path) -> None:
    """A study with two CT images, an encapsulated PDF and a structured report: the study
    PDF's header said "4 image(s)" (every object given) for its two pages, "SR/DOC/CT", and
    took the study line from the SR."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    files = series(tmp_path, 2)
    files.append(data.encapsulated_pdf(tmp_path / "in" / "doc.dcm", b"%PDF-1.4\n%%EOF\n"))
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.SOPInstanceUID = generate_uid()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.StudyInstanceUID = data.STUDY_UID
    sr.SeriesInstanceUID = data.STUDY_UID + ".5"
    sr.Modality = "SR"
    files.append(data.write(sr, tmp_path / "in" / "sr.dcm"))
    (pdf,) = exporter(tmp_path).export_study_pdf(files)
    assert pdf_pages(pdf) == 2
    text = pdftext(pdf)
    # and the header line came from the SR (sorted first): no date or description, and
    # "SR/DOC/CT study" for a PDF of CT images
    assert "2 image(s)" in text and "CT study 2024-01-02 10:15 HEAD ROUTINE" in text
    assert "SR" not in text and "DOC" not in text


def test_the_header_counts_what_the_pages_hold(tmp_path: Path) -> None:
    """Three images given, one of them cut short and one a 3-frame cine: the header counted
    the three images given, a page each. It now says what was drawn, the frames of the cine
    and the image that could not be rendered, on every page."""
    files = series(tmp_path, 2)
    cut = files[1]
    cut.write_bytes(cut.read_bytes()[:-5000])  # Pixel Data shorter than Rows x Columns
    pix = np.stack([np.full((16, 16), 100 * i, np.uint16) for i in range(3)])
    cine = data.dataset(pix, instance=7, WindowCenter=100, WindowWidth=400)
    files.append(data.write(cine, tmp_path / "in" / "cine.dcm"))
    ex = exporter(tmp_path)
    (pdf,) = ex.export_series_pdf(files)
    assert ex.failures == 1 and pdf_pages(pdf) == 4
    text = pdftext(pdf)
    line = "Series 3 AXIAL 5MM: 2 image(s), 4 frames; 1 of 3 not rendered (see log)"
    assert text.count(line) == 4, text
    assert "3 image(s)" not in text


def _black_box(page: np.ndarray, rows: slice, cols: slice) -> tuple[int, int]:
    """Width and height of the black area of ``page`` within ``rows`` x ``cols``."""
    ys, xs = np.nonzero(page[rows, cols] < 64)
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.mark.parametrize(
    ("spacing", "drawn"),
    [
        ({}, (64, 64)),  # no spacing: square
        ({"PixelSpacing": [1.0, 0.5]}, (64, 128)),  # rows 1 mm apart, columns 0.5 mm
        ({"PixelAspectRatio": [3, 4]}, (85, 64)),  # 3 high for 4 wide: 64 x 4/3 wide
        ({"ImagerPixelSpacing": [0.2, 0.1], "PixelAspectRatio": [1, 1]}, (64, 128)),
    ],
)
def test_pdf_pages_draw_pixels_that_are_not_square_in_their_proportions(
    tmp_path: Path, spacing: dict, drawn: tuple[int, int]
) -> None:
    """An ultrasound or scanned film with pixels twice as tall as wide was drawn one sample
    per point: the anatomy squeezed to half its height on the page."""
    black = data.dataset(np.zeros((64, 64), np.int16), RescaleIntercept=-1024, **spacing)
    src = data.write(black, tmp_path / "in" / "black.dcm")  # -1024 HU: black in any window
    (target,) = exporter(tmp_path).export_series_pdf([src])
    listing = subprocess.run(
        [tool("pdfimages"), "-list", str(target)], capture_output=True, text=True, check=True
    ).stdout.splitlines()[2:]
    assert [line.split()[3:5] for line in listing] == [["64", "64"]]  # samples stay native
    (tmp_path / "page").mkdir()
    (page,) = raster(target, tmp_path / "page")
    top = int(pdf_mod.MARGIN + pdf_mod.HEADER)  # the image band, between header and caption
    band = slice(top, page.shape[0] - int(pdf_mod.MARGIN + pdf_mod.CAPTION))
    assert _black_box(page, band, slice(None)) == drawn

    sheet_cfg = dataclasses.replace(ExportSection(), dir=tmp_path / "c", pdf_layout="contact")
    (sheet,) = Exporter(sheet_cfg, fsync=False).export_series_pdf([src])
    (tmp_path / "sheet").mkdir()
    (page,) = raster(sheet, tmp_path / "sheet")
    cols, rows = pdf_mod.GRID  # the first cell's image box (its caption is below it)
    cell_w = (page.shape[1] - 2 * pdf_mod.MARGIN) / cols
    cell_h = (page.shape[0] - 2 * pdf_mod.MARGIN - pdf_mod.HEADER) / rows
    box = (
        slice(int(top + 4), int(top + cell_h - 24)),
        slice(int(pdf_mod.MARGIN + 4), int(pdf_mod.MARGIN + cell_w - 4)),
    )
    w, h = _black_box(page, *box)
    assert w / h == pytest.approx(drawn[0] / drawn[1], rel=0.03)


def test_pixel_aspect_follows_the_standard_precedence() -> None:
    from pydicom.dataset import Dataset

    from node.export.aspect import pixel_aspect

    def ds(**kw: object) -> Dataset:
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    assert pixel_aspect(ds()) == 1.0
    assert pixel_aspect(ds(PixelSpacing=[0.6, 0.3], PixelAspectRatio=[1, 1])) == 2.0
    assert pixel_aspect(ds(NominalScannedPixelSpacing=[0.1, 0.2])) == 0.5
    assert pixel_aspect(ds(PixelAspectRatio=[4, 3])) == pytest.approx(4 / 3)
    # an enhanced object: Pixel Measures in the Shared Functional Groups
    measures = ds(PixelSpacing=[0.5, 0.25])
    shared = ds(PixelMeasuresSequence=[measures])
    assert pixel_aspect(ds(SharedFunctionalGroupsSequence=[shared])) == 2.0
    # ... or only in each frame's Per-Frame Functional Groups item (they may differ)
    frames = [shared, ds(PixelMeasuresSequence=[ds(PixelSpacing=[0.2, 0.6])])]
    enhanced = ds(PerFrameFunctionalGroupsSequence=frames)
    assert [pixel_aspect(enhanced, i) for i in (0, 1, 2)] == [2.0, pytest.approx(1 / 3), 1.0]
    enhanced.SharedFunctionalGroupsSequence = [ds(FrameContentSequence=[ds()])]
    assert pixel_aspect(enhanced, 1) == pytest.approx(1 / 3)  # shared groups without measures
    enhanced.SharedFunctionalGroupsSequence = [ds(PixelMeasuresSequence=[measures])]
    assert pixel_aspect(enhanced, 1) == 2.0  # shared groups apply to every frame
    # unusable values go to the next source; an absurd ratio is drawn square
    assert pixel_aspect(ds(PixelSpacing=[0, 0.5], PixelAspectRatio=[2, 1])) == 2.0
    assert pixel_aspect(ds(PixelSpacing=[100, 1])) == 1.0


def test_an_absurd_pixel_shape_is_logged_once_per_document(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 40-frame object with Pixel Spacing 100\\1 logged the same warning for every frame
    of every image in the PDF."""
    from pydicom.dataset import Dataset

    from node.export.aspect import pixel_aspect

    bad = Dataset()
    bad.PixelSpacing = ["100", "1"]
    odd = Dataset()
    odd.PixelAspectRatio = ["1", "40"]
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="node.export.aspect"):
        ratios = [pixel_aspect(d, i, warned) for d in (bad, odd, bad) for i in range(40)]
    assert set(ratios) == {1.0}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "(0028,0030) PixelSpacing 100\\1 gives pixels 100 times taller than wide: ignored, "
        "drawn square",
        "(0028,0034) PixelAspectRatio 1\\40 gives pixels 0.025 times taller than wide: "
        "ignored, drawn square",
    ]
