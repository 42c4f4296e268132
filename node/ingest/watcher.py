"""The drop-folder watcher: watchdog events as hints, a periodic full rescan as the truth.

Events are lost on network shares, on inotify overflow and when an observer thread dies, so
the watcher never relies on them: an event only wakes the scan loop early. Every scan lists
the inbox and hands over the entries that are *complete*:

- not ignored (:mod:`node.ingest.ignored`: hidden files, rsync's ``.name.XXXXXX``,
  ``*.part``, ``*.tmp``, ``*.crdownload``, WinSCP's ``*.filepart``, ``~*``, Windows'
  ``Thumbs.db`` and ``desktop.ini``, our own ``*.error.txt``; sidecar ``.json`` files travel with
  their image and are never inputs on their own; one left without its image for
  ``ingest.incomplete_seconds`` is handed to ``on_orphan``, i.e. quarantined);
- the size and mtime (for a folder: of every file inside it) unchanged for
  ``ingest.stable_seconds``;
- the file opens and is not empty, a JPEG ends with an EOI marker, a PNG with its IEND
  chunk, a BMP is as long as its header says, a TIFF's strips and a DICOM file's elements
  lie inside it. A file that stays unchanged but
  incomplete for ``ingest.incomplete_seconds`` is handed over anyway, so that it ends in
  quarantine with a reason rather than sitting in the inbox forever.

A top-level file is one input; a top-level folder is one input (one series, or a DICOM
file-set). Claiming (the atomic rename into the work folder) is the pipeline's business.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from node.config import IngestSection
from node.ingest.ignored import is_ignored
from node.ingest.images import TIFF_MAGIC
from node.queue.store import HEARTBEAT_SECONDS

log = logging.getLogger(__name__)

SIDECAR_SUFFIXES = (".json", ".JSON")  # as node.ingest.metadata.SIDECAR_SUFFIXES

Signature = tuple[object, ...]


def is_sidecar(path: Path) -> bool:
    """True for ``NAME.json`` / ``NAME.jpg.json`` (or ``.JSON``) beside an image: it travels
    with it. Other spellings (``.Json``) are inputs, refused as "not an image" (visible)
    rather than skipped without being applied."""
    return path.name.endswith(SIDECAR_SUFFIXES)


def input_files(folder: Path) -> list[Path]:
    """The input files inside a dropped folder, recursively, in name order."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        for name in files:
            if not is_ignored(name) and not is_sidecar(Path(name)):
                out.append(Path(root) / name)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def signature(path: Path) -> Signature | None:
    """What must stay unchanged for ``path`` to count as complete; None if it vanished."""
    try:
        try:
            st = path.stat()
        except FileNotFoundError:
            link = path.lstat()  # a broken symbolic link: tracked, then quarantined
            return ("broken link", link.st_mtime_ns)
        if not path.is_dir():
            return (st.st_size, st.st_mtime_ns)
        parts: list[object] = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                fst = os.stat(os.path.join(root, name))
                parts.append((os.path.relpath(os.path.join(root, name), path), fst.st_size))
                parts.append(fst.st_mtime_ns)
        return tuple(parts)
    except OSError:
        return None


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk, CRC included


