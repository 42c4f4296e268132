"""The export manifest: one JSON line per file written, for audit.

Each line: ``time`` (UTC, ISO 8601), ``source`` (file read), ``sop_instance_uid`` (the
source's real SOP Instance UID, also when the export is de-identified: the manifest is the
local link back to the source and must not be handed out with the exports), ``output``,
``sha256`` and ``bytes`` of the output, ``kind`` (png, pdf, encapsulated-pdf) and ``voi``
(the VOI transformation used). Lines are appended under an exclusive ``flock`` (and
fsynced unless disabled), so parallel workers and processes never interleave partial lines.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Manifest:
    """Append-only JSON-lines file of exports."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync

    def record(self, **entry: Any) -> dict[str, Any]:
        """Append one entry (``time`` is added); returns what was written."""
        line = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")}
        line.update({k: (str(v) if isinstance(v, Path) else v) for k, v in entry.items()})
        data = (json.dumps(line, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return line

    def entries(self) -> list[dict[str, Any]]:
        """All entries (for tests and audits); unreadable lines are skipped with a warning."""
        if not self.path.exists():
            return []
        out = []
        for n, text in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                out.append(json.loads(text))
            except json.JSONDecodeError:
                log.warning("%s:%d: not a JSON line, skipped", self.path, n)
        return out
