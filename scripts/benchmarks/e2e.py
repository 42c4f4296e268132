"""e2e: drop JPEGs at a steady rate into a node pushing to Orthanc; latency and RSS.

Latency of one file = from the moment it is complete in the inbox to the moment Orthanc's
C-STORE response was received (the delivery job's acknowledgement time in the state DB).
Environment knobs: ``E2E_FILES`` (default 500), ``E2E_RATE`` files/s (default 20).
"""

from __future__ import annotations

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


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    from camera import camera_jpegs

    from tests.peers import run_orthanc

    files = int(os.environ.get("E2E_FILES", "500"))
    rate = float(os.environ.get("E2E_RATE", "20"))
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = camera_jpegs(workdir / "corpus", min(files, 200))
    rows: list[dict[str, Any]] = []
    with run_orthanc(workdir / "orthanc") as orthanc:
        config = workdir / "node.toml"
        config.write_text(
            f"""
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
port = {orthanc.dicom_port}
called_ae = "{orthanc.aet}"
[receive]
enabled = false
[export]
enabled = false
"""
        )
        log = open(workdir / "node.log", "wb")  # noqa: SIM115
        node = subprocess.Popen(
            [common.DICOM_NODE, "run", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        inbox = workdir / "var" / "inbox"
        deadline = time.monotonic() + 60
        while not inbox.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        dropped: dict[str, float] = {}
        peak = 0
        start = time.monotonic()
        for i in range(files):
            source = corpus[i % len(corpus)]
            name = f"e2e{i:06d}.jpg"
            tmp = inbox / f".{name}.tmp"
            data = source.read_bytes()
            # each drop is a distinct image: a few bytes in a COM segment change the content
            data = data[:2] + b"\xff\xfe\x00\x0a" + f"{i:08d}".encode() + data[2:]
            tmp.write_bytes(data)
            os.rename(tmp, inbox / name)
            dropped[name] = time.time()
            peak = max(peak, common.proc_rss(node.pid))
            target = start + (i + 1) / rate
            time.sleep(max(0.0, target - time.monotonic()))
        db = workdir / "var" / "state" / "queue.sqlite3"
        latencies: list[float] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                rows_db = conn.execute(
                    "SELECT payload, updated_at FROM jobs WHERE kind='deliver' AND state='done'"
                ).fetchall()
            if len(rows_db) >= files:
                break
            peak = max(peak, common.proc_rss(node.pid))
            time.sleep(0.5)
        import json

        for payload, acked in rows_db:
            origin = Path(json.loads(payload)["path"]).name.removesuffix(".dcm")
            if origin in dropped:
                latencies.append(acked - dropped[origin])
        peak = max(peak, common.proc_rss(node.pid))
        node.send_signal(signal.SIGTERM)
        node.wait(60)
        log.close()
        delivered = len(orthanc.instances())
    note = (
        f"p50 {_percentile(latencies, 50):.3f} s, p95 {_percentile(latencies, 95):.3f} s, "
        f"p99 {_percentile(latencies, 99):.3f} s, {delivered}/{files} in Orthanc"
        if latencies
        else "no latency measured"
    )
    print(note)
    rows.append(
        {
            "workload": f"e2e drop→Orthanc at {rate:g}/s",
            "tool": "dicom-node run",
            "seconds": [statistics.median(latencies)] if latencies else [],
            "items": 1,
            "unit": "latency-median",
            "bytes": 0,
            "peak_rss": peak,
            "note": note,
        }
    )
    return rows
