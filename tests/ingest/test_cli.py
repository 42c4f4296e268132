"""``dicom-node convert`` end to end: batch mode, bad inputs, exit codes, no leftovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from node.cli import main
from node.errors import ConversionError
from node.ingest import convert as cv
from tests.ingest import corpus
from tests.peers import dciodvfy

BAD = {name: (fn, make, exc, phrase) for name, fn, make, exc, phrase in corpus.bad_cases()}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_refused_with_a_reason_and_no_output(tmp_path: Path, name: str) -> None:
    filename, make, exc, phrase = BAD[name]
    src = corpus.write(tmp_path / "in", filename, make())
    out = tmp_path / "out"
    series = cv.SeriesContext.for_group("bad", "2.25")
    with pytest.raises(exc) as err:
        cv.convert_file(src, out / "x.dcm", cv.ConvertOptions(fsync=False), series, 1)
    assert str(src) in str(err.value)
    assert phrase in str(err.value)
    assert _files(out) == [] if out.exists() else True


def test_bomb_cap_for_png(tmp_path: Path) -> None:
    src = corpus.write(tmp_path, "big.png", corpus.saved(corpus.rgb(300, 200), "PNG"))
    options = cv.ConvertOptions(max_pixels=10_000, fsync=False)
    series = cv.SeriesContext.for_group("bomb", "2.25")
    with pytest.raises(ConversionError, match="ingest.max_pixels"):
        cv.convert_file(src, tmp_path / "o.dcm", options, series, 1)
    assert not (tmp_path / "o.dcm").exists()


def test_pillow_limit_does_not_override_ingest_max_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ingest.max_pixels decides, not Pillow's own limit (2 x MAX_IMAGE_PIXELS, ~179 Mpx).

    With the default cap of 200 Mpx a 180 Mpx panorama must convert, and a raised cap must
    be honoured; scaled down here by lowering Pillow's limit instead of making huge files.
    """
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow refuses > 2,000 px
    src = corpus.write(tmp_path, "wide.png", corpus.saved(corpus.rgb(60, 50), "PNG"))
    series = cv.SeriesContext.for_group("cap", "2.25")
    options = cv.ConvertOptions(max_pixels=10_000, fsync=False)
    cv.convert_file(src, tmp_path / "o.dcm", options, series, 1)
    assert pydicom.dcmread(tmp_path / "o.dcm").Columns == 60
    # Over both limits: our message, naming the setting to change.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    big = corpus.write(tmp_path, "big.png", corpus.saved(corpus.rgb(300, 200), "PNG"))
    with pytest.raises(ConversionError, match="ingest.max_pixels"):
        cv.convert_file(big, tmp_path / "b.dcm", options, series, 2)
    assert not (tmp_path / "b.dcm").exists()


def test_unreadable_input(tmp_path: Path) -> None:
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "missing.jpg")
    series = cv.SeriesContext.for_group("x", "2.25")
    with pytest.raises(ConversionError, match="cannot read"):
        cv.convert_file(link, tmp_path / "o.dcm", cv.ConvertOptions(fsync=False), series, 1)


def test_batch_converts_good_files_refuses_bad_ones_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    for i in range(3):
        corpus.write(src, f"img{i}.jpg", corpus.jpeg(corpus.rgb(16, 8, i)))
    corpus.write(src / "sub", "deeper.png", corpus.saved(corpus.rgb(8, 8), "PNG"))
    for filename, make, _, _ in BAD.values():
        corpus.write(src / "bad", filename, make())
    (src / "img0.json").write_text(json.dumps({"PatientID": "SIDE"}))
    out = tmp_path / "out"
    code = main(["convert", str(src), "-o", str(out), "-k", "PatientName=Doe^Jane"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"converted 4, refused {len(BAD)} of {4 + len(BAD)}" in err
    for filename, *_ in BAD.values():
        assert filename in err
    written = _files(out)
    assert [p.relative_to(out).as_posix() for p in written] == [
        "img0.dcm",
        "img1.dcm",
        "img2.dcm",
        "sub/deeper.dcm",
    ]
    assert not [p for p in out.rglob(".tmp-*")]
    dss = [pydicom.dcmread(p) for p in written]
    assert dss[0].PatientID == "SIDE" and dss[1].PatientID == ""
    assert all(ds.PatientName == "Doe^Jane" for ds in dss)
    # One directory = one study and series; InstanceNumber follows file order. img0's
    # sidecar names another patient than the others': its study is its own.
    top = dss[:3]
    assert len({ds.StudyInstanceUID for ds in top[1:]}) == 1
    assert len({ds.SeriesInstanceUID for ds in top[1:]}) == 1
    assert top[0].StudyInstanceUID != top[1].StudyInstanceUID
    assert [ds.InstanceNumber for ds in top] == [1, 2, 3]
    assert dss[3].SeriesInstanceUID != top[0].SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in dss}) == 4


