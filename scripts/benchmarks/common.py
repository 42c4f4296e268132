"""Shared bench plumbing: timing subprocesses, peak RSS, peers, and the results table.

A workload module exposes ``run(workdir: Path, repeats: int) -> list[dict]``; each row is
one tool on one workload: ``{"workload", "tool", "seconds": [per repeat], "items",
"unit", "bytes", "peak_rss"}`` (``files``/``instances``/``images`` are accepted for
``items``). Tools whose name starts with ``dicom-node`` are ours; the ratio column is our
rate over each peer's rate, from the same run.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
DICOM_NODE = str(VENV_BIN / "dicom-node")
LOOPBACK = "127.0.0.1"
#: GNU time reports the peak RSS of exactly the timed process (Debian package "time").
GNU_TIME = ["/usr/bin/time", "-f", "maxrss=%M"] if os.access("/usr/bin/time", os.X_OK) else []


def peer_env(tuned: bool = True) -> dict[str, str]:
    """Environment for DCMTK/Orthanc: TCP_NODELAY=1 when tuned; DCMTK's defaults leave
    Nagle on."""
    env = dict(os.environ)
    if tuned:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    return env


def dcmtk(name: str) -> str:
    path = f"/usr/bin/{name}"
    if not os.access(path, os.X_OK):
        raise SystemExit(f"{name} missing: apt-get install dcmtk (scripts/test does it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port}")


def settle() -> None:
    """Write out the dirty pages earlier runs left (``sync``), outside the timing.

    A run that wrote 100 MB (storescp, img2dcm) left them to the kernel's writeback, which
    then competed with the next run's writes and flushes, whoever's turn it was: the same
    tool measured 509 or 1,459 objects/s depending on what ran before it.
    """
    os.sync()


def timed(cmd: Sequence[str], **kwargs: Any) -> float:
    """Run ``cmd`` to completion (must exit 0) after :func:`settle`; wall-clock seconds."""
    settle()
    start = time.perf_counter()
    res = subprocess.run(list(cmd), capture_output=True, **kwargs)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        out = (res.stdout or b"")[-1500:] + (res.stderr or b"")[-1500:]
        raise RuntimeError(f"{cmd[0]} exited {res.returncode}: {out.decode(errors='replace')}")
    return elapsed


def run_per_file(name: str, commands: Sequence[Sequence[str]]) -> None:
    """Run one process per file (how DCMTK's img2dcm/dcm2pnm take their inputs)."""
    for cmd in commands:
        res = subprocess.run(list(cmd), capture_output=True)
        if res.returncode != 0:
            raise RuntimeError(f"{name} failed on {cmd}: {res.stderr.decode(errors='replace')}")


def timed_rss(
    cmd: Sequence[str], env: dict[str, str] | None = None
) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Run ``cmd`` under GNU time after :func:`settle`: ``(seconds, peak RSS bytes,
    result)``; raises on failure."""
    settle()
    start = time.perf_counter()
    res = subprocess.run([*GNU_TIME, *cmd], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} exited {res.returncode}: {res.stdout[-800:]}{res.stderr[-1500:]}"
        )
    rss = re.search(r"maxrss=(\d+)", res.stderr)
    return elapsed, int(rss.group(1)) * 1024 if rss else 0, res


def child_peak_rss() -> int:
    """Largest resident set of any waited-for child so far, in bytes."""
    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024


def proc_rss(pid: int) -> int:
    """Current (VmHWM: peak) resident set of a running process, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def items_of(row: dict[str, Any]) -> int:
    for key in ("items", "files", "instances", "images"):
        if key in row:
            return int(row[key])
    return 0


def unit_of(row: dict[str, Any]) -> str:
    if "unit" in row:
        return str(row["unit"])
    for key in ("files", "instances", "images"):
        if key in row:
            return key
    return "items"


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def versions() -> str:
    import pydicom
    import pynetdicom

    parts = [
        f"Python {platform.python_version()}",
        f"pydicom {pydicom.__version__}",
        f"pynetdicom {pynetdicom.__version__}",
    ]
    try:
        out = subprocess.run([dcmtk("storescu"), "--version"], capture_output=True, text=True)
        first = out.stdout.splitlines()[0] if out.stdout else ""
        parts.append(first.replace("$", "").strip() or "DCMTK")
    except (OSError, SystemExit):
        pass
    orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if os.access(orthanc, os.X_OK):
        out = subprocess.run([orthanc, "--version"], capture_output=True, text=True)
        parts.append(out.stdout.splitlines()[0] if out.stdout else "Orthanc")
    return ", ".join(parts)


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown results table, ratios computed within each workload.

    On a peer's row the ratio is our (first) row's rate over that peer's; on each of our
    rows, that row's rate over the first peer's (named in the cell).
    """
    head = (
        "| workload | tool | median s | min–max s | rate | MB/s | ratio ours/peer "
        "| peak RSS MB | note |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_workload.setdefault(row["workload"], []).append(row)
    for workload, group in by_workload.items():
        timed_rows = [r for r in group if r["seconds"]]
        ours = [r for r in timed_rows if _is_ours(r)]
        peers = [r for r in timed_rows if not _is_ours(r)]
        our_rate = _rate(ours[0]) if ours else 0.0
        peer_rate = _rate(peers[0]) if peers else 0.0
        for row in timed_rows:
            secs = row["seconds"]
            med = statistics.median(secs)
            rate = _rate(row)
            mbs = row.get("bytes", 0) / med / 1e6 if med else 0.0
            note = str(row.get("note", ""))
            if row.get("unit") == "latency":  # the note carries p50/p95/p99
                rate_text, mbs_text, ratio = "see note", "—", "—"
            else:
                rate_text, mbs_text = f"{rate:.1f} {unit_of(row)}/s", f"{mbs:.1f}"
                if _is_ours(row):
                    ratio = f"{rate / peer_rate:.2f}× vs {peers[0]['tool']}" if peer_rate else "—"
                else:
                    ratio = f"{our_rate / rate:.2f}×" if our_rate and rate else "—"
            lines.append(
                f"| {workload} | {row['tool']} | {med:.3f} | {min(secs):.3f}–{max(secs):.3f} "
                f"| {rate_text} | {mbs_text} | {ratio} | {_mb(row.get('peak_rss'))} | {note} |"
            )
    return head + "\n".join(lines) + "\n"


def _is_ours(row: dict[str, Any]) -> bool:
    return str(row["tool"]).startswith("dicom-node")


def _rate(row: dict[str, Any]) -> float:
    med = statistics.median(row["seconds"])
    return items_of(row) / med if med else 0.0


def _mb(value: Any) -> str:
    return f"{value / 1e6:.0f}" if value else "—"


def print_rows(rows: list[dict[str, Any]]) -> None:
    sys.stdout.write(table(rows))
