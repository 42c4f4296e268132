"""Convert benchmark: ``dicom-node convert`` (one process) vs DCMTK ``img2dcm`` vs ``cp``.

200+ camera-like 150-300 KB JPEGs (4:2:0, EXIF; see camera.py) are converted by:

- ``dicom-node convert DIR -o OUT``, one command (pass-through: markers parsed, no decode;
  worker processes forked after start-up, one per CPU; outputs made durable by group
  commit before they appear under their names), and with ``--no-fsync``;
- ``/usr/bin/img2dcm`` one process per file (how it is used in practice: it takes one file);
- ``cp -r`` of the same directory, the floor for reading and writing the bytes.

Both converters get the same patient, study and series data (:data:`METADATA`, as ``-k``
keys), so that the objects are complete: every output of the first ``dicom-node convert``
run is then checked with dicom3tools' ``dciodvfy`` (untimed); the errors and warnings
found are in that row's note.

Runs are interleaved (tool A, B, C, A, B, C ...) so machine noise hits all alike.
``run(workdir, repeats)`` returns the rows for scripts/bench; ``python convert.py`` prints
files/s and the ratios on its own.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import camera  # noqa: E402
import common  # noqa: E402

FILES = 240
#: Patient/study/series data given to both converters (``-k``): dciodvfy wants these.
METADATA = [
    "PatientID=BENCH-01", "PatientName=Bench^Camera", "StudyID=1", "SeriesNumber=1",
    "AccessionNumber=A0001", "StudyDescription=Wound care", "ImageLaterality=U",
]  # fmt: skip
KEYS = [arg for pair in METADATA for arg in ("-k", pair)]


def dciodvfy_summary(out: Path) -> str:
    """``dciodvfy`` on every ``.dcm`` under ``out``: errors and warnings, as a note."""
    exe = "/usr/bin/dciodvfy"
    if not os.access(exe, os.X_OK):
        return "dciodvfy not installed: outputs not validated"
    files = sorted(out.rglob("*.dcm"))
    errors = warnings = 0
    for f in files:
        res = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=60)
        lines = (res.stdout + res.stderr).splitlines()
        errors += sum(1 for line in lines if line.startswith("Error"))
        warnings += sum(1 for line in lines if line.startswith("Warning"))
    return f"dciodvfy on all {len(files)} outputs: {errors} errors, {warnings} warnings"


def _img2dcm_all(paths: list[Path], out: Path) -> None:
    exe = common.dcmtk("img2dcm")
    common.run_per_file(
        "img2dcm",
        [[exe, *KEYS, str(p), str(out / f"{i:05d}.dcm")] for i, p in enumerate(paths)],
    )


def run(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "jpegs"
    paths = camera.camera_jpegs(src, FILES)
    total = sum(p.stat().st_size for p in paths)
    peaks: dict[str, int] = {}
    inner: dict[str, list[float]] = {"dicom-node convert": [], "dicom-node convert --no-fsync": []}

    def ours(out: Path, *extra: str) -> float:
        name = " ".join(["dicom-node convert", *extra])
        cmd = [common.DICOM_NODE, "convert", str(src), "-o", str(out), "--log-level", "WARNING"]
        cmd += KEYS
        elapsed, rss, res = common.timed_rss([*cmd, *extra])
        found = re.search(r"in ([0-9.]+) s \(", res.stderr)
        if found:
            inner[name].append(float(found.group(1)))
        peaks[name] = max(peaks.get(name, 0), rss)
        return elapsed

    tools: dict[str, Any] = {
        "dicom-node convert": lambda out: ours(out),
        "dicom-node convert --no-fsync": lambda out: ours(out, "--no-fsync"),
        "img2dcm (1 process/file)": lambda out: _timed_call(_img2dcm_all, paths, out),
        "cp -r": lambda out: common.timed(["cp", "-r", str(src), str(out)]),
    }
    seconds: dict[str, list[float]] = {name: [] for name in tools}
    validated = ""
    for rep in range(repeats):
        for name, fn in tools.items():
            out = workdir / f"out-{rep}-{len(seconds[name])}-{abs(hash(name)) % 10000}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if name == "cp -r":
                out.rmdir()
            seconds[name].append(fn(out))
            if name == "dicom-node convert" and rep == 0:
                validated = dciodvfy_summary(out)
            shutil.rmtree(out, ignore_errors=True)
    rows = []
    for name, secs in seconds.items():
        rows.append(
            {
                "workload": "convert JPEG pass-through",
                "tool": name,
                "seconds": secs,
                "files": len(paths),
                "bytes": total,
                "peak_rss": peaks.get(name),
                "note": "; ".join(
                    n
                    for n in (
                        _inner_note(inner.get(name), len(paths)),
                        validated if name == "dicom-node convert" else "",
                    )
                    if n
                ),
            }
        )
    return rows


def _inner_note(seconds: list[float] | None, files: int) -> str:
    """The conversion loop alone (without interpreter start-up and imports, ~0.2 s)."""
    if not seconds:
        return ""
    return f"(conversion loop alone: {files / statistics.median(seconds):.0f} files/s)"


def _timed_call(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> int:
    import tempfile

    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        rows = run(Path(tmp), repeats)
    common.print_rows(rows)
    rates = {r["tool"]: r["files"] / statistics.median(r["seconds"]) for r in rows}
    ours = rates["dicom-node convert"]
    for tool, rate in rates.items():
        note = next(r.get("note", "") for r in rows if r["tool"] == tool)
        print(f"{tool:32s} {rate:8.1f} files/s   ours/this = {ours / rate:5.2f}x {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
