"""e2e: JPEGs dropped into a node pushing to Orthanc; drop→ack latency and the node's RSS.

Phase 1 (latency): ``E2E_FILES`` (500) files dropped at ``E2E_RATE`` (20) files/s. The
latency of one file runs from the moment it is complete in the inbox (renamed into place)
to the moment Orthanc's C-STORE response arrived (the delivery job's acknowledgement time
in the state DB). Phase 2 (memory): ``E2E_RSS_FILES`` (10,000; 0 skips it) more files
dropped as fast as the node drains them (at most 200 waiting in the inbox); the node's peak
RSS (VmHWM) over both phases is reported.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

sys.path.insert(0, str(common.REPO))

CONFIG = """
[node]
base_dir = "{workdir}"
[ingest]
stable_seconds = 0.2
rescan_seconds = 2.0
after_delivery = "delete"
[ingest.defaults]
PatientID = "BENCH"
PatientName = "Bench^E2E"
ImageLaterality = "U"
[[destinations]]
name = "orthanc"
host = "127.0.0.1"
port = {port}
called_ae = "{aet}"
[receive]
enabled = false
[export]
enabled = false
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Dropper:
    """Drops distinct copies of the corpus into the inbox, atomically (temp name + rename)."""

    def __init__(self, inbox: Path, corpus: list[Path]) -> None:
        self.inbox = inbox
        self.data = [p.read_bytes() for p in corpus]
        self.dropped: dict[str, float] = {}
        self.count = 0

    def drop(self) -> None:
        i = self.count
        self.count += 1
        name = f"e2e{i:06d}.jpg"
        data = self.data[i % len(self.data)]
        # a distinct image each time: a COM segment with the sequence number after SOI
        data = data[:2] + b"\xff\xfe\x00\x0a" + f"{i:08d}".encode() + data[2:]
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_bytes(data)
        os.rename(tmp, self.inbox / name)
        self.dropped[name] = time.time()


def _acks(db: Path) -> list[tuple[str, float]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT payload, updated_at FROM jobs WHERE kind='deliver' AND state='done'"
        ).fetchall()
    return [(Path(json.loads(p)["path"]).name.removesuffix(".dcm"), t) for p, t in rows]


def _wait_acks(db: Path, count: int, node: subprocess.Popen[bytes], timeout: float) -> int:
    peak = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(_acks(db)) < count:
        peak = max(peak, common.proc_rss(node.pid))
        time.sleep(0.5)
    return peak


def run(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    from camera import camera_jpegs

    from tests.peers import run_orthanc

    files = int(os.environ.get("E2E_FILES", "500"))
    rate = float(os.environ.get("E2E_RATE", "20"))
    rss_files = int(os.environ.get("E2E_RSS_FILES", "10000"))
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = camera_jpegs(workdir / "corpus", min(max(files, 1), 200))
    with run_orthanc(workdir / "orthanc") as orthanc:
        config = workdir / "node.toml"
        config.write_text(CONFIG.format(workdir=workdir, port=orthanc.dicom_port, aet=orthanc.aet))
        with open(workdir / "node.log", "wb") as log:
            node = subprocess.Popen(
                [common.DICOM_NODE, "run", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        inbox = workdir / "var" / "inbox"
        db = workdir / "var" / "state" / "queue.sqlite3"
        deadline = time.monotonic() + 60
        while not (inbox.exists() and db.exists()) and time.monotonic() < deadline:
            time.sleep(0.1)
        dropper = Dropper(inbox, corpus)
        peak = 0
        start = time.monotonic()
        for i in range(files):  # phase 1: steady rate
            dropper.drop()
            peak = max(peak, common.proc_rss(node.pid))
            time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
        peak = max(peak, _wait_acks(db, files, node, 300))
        latencies = [t - dropper.dropped[n] for n, t in _acks(db) if n in dropper.dropped]
        rss_started = time.monotonic()
        for _ in range(rss_files):  # phase 2: as fast as the node drains
            while sum(1 for _ in os.scandir(inbox)) > 200:
                peak = max(peak, common.proc_rss(node.pid))
                time.sleep(0.05)
            dropper.drop()
        peak = max(peak, _wait_acks(db, files + rss_files, node, 3600))
        rss_seconds = time.monotonic() - rss_started
        peak = max(peak, common.proc_rss(node.pid))
        delivered = len(_acks(db))
        node.send_signal(signal.SIGTERM)
        node.wait(60)
    note = (
        f"p50 {_percentile(latencies, 50):.3f} s, p95 {_percentile(latencies, 95):.3f} s, "
        f"p99 {_percentile(latencies, 99):.3f} s"
        if latencies
        else "no latency measured"
    )
    print(
        f"latency {note}; {delivered}/{files + rss_files} delivered; peak RSS {peak / 1e6:.0f} MB"
    )
    rows: list[dict[str, Any]] = [
        {
            "workload": f"e2e drop→Orthanc ack, {files} files at {rate:g}/s",
            "tool": "dicom-node run",
            "seconds": [statistics.median(latencies)] if latencies else [],
            "items": 1,
            "unit": "latency",
            "peak_rss": peak,
            "note": note,
        }
    ]
    if rss_files:
        rows.append(
            {
                "workload": f"e2e {files + rss_files} files, peak RSS",
                "tool": "dicom-node run",
                "seconds": [rss_seconds],
                "items": rss_files,
                "unit": "files",
                "bytes": sum(len(d) for d in dropper.data) * rss_files // len(dropper.data),
                "peak_rss": peak,
            }
        )
    return rows
