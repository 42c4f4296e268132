"""Send benchmark: ``dicom-node send`` vs DCMTK ``storescu`` into DCMTK ``storescp``.

Workloads (made once, in the work directory):

- 200 Secondary Capture objects, JPEG Baseline, 512×384 RGB (~30-40 KB each);
- 200 CT objects, 512×512 16-bit, Explicit VR Little Endian (~513 KB each);
- 240 Secondary Capture objects holding the camera-like JPEGs of the convert corpus
  (1280×960, 150–300 KB each, as the issue's corpus asks).

Receiver: ``/usr/bin/storescp +xa -pdu 131072`` with TCP_NODELAY=1, writing into a scratch
directory that is emptied between runs. Senders, both one process and one association for
the whole directory:

- ``dicom-node send --max-pdu 131072 HOST:PORT DIR`` (files whose syntax is accepted go
  straight from disk);
- ``/usr/bin/storescu -pdu 131072 +sd [-xy for JPEG]`` with TCP_NODELAY=1;
- the same storescu with DCMTK's defaults (Nagle on, 16 KiB PDU) into a second storescp
  with its defaults: the pair most sites run, for the "30x DCMTK defaults" comparison.

Runs are interleaved (ours, DCMTK, ours, DCMTK ...). ``run(workdir, repeats)`` returns rows
for scripts/bench; ``python send.py [--repeats N]`` prints instances/s, MB/s and the ratio.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from corpus import camera_sc, ct_series, jpeg_sc  # noqa: E402

COUNT = 200
CAMERA = 240
PDU = 131072
AET = "BENCHSCP"
TRANSFER = "dicom-node send (transfer only, start-up excluded)"
DEFAULTS = "DCMTK storescu (defaults, into storescp defaults)"


# ------------------------------------------------------------------------------ running


class Receiver:
    """storescp +xa into a scratch directory: tuned (TCP_NODELAY=1, 128 KiB PDU) or with
    DCMTK's defaults (Nagle on, 16 KiB PDU)."""

    def __init__(self, workdir: Path, tuned: bool = True) -> None:
        name = "received" if tuned else "received-defaults"
        self.out = workdir / name
        self.out.mkdir(parents=True, exist_ok=True)
        self.port = common.free_port()
        self.log = open(workdir / f"storescp-{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                common.dcmtk("storescp"),
                "-aet",
                AET,
                "+xa",
                *(["-pdu", str(PDU)] if tuned else []),
                "-od",
                str(self.out),
                str(self.port),
            ],
            env=common.peer_env(tuned),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        common.wait_port(self.port)

    def count(self) -> int:
        return sum(1 for _ in self.out.iterdir())

    def clear(self) -> None:
        for p in self.out.iterdir():
            p.unlink()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


_SUMMARY = re.compile(r"delivered to .*?; ([0-9.]+) s, ")


def _transfer_seconds(stdout: str) -> float | None:
    """The sending time ``dicom-node send`` reports in its summary (start-up excluded)."""
    m = _SUMMARY.search(stdout)
    return float(m.group(1)) if m else None


def run(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    workloads = {
        "send JPEG SC 512x384 ×200": (jpeg_sc(workdir / "jpeg", COUNT), ["-xy"]),
        "send CT 512x512 16-bit ×200": (ct_series(workdir / "ct", COUNT), []),
        f"send camera JPEG SC 1280x960 ×{CAMERA}": (camera_sc(workdir / "camera", CAMERA), ["-xy"]),
    }
    rows: list[dict[str, Any]] = []
    receiver = Receiver(workdir)
    slow_receiver = Receiver(workdir, tuned=False)
    try:
        for workload, (paths, ts_opts) in workloads.items():
            src = paths[0].parent
            size = sum(p.stat().st_size for p in paths)
            ours_cmd = [
                common.DICOM_NODE,
                "send",
                "--log-level",
                "WARNING",
                "--max-pdu",
                str(PDU),
                "--aec",
                AET,
                f"{common.LOOPBACK}:{receiver.port}",
                str(src),
            ]
            dcmtk_cmd = [
                common.dcmtk("storescu"),
                "-aec",
                AET,
                "-pdu",
                str(PDU),
                *ts_opts,
                "+sd",
                common.LOOPBACK,
                str(receiver.port),
                str(src),
            ]
            defaults_cmd = [
                common.dcmtk("storescu"), "-aec", AET, *ts_opts, "+sd", common.LOOPBACK,
                str(slow_receiver.port), str(src),
            ]  # fmt: skip
            tools = {
                "dicom-node send": (ours_cmd, None, receiver),
                "DCMTK storescu": (dcmtk_cmd, common.peer_env(), receiver),
                DEFAULTS: (defaults_cmd, common.peer_env(False), slow_receiver),
            }
            seconds: dict[str, list[float]] = {name: [] for name in tools}
            seconds[TRANSFER] = []
            rss: dict[str, int] = dict.fromkeys(tools, 0)
            for _ in range(repeats):
                for name, (cmd, env, into) in tools.items():
                    into.clear()
                    secs, peak, res = common.timed_rss(cmd, env)
                    out = res.stdout
                    got = into.count()
                    if got != len(paths):
                        raise RuntimeError(f"{name}: storescp holds {got} of {len(paths)} files")
                    seconds[name].append(secs)
                    rss[name] = max(rss[name], peak)
                    if name == "dicom-node send" and (inner := _transfer_seconds(out)):
                        seconds[TRANSFER].append(inner)
            for name, runs in seconds.items():
                rows.append(
                    {
                        "workload": workload,
                        "tool": name,
                        "seconds": runs,
                        "instances": len(paths),
                        "bytes": size,
                        "peak_rss": rss.get(name, rss["dicom-node send"]),
                    }
                )
    finally:
        receiver.stop()
        slow_receiver.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-send-"))
    try:
        rows = run(work, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import statistics

    for row in rows:
        med = statistics.median(row["seconds"])
        runs = " ".join(f"{s:.3f}" for s in row["seconds"])
        print(
            f"{row['workload']:<28} {row['tool']:<52} {row['instances'] / med:7.1f} inst/s "
            f"{row['bytes'] / med / 1e6:7.1f} MB/s  median {med:.3f} s  runs {runs}  "
            f"rss {row['peak_rss'] / 1e6:.0f} MB"
        )
    by: dict[str, dict[str, float]] = {}
    for row in rows:
        by.setdefault(row["workload"], {})[row["tool"]] = statistics.median(row["seconds"])
    for workload, t in by.items():
        for ours in ("dicom-node send", TRANSFER):
            for peer in ("DCMTK storescu", DEFAULTS):
                if ours in t and peer in t:
                    print(f"{workload}: {ours} vs {peer} = {t[peer] / t[ours]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
