"""File-system helpers: atomic writes and safe path building under a root.

``atomic_write`` writes to a hidden temporary name in the target directory, fsyncs the
file, renames it into place with ``os.replace`` and fsyncs the directory, so a reader (or a
crash) never sees a half-written file. ``safe_join`` refuses any component that could leave
the root (the path-traversal class of bugs seen in several DICOM servers).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from node.errors import UnsafePath

TMP_PREFIX = ".tmp-"

#: What the writers take: one buffer, or the pieces of a file in order (written with
#: ``writev``, so a file built from a header and a large payload is never joined in memory).
Data = bytes | Sequence[bytes]
_IOV_MAX = 1024  # the POSIX minimum for writev's vector length; Linux's is 1024 as well

#: errno values that blame the machine, not the file at hand: a full, over-quota or
#: read-only file system, an I/O error, no file descriptors or memory left. Work failing
#: with one of these is retried once the condition passes, never set aside as bad input.
RESOURCE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


def is_resource_error(exc: BaseException) -> bool:
    """True for an ``OSError`` that says the system is short of a resource (see above)."""
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


def _process_umask() -> int:
    """The process umask, read without changing it (``os.umask`` is process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


#: Mode of files we create: what ``open()`` would give (0666 less the umask), not the
#: owner-only 0600 of ``mkstemp``, so exports and archives are readable as users expect.
FILE_MODE = 0o666 & ~_process_umask()
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(uid: str) -> bool:
    """True for a DICOM UID usable as a file name: digits and dots, 1..64 chars, no empty part."""
    return 0 < len(uid) <= 64 and bool(_UID_RE.fullmatch(uid))


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(target: Path, *, fsync: bool = True, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``target``; on clean exit rename it into place.

    On an exception the temporary file is removed and ``target`` is untouched. With
    ``overwrite=False`` an existing target is kept and ``FileExistsError`` is raised.
    """
    import tempfile  # ~6 ms of imports (shutil, random): not on every command's start-up

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            # link() fails if the target exists: no window where a second writer wins.
            os.link(tmp, target)
            tmp.unlink()
        if fsync:
            fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_all(fd: int, data: Data) -> None:
    """Write all of ``data`` (one buffer or pieces in order) to ``fd``, short writes resumed."""
    if isinstance(data, bytes):
        data = (data,)
    views = [memoryview(piece) for piece in data if piece]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + _IOV_MAX])
        while written:
            size = len(views[first])
            if written < size:  # a short write ends inside this piece
                views[first] = views[first][written:]
                break
            written -= size
            first += 1


def atomic_write(target: Path, data: Data, *, fsync: bool = True, overwrite: bool = True) -> None:
    """Write ``data`` to ``target`` atomically (temp file, fsync, rename, fsync dir)."""
    with atomic_open(target, fsync=fsync, overwrite=overwrite) as fh:
        write_all(fh.fileno(), data)  # unbuffered: nothing goes through fh's buffer


def safe_join(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root``, refusing anything that could escape it.

    Each part must be a single non-empty path component without separators, NUL, or a
    leading dot; the resolved result must lie under the resolved root.
    """
    root_resolved = Path(root).resolve()
    for part in parts:
        if (
            not part
            or part in (".", "..")
            or "/" in part
            or "\\" in part
            or "\x00" in part
            or part.startswith(".")
        ):
            raise UnsafePath(f"unsafe path component {part!r} under {root_resolved}")
    candidate = root_resolved.joinpath(*parts).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise UnsafePath(f"path {candidate} lies outside {root_resolved}")
    return candidate


def clean_temp_files(root: Path) -> int:
    """Remove leftover ``atomic_open`` temporaries under ``root``; return how many."""
    removed = 0
    if not Path(root).exists():
        return 0
    for path in Path(root).rglob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed
