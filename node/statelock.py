"""One node process per state directory: an exclusive ``flock`` on ``<state_dir>/node.lock``.

``dicom-node run`` and ``dicom-node receive`` recover at start-up from the crash of the
previous process on their state: they requeue every claimed job, resume interrupted
ingest claims and remove the archive's staging files. Done while another process still
works on the same state, that recovery takes its jobs, claims and half-received objects
from under it (deliveries sent twice, objects refused). So the second process refuses to
start instead, naming the first.

The lock is held by an open file descriptor for the life of the process; the kernel drops
it when the process dies, however it dies (SIGKILL included), so a crash never leaves a
stale lock behind. ``queue``, ``status`` and ``send --queue`` do not take it: they only
use SQLite's own locking.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from node.errors import AlreadyRunning

log = logging.getLogger(__name__)

LOCK_NAME = "node.lock"


class StateLock:
    """The exclusive lock of one state directory, held until :meth:`release`."""

    def __init__(self, state_dir: Path | str, command: str) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`AlreadyRunning` naming the holder (no-op if held)."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise AlreadyRunning(
                f"{self.path.parent}: another dicom-node process ({holder}) is using this "
                "state directory; stop it first, or give this one its own node.state_dir "
                "(and its own folders and port)"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({self.command})\n".encode(), 0)
        self._fd = fd
        log.debug("holding %s", self.path)

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process ends)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"