def file_complete(path: Path) -> bool:
    """Whether a file looks completely written, as far as its format tells.

    Not a regular file (a FIFO would block the open): nothing to wait for, the converter
    refuses it and it ends in quarantine. Empty: not yet (a copy creates the file before
    it writes). JPEG: its last marker is EOI (trailing padding tolerated). PNG: its IEND
    chunk is there (near the end). BMP: it is at least as long as its header's file size.
    TIFF: its IFDs, strips and tiles lie inside the file. DICOM: every element lies inside
    the file. Other files: nothing to check.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        return True  # a FIFO or device: never opened here; the converter refuses it
    with open(path, "rb") as fh:
        head = fh.read(132)
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return False
        if head[128:132] == b"DICM":
            return _dicom_complete(path)
        head = head[:6]
        if head.startswith(b"\x89PNG"):
            fh.seek(max(0, size - 4096))
            return _PNG_END in fh.read()  # data appended after IEND is tolerated
        if head[:4] in TIFF_MAGIC:
            try:
                return tiff_complete(fh, size)
            except (struct.error, ValueError, OverflowError):
                return True  # malformed, not short: the converter says what is wrong
        if head.startswith(b"BM") and len(head) == 6:
            declared = int.from_bytes(head[2:6], "little")
            return declared <= size  # 0 (unknown) counts as complete
        if not head.startswith(b"\xff\xd8"):
            return True  # nothing more to check here
        fh.seek(max(0, size - 4096))
        tail = fh.read().rstrip(b"\x00\r\n ")
        if tail.endswith(b"\xff\xd9"):
            return True
        return _jpeg_image_complete(fh)


def _jpeg_image_complete(fh: BinaryIO) -> bool:
    """The JPEG's markers run to the EOI of its image, although the file ends otherwise:
    phones append data after EOI (Samsung's ``SEFT`` trailer, a Google Motion Photo's MP4
    video), which the converter drops. Such a file waited ``incomplete_seconds`` and was
    then taken with a warning that it was incomplete."""
    from node.errors import CorruptInput, UnsupportedInput
    from node.ingest.jpeg import parse_jpeg

    try:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            parse_jpeg(data)  # type: ignore[arg-type]
    except CorruptInput:
        return False  # cut short (or damaged: it waits, then the converter says why)
    except (UnsupportedInput, ValueError, OSError):
        return True  # nothing to wait for: the converter refuses it
    return True


def _dicom_complete(path: Path) -> bool:
    """Every element of a DICOM Part 10 file lies inside it (a copy in progress ends short
    of the one being written). A file damaged otherwise looks the same to this check: it
    waits ``incomplete_seconds`` like a short one, then the pipeline refuses it."""
    from node.ingest.dicom_inputs import DicomInputError, check_complete

    try:
        check_complete(path)
    except DicomInputError:
        return False
    return True


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8
_TIFF_DATA = ((273, 279), (324, 325))  # StripOffsets/StripByteCounts, Tile...


def tiff_complete(fh: BinaryIO, size: int, max_pages: int = 4096) -> bool:
    """Every IFD of a classic TIFF or BigTIFF, and every strip or tile it points to, lies
    inside the file's ``size`` bytes (a TIFF being copied ends short of them)."""
    fh.seek(0)
    head = fh.read(16)
    end = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    # Classic: 2-byte entry count, 12-byte entries, 4-byte offsets. BigTIFF: 8, 20, 8.
    off, cnt, entry = ("Q", "Q", 20) if big else ("I", "H", 12)
    width = struct.calcsize(off)
    if len(head) < (16 if big else 8):
        return False  # the header itself is still being written
    offset = struct.unpack(end + off, head[8:16] if big else head[4:8])[0]
    for _ in range(max_pages):
        if offset == 0:
            return True
        if offset + struct.calcsize(cnt) > size:
            return False
        fh.seek(offset)
        (count,) = struct.unpack(end + cnt, fh.read(struct.calcsize(cnt)))
        table = fh.read(entry * count + width)
        if len(table) < entry * count + width:
            return False
        entries = {}
        for i in range(count):
            tag, kind, n, raw = struct.unpack(
                f"{end}HH{off}{width}s", table[entry * i : entry * (i + 1)]
            )
            entries[tag] = (kind, n, raw)
        for offsets_tag, counts_tag in _TIFF_DATA:
            if offsets_tag in entries and counts_tag in entries:
                starts = _tiff_values(fh, end, size, *entries[offsets_tag])
                lengths = _tiff_values(fh, end, size, *entries[counts_tag])
                if starts is None or lengths is None:
                    return False
                if any(a + b > size for a, b in zip(starts, lengths, strict=False)):
                    return False
        (offset,) = struct.unpack(end + off, table[entry * count :])
    return True


def _tiff_values(
    fh: BinaryIO, end: str, size: int, kind: int, n: int, raw: bytes
) -> list[int] | None:
    """The numbers of one IFD entry (inline in its ``raw`` value field of 4 bytes, 8 in
    BigTIFF, or at the offset written there); None if they lie past ``size``."""
    code, width = _TIFF_TYPES.get(kind, ("I", 4))
    total = width * n
    if total <= len(raw):
        data = raw[:total]
    else:
        (where,) = struct.unpack(end + ("I" if len(raw) == 4 else "Q"), raw)
        if where + total > size:
            return None
        fh.seek(where)
        data = fh.read(total)
    return list(struct.unpack(f"{end}{n}{code}", data))


def looks_complete(path: Path) -> bool:
    """The entry opens, and every file in it looks completely written (not empty; a JPEG
    has its EOI marker, a PNG its IEND chunk, a BMP its declared size)."""
    try:
        files = input_files(path) if path.is_dir() else [path]
        return all(file_complete(f) for f in files)
    except OSError:
        return False


@dataclass
class StabilityTracker:
    """Remember each candidate's signature and since when it has been unchanged."""

    stable_seconds: float
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, tuple[Signature, float]] = field(default_factory=dict)

    def observe(self, key: str, sig: Signature) -> bool:
        """Record ``sig`` for ``key``; True once it has not changed for ``stable_seconds``."""
        now = self.clock()
        previous = self._seen.get(key)
        if previous is None or previous[0] != sig:
            self._seen[key] = (sig, now)
            return self.stable_seconds <= 0 and previous is not None
        return now - previous[1] >= self.stable_seconds

    def unchanged_for(self, key: str) -> float:
        """Seconds since ``key``'s signature last changed (0 if unknown)."""
        seen = self._seen.get(key)
        return self.clock() - seen[1] if seen else 0.0

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._seen.pop(key, None)

    def keep_only(self, keys: set[str]) -> None:
        self.forget([k for k in self._seen if k not in keys])

    @property
    def pending(self) -> int:
        return len(self._seen)


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._event.set()


