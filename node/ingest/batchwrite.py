"""Group commit for batch conversion: many outputs made durable with one sync.

``atomic_write`` with fsync costs one journal commit per file (~1 ms here), which caps a
batch far below what the conversion itself manages. ``GroupCommitWriter`` keeps the same
guarantee (a file appears under its final name only complete and on stable storage) for
a batch: each output is written to a hidden temporary name without fsync; every ``group``
files (and at ``close``) the data is flushed with one ``syncfs(2)`` of that file system,
then the temporaries are renamed into place and each directory is fsynced once. A crash
leaves only hidden ``.tmp-*`` files (``node.fsutil.clean_temp_files`` removes them),
never a partial output.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from node.fsutil import FILE_MODE, TMP_PREFIX, fsync_dir

log = logging.getLogger(__name__)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()


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

    def __call__(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
        tmp = Path(name)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
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

    def abort(self) -> None:
        """Remove pending temporaries (interrupted batch): nothing half-done stays behind."""
        with self._lock:
            batch, self._pending = self._pending, []
        for tmp, _ in batch:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

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
