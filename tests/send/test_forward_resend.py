"""Forwarded studies and corrected copies: a received instance sent again under its SOP
Instance UID (``receive.duplicates = "overwrite"``) must reach the forward destination
again, as DCMTK's storescp receives it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread

from node.config import config_from_dict
from node.queue.store import JobState
from node.send.worker import DeliveryWorker
from node.service import NodeService
from tests.peers import LOOPBACK, Storescp
from tests.send.data import native_sc

pytestmark = pytest.mark.dcmtk


def _node(tmp_path: Path, scp: Storescp) -> tuple[NodeService, DeliveryWorker]:
    cfg = config_from_dict(
        {
            "node": {"base_dir": str(tmp_path)},
            "ingest": {"enabled": False},
            "receive": {"enabled": False},
            "export": {"enabled": False},
            "queue": {"retry_jitter": 0.0},
            "destinations": [
                {"name": "research", "host": LOOPBACK, "port": scp.port, "called_ae": scp.aet}
            ],
        },
        tmp_path,
    )
    node = NodeService(cfg)
    worker = DeliveryWorker(cfg, cfg.destinations[0], node.store, owner="test")
    return node, worker


def _rewrite(path: Path, target: Path, name: str) -> None:
    """The archive's way: a new file renamed over (or next to) the old one."""
    ds = dcmread(path)
    ds.PatientName = name
    tmp = target.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, target)


def _patient_names(scp: Storescp) -> list[str]:
    return sorted(str(dcmread(f).PatientName) for f in scp.files())


def test_a_corrected_copy_is_forwarded_again(tmp_path: Path, storescp_any: Storescp) -> None:
    """Overwritten in place after its forward was delivered: the job was done, so the second
    forward of the study left it alone and the PACS kept the uncorrected object."""
    study = tmp_path / "archive" / "study1"
    study.mkdir(parents=True)
    f = native_sc(study / "a.dcm")
    other = native_sc(study / "b.dcm")
    node, worker = _node(tmp_path, storescp_any)
    try:
        node._forward(["research"], study)
        assert worker.run_once() == 2
        _rewrite(f, f, "Corrected^Name")
        node._forward(["research"], study)  # a late instance re-arms study_complete
        assert worker.run_once() == 1  # the corrected one only, not b.dcm again
        jobs = node.store.select(limit=10)
    finally:
        node.store.close()
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
    assert _patient_names(storescp_any) == ["Corrected^Name", "Test^Send", "Test^Send"]
    assert dcmread(other).PatientName == "Test^Send"


def test_a_copy_moved_to_another_study_before_delivery_is_not_lost(
    tmp_path: Path, storescp_any: Storescp
) -> None:
    """The instance arrives again under a corrected Study Instance UID while its first
    forward still waits (PACS down): the old file is removed. The pending job kept the old
    path and went dead as 'file is gone'; the new study's forward left it alone."""
    first = tmp_path / "archive" / "study1"
    second = tmp_path / "archive" / "study2"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    f = native_sc(first / "a.dcm")
    node, worker = _node(tmp_path, storescp_any)
    try:
        node._forward(["research"], first)  # queued; not delivered yet
        _rewrite(f, second / "a.dcm", "Moved^Study")
        f.unlink()
        node._forward(["research"], second)
        assert worker.run_once() == 1
        [job] = node.store.select(limit=10)
    finally:
        node.store.close()
    assert job.state == JobState.DONE, job.last_error
    assert _patient_names(storescp_any) == ["Moved^Study"]
