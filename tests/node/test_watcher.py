"""The drop-folder watcher: what counts as an input, and when it is complete."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from node.config import IngestSection
from node.ingest.watcher import DropFolderWatcher, StabilityTracker, is_ignored, looks_complete


def jpeg_bytes(size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("photo.jpg", False),
        ("photo.jpg.part", True),
        ("photo.tmp", True),
        ("photo.jpg.crdownload", True),
        ("~photo.jpg", True),
        (".photo.jpg.Xy12Ab", True),  # rsync's temporary name
        (".hidden.jpg", True),
        ("photo.jpg.error.txt", True),
        ("photo.jpg.filepart", True),  # WinSCP
        ("photo.JPG.FILEPART", True),
        ("photo.jpg.download", True),  # Safari
        ("Thumbs.db", True),
        ("desktop.ini", True),
        ("thumbs.jpg", False),
    ],
)
def test_ignored_names(name: str, ignored: bool) -> None:
    assert is_ignored(name) is ignored


def test_an_upload_under_a_temporary_name_is_left_to_its_writer(tmp_path: Path) -> None:
    """WinSCP uploads to NAME.filepart and renames it when done: the watcher took the
    .filepart itself once complete and stable (a JPEG has its EOI before the rename), so
    WinSCP's rename failed and the object carried the name photo.jpg.filepart. A folder's
    Thumbs.db was converted and quarantined as "not an image" with every dropped folder."""
    from node.config import config_from_dict

    cfg = config_from_dict(
        {"node": {"base_dir": str(tmp_path)}, "ingest": {"stable_seconds": 0.0}}, tmp_path
    )
    inbox = cfg.ingest.inbox
    inbox.mkdir(parents=True)
    (inbox / "photo.jpg.filepart").write_bytes(jpeg_bytes())
    (inbox / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    taken: list[str] = []
    watcher = DropFolderWatcher(cfg.ingest, lambda p: taken.append(p.name))
    watcher.scan()
    watcher.scan()
    assert taken == []
    (inbox / "photo.jpg.filepart").rename(inbox / "photo.jpg")
    watcher.scan()
    watcher.scan()
    assert taken == ["photo.jpg"]


def test_stability_needs_an_unchanged_signature_for_the_settle_time() -> None:
    now = [0.0]
    tracker = StabilityTracker(2.0, clock=lambda: now[0])
    assert not tracker.observe("a", (1, 1))
    now[0] = 1.0
    assert not tracker.observe("a", (1, 1))
    now[0] = 1.5
    assert not tracker.observe("a", (2, 2))  # grew: the clock starts again
    now[0] = 3.4
    assert not tracker.observe("a", (2, 2))
    now[0] = 3.6
    assert tracker.observe("a", (2, 2))


def test_truncated_jpeg_is_not_complete(tmp_path: Path) -> None:
    data = jpeg_bytes()
    whole, cut = tmp_path / "whole.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(data + b"\x00\x00")  # trailing padding is tolerated
    cut.write_bytes(data[: len(data) // 2])
    assert looks_complete(whole)
    assert not looks_complete(cut)


def test_scan_hands_over_each_complete_entry_once(tmp_path: Path) -> None:
    now = [100.0]
    taken: list[str] = []
    cfg = IngestSection(inbox=tmp_path / "inbox", stable_seconds=1.0)
    cfg.inbox.mkdir()

    def take(path: Path) -> None:
        taken.append(path.name)
        path.rename(tmp_path / path.name)  # what claiming does: it leaves the inbox

    watcher = DropFolderWatcher(cfg, take, clock=lambda: now[0])
    data = jpeg_bytes()
    (cfg.inbox / "a.jpg").write_bytes(data)
    (cfg.inbox / "a.jpg.json").write_text("{}")  # a sidecar is never an input itself
    (cfg.inbox / ".b.jpg.Ab12Cd").write_bytes(data)  # rsync temp name
    (cfg.inbox / "c.jpg").write_bytes(data[:100])  # still being written: no EOI
    series = cfg.inbox / "series"
    series.mkdir()
    (series / "1.jpg").write_bytes(data)
    assert watcher.scan() == []
    now[0] += 2
    assert sorted(p.name for p in watcher.scan()) == ["a.jpg", "series"]
    # the rsync temp file is renamed into place: picked up once, after it settles
    os.rename(cfg.inbox / ".b.jpg.Ab12Cd", cfg.inbox / "b.jpg")
    assert watcher.scan() == []
    now[0] += 2
    assert [p.name for p in watcher.scan()] == ["b.jpg"]
    now[0] += 2
    assert watcher.scan() == []
    # a file that never gets its EOI is handed over after incomplete_seconds (-> quarantine)
    now[0] += cfg.incomplete_seconds
    assert [p.name for p in watcher.scan()] == ["c.jpg"]
    assert sorted(taken) == ["a.jpg", "b.jpg", "c.jpg", "series"]


def test_orphan_sidecar_is_handed_over_after_the_grace_period(tmp_path: Path) -> None:
    now = [0.0]
    orphans: list[str] = []
    cfg = IngestSection(inbox=tmp_path / "inbox", stable_seconds=1.0, incomplete_seconds=30.0)
    cfg.inbox.mkdir()
    watcher = DropFolderWatcher(
        cfg, lambda p: None, on_orphan=lambda p: orphans.append(p.name), clock=lambda: now[0]
    )
    (cfg.inbox / "late.jpg.json").write_text("{}")  # its image was taken already
    (cfg.inbox / "waiting.json").write_text("{}")
    (cfg.inbox / "waiting.png").write_bytes(b"\x89PNG")  # still with its image
    (cfg.inbox / "copying.jpg.json").write_text("{}")
    (cfg.inbox / ".copying.jpg.Xa12Bc").write_bytes(b"\xff\xd8")  # image still in transit
    for step in (0, 10, 20, 31, 32):
        now[0] = step
        watcher.scan()
    assert orphans == ["late.jpg.json"]


def test_an_idle_watcher_beats_between_rescans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` calls a component alive for 10 s after its heartbeat; with rescan_seconds
    = 30 (the production example) an idle watcher beat once per rescan and showed as NOT
    RUNNING two thirds of the time."""
    import threading

    from node.ingest import watcher as watcher_module

    monkeypatch.setattr(watcher_module, "HEARTBEAT_SECONDS", 0.05)
    cfg = IngestSection(inbox=tmp_path, rescan_seconds=3600.0)
    watcher = DropFolderWatcher(cfg, lambda p: None)
    beats: list[int] = []
    third = threading.Event()

    def beat() -> None:
        beats.append(1)
        if len(beats) >= 3:
            third.set()

    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop, beat), daemon=True)
    thread.start()
    try:
        assert third.wait(20), f"{len(beats)} heartbeat(s) while waiting for the next rescan"
    finally:
        stop.set()
        thread.join(10)
