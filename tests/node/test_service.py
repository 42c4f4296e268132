"""The node service's stage threads: a stage that crashes is started again."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from node import service
from node.config import config_from_dict
from node.service import NodeService


def test_a_crashed_stage_is_restarted_until_the_node_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "RESTART_MIN_SECONDS", 0.01)
    node = NodeService(config_from_dict({"node": {"base_dir": str(tmp_path)}}, tmp_path))
    runs: list[int] = []
    second_run = threading.Event()

    def stage() -> None:
        runs.append(1)
        if len(runs) < 3:  # e.g. a heartbeat commit on a full disk
            raise OSError(28, "No space left on device")
        second_run.set()
        node.stop_event.wait()

    node._thread("flaky", stage)
    assert second_run.wait(10), f"the stage ran {len(runs)} time(s) and was not restarted"
    node.stop_event.set()
    node.threads[0].join(10)
    assert not node.threads[0].is_alive()
    assert len(runs) == 3
    node.store.close()
