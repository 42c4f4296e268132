"""Render benchmark: ``dicom-node render`` vs DCMTK ``dcm2pnm +Wi 1`` (one process per file).

200 CT objects, 512 x 512, 16-bit (12 stored), Rescale Intercept -1024, window 40/400, are
rendered to 8-bit PNG by:

- ``dicom-node render DIR -o OUT`` (one command: a process pool over both cores, each
  output written atomically with fsync and recorded in the manifest), and with
  ``--no-fsync``;
- ``/usr/bin/dcm2pnm +Wi 1 +on`` one process per file (how it is used in practice).

Runs are interleaved so machine noise hits all alike. ``run(workdir, repeats)`` returns the
rows for scripts/bench; ``python render.py [REPEATS]`` prints images/s and the ratio.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from corpus import ct_series  # noqa: E402

FILES = 200


def _dcm2pnm_all(paths: list[Path], out: Path) -> None:
    exe = common.dcmtk("dcm2pnm")
    common.run_per_file(
        "dcm2pnm",
        [[exe, "+Wi", "1", "+on", str(p), str(out / f"{i:05d}.png")] for i, p in enumerate(paths)],
    )


def run(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "ct"
    paths = ct_series(src, FILES)
    total = sum(p.stat().st_size for p in paths)
    peaks: dict[str, int] = {}

    def ours(out: Path, *extra: str) -> float:
        name = " ".join(["dicom-node render", *extra])
        cmd = [common.DICOM_NODE, "render", str(src), "-o", str(out), "--log-level", "WARNING"]
        elapsed, rss, _res = common.timed_rss([*cmd, *extra])
        made = len(list(out.rglob("*.png")))
        if made != len(paths):
            raise RuntimeError(f"dicom-node render wrote {made} PNGs for {len(paths)} files")
        peaks[name] = max(peaks.get(name, 0), rss)
        return elapsed

    def dcmtk(out: Path) -> float:
        start = time.perf_counter()
        _dcm2pnm_all(paths, out)
        elapsed = time.perf_counter() - start
        peaks["dcm2pnm +Wi 1 (1 process/file)"] = common.child_peak_rss()
        return elapsed

    tools: dict[str, Any] = {
        "dicom-node render": lambda out: ours(out),
        "dicom-node render --no-fsync": lambda out: ours(out, "--no-fsync"),
        "dcm2pnm +Wi 1 (1 process/file)": dcmtk,
    }
    seconds: dict[str, list[float]] = {name: [] for name in tools}
    for rep in range(repeats):
        for n, (name, fn) in enumerate(tools.items()):
            out = workdir / f"out-{rep}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            seconds[name].append(fn(out))
            shutil.rmtree(out, ignore_errors=True)
    return [
        {
            "workload": "render CT 512x512 -> 8-bit PNG",
            "tool": name,
            "seconds": secs,
            "files": len(paths),
            "bytes": total,
            "peak_rss": peaks.get(name),
        }
        for name, secs in seconds.items()
    ]


def main() -> int:
    import tempfile

    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        rows = run(Path(tmp), repeats)
    rates = {r["tool"]: r["files"] / statistics.median(r["seconds"]) for r in rows}
    peer = rates["dcm2pnm +Wi 1 (1 process/file)"]
    for row in rows:
        rate = rates[row["tool"]]
        rss = (row["peak_rss"] or 0) / 1e6
        print(
            f"{row['tool']:34s} {rate:7.1f} images/s  ratio {rate / peer:5.2f}x  "
            f"median {statistics.median(row['seconds']):.2f} s  peak RSS {rss:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
