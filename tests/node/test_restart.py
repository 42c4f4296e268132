"""What a restarted node cleans up after a SIGKILL: temporaries of cut-short writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.node.test_node_e2e import (
    NodeProcess,
    node_factory,  # noqa: F401 - fixture
    wait_for,
    write_config,
)
from tests.peers import free_port

pytestmark = pytest.mark.slow


def test_restart_removes_temporaries_of_exports_cut_short(
    tmp_path: Path,
    node_factory: Callable[[Path], NodeProcess],  # noqa: F811
) -> None:
    config = write_config(tmp_path, None, free_port(), ingest="enabled = false")
    series = tmp_path / "var" / "export" / "1.2.3" / "1.2.3.4"
    series.mkdir(parents=True)
    leftover = series / ".tmp-k1ll3d"  # a PNG whose writer was killed before the rename
    leftover.write_bytes(b"\x89PNG half")
    kept = series / "00001-1.2.3.4.5.png"
    kept.write_bytes(b"\x89PNG whole")
    node = node_factory(config)
    node.start()
    wait_for("the node", lambda: node.status()["components"].get("node", {}).get("alive"))
    assert not leftover.exists()
    assert kept.exists()
    assert node.stop() == 0


def test_sighup_does_not_kill_the_node(
    tmp_path: Path,
    node_factory: Callable[[Path], NodeProcess],  # noqa: F811
) -> None:
    """SIGHUP's default action ended the node at once (a closed terminal, `kill -HUP`
    sent to make daemons reload): it is logged and ignored; SIGTERM still stops it."""
    import signal
    import time

    config = write_config(tmp_path, None, free_port(), ingest="enabled = false")
    node = node_factory(config)
    node.start()
    wait_for("the node", lambda: node.status()["components"].get("node", {}).get("alive"))
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    proc = node.proc
    wait_for("SIGHUP handled", lambda: "SIGHUP" in node.log.read_text() or proc.poll() is not None)
    time.sleep(0.5)
    assert proc.poll() is None, "the node died of SIGHUP"
    assert "received SIGHUP: ignored" in node.log.read_text()
    assert node.stop() == 0
