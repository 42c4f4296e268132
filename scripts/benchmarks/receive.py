"""Receive benchmark: ``dicom-node receive`` vs DCMTK ``storescp`` vs pynetdicom's ``storescp``.

DCMTK ``storescu`` (TCP_NODELAY=1, 128 KiB max PDU, one association) sends

- 200 CT objects, 512×512 16-bit, Explicit VR Little Endian (~513 KB each), and
- 200 Secondary Capture objects, JPEG Baseline, 1024×768 RGB (~100 KB each, ``-xy``)

to each receiver, started fresh with an empty output directory for every run (the last
row: storescu and storescp both with DCMTK's defaults, Nagle on, 16 KiB PDU):

- ``dicom-node receive`` (stores durably: fdatasync of the file, fsync of its directory,
  SQLite commit with synchronous=FULL, before answering success), and the same with
  ``receive.fsync = false`` to show what durability costs on this disk (its row notes the
  like-for-like ratio to storescp, which never fsyncs);
- ``/usr/bin/storescp +xa -pdu 131072`` (DCMTK; writes files, no fsync);
- ``python -m pynetdicom storescp -pdu 131072`` (stock pynetdicom app; no fsync, and it
  decodes each data set).

Runs are interleaved (A, B, C, A, B, C ...). Only the sending is timed (server start-up is
not). ``run(workdir, repeats)`` returns rows for scripts/bench; ``python receive.py``
prints instances/s and the ratios on its own.
"""

from __future__ import annotations

import io
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

COUNT = 200
PDU = 131072
AET = "BENCHSCP"


# ------------------------------------------------------------------------------ data