class DropFolderWatcher:
    """Finds complete inputs in the inbox and hands each to ``on_ready`` once."""

    def __init__(
        self,
        cfg: IngestSection,
        on_ready: Callable[[Path], None],
        *,
        on_orphan: Callable[[Path], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.inbox = cfg.inbox
        self.on_ready = on_ready
        self.on_orphan = on_orphan
        self.tracker = StabilityTracker(cfg.stable_seconds, clock)
        self._wake = threading.Event()
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start_observer(self) -> None:
        """Start watchdog (hints only); failure to start is logged, rescans still run."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        try:
            observer = Observer()
            observer.schedule(_Wake(self._wake), str(self.inbox), recursive=True)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except OSError as exc:
            log.warning("file-system events unavailable (%s); relying on rescans", exc)

    def stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None

    def scan(self) -> list[Path]:
        """One pass over the inbox; returns (and hands over) the entries now complete."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        present: set[str] = set()
        ready: list[Path] = []
        try:
            entries = sorted(os.scandir(self.inbox), key=lambda e: e.name)
        except OSError as exc:
            log.error("cannot list inbox %s: %s", self.inbox, exc)
            return []
        names = {e.name for e in entries if not is_sidecar(Path(e.name))}
        stems = {Path(n).stem for n in names}
        in_transit = [e.name for e in entries if is_ignored(e.name)]  # e.g. .photo.jpg.Xa12
        orphans: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            if is_ignored(entry.name):
                continue
            if entry.is_file() and is_sidecar(path):
                # A sidecar travels with its image. One whose image is not (or no longer)
                # here is an orphan once it has waited incomplete_seconds: it goes to
                # quarantine with a reason rather than lingering in the inbox.
                if path.stem in names or path.stem in stems:
                    continue
                if any(path.stem in other for other in in_transit):
                    continue  # its image is still being copied under a temporary name
                key = "sidecar:" + entry.name
                present.add(key)
                sig = signature(path)
                if (
                    sig is not None
                    and self.tracker.observe(key, sig)
                    and self.tracker.unchanged_for(key) >= self.cfg.incomplete_seconds
                ):
                    orphans.append(path)
                continue
            sig = signature(path)
            if sig is None:
                continue
            if path.is_dir() and not sig:
                continue  # an empty folder: nothing to do (yet)
            present.add(entry.name)
            if not self.tracker.observe(entry.name, sig):
                continue
            if looks_complete(path):
                ready.append(path)
            elif self.tracker.unchanged_for(entry.name) >= self.cfg.incomplete_seconds:
                # Unchanged for long and still no EOI: truncated for good. Hand it over so
                # that it ends in quarantine with a reason instead of sitting in the inbox.
                log.warning(
                    "%s has not changed for %.0f s and is incomplete",
                    path.name,
                    self.tracker.unchanged_for(entry.name),
                )
                ready.append(path)
        self.tracker.keep_only(present)
        for path in orphans:
            self.tracker.forget(["sidecar:" + path.name])
            if self.on_orphan is not None:
                try:
                    self.on_orphan(path)
                except Exception:
                    log.exception("could not set aside orphan sidecar %s", path)
        for path in ready:
            self.tracker.forget([path.name])
            try:
                self.on_ready(path)
            except Exception:  # one bad input never stops the watcher
                log.exception("could not take %s", path)
        return ready

    def run(self, stop: threading.Event, heartbeat: Callable[[], None] | None = None) -> None:
        """Scan until ``stop`` is set: on events, on a short tick while something is
        settling, and every ``rescan_seconds`` regardless.

        ``heartbeat`` is called after each scan and every :data:`HEARTBEAT_SECONDS` while
        waiting: ``dicom-node status`` calls a component alive for 10 s after its last
        beat, and a ``rescan_seconds`` above that (30 in the production example) showed an
        idle, healthy watcher as NOT RUNNING most of the time."""
        self.start_observer()
        try:
            while not stop.is_set():
                self._wake.clear()
                self.scan()
                last_beat = time.monotonic()
                if heartbeat is not None:
                    heartbeat()
                settle = max(0.05, self.cfg.stable_seconds / 2)
                timeout = settle if self.tracker.pending else self.cfg.rescan_seconds
                deadline = time.monotonic() + timeout
                while not stop.is_set() and time.monotonic() < deadline:
                    if self._wake.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                        # Coalesce bursts of events, then scan again.
                        stop.wait(0.05)
                        break
                    if heartbeat is not None and time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                        last_beat = time.monotonic()
                        heartbeat()
        finally:
            self.stop_observer()