def test_rerun_gives_identical_files(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(2):
        corpus.write(src, f"img{i}.jpg", corpus.jpeg(corpus.rgb(16, 8, i)))
    assert main(["convert", str(src), "-o", str(tmp_path / "a")]) == 0
    assert main(["convert", str(src), "-o", str(tmp_path / "b"), "--threads", "1"]) == 0
    for a in _files(tmp_path / "a"):
        assert a.read_bytes() == (tmp_path / "b" / a.name).read_bytes()


@pytest.mark.dciodvfy
def test_single_file_to_dcm_path_with_template_and_keys(tmp_path: Path) -> None:
    src = corpus.write(tmp_path, "photo.jpg", corpus.jpeg(corpus.rgb(32, 16)))
    template = corpus.template(
        tmp_path / "tpl.dcm",
        PatientName="Tpl^Name",
        PatientID="TPL",
        StudyInstanceUID="1.2.3.44",
        SOPInstanceUID="1.2.3.45",
    )
    out = tmp_path / "result.dcm"
    keys = ["-k", "StudyDate=20240101", "-k", "StudyTime=120000", "-k", "StudyID=1"]
    keys += ["-k", "SeriesNumber=1", "-k", "(0020,0062)=U"]
    args = ["convert", str(src), "-o", str(out), "--study-from", str(template), "--sop-class"]
    assert main([*args, "vlp", *keys]) == 0
    got = pydicom.dcmread(out)
    assert got.PatientID == "TPL" and got.StudyInstanceUID == "1.2.3.44"
    assert got.SOPInstanceUID != "1.2.3.45"
    assert got.Modality == "XC"
    report = dciodvfy(out)
    assert report.errors == [] and report.warnings == [], report.output


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    corpus.write(src, "a.jpg", corpus.jpeg(corpus.rgb(8, 8)))
    corpus.write(src, "b.jpg", corpus.jpeg(corpus.rgb(8, 8, 1)))
    assert main(["convert", str(src), "-o", str(tmp_path / "x.dcm")]) == 2
    assert "exactly one input" in capsys.readouterr().err
    assert main(["convert", str(src), "-o", str(tmp_path / "o"), "-k", "Nonsense=1"]) == 2
    assert "Nonsense" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_same_stem_different_formats_both_kept(tmp_path: Path) -> None:
    src = tmp_path / "in"
    corpus.write(src, "photo.jpg", corpus.jpeg(corpus.rgb(8, 8)))
    corpus.write(src, "photo.png", corpus.saved(corpus.rgb(8, 8), "PNG"))
    assert main(["convert", str(src), "-o", str(tmp_path / "o")]) == 0
    assert [p.name for p in _files(tmp_path / "o")] == ["photo.jpg.dcm", "photo.png.dcm"]


def test_console_script_progress_and_exit_status(tmp_path: Path) -> None:
    """``python -m node convert`` as a user runs it (no TTY here: no progress bar)."""
    src = tmp_path / "in"
    for i in range(3):
        corpus.write(src, f"{i}.jpg", corpus.jpeg(corpus.rgb(8, 8, i)))
    res = subprocess.run(
        [sys.executable, "-m", "node", "convert", str(src), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "converted 3, refused 0 of 3" in res.stderr
    assert "\r[" not in res.stderr


def test_progress_bar_on_a_terminal() -> None:
    import io

    from node.ingest.commands import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress(3, stream)
    for done in (1, 2, 3):
        bar.last = 0.0  # do not rate-limit in the test
        bar.update(done, refused=1 if done == 3 else 0)
    text = stream.getvalue()
    assert "\r[" in text and "3/3" in text and "(1 refused)" in text and text.endswith("\n")
    quiet = io.StringIO()
    Progress(3, quiet).update(3, 0)
    assert quiet.getvalue() == ""


def test_output_inside_the_input_directory_is_not_read_back(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    corpus.write(src, "a.jpg", corpus.jpeg(corpus.rgb(8, 8)))
    for _ in range(2):  # the second run must not try to convert photos/dicom/a.dcm
        assert main(["convert", str(src), "-o", str(src / "dicom")]) == 0
    assert [p.name for p in _files(src / "dicom")] == ["a.dcm"]


def test_input_walk_matches_a_path_rglob_walk(tmp_path: Path) -> None:
    """The scandir walk of ``convert DIR`` selects and orders files as the rglob-based
    walk it replaced: nested folders (names that sort differently as strings and as
    paths), hidden entries, sidecars, symbolic links to files (in) and to directories
    (not followed), outputs under the input (out), a dangling link."""
    from node.ingest.commands import _input_files

    src = tmp_path / "in"
    names = ["a/x.jpg", "a b/x.jpg", "a-b/x.jpg", "a/b/c/deep.jpg", "A/y.jpg", "z.jpg",
             "a/.hidden.jpg", ".cache/a.jpg", "a/x.json", "out/old.dcm", "a/ü é.jpg"]  # fmt: skip
    for name in names:
        corpus.write(src / Path(name).parent, Path(name).name, b"x")
    elsewhere = tmp_path / "elsewhere"
    corpus.write(elsewhere, "linked.jpg", b"x")
    (src / "file-link.jpg").symlink_to(elsewhere / "linked.jpg")
    (src / "dir-link").symlink_to(elsewhere, target_is_directory=True)
    (src / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    (src / "a" / "into-output.dcm").symlink_to(src / "out" / "old.dcm")
    out_root = (src / "out").resolve()

    def reference() -> list[Path]:
        return sorted(
            p
            for p in src.rglob("*")
            if p.is_file()
            and p.suffix.lower() != ".json"
            and not any(part.startswith(".") for part in p.relative_to(src).parts)
            and not p.resolve().is_relative_to(out_root)
        )

    walked = _input_files(src, out_root)
    assert [path for path, _ in walked] == reference()
    assert all(rel == path.parent.relative_to(src) for path, rel in walked)
    assert src / "file-link.jpg" in [path for path, _ in walked]
    assert not any("dir-link" in str(path) for path, _ in walked)


def test_group_commit_writer_shows_only_complete_files(tmp_path: Path) -> None:
    from node.ingest.batchwrite import GroupCommitWriter

    writer = GroupCommitWriter(group=3)
    for i in range(4):
        writer(tmp_path / "d" / f"{i}.dcm", bytes([i]) * 10)
    visible = sorted(p.name for p in (tmp_path / "d").iterdir() if not p.name.startswith("."))
    assert visible == ["0.dcm", "1.dcm", "2.dcm"]  # the first group is committed
    assert writer.committed(tmp_path / "d" / "2.dcm")
    assert not writer.committed(tmp_path / "d" / "3.dcm")
    writer.close()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [f"{i}.dcm" for i in range(4)]
    assert (tmp_path / "d" / "3.dcm").read_bytes() == b"\x03" * 10


def test_unwritable_output_is_reported_per_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    corpus.write(src, "a.jpg", corpus.jpeg(corpus.rgb(8, 8)))
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output directory should be")
    assert main(["convert", str(src), "-o", str(blocker)]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_hidden_files_and_directories_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "in"
    corpus.write(src, "a.jpg", corpus.jpeg(corpus.rgb(8, 8)))
    corpus.write(src / ".thumbnails", "a.jpg", corpus.jpeg(corpus.rgb(4, 4)))
    corpus.write(src, ".DS_Store", b"\x00\x00\x00\x01Bud1")
    assert main(["convert", str(src), "-o", str(tmp_path / "o")]) == 0
    assert [p.name for p in _files(tmp_path / "o")] == ["a.dcm"]


def test_config_defaults_and_sop_class(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        '[node]\nuid_root = "1.2.826.0.1.3680043.10.4242"\n'
        '[ingest]\nsop_class = "vlp"\n'
        '[ingest.defaults]\nPatientID = "CFG-1"\nInstitutionName = "Config Hospital"\n'
    )
    src = corpus.write(tmp_path / "in", "a.jpg", corpus.jpeg(corpus.rgb(8, 8)))
    out = tmp_path / "a.dcm"
    args = ["convert", "-c", str(cfg), str(src), "-o", str(out), "-k", "PatientID=KEY-1"]
    assert main(args) == 0
    ds = pydicom.dcmread(out)
    assert ds.Modality == "XC" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert ds.PatientID == "KEY-1" and ds.InstitutionName == "Config Hospital"
    assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.4242.")
    assert main([*args[:-2], "--sop-class", "sc", "-o", str(tmp_path / "b.dcm")]) == 0
    assert pydicom.dcmread(tmp_path / "b.dcm").SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"


def test_group_commit_writer_abort_removes_temporaries(tmp_path: Path) -> None:
    from node.ingest.batchwrite import GroupCommitWriter

    writer = GroupCommitWriter(group=10)
    writer(tmp_path / "a.dcm", b"xx")
    assert len(list(tmp_path.iterdir())) == 1  # a hidden temporary
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_filename_pattern_group_names_checked_at_start_up() -> None:
    """A group that is not a DICOM keyword is a config error, not one quarantine per file."""
    from node.config import Config, IngestSection

    bad = Config(ingest=IngestSection(filename_pattern=r"(?P<PatID>\d+)_.*\.jpg"))
    with pytest.raises(ConversionError, match=r"ingest.filename_pattern \(\?P<PatID>"):
        cv.ConvertOptions.from_config(bad)
    good = Config(ingest=IngestSection(filename_pattern=r"(?P<PatientID>\d+)_.*\.jpg"))
    cv.ConvertOptions.from_config(good)


def test_directory_walk_skips_what_the_drop_folder_ignores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A camera card or a Windows folder copied over holds Thumbs.db, desktop.ini, macOS
    ``._`` files and partial copies next to the photos: ``convert DIR`` refused each one
    ("not an image") and exited 1, where the drop folder ignores them."""
    from node.ingest.watcher import input_files

    card = tmp_path / "card"
    corpus.write(card / "DCIM", "IMG_0001.JPG", corpus.jpeg(corpus.rgb(16, 8)))
    junk = ["Thumbs.db", "desktop.ini", "._IMG_0001.JPG", "IMG_0002.JPG.part", "~$notes.tmp"]
    for name in junk:
        (card / "DCIM" / name).write_bytes(b"not an image")
    (card / "desktop.ini").write_bytes(b"[.ShellClassInfo]")
    assert [p.name for p in input_files(card)] == ["IMG_0001.JPG"]  # the drop folder's view
    out = tmp_path / "out"
    assert main(["convert", str(card), "-o", str(out)]) == 0
    assert _files(out) == [out / "DCIM" / "IMG_0001.dcm"]
    err = capsys.readouterr().err
    assert "converted 1, refused 0" in err
    assert "skipped 6 file(s)" in err and "Thumbs.db" in err
    # Named on the command line, such a file is still an input (refused: not an image).
    assert main(["convert", str(card / "DCIM" / "Thumbs.db"), "-o", str(tmp_path / "t")]) == 1
