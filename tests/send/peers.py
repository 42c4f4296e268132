"""In-process peers for the SCU tests: a scripted pynetdicom SCP and a raw rejecting server."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.peers import LOOPBACK, free_port


@dataclass
class ScriptedSCP:
    """A pynetdicom Storage SCP answering each C-STORE with the next scripted status."""

    port: int
    aet: str
    statuses: list[int] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    delay: float = 0.0
    datasets: list[Any] = field(default_factory=list)
    drop_connection_at: int = 0  # on the Nth C-STORE, cut the TCP connection instead

    def _maybe_drop(self, event: Any) -> None:
        self.calls += 1
        if self.calls == self.drop_connection_at:
            sock = event.assoc.dul.socket.socket
            sock.shutdown(socket.SHUT_RDWR)

    calls: int = 0

    def handle(self, event: Any) -> int:
        self._maybe_drop(event)
        if self.delay:
            time.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 0x0000
        if status == 0x0000 or status & 0xF000 == 0xB000:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.datasets.append(ds)
        return status


@contextlib.contextmanager
def serving(ae: AE, handlers: list[Any], port: int = 0, **kw: Any) -> Iterator[int]:
    """``ae`` serving on 127.0.0.1 (``port``, or a free one) with ``handlers``; its port."""
    port = port or free_port()
    server = ae.start_server((LOOPBACK, port), block=False, evt_handlers=handlers, **kw)
    try:
        yield port
    finally:
        server.shutdown()


@contextlib.contextmanager
def scripted_scp(
    statuses: list[int] | None = None,
    *,
    sop_classes: tuple[str, ...] = (SecondaryCaptureImageStorage,),
    require_called_aet: bool = False,
    delay: float = 0.0,
    drop_connection_at: int = 0,
) -> Iterator[ScriptedSCP]:
    scp = ScriptedSCP(free_port(), "FAKEPACS", list(statuses or []), delay=delay)
    scp.drop_connection_at = drop_connection_at
    ae = AE(ae_title=scp.aet)
    ae.require_called_aet = require_called_aet
    for uid in sop_classes:
        ae.add_supported_context(
            uid, [JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
    ae.add_supported_context(Verification)
    with serving(ae, [(evt.EVT_C_STORE, scp.handle)], scp.port):
        yield scp


@contextlib.contextmanager
def rejecting_server(result: int, source: int = 1, reason: int = 1) -> Iterator[int]:
    """A TCP server answering every A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    with answering_server(struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)) as port:
        yield port


@contextlib.contextmanager
def answering_server(answer: bytes | None, *, hold: bool = True) -> Iterator[int]:
    """A TCP server that reads one A-ASSOCIATE-RQ per connection and answers ``answer``
    (raw bytes, sent as they are), or nothing at all when ``answer`` is None; then it waits
    for the peer to close (``hold``) or closes the connection itself."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((LOOPBACK, 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    header = conn.recv(6)
                    if len(header) == 6:
                        (length,) = struct.unpack(">I", header[2:6])
                        while length > 0:
                            chunk = conn.recv(min(length, 65536))
                            if not chunk:
                                break
                            length -= len(chunk)
                    if answer is not None:
                        conn.sendall(answer)
                    if hold:
                        conn.recv(1)  # wait for the peer to close

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def answer_in_unproposed_syntax(monkeypatch: Any, answers: dict[str, str]) -> None:
    """Make pynetdicom's acceptor (our in-process SCPs) non-conformant: a context proposed
    with a transfer syntax in ``answers`` is accepted with the syntax it maps to, which was
    not proposed in it (PS3.8 9.3.3.2 forbids this; no real tool we have does it)."""
    import pynetdicom.acse

    negotiate = pynetdicom.acse.negotiate_as_acceptor

    def non_conformant(rq: Any, supported: Any, roles: Any = None) -> Any:
        result, ac_roles = negotiate(rq, supported, roles)
        proposed = {cx.context_id: cx.transfer_syntax[0] for cx in rq}
        for cx in result:
            if cx.result == 0 and proposed[cx.context_id] in answers:
                cx.transfer_syntax = [answers[proposed[cx.context_id]]]
        return result, ac_roles

    monkeypatch.setattr(pynetdicom.acse, "negotiate_as_acceptor", non_conformant)
