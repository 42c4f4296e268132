"""Real peers for the tests: DCMTK, Orthanc and dciodvfy, on 127.0.0.1 with free ports.

Every DCMTK tool and Orthanc is started with ``TCP_NODELAY=1`` (without it each C-STORE
stalls ~45 ms on Nagle's algorithm). Readiness is a real signal (a C-ECHO or an HTTP
answer), never a sleep. Missing binaries fail the test: scripts/test installs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"


def tool(name: str) -> str:
    """Absolute path of a Debian tool (DCMTK, dicom3tools, poppler, Orthanc), or fail."""
    for candidate in (f"/usr/bin/{name}", f"/usr/sbin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found and "/.venv/" not in found:
        return found
    pytest.fail(f"{name} is not installed: run scripts/test, which installs it with apt-get")


def peer_env() -> dict[str, str]:
    """Environment for DCMTK tools and Orthanc: TCP_NODELAY on, no proxies."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(var, None)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout}s")


def echo_ok(port: int, called_ae: str = "ANY-SCP", calling_ae: str = "ECHOSCU") -> bool:
    """One C-ECHO with DCMTK's echoscu; True on success."""
    res = subprocess.run(
        [tool("echoscu"), "-aet", calling_ae, "-aec", called_ae, LOOPBACK, str(port)],
        env=peer_env(),
        capture_output=True,
        timeout=30,
    )
    return res.returncode == 0


def wait_echo(port: int, called_ae: str = "ANY-SCP", timeout: float = 20.0) -> None:
    """Wait until a C-ECHO to 127.0.0.1:port succeeds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if echo_ok(port, called_ae):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no C-ECHO answer on {LOOPBACK}:{port} after {timeout}s")


def only_loopback_interfaces() -> bool:
    """True inside a private network namespace (only ``lo`` exists)."""
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


# ----------------------------------------------------------------------------- dciodvfy


@dataclass
class IodReport:
    """What dciodvfy said about one file."""

    errors: list[str]
    warnings: list[str]
    output: str


def dciodvfy(path: Path | str) -> IodReport:
    """Run the real dciodvfy on ``path`` and collect its errors and warnings."""
    res = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    lines = out.splitlines()
    return IodReport(
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
        output=out,
    )


# ----------------------------------------------------------------------------- storescp


@dataclass
class Storescp:
    """A running DCMTK storescp."""

    port: int
    out_dir: Path
    aet: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())

    def by_uid(self) -> dict[str, Path]:
        """The files received, by their SOP Instance UID."""
        from pydicom import dcmread

        return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in self.files()}


@contextlib.contextmanager
def run_storescp(
    out_dir: Path, *, aet: str = "STORESCP", extra: list[str] | None = None
) -> Iterator[Storescp]:
    """DCMTK storescp on a free port, writing into ``out_dir`` (``extra`` e.g. ``["+xa"]``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = out_dir.parent / f"storescp-{port}.log"
    args = [tool("storescp"), "-aet", aet, "-od", str(out_dir), "-pm", "+uf"]
    args += list(extra or []) + [str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env=peer_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=proc)
        wait_echo(port, aet)
        yield Storescp(port, out_dir, aet, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- Orthanc


@dataclass
class Orthanc:
    """A running Orthanc, reached through its REST API on 127.0.0.1."""

    dicom_port: int
    http_port: int
    aet: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    config_path: Path = field(default=Path())

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            data = resp.read()
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(data) if "json" in ctype else data

    def post(self, path: str, body: bytes | str = b"") -> Any:
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = resp.read()
        return json.loads(out) if out[:1] in (b"{", b"[") else out

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def sop_instance_uids(self) -> list[str]:
        """SOP Instance UIDs of every stored instance."""
        uids = []
        for oid in self.instances():
            tags = self.get(f"/instances/{oid}/simplified-tags")
            uids.append(tags["SOPInstanceUID"])
        return uids

    def file(self, orthanc_id: str) -> bytes:
        return bytes(self.get(f"/instances/{orthanc_id}/file"))

    def start(self) -> None:
        """Start (or restart) the server on the same ports and storage."""
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [tool("Orthanc"), str(self.config_path)],
            env=peer_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "Orthanc exited: " + (self.workdir / "orthanc.log").read_text()[-2000:]
                )
            try:
                self.get("/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        else:
            raise TimeoutError("Orthanc did not answer on its REST API")
        wait_port(self.dicom_port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def run_orthanc(workdir: Path, *, aet: str = "ORTHANC") -> Iterator[Orthanc]:
    """Orthanc on free ports. It binds every interface, so only inside a private netns."""
    if not only_loopback_interfaces():
        pytest.skip(
            "Orthanc 1.10 listens on every interface: run the tests through scripts/test, "
            "which starts pytest in a private network namespace (unshare -n)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    orthanc = Orthanc(free_port(), free_port(), aet, workdir)
    config = {
        "Name": "dicom-node-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": orthanc.http_port,
        "DicomPort": orthanc.dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "HttpsVerifyPeers": False,
        "Plugins": [],
        "StableAge": 3600,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "OverwriteInstances": False,
    }
    orthanc.config_path = workdir / "orthanc.json"
    orthanc.config_path.write_text(json.dumps(config, indent=2))
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()