def _ct_files(out: Path) -> list[Path]:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    pixels = (rng.integers(0, 4096, size=(512, 512), dtype=np.uint16)).tobytes()
    study = generate_uid()
    series = generate_uid()
    paths = []
    for i in range(COUNT):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.PatientName = "BENCH^CT"
        ds.PatientID = "BENCH1"
        ds.Modality = "CT"
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = pixels
        path = out / f"ct{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _jpeg_files(out: Path) -> list[Path]:
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:768, 0:1024]
    rgb = np.stack([(xx // 4) % 256, (yy // 3) % 256, ((xx + yy) // 7) % 256], axis=-1)
    rgb = (rgb + np.random.default_rng(3).integers(0, 24, rgb.shape)).clip(0, 255)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype("uint8"), "RGB").save(buf, "JPEG", quality=85)
    frame = buf.getvalue()
    study = generate_uid()
    series = generate_uid()
    paths = []
    for i in range(COUNT):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.PatientName = "BENCH^SC"
        ds.PatientID = "BENCH2"
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.InstanceNumber = i + 1
        ds.Rows, ds.Columns = 768, 1024
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.LossyImageCompression = "01"
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        path = out / f"sc{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ servers


class Server:
    """One receiver process on a free port, writing into ``out``."""

    def __init__(
        self, name: str, cmd: Callable[[int, Path], list[str]], work: Path, tuned: bool = True
    ) -> None:
        self.name = name
        self.tuned = tuned
        self.cmd = cmd
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        out = self.work / "out"
        shutil.rmtree(self.work, ignore_errors=True)
        out.mkdir(parents=True)
        self.port = common.free_port()
        log = open(self.work / "server.log", "wb")  # noqa: SIM115 - closed below
        self.proc = subprocess.Popen(
            self.cmd(self.port, self.work), stdout=log, stderr=subprocess.STDOUT,
            env=_env(self.tuned), cwd=self.work,
        )  # fmt: skip
        log.close()
        common.wait_port(self.port)

    def stop(self) -> int:
        """Stop; return the server's peak RSS in bytes."""
        assert self.proc is not None
        rss = common.proc_rss(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return rss

    def stored(self) -> int:
        return sum(1 for p in (self.work / "out").rglob("*") if p.is_file() and p.suffix != ".log")


def _dicom_node(port: int, work: Path, fsync: bool = True) -> list[str]:
    cfg = work / "node.toml"
    cfg.write_text(
        f'[node]\nstate_dir = "state"\nlog_level = "WARNING"\n'
        f'[receive]\nae_title = "{AET}"\narchive = "out"\nmin_free_bytes = 0\n'
        f"max_pdu = {PDU}\nport = {port}\nfsync = {'true' if fsync else 'false'}\n"
    )
    return [
        str(common.VENV_BIN / "python"), "-m", "node", "receive", "--config", str(cfg),
        "--log-level", "WARNING",
    ]  # fmt: skip


def _dicom_node_nosync(port: int, work: Path) -> list[str]:
    return _dicom_node(port, work, fsync=False)


def _dcmtk_storescp(port: int, work: Path) -> list[str]:
    return [
        common.dcmtk("storescp"), "-aet", AET, "+xa", "-pdu", str(PDU), "-od", "out", str(port),
    ]  # fmt: skip


def _dcmtk_storescp_defaults(port: int, work: Path) -> list[str]:
    return [common.dcmtk("storescp"), "-aet", AET, "+xa", "-od", "out", str(port)]


def _env(tuned: bool) -> dict[str, str]:
    """TCP_NODELAY=1 for tuned DCMTK; its defaults leave Nagle on."""
    env = common.peer_env()
    if not tuned:
        env.pop("TCP_NODELAY", None)
    return env


def _pynetdicom_storescp(port: int, work: Path) -> list[str]:
    return [
        str(common.VENV_BIN / "python"), "-m", "pynetdicom", "storescp", "-aet", AET,
        "-pdu", str(PDU), "-od", "out", "-q", str(port),
    ]  # fmt: skip


DEFAULTS = "dcmtk storescp (defaults)"

SERVERS = {
    "dicom-node receive": _dicom_node,
    "dicom-node receive (fsync off)": _dicom_node_nosync,
    "dcmtk storescp": _dcmtk_storescp,
    "pynetdicom storescp": _pynetdicom_storescp,
    # storescu -> storescp, both with DCMTK's defaults (no TCP_NODELAY, 16 KiB PDU).
    DEFAULTS: _dcmtk_storescp_defaults,
}


def _send(port: int, files: list[Path], jpeg: bool, tuned: bool = True) -> float:
    cmd = [common.dcmtk("storescu"), "-aec", AET, "-aet", "BENCHSCU"]
    if tuned:
        cmd += ["-pdu", str(PDU)]
    if jpeg:
        cmd.append("-xy")
    return common.timed([*cmd, common.LOOPBACK, str(port), *map(str, files)], env=_env(tuned))


def run(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    sets = {
        "receive CT 512² 16-bit": (_ct_files(workdir / "ct"), False),
        "receive JPEG SC": (_jpeg_files(workdir / "jpeg"), True),
    }
    rows: list[dict[str, Any]] = []
    for workload, (files, jpeg) in sets.items():
        size = sum(f.stat().st_size for f in files)
        results: dict[str, dict[str, Any]] = {
            name: {"workload": workload, "tool": name, "seconds": [], "instances": len(files),
                   "bytes": size, "peak_rss": 0}
            for name in SERVERS
        }  # fmt: skip
        for _ in range(repeats):
            for name, cmd in SERVERS.items():
                tuned = name != DEFAULTS
                work = workdir / "srv" / name.replace(" ", "-").replace("(", "").replace(")", "")
                server = Server(name, cmd, work, tuned)
                server.start()
                try:
                    seconds = _send(server.port, files, jpeg, tuned)
                finally:
                    rss = server.stop()
                stored = server.stored()
                if stored < len(files):
                    raise RuntimeError(f"{name} stored {stored} of {len(files)} objects")
                row = results[name]
                row["seconds"].append(seconds)
                row["peak_rss"] = max(row["peak_rss"], rss)
        nosync, dcmtk = results["dicom-node receive (fsync off)"], results["dcmtk storescp"]
        if nosync["seconds"] and dcmtk["seconds"]:
            # Like for like (neither fsyncs): the table's ratio column uses the durable row.
            ratio = statistics.median(dcmtk["seconds"]) / statistics.median(nosync["seconds"])
            nosync["note"] = f"(not durable) vs dcmtk storescp: {ratio:.2f}×"
        rows += results.values()
    return rows


def main() -> int:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bench-receive-"))
    try:
        rows = run(work, int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
