"""The data phase on the raw socket (node.send.wire): timeouts kept by the kernel, and the
responses read through one receive buffer. The peer is the other end of a socket pair."""

from __future__ import annotations

import socket
import struct
import threading

from node.send.wire import Wire, echo_rq_command, parse_command
from node.sockopts import kernel_timeouts

_PDU = struct.Struct(">BBI")
_PDV = struct.Struct(">IBB")


def _response(msg_id: int, status: int = 0) -> bytes:
    """A C-ECHO-RSP in one P-DATA-TF PDU."""
    elems = [
        (0x0002, b"1.2.840.10008.1.1\x00"),
        (0x0100, struct.pack("<H", 0x8030)),
        (0x0120, struct.pack("<H", msg_id)),
        (0x0800, struct.pack("<H", 0x0101)),
        (0x0900, struct.pack("<H", status)),
    ]
    body = b"".join(struct.pack("<HHI", 0, el, len(v)) + v for el, v in elems)
    command = struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body
    pdv = _PDV.pack(len(command) + 2, 1, 0x03) + command
    return _PDU.pack(0x04, 0, len(pdv)) + pdv


def _timeval(sock: socket.socket, option: int) -> float:
    sec, usec = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
    return sec + usec / 1e6


def test_plain_tcp_blocks_and_the_kernel_keeps_the_timeouts() -> None:
    """No poll() before each send/recv: the socket blocks, SO_RCVTIMEO is the DIMSE
    timeout (the data phase only ever waits for responses), SO_SNDTIMEO the network one."""
    ours, peer = socket.socketpair()
    with ours, peer:
        wire = Wire(ours, 16384, dimse_timeout=7.5, network_timeout=2)
        assert ours.gettimeout() is None
        assert _timeval(ours, socket.SO_RCVTIMEO) == 7.5
        assert _timeval(ours, socket.SO_SNDTIMEO) == 2.0
        assert not wire.closed


def test_no_limit_is_no_kernel_timeout() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        assert kernel_timeouts(ours, send=None, recv=None)
        assert _timeval(ours, socket.SO_RCVTIMEO) == _timeval(ours, socket.SO_SNDTIMEO) == 0


def test_a_silent_peer_is_a_retry_after_the_dimse_timeout() -> None:
    ours, peer = socket.socketpair()
    with peer:
        wire = Wire(ours, 16384, dimse_timeout=0.2, network_timeout=5)
        outcome = wire.echo(1)
    assert outcome.describe().startswith("retry: no C-ECHO response")
    assert wire.closed


def test_a_peer_that_stops_reading_is_a_retry_after_the_network_timeout() -> None:
    """The send blocks on a full socket buffer; SO_SNDTIMEO ends it as a retry (a timeout),
    not a hang and not an unexpected error."""
    ours, peer = socket.socketpair()
    with peer:
        wire = Wire(ours, 0, dimse_timeout=5, network_timeout=0.2)
        outcome = wire.store(
            1, sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4", msg_id=1, data=bytes(8 << 20)
        )
    assert outcome.describe().startswith("retry: ")
    assert "the peer stopped reading (sending timed out" in outcome.reason
    assert wire.closed


def test_responses_arriving_together_are_each_read_once() -> None:
    """Two responses in one segment: the first echo takes its own, the second finds its
    own in the receive buffer (nothing lost, nothing read twice)."""
    ours, peer = socket.socketpair()
    with peer:
        wire = Wire(ours, 16384, dimse_timeout=5, network_timeout=5)
        requests: list[bytes] = []

        def answer() -> None:
            pdu = peer.recv(65536)
            requests.append(pdu)
            peer.sendall(_response(1) + _response(2, status=0x0000))

        t = threading.Thread(target=answer)
        t.start()
        first = wire.echo(1)
        t.join(30)
        second = wire.echo(1, msg_id=2)
        wire.abort()
    assert first.delivered and second.delivered
    [pdu] = requests
    kind, _, length = _PDU.unpack_from(pdu)
    assert kind == 0x04 and length == len(pdu) - 6
    assert parse_command(pdu[12:]) == parse_command(echo_rq_command(1))


def test_an_abort_from_the_peer_closes_our_socket() -> None:
    """A-ABORT instead of the response: a retry, and the socket is closed at once (it was
    only marked closed and stayed open until garbage collection)."""
    ours, peer = socket.socketpair()
    with peer:
        peer.sendall(_PDU.pack(0x07, 0, 4) + bytes((0, 0, 2, 0)))
        wire = Wire(ours, 16384, dimse_timeout=5, network_timeout=5)
        outcome = wire.echo(1)
        assert "the peer aborted the association (A-ABORT from its DICOM service provider" in (
            outcome.reason
        )
        assert wire.closed and not wire.released
        assert ours.fileno() == -1
