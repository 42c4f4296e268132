"""Shared set-ups of the node service tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from node.config import Config, config_from_dict


def queue_only_config(tmp_path: Path) -> Config:
    """A node under ``tmp_path`` with ingest, receive and export off: its queue alone."""
    return config_from_dict(
        {
            "node": {"base_dir": str(tmp_path)},
            "ingest": {"enabled": False},
            "receive": {"enabled": False},
            "export": {"enabled": False},
        },
        tmp_path,
    )


def ended_pid() -> int:
    """The pid of a process that has ended (a crashed node or drain of this host)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)
