"""The on-disk archive: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Every object is written to a hidden temporary file beside its final name, fsynced, and
renamed into place (then the directory is fsynced), so neither a reader nor a crash ever
sees a half-written object; a restart removes leftover temporaries (:meth:`Archive.clean`).
Each UID is validated (digits and dots, 1-64 characters) before it becomes a path
component, and the final path is checked to lie under the root.

Objects received in chunks (larger than ``receive.chunk_threshold_bytes``) arrive as a
spill file in ``<root>/.incoming/`` on the same file system, and are copied behind the
file meta by the kernel (``os.sendfile``), never through Python memory.

Below the free-space floor nothing is written (:class:`OutOfSpace`); nothing is ever
deleted to make room.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from node.errors import ReceiveError, UnsafePath
from node.fsutil import TMP_PREFIX, clean_temp_files, fsync_dir, is_valid_uid
from node.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

INCOMING = ".incoming"
_PREAMBLE = b"\x00" * 128 + b"DICM"
_incoming_names = itertools.count()


class OutOfSpace(ReceiveError):
    """Storing would take the archive's file system below ``receive.min_free_bytes``, or
    the file system is full (``full``: ENOSPC/EDQUOT from the kernel)."""

    def __init__(self, message: str, *, full: bool = False, unwritable: bool = False) -> None:
        super().__init__(message)
        self.full = full
        self.unwritable = unwritable


_FULL = (errno.ENOSPC, errno.EDQUOT)
# The archive refused by the system (remounted read-only after an error, permissions
# changed, a failing disk): the sender should retry later too, not give the object up.
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


@contextlib.contextmanager
def _full_is_out_of_space(what: str) -> Iterator[None]:
    """ENOSPC/EDQUOT while ``what`` (a directory, a flush, a rename) is :class:`OutOfSpace`:
    a full disk or exhausted inodes are a resource shortage the sender may retry later
    (0xA700), not a processing failure."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise OutOfSpace(
                f"file system of the archive full ({exc.strerror}) while {what}: free some "
                "space (or inodes) under receive.archive",
                full=True,
            ) from exc
        if exc.errno in _UNWRITABLE:
            raise OutOfSpace(
                f"archive not writable ({exc.strerror}: {exc.filename or 'receive.archive'}) "
                f"while {what}: make receive.archive writable for the node (a read-only "
                "remount after disk errors needs the disk checked); senders retry meanwhile",
                unwritable=True,
            ) from exc
        raise


@dataclass(frozen=True)
class Stored:
    """Where an object went, and whether an earlier copy was there."""

    path: Path
    size: int
    existed: bool  # a file of that SOP Instance UID was already in place
    written: bool  # False: the earlier copy was kept (duplicates = "keep")


