"""`dicom-node receive` killed with SIGKILL mid-transfer: no partial object, retry stores it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, peer_env, tool
from tests.receive.helpers import (
    AET,
    archived,
    dataset_bytes,
    dcmsend,
    echoscu,
    image_dataset,
    start_receive,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]


def test_sigkill_mid_transfer_leaves_no_partial_object(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        "[receive]\nmin_free_bytes = 0\nchunk_threshold_bytes = 1048576\n"
        'archive = "archive"\n[node]\nstate_dir = "state"\n'
    )
    archive = tmp_path / "archive"
    big = tmp_path / "big.dcm"
    image_dataset(6000, 8000, bytes(range(256)) * (6000 * 8000 // 256)).save_as(
        big, enforce_file_format=True
    )

    proc, port = start_receive(config)
    sender = subprocess.Popen(
        [tool("storescu"), "-aet", "MODALITY", "-aec", AET, "-pdu", "16384", LOOPBACK, str(port)]
        + [str(big)],
        env=peer_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Wait until the object is being received into a spill file, then kill -9.
        incoming = archive / ".incoming"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            spills = list(incoming.glob(".tmp-*")) if incoming.exists() else []
            if spills and spills[0].stat().st_size > 4 << 20:
                break
            assert sender.poll() is None, "the transfer finished before the kill"
            time.sleep(0.01)
        else:
            pytest.fail("no transfer in progress")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sender.wait(60)
        assert sender.returncode != 0
    finally:
        for p in (proc, sender):
            if p.poll() is None:
                p.kill()
                p.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    # Nothing half-written is visible as an object.
    assert archived(archive) == []

    proc, port = start_receive(config)
    try:
        # The restart removed the leftovers.
        assert not [p for p in archive.rglob("*") if p.is_file()]
        assert echoscu(port).returncode == 0
        res = dcmsend(port, [big])  # the sender's retry
        assert res.returncode == 0, res.stderr
        (stored,) = archived(archive)
        assert dataset_bytes(stored)[1] == dataset_bytes(big)[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        proc.stdout.close()
