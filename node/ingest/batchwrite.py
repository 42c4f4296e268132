"""Group commit for batch conversion: many outputs made durable with one sync.

``atomic_write`` with fsync costs one journal commit per file (~1 ms here), which caps a
batch far below what the conversion itself manages. ``GroupCommitWriter`` keeps the same
guarantee (a file appears under its final name only complete and on stable storage) for
a batch: each output is written to a hidden temporary name without fsync; every ``group``
files (and at ``close``) the data is flushed with one ``syncfs(2)`` of that file system,
then the temporaries are renamed into place and each directory is fsynced once. A crash
leaves only hidden ``.tmp-*`` files (``node.fsutil.clean_temp_files`` removes them),
never a partial output.

Writing and committing are separable (``write_temp`` then ``add``) so that worker
processes forked from the batch can write their outputs while the parent alone commits
them. Temporary names carry the batch's process id (``.tmp-b<pid>-...``): ``abort`` also
removes those a worker wrote but never got to report.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from node.fsutil import FILE_MODE, TMP_PREFIX, Data, fsync_dir, write_all

log = logging.getLogger(__name__)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()


def _load_start_writeback() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return fn  # type: ignore[no-any-return]


_SYNC_FILE_RANGE = _load_start_writeback()
_SYNC_FILE_RANGE_WRITE = 2


def _syncfs(directory: Path) -> None:
    """syncfs(2) on the file system holding ``directory`` (Linux); ``os.sync()`` elsewhere."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", str(directory))
    finally:
        os.close(fd)


class GroupCommitWriter:
    """``writer(target, data)`` for ``convert_file``; thread-safe; call ``close()`` at the end."""

    def __init__(self, group: int = 64, fsync: bool = True) -> None:
        self.group = max(1, group)
        self.fsync = fsync
        self._pending: list[tuple[Path, Path]] = []
        self._lock = threading.Lock()
        self._committed: set[Path] = set()
        self._tag = f"{TMP_PREFIX}b{os.getpid()}-"  # the batch's pid, inherited by workers
        self._seq = itertools.count()
        self._made: set[Path] = set()  # directories known to exist (one mkdir each)

    def __call__(self, target: Path, data: Data) -> None:
        self.add(self.write_temp(target, data), target)

    def write_temp(self, target: Path, data: Data) -> Path:
        """Write ``data`` to a new hidden temporary next to ``target``; return its path.

        Not flushed: ``add`` it, and the group commit makes it durable and renames it.
        """
        parent = target.parent
        if parent not in self._made:
            parent.mkdir(parents=True, exist_ok=True)
            self._made.add(parent)
        fd, tmp = self._create(parent)
        try:
            os.fchmod(fd, FILE_MODE)
            write_all(fd, data)
            if self.fsync and _SYNC_FILE_RANGE is not None:
                # Start writing it back now (no wait, no durability claim): the group's
                # syncfs then finds most of the data already on its way to the disk.
                _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        try:
            os.close(fd)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return tmp

    def _create(self, parent: Path) -> tuple[int, Path]:
        """A new file ``.tmp-b<batch pid>-<writer pid>-<n>`` in ``parent`` (O_EXCL)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for _ in range(100):
            tmp = parent / f"{self._tag}{os.getpid()}-{next(self._seq)}"
            try:
                return os.open(tmp, flags, FILE_MODE), tmp
            except FileExistsError:  # a leftover of an earlier process with the same pid
                continue
            except FileNotFoundError:  # the directory was removed under us: make it again
                parent.mkdir(parents=True, exist_ok=True)
        raise FileExistsError(f"cannot create a temporary file in {parent}")

    def add(self, tmp: Path, target: Path) -> None:
        """Queue ``tmp`` (complete, written by ``write_temp``) to become ``target``."""
        with self._lock:
            self._pending.append((tmp, target))
            if len(self._pending) < self.group:
                return
            batch, self._pending = self._pending, []
        self._commit(batch)

    def committed(self, target: Path) -> bool:
        """True once ``target`` is in place under its final name."""
        with self._lock:
            return target in self._committed

    def close(self) -> None:
        """Commit whatever is pending (call once all conversions have returned)."""
        with self._lock:
            batch, self._pending = self._pending, []
        self._commit(batch)

    def abort(self, directories: Iterable[Path] = ()) -> None:
        """Remove pending temporaries (interrupted batch): nothing half-done stays behind.

        ``directories``: where workers may have written temporaries of this batch that were
        never ``add``-ed; those (``.tmp-b<this pid>-*``) are removed too.
        """
        with self._lock:
            batch, self._pending = self._pending, []
        for tmp, _ in batch:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.remove_strays(directories)

    def remove_strays(self, directories: Iterable[Path]) -> None:
        """Remove this batch's temporaries in ``directories`` that were never ``add``-ed
        (a worker killed after writing one); pending ones stay."""
        with self._lock:
            keep = {str(tmp) for tmp, _ in self._pending}
        for directory in set(directories):
            with contextlib.suppress(OSError):
                for entry in os.scandir(directory):
                    if entry.name.startswith(self._tag) and entry.path not in keep:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)

    def _commit(self, batch: list[tuple[Path, Path]]) -> None:
        if not batch:
            return
        if self.fsync:
            _syncfs(batch[0][1].parent)  # one flush for the group, not one commit per file
        dirs = set()
        for tmp, target in batch:
            os.replace(tmp, target)
            dirs.add(target.parent)
        if self.fsync:
            for d in dirs:
                fsync_dir(d)
        with self._lock:
            self._committed.update(target for _, target in batch)
