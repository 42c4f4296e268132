"""The whole node as a subprocess, Orthanc as the PACS, DCMTK as the modality.

Every input must end in exactly one visible state: delivered (Orthanc has it, the source is
in done/), quarantined with a reason, or still queued.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.peers import LOOPBACK, Orthanc, Storescp, free_port, peer_env, tool, wait_echo

REPO = Path(__file__).resolve().parents[2]
DICOM_NODE = str(Path(sys.executable).with_name("dicom-node"))

pytestmark = pytest.mark.slow


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def write_config(tmp: Path, orthanc: Orthanc | None, scp_port: int, **extra: str) -> Path:
    dest = ""
    if orthanc is not None:
        dest = f"""
[[destinations]]
name = "orthanc"
host = "{LOOPBACK}"
port = {orthanc.dicom_port}
called_ae = "{orthanc.aet}"
calling_ae = "DICOMNODE"
"""
    text = f"""
[node]
base_dir = "{tmp}"
state_dir = "state"

[ingest]
stable_seconds = 0.5
incomplete_seconds = 3.0
rescan_seconds = 1.0
{extra.get("ingest", "")}

[ingest.defaults]
ImageLaterality = "U"

[queue]
retry_initial_seconds = 0.5
retry_max_seconds = 2.0

{dest}

[receive]
port = {scp_port}
study_quiet_seconds = 2.0
min_free_bytes = 1000000
{extra.get("receive", "")}

[export]
{extra.get("export", "")}
"""
    path = tmp / "node.toml"
    path.write_text(text)
    return path


class NodeProcess:
    """``dicom-node run`` as a real subprocess."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [DICOM_NODE, "run", "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def status(self) -> dict:
        out = subprocess.run(
            [DICOM_NODE, "status", "--json", "-c", str(self.config)],
            capture_output=True,
            timeout=60,
        )
        report = json.loads(out.stdout)  # exit 1 (degraded) during an outage, for one
        assert out.returncode == report["exit_status"], out.stderr
        return report


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[[Path], NodeProcess]]:
    nodes: list[NodeProcess] = []

    def make(config: Path) -> NodeProcess:
        node = NodeProcess(config, tmp_path / "node.log")
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


