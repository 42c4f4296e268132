"""Both SCU engines word the same failures alike, against DCMTK storescp (loopback only).

The ``wire`` engine names a peer's A-ABORT with its source and usual cause; the
``pynetdicom`` engine (a destination's ``engine = "pynetdicom"``) said "association aborted
while waiting for the C-STORE response" for an A-ABORT and for a PACS killed mid-batch
alike, and each engine had its own words for a DIMSE timeout.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from node.config import Destination
from node.send.contexts import SendItem, read_header
from node.send.scu import StoreSCU
from node.send.status import Outcome
from tests.peers import LOOPBACK, free_port, run_storescp
from tests.send.data import native_sc

ENGINES = pytest.mark.parametrize("engine", ["wire", "pynetdicom"])
# pynetdicom 3.0.4 closes the socket of a refused connection only through the garbage
# collector (transport.py: shutdown() raises ENOTCONN before close()): a ResourceWarning.
PYNETDICOM_REFUSED_SOCKET = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)


def _dest(port: int, aet: str = "STORESCP", **kw: object) -> Destination:
    return Destination(name="p", host=LOOPBACK, port=port, called_ae=aet, **kw)  # type: ignore[arg-type]


def _send(
    dest: Destination, engine: str, paths: list[Path], after_first: object = None
) -> list[str]:
    items = [SendItem(path=p, key=n, **read_header(p)) for n, p in enumerate(paths)]
    out: list[str] = []

    def report(_item: SendItem, outcome: Outcome) -> None:
        out.append(outcome.describe())
        if len(out) == 1 and callable(after_first):
            after_first()

    StoreSCU(dest, calling_ae="ME", engine=engine).send(items, report)
    return out


@ENGINES
@pytest.mark.parametrize("flag", ["--abort-after", "--abort-during"])
def test_a_peer_abort_is_named_with_its_source_and_usual_cause(
    tmp_path: Path, engine: str, flag: str
) -> None:
    f = native_sc(tmp_path / "a.dcm")
    with run_storescp(tmp_path / "in", extra=[flag]) as scp:
        out = _send(_dest(scp.port), engine, [f])
    assert out == [
        "retry: association failed during the C-STORE: the peer aborted the association "
        "(A-ABORT from the PACS application itself, no reason given; if it aborts every "
        "C-STORE it probably refuses our calling AE title or this object (Orthanc aborts "
        "so for an AE missing from DicomModalities with DicomAlwaysAllowStore false): see "
        "the PACS's log)"
    ]


@ENGINES
def test_a_peer_killed_mid_batch_is_a_lost_connection(tmp_path: Path, engine: str) -> None:
    files = [native_sc(tmp_path / f"{i}.dcm", size=512, bits=16) for i in range(20)]
    with run_storescp(tmp_path / "in") as scp:

        def kill() -> None:
            os.kill(scp.proc.pid, signal.SIGKILL)
            scp.proc.wait()

        out = _send(_dest(scp.port), engine, files, after_first=kill)
    assert out[0] == "delivered" and len(out) == 2  # the rest was not started: requeued
    assert out[1].startswith(
        "retry: association failed during the C-STORE: the connection was lost (the peer "
        "closed or reset it: a PACS that stopped or crashed, or a firewall cutting the "
        "connection; see the PACS's log)"
    )


@ENGINES
@PYNETDICOM_REFUSED_SOCKET
def test_a_refused_connection(tmp_path: Path, engine: str) -> None:
    port = free_port()
    [out] = _send(_dest(port), engine, [native_sc(tmp_path / "a.dcm")])
    assert out.startswith(
        f"retry: cannot connect to {LOOPBACK}:{port} (connection refused, unreachable or timed out"
    )


@ENGINES
def test_no_response_within_the_dimse_timeout(tmp_path: Path, engine: str) -> None:
    """storescp stopped (SIGSTOP) after the first object: the second gets no response."""
    files = [native_sc(tmp_path / f"{i}.dcm") for i in range(2)]
    with run_storescp(tmp_path / "in") as scp:
        try:
            out = _send(
                _dest(scp.port, dimse_timeout=0.5),
                engine,
                files,
                after_first=lambda: os.kill(scp.proc.pid, signal.SIGSTOP),
            )
        finally:
            os.kill(scp.proc.pid, signal.SIGCONT)
    assert out == ["delivered", "retry: no C-STORE response within the DIMSE timeout (0.5 s)"]


@ENGINES
@PYNETDICOM_REFUSED_SOCKET
def test_refused_connections_leave_no_descriptor_open(tmp_path: Path, engine: str) -> None:
    """An unreachable PACS retried for hours must not cost a descriptor per attempt.
    pynetdicom 3.0.4 leaves the refused socket to the garbage collector (a ResourceWarning);
    CPython's reference counting closes it at once, so the count stays flat."""
    dest = _dest(free_port())
    files = [native_sc(tmp_path / "a.dcm")]
    _send(dest, engine, files)  # imports, logging handlers: opened once
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        _send(dest, engine, files)
    # not growing: a descriptor an earlier test left to the collector may close meanwhile
    assert len(os.listdir("/proc/self/fd")) <= before


def test_the_dimse_timeout_wording_without_a_timeout() -> None:
    """`Wire` allows no DIMSE timeout; a kernel ETIMEDOUT then formatted None with :g and
    raised TypeError out of the error path, leaving the association open."""
    from node.send.wire import dimse_timeout_text

    assert dimse_timeout_text(30.0) == "no C-STORE response within the DIMSE timeout (30 s)"
    assert "connection timed out" in dimse_timeout_text(None)
    assert "connection timed out" in dimse_timeout_text(0)
