"""Receive benchmark: ``dicom-node receive`` vs DCMTK ``storescp`` vs pynetdicom's ``storescp``.

DCMTK ``storescu`` (TCP_NODELAY=1, 128 KiB max PDU, one association) sends

- 200 CT objects, 512×512 16-bit, Explicit VR Little Endian (~513 KB each), and
- 200 Secondary Capture objects, JPEG Baseline, 1024×768 RGB (~100 KB each, ``-xy``), and
- 240 Secondary Capture objects holding the camera-like JPEGs of the convert corpus
  (1280×960, 150–300 KB each, ``-xy``: the issue's corpus)

to each receiver, started fresh with an empty output directory for every run (the last
row: storescu and storescp both with DCMTK's defaults, Nagle on, 16 KiB PDU); and 50 of
the CT objects with one storescu run, i.e. one association, per object (how many
modalities send) into ours and DCMTK's storescp:

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

import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from corpus import camera_sc, ct_series, jpeg_sc  # noqa: E402

COUNT = 200
CAMERA = 240
PER_OBJECT = 50
PDU = 131072
AET = "BENCHSCP"


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
            env=common.peer_env(self.tuned), cwd=self.work,
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


def _send(
    port: int, files: list[Path], jpeg: bool, tuned: bool = True, per_object: bool = False
) -> float:
    """storescu sends ``files``: one association, or one storescu run (association) each."""
    cmd = [common.dcmtk("storescu"), "-aec", AET, "-aet", "BENCHSCU"]
    if tuned:
        cmd += ["-pdu", str(PDU)]
    if jpeg:
        cmd.append("-xy")
    if per_object:
        return sum(
            common.timed([*cmd, common.LOOPBACK, str(port), str(f)], env=common.peer_env(tuned))
            for f in files
        )
    return common.timed(
        [*cmd, common.LOOPBACK, str(port), *map(str, files)], env=common.peer_env(tuned)
    )


def run(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    ct = ct_series(workdir / "ct", COUNT)
    sets = {
        "receive CT 512² 16-bit": (ct, False, False),
        "receive JPEG SC": (jpeg_sc(workdir / "jpeg", COUNT, (1024, 768)), True, False),
        f"receive camera JPEG SC ×{CAMERA}": (camera_sc(workdir / "camera", CAMERA), True, False),
        # Many modalities open one association per image: negotiation cost dominates.
        f"receive CT, 1 association per object ×{PER_OBJECT}": (ct[:PER_OBJECT], False, True),
    }
    rows: list[dict[str, Any]] = []
    for workload, (files, jpeg, per_object) in sets.items():
        servers = {
            name: cmd
            for name, cmd in SERVERS.items()
            if not per_object or name in ("dicom-node receive", "dcmtk storescp")
        }
        size = sum(f.stat().st_size for f in files)
        results: dict[str, dict[str, Any]] = {
            name: {"workload": workload, "tool": name, "seconds": [], "instances": len(files),
                   "bytes": size, "peak_rss": 0}
            for name in servers
        }  # fmt: skip
        for _ in range(repeats):
            for name, cmd in servers.items():
                tuned = name != DEFAULTS
                work = workdir / "srv" / name.replace(" ", "-").replace("(", "").replace(")", "")
                server = Server(name, cmd, work, tuned)
                server.start()
                try:
                    seconds = _send(server.port, files, jpeg, tuned, per_object)
                finally:
                    rss = server.stop()
                stored = server.stored()
                if stored < len(files):
                    raise RuntimeError(f"{name} stored {stored} of {len(files)} objects")
                row = results[name]
                row["seconds"].append(seconds)
                row["peak_rss"] = max(row["peak_rss"], rss)
        # The ratio column compares each of our rows with storescp, which never fsyncs:
        # the fsync-off row is the like-for-like one.
        if "dicom-node receive (fsync off)" in results:
            results["dicom-node receive (fsync off)"]["note"] = "not durable, like storescp"
        if per_object:
            results["dicom-node receive"]["note"] = "storescu start-up included on both sides"
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