def check_uid(value: str, tag: str, keyword: str) -> str:
    """``value`` if it is a UID safe to use as a path component, else :class:`UnsafePath`."""
    # is_valid_uid's "$" also matches before a final newline: "1.2.3\n" must not pass.
    if not is_valid_uid(value) or value.endswith("\n"):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise UnsafePath(
            f"{tag} {keyword} {shown!r} is not a valid UID (digits and dots, 1-64 characters,"
            " no empty component): fix the sending system; nothing was stored"
        )
    return value


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    tag = struct.pack("<HH", group_elem >> 16, group_elem & 0xFFFF)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, calling_ae: str
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (PS3.10 7.1) for a received object.

    Encoded by hand (Explicit VR Little Endian, a dozen bytes per element): building it
    through pydicom cost more than the rest of the C-STORE handler together.
    """
    body = b"".join(
        (
            _element(0x00020001, b"OB", b"\x00\x01"),  # FileMetaInformationVersion
            _element(0x00020002, b"UI", _ui(sop_class_uid)),  # MediaStorageSOPClassUID
            _element(0x00020003, b"UI", _ui(sop_instance_uid)),  # MediaStorageSOPInstanceUID
            _element(0x00020010, b"UI", _ui(transfer_syntax)),  # TransferSyntaxUID
            _element(0x00020012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _element(0x00020013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
            _element(0x00020016, b"AE", _text(calling_ae)) if calling_ae else b"",
        )
    )
    group_length = _element(0x00020000, b"UL", struct.pack("<L", len(body)))
    return _PREAMBLE + group_length + body


@dataclass(frozen=True)
class Staged:
    """An object received straight into a file: File Meta Information, then the data set.

    Written by the SCP's own data phase (:mod:`node.receive.dataphase`) into
    ``<root>/.incoming`` while the PDUs arrive; ``data_offset`` is where the data set
    starts. :meth:`Archive.place` moves it to its final name.
    """

    path: Path
    data_offset: int


class Archive:
    """The archive root, its duplicate policy and its free-space floor."""

    def __init__(
        self,
        root: Path,
        *,
        duplicates: Literal["keep", "overwrite"] = "keep",
        min_free_bytes: int = 0,
        fsync: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self.duplicates = duplicates
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        self.incoming = self.root / INCOMING

    def prepare(self) -> int:
        """Create the root and the spill directory; remove leftover temporaries."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.incoming.mkdir(exist_ok=True)
        except OSError as exc:
            raise ReceiveError(
                f"receive.archive: cannot create {self.root}: {exc.strerror}"
            ) from None
        removed = clean_temp_files(self.root)
        for spill in self.incoming.iterdir():
            with contextlib.suppress(OSError):
                spill.unlink()
                removed += 1
        if removed:
            log.warning("removed %d partial object(s) left by an earlier run", removed)
        return removed

    clean = prepare

    def restore_dirs(self) -> None:
        """Recreate the archive root and ``.incoming`` if they were removed while we run.

        A retention job's ``find ARCHIVE -type d -empty -delete`` removes an empty
        ``.incoming`` (and the root, once every study is gone): every C-STORE was then
        refused 0xA700 until the node restarted.
        """
        for directory in (self.root, self.incoming):
            try:
                directory.mkdir()
            except FileExistsError:
                continue
            log.warning(
                "%s was removed while the node was running (a clean-up job deleting empty "
                "directories?): recreated; keep such jobs away from receive.archive's root "
                "and its .incoming directory",
                directory,
            )
            if self.fsync:
                with contextlib.suppress(OSError):
                    fsync_dir(directory.parent)

    def new_incoming_file(self, kind: str) -> tuple[int, Path]:
        """Create a new empty file in ``.incoming`` for writing: ``(fd, path)``; ``kind``
        names its use ("rx" for a staged object, "spill" for a spill buffer).

        The name is unique within the archive (process, thread, counter) and hidden from
        readers (:data:`TMP_PREFIX`); the mode is the archive's (0644 less the umask).
        If a clean-up job removed ``.incoming``, it is recreated (:meth:`restore_dirs`).
        """
        name = f"{TMP_PREFIX}{kind}-{os.getpid()}-{threading.get_ident()}-{next(_incoming_names)}"
        path = self.incoming / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            self.restore_dirs()
            fd = os.open(path, flags, 0o644)
        return fd, path

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """The final path of an object; :class:`UnsafePath` for any invalid UID."""
        check_uid(study_uid, "(0020,000D)", "StudyInstanceUID")
        check_uid(series_uid, "(0020,000E)", "SeriesInstanceUID")
        check_uid(sop_instance_uid, "(0008,0018)", "SOPInstanceUID")
        path = self.root / study_uid / series_uid / f"{sop_instance_uid}.dcm"
        # Belt and braces: the UID check already excludes separators and dots-only parts.
        if path.parent.parent.parent != self.root:
            raise UnsafePath(f"path {path} lies outside {self.root}")
        return path

    def check_space(self, size: int) -> None:
        """:class:`OutOfSpace` if writing ``size`` bytes would cross the floor."""
        if self.min_free_bytes <= 0:
            return
        try:
            free = shutil.disk_usage(self.root).free
        except FileNotFoundError:  # the root removed under us (see restore_dirs)
            try:
                self.restore_dirs()
                free = shutil.disk_usage(self.root).free
            except OSError as exc:
                raise OutOfSpace(
                    f"receive.archive {self.root} is gone and cannot be recreated "
                    f"({exc.strerror}): restore it (a file system not mounted?)",
                    unwritable=True,
                ) from exc
        if free - size < self.min_free_bytes:
            raise OutOfSpace(
                f"only {free} bytes free under {self.root}, floor receive.min_free_bytes="
                f"{self.min_free_bytes}: free some space or lower the floor"
            )

    def _mkdirs(self, directory: Path) -> None:
        """Create the study and series directories, fsyncing each new entry's parent."""
        for level in (directory.parent, directory):
            try:
                level.mkdir()
            except FileExistsError:
                continue
            except FileNotFoundError:
                if level != directory.parent:
                    raise
                self.restore_dirs()  # the archive root itself was removed
                level.mkdir(exist_ok=True)
            if self.fsync:
                fsync_dir(level.parent)

    def store(
        self,
        path: Path,
        meta: bytes,
        data: bytes | memoryview | Path,
        *,
        recorded: bool,
    ) -> Stored:
        """Write ``meta`` + ``data`` (bytes, or a spill file) atomically at ``path``.

        ``recorded`` says whether the ledger already knows this SOP Instance UID: a file
        in place without a ledger record is a leftover of a crash between rename and
        commit, and is replaced whatever the duplicate policy.
        """
        size = len(meta) + (data.stat().st_size if isinstance(data, Path) else len(data))
        existed = path.exists()
        if existed and recorded and self.duplicates == "keep":
            return Stored(path, size, existed=True, written=False)
        self.check_space(size)
        with _full_is_out_of_space(f"storing {path.name}"):
            self._mkdirs(path.parent)
            self._write(path, meta, data)
        return Stored(path, size, existed=existed, written=True)

    def place(self, path: Path, staged: Staged, *, recorded: bool) -> Stored:
        """Move a complete staged object (file meta + data set, see :class:`Staged`) to ``path``.

        The staged file is in ``.incoming`` on the archive's file system: with ``fsync`` its
        data is flushed (``fdatasync``: contents and size), it is renamed into place and
        the series directory is fsynced, so the object survives a power loss under its
        final name, complete or not at all. The caller removes the staged file if this
        does not consume it (duplicate kept, out of space, error).
        """
        size = os.stat(staged.path).st_size
        existed = path.exists()
        if existed and recorded and self.duplicates == "keep":
            return Stored(path, size, existed=True, written=False)
        self.check_space(0)  # the staged copy already occupies its space
        with _full_is_out_of_space(f"placing {path.name}"):
            self._mkdirs(path.parent)
            if self.fsync:
                fd = os.open(staged.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fdatasync(fd)  # delayed allocation may report ENOSPC only here
                finally:
                    os.close(fd)
            os.replace(staged.path, path)
            if self.fsync:
                fsync_dir(path.parent)
        return Stored(path, size, existed=existed, written=True)

    def _write(self, path: Path, meta: bytes, data: bytes | memoryview | Path) -> None:
        """Temp file beside ``path`` (hidden, per thread), fsync, rename, fsync directory."""
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            try:
                _write_all(fd, meta)
                if isinstance(data, Path):
                    _copy_file(data, fd)
                else:
                    _write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        if self.fsync:
            fsync_dir(path.parent)

    def remove(self, path: Path) -> None:
        """Take back an object whose record could not be committed."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if self.fsync:
            with contextlib.suppress(OSError):
                fsync_dir(path.parent)

    def is_temporary(self, path: Path) -> bool:
        return path.name.startswith(TMP_PREFIX) or INCOMING in path.parts


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copy_file(src: Path, out_fd: int) -> None:
    """Append ``src`` to the open file ``out_fd`` with in-kernel copies."""
    with open(src, "rb") as fin:
        remaining = os.fstat(fin.fileno()).st_size
        offset = 0
        while remaining > 0:
            sent = os.sendfile(out_fd, fin.fileno(), offset, min(remaining, 1 << 30))
            if sent == 0:
                raise OSError(errno.EIO, f"short copy from {src}")
            offset += sent
            remaining -= sent