def drop_batch(
    inbox: Path, start: int, count: int, corrupt_at: int | None = None
) -> list[tuple[str, str]]:
    """Drop images the ways users do: plain, slow chunked copies, rsync temp names, sidecars.

    Returns the (PatientID, PatientName) pairs expected in the PACS.
    """
    expected = []
    for i in range(start, start + count):
        name = f"img{i:03d}.jpg"
        data = jpeg(i)
        if i == corrupt_at:
            (inbox / name).write_bytes(data[: len(data) // 2])  # truncated for good
            continue
        pid = f"P{i % 7}"
        expected.append((pid, f"Doe^Pat{i % 7}"))
        sidecar = {"PatientID": pid, "PatientName": f"Doe^Pat{i % 7}"}
        (inbox / f"{name}.json").write_text(json.dumps(sidecar))
        kind = i % 3
        if kind == 0:
            (inbox / name).write_bytes(data)
        elif kind == 1:  # rsync style: hidden temp name, then rename
            tmp = inbox / f".{name}.Xa{i:04d}"
            tmp.write_bytes(data)
            os.rename(tmp, inbox / name)
        else:  # slow copy in chunks
            with open(inbox / name, "wb") as fh:
                for offset in range(0, len(data), 1024):
                    fh.write(data[offset : offset + 1024])
                    fh.flush()
                    time.sleep(0.005)
    return expected


def patients(orthanc: Orthanc) -> list[tuple[str, str]]:
    tags = [orthanc.get(f"/instances/{oid}/simplified-tags") for oid in orthanc.instances()]
    return sorted((t["PatientID"], t["PatientName"]) for t in tags)


def store_as_ct01(scp_port: int, files: list[Path]) -> None:
    """DCMTK storescu as the modality CT01, one association, into the node's SCP."""
    sent = subprocess.run(
        [tool("storescu"), "-aet", "CT01", "-aec", "DICOMNODE", LOOPBACK, str(scp_port)]
        + [str(f) for f in files],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr


def start_drop_node(
    tmp_path: Path, orthanc: Orthanc, node_factory: Callable[[Path], NodeProcess]
) -> tuple[Path, Path, NodeProcess]:
    """A node with a drop folder delivering to ``orthanc`` (no SCP), started."""
    config = write_config(tmp_path, orthanc, free_port(), receive="enabled = false")
    inbox = tmp_path / "var" / "inbox"
    inbox.mkdir(parents=True)
    node = node_factory(config)
    node.start()
    return config, inbox, node


@pytest.mark.orthanc
def test_drop_100_with_kill_and_restart_delivers_exactly_99(
    tmp_path: Path, orthanc: Orthanc, node_factory: Callable[[Path], NodeProcess]
) -> None:
    config, inbox, node = start_drop_node(tmp_path, orthanc, node_factory)
    expected = drop_batch(inbox, 0, 50, corrupt_at=17)
    wait_for("some deliveries", lambda: len(orthanc.instances()) >= 10)
    node.kill()  # SIGKILL in the middle of the batch
    expected += drop_batch(inbox, 50, 50)
    node = node_factory(config)
    node.start()
    wait_for("99 instances in Orthanc", lambda: len(orthanc.instances()) >= 99, timeout=180)
    wait_for("an empty inbox", lambda: not any(inbox.iterdir()), timeout=60)
    quarantine = tmp_path / "var" / "quarantine"
    wait_for("the corrupt file in quarantine", lambda: (quarantine / "img017.jpg").exists())
    time.sleep(1.0)
    assert len(orthanc.instances()) == 99
    assert patients(orthanc) == sorted(expected)
    reason = (quarantine / "img017.jpg.error.txt").read_text()
    assert "img017.jpg" in reason and "reason:" in reason
    wait_for("every claim finished", lambda: not any((tmp_path / "var" / "work").iterdir()))
    status = node.status()
    assert status["pending"] == 0
    assert status["counters"]["quarantined"] == 1
    assert node.stop() == 0


@pytest.mark.orthanc
def test_pacs_outage_keeps_everything_queued_then_delivers(
    tmp_path: Path, orthanc: Orthanc, node_factory: Callable[[Path], NodeProcess]
) -> None:
    config, inbox, node = start_drop_node(tmp_path, orthanc, node_factory)
    drop_batch(inbox, 0, 10)
    wait_for("the first deliveries", lambda: len(orthanc.instances()) >= 10)
    orthanc.stop()
    outage_started = time.monotonic()
    drop_batch(inbox, 10, 20)
    wait_for("the backlog in status", lambda: node.status()["pending"] >= 20, timeout=60)
    backlog = node.status()
    assert backlog["exit_status"] in (0, 1)  # degraded (1) once jobs wait for a retry
    assert (
        backlog["queue"]["deliver"]["orthanc"].get("retry", 0)
        + backlog["queue"]["deliver"]["orthanc"].get("queued", 0)
        >= 1
    )
    time.sleep(max(0.0, 30.0 - (time.monotonic() - outage_started)))  # a 30 s outage
    orthanc.start()
    wait_for("all 30 delivered", lambda: len(orthanc.instances()) == 30, timeout=120)
    wait_for("an empty queue", lambda: node.status()["pending"] == 0, timeout=60)
    assert node.status()["health"] == "running"  # exit 0 again once the backlog is sent
    assert node.stop() == 0


@pytest.mark.dcmtk
def test_modality_series_is_archived_exported_and_forwarded(
    tmp_path: Path, storescp_any: Storescp, node_factory: Callable[[Path], NodeProcess]
) -> None:
    from tests.node.series import write_ct_series

    scp_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, None, scp_port, ingest="enabled = false")
    with open(config, "a") as fh:
        fh.write(
            f"""
[[destinations]]
name = "research"
host = "{LOOPBACK}"
port = {storescp_any.port}
called_ae = "{storescp_any.aet}"

[[receive.forward]]
destination = "research"
modality = "CT"

[metrics]
enabled = true
port = {metrics_port}
"""
        )
    node = node_factory(config)
    node.start()
    wait_echo(scp_port, "DICOMNODE", timeout=60)
    series_dir = tmp_path / "ct"
    files = write_ct_series(series_dir, count=5)
    store_as_ct01(scp_port, files)
    archive = tmp_path / "var" / "archive"
    export = tmp_path / "var" / "export"
    wait_for("5 archived objects", lambda: len(list(archive.rglob("*.dcm"))) == 5)
    wait_for("5 PNGs", lambda: len(list(export.rglob("*.png"))) == 5, timeout=60)
    wait_for("a series PDF", lambda: len(list(export.rglob("*.pdf"))) == 1, timeout=60)
    manifests = list(export.rglob("*.jsonl"))
    assert manifests
    lines = [json.loads(line) for m in manifests for line in m.read_text().splitlines()]
    outputs = {Path(entry["output"]).name for entry in lines}
    for produced in list(export.rglob("*.png")) + list(export.rglob("*.pdf")):
        assert produced.name in outputs
    assert all(len(entry["sha256"]) == 64 for entry in lines)
    # routing: the study went on to the research SCP once it was complete
    wait_for("5 forwarded objects", lambda: len(storescp_any.files()) == 5, timeout=60)
    received = {pydicom.dcmread(f).SOPInstanceUID for f in storescp_any.files()}
    assert received == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    with urllib.request.urlopen(f"http://{LOOPBACK}:{metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "dicom_node_received_total 5.0" in metrics
    components = node.status()["components"]
    assert all(components[name]["alive"] for name in ("node", "scp", "export-0"))
    assert 'dicom_node_queue_depth{destination="research",kind="deliver",state="done"} 5.0' in (
        metrics
    )
    assert node.stop() == 0


@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_commitment_report_outlives_a_killed_node(
    tmp_path: Path, node_factory: Callable[[Path], NodeProcess]
) -> None:
    """A modality stores a series, asks for storage commitment, releases at once and is
    not listening: the node queues the report; SIGKILL; the modality starts listening;
    the restarted node delivers the report on a new association."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    from tests.node.series import write_ct_series

    scp_port, modality_port = free_port(), free_port()
    config = write_config(
        tmp_path, None, scp_port, ingest="enabled = false", export="enabled = false"
    )
    with open(config, "a") as fh:
        fh.write(
            f"""
[[destinations]]
name = "ct01"
host = "{LOOPBACK}"
port = {modality_port}
called_ae = "CT01"
"""
        )
    node = node_factory(config)
    node.start()
    wait_echo(scp_port, "DICOMNODE", timeout=60)
    files = write_ct_series(tmp_path / "ct", count=3)
    store_as_ct01(scp_port, files)
    refs = [pydicom.dcmread(f) for f in files]
    request = Dataset()
    request.TransactionUID = pydicom.uid.generate_uid()
    request.ReferencedSOPSequence = Sequence()
    for ds in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        request.ReferencedSOPSequence.append(item)
    modality = AE(ae_title="CT01")
    modality.add_requested_context(StorageCommitmentPushModel)
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    assoc = modality.associate(LOOPBACK, scp_port, ae_title="DICOMNODE")
    assert assoc.is_established
    status, _ = assoc.send_n_action(
        request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
    )
    assoc.release()
    assert status.Status == 0

    def report_state() -> str:
        db = sqlite3.connect(tmp_path / "state" / "queue.sqlite3")
        try:
            row = db.execute("SELECT state FROM jobs WHERE kind='commitment_report'").fetchone()
        finally:
            db.close()
        return row[0] if row else ""

    wait_for("the report queued for a retry", lambda: report_state() == "retry", timeout=60)
    node.kill()

    got: list[tuple[int, str, set[str]]] = []

    def on_report(event: Any) -> tuple[int, None]:
        info = event.event_information
        uids = {str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence}
        got.append((event.request.EventTypeID, str(info.TransactionUID), uids))
        return 0, None

    server = modality.start_server(
        (LOOPBACK, modality_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert server is not None
    try:
        node.start()
        wait_for("the report after the restart", lambda: bool(got), timeout=90)
        wait_for("the report job done", lambda: report_state() == "done", timeout=30)
    finally:
        server.shutdown()
    assert got == [(1, str(request.TransactionUID), {str(ds.SOPInstanceUID) for ds in refs})]
    assert node.stop() == 0


def test_scripts_run_embedded_default_loop(tmp_path: Path) -> None:
    """scripts/run in a copy of the repository: JPEG in, DICOM + PNG + PDF out.

    The copy gets its own .venv whose site-packages reach the dependencies already installed
    in the repository's .venv (a .pth file), so scripts/run really creates nothing but the
    project install, and the shared .venv is never touched.
    """
    copy = tmp_path / "repo"
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in listed:
        if (REPO / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, copy / rel)
    base_python = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys._base_executable)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([base_python, "-m", "venv", str(copy / ".venv")], check=True, timeout=120)
    shared = sysconfig.get_paths()["purelib"]
    (own_site,) = (copy / ".venv" / "lib").glob("python3.*/site-packages")
    (own_site / "shared-deps.pth").write_text(shared + "\n")
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    proc = subprocess.Popen(
        [str(copy / "scripts" / "run")], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        inbox = copy / "var" / "inbox"
        wait_for("the inbox", inbox.exists, timeout=180)
        wait_echo(11112, "DICOMNODE", timeout=60)
        (inbox / "photo.jpg").write_bytes(jpeg(1, (320, 240)))
        var = copy / "var"
        wait_for("a DICOM in the archive", lambda: any((var / "archive").rglob("*.dcm")))
        wait_for("a PNG in export", lambda: any((var / "export").rglob("*.png")), timeout=60)
        wait_for("a PDF in export", lambda: any((var / "export").rglob("*.pdf")), timeout=60)
        assert any((var / "done").rglob("photo.jpg"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            log.close()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
    installed = (copy / ".venv" / "bin" / "dicom-node").read_text()
    assert str(copy) in installed  # the copy's own install, not the shared one
