"""Per-connection guards installed on each accepted association (no global patching).

pynetdicom 3.0.4 reads a PDU by trusting the 4-byte length in its header: a peer that
announces 4 GB and keeps sending makes it buffer everything it sends, in memory. Two
guards are bound onto each association's own objects when the connection opens:

* :func:`guard_recv` replaces that association socket's ``recv`` with one that refuses any
  read longer than the PDU cap (the SCP's maximum PDU, at least 1 MiB for association
  requests) -- the DUL sees a closed connection and drops the association -- and reads
  into one pre-sized buffer (``recv_into``) instead of 4 KiB appends.
* :func:`install_spill` makes every incoming DIMSE message collect its data set in a
  :class:`SpillBuffer`: memory up to ``chunk_threshold_bytes``, then a temporary file in
  the archive's ``.incoming`` directory (same file system as the archive, named so that a
  restart removes it). pynetdicom's own ``STORE_RECV_CHUNKED_DATASET`` is all-or-nothing
  for the whole process and writes to the system temp dir; this keeps small objects in
  memory (fast path) and large ones on disk.
* :func:`free_slot_when_closed` ends the association at once when the peer goes away
  before its A-ASSOCIATE-RQ has arrived. pynetdicom's DUL returns to Sta1 and tells no one,
  so its association thread waited ``receive.acse_timeout`` (30 s) for a request that
  could no longer come, holding one of ``max_associations`` slots: a few TCP health checks
  or a port scan locked real modalities out ("local limit exceeded").
* :func:`contain_failures` aborts an association whose pynetdicom thread raised (e.g. an
  A-ASSOCIATE-RQ whose presentation context names no transfer syntax: IndexError in
  pynetdicom's negotiation). The thread used to die silently without answering, leaving
  the peer waiting, and the connection and its DUL thread open for as long as the peer
  kept it, outside every connection and association limit.
* :func:`install_wakeup` removes pynetdicom's polling latency from the connection's DUL
  thread. Stock, it polls the socket with a zero-timeout ``select`` and sleeps 1 ms when
  idle, so every PDU that has not fully arrived yet and every response we queue waits up
  to 1 ms (4-5 such waits per 512 KB object at a 128 KiB PDU). Here the DUL blocks in
  ``select`` on the socket *and* a wake-up socket that is written whenever a PDU is queued
  for sending, so it reacts at once to either, and sleeps in the kernel when idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.transport import AssociationSocket

from node.errors import ReceiveError

log = logging.getLogger(__name__)

MIN_PDU_CAP = 1 << 20
#: A PDU (part) must arrive within the socket timeout + its length / this (bytes/s).
PDU_MIN_RATE = 64 << 10
UNLIMITED_PDU_CAP = 64 << 20


def pdu_cap(max_pdu: int) -> int:
    """The longest PDU body accepted from a peer, for a configured maximum PDU."""
    if max_pdu <= 0:
        return UNLIMITED_PDU_CAP
    return max(max_pdu, MIN_PDU_CAP)


class PduTooLong(OSError):
    """A peer announced a PDU longer than the cap."""


def guard_recv(assoc_socket: Any, cap: int, peer: str) -> None:
    """Bind a length-capped ``recv`` onto one pynetdicom ``AssociationSocket``."""

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > cap:
            log.warning(
                "peer %s announced a PDU of %d bytes, over the limit of %d: dropping it",
                peer,
                nr_bytes,
                cap,
            )
            raise PduTooLong(f"PDU length {nr_bytes} exceeds {cap}")
        sock = assoc_socket.socket
        if sock is None:
            raise OSError("connection closed")
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        # The socket timeout bounds each wait for more bytes, not the whole read: a peer
        # dripping a byte at a time would hold the association (and its slot) for ever.
        timeout = sock.gettimeout()
        deadline = time.monotonic() + timeout + nr_bytes / PDU_MIN_RATE if timeout else None
        while got < nr_bytes:
            if got and deadline is not None and time.monotonic() > deadline:
                log.warning(
                    "peer %s sent only %d of %d bytes in receive.network_timeout"
                    " + 1 s per 64 KiB: too slow, dropping it",
                    peer,
                    got,
                    nr_bytes,
                )
                raise TimeoutError(f"{peer}: PDU arriving too slowly")
            n = sock.recv_into(view[got:], nr_bytes - got)
            if n == 0:
                del view
                del buf[got:]
                return buf
            got += n
        return buf

    assoc_socket.recv = recv


class SpillBuffer(BytesIO):
    """A ``BytesIO`` that moves its content to a file once it grows past ``threshold``.

    pynetdicom only calls ``write`` while receiving; the C-STORE handler then asks
    :attr:`spilled` and uses :attr:`path` (a file holding the data set bytes) or the
    in-memory buffer. :meth:`discard` removes the file; it is idempotent.
    """

    #: While spilling, the free-space check runs every this many bytes.
    CHECK_EVERY = 64 << 20

    def __init__(
        self,
        threshold: int,
        create: Callable[[], tuple[int, Path]],
        on_spill: Callable[[SpillBuffer], None],
        check_space: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self._threshold = threshold
        self._create = create
        self._on_spill = on_spill
        self._check_space = check_space
        self._file: Any = None
        self._since_check = 0
        self.path: Path | None = None

    @property
    def spilled(self) -> bool:
        return self.path is not None

    def write(self, data: Any) -> int:
        if self._file is not None:
            self._since_check += len(data)
            if self._check_space is not None and self._since_check >= self.CHECK_EVERY:
                # A stream that would fill the disk is cut here (the DUL aborts the
                # association); the complete object is checked again before storing.
                self._since_check = 0
                self._check_space(0)
            self._file.write(data)
            return len(data)
        n = super().write(data)
        if self.tell() > self._threshold:
            self._spill()
        return n

    def _spill(self) -> None:
        fd, self.path = self._create()
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._on_spill(self)
        with super().getbuffer() as view:
            self._file.write(view)
        super().seek(0)
        super().truncate()

    def finish(self) -> Path:
        """Flush the spill file and return its path (only when :attr:`spilled`)."""
        assert self._file is not None and self.path is not None
        self._file.flush()
        return self.path

    def getvalue(self) -> bytes:
        if self.path is None:
            return super().getvalue()
        return self.finish().read_bytes()  # not used by our handler; kept for correctness

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class SpillTracker:
    """The spill buffers of one association, removed when its connection closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffers: list[SpillBuffer] = []

    def add(self, buf: SpillBuffer) -> None:
        with self._lock:
            self._buffers.append(buf)

    def discard_all(self) -> None:
        with self._lock:
            buffers, self._buffers = self._buffers, []
        for buf in buffers:
            buf.discard()


def install_spill(
    assoc: Any,
    threshold: int,
    create: Callable[[], tuple[int, Path]],
    tracker: SpillTracker,
    check_space: Callable[[int], None] | None = None,
) -> None:
    """Make each DIMSE message of ``assoc`` collect its data set in a :class:`SpillBuffer`
    (``create`` makes its file: :meth:`Archive.new_incoming_file`)."""
    dimse = assoc.dimse
    original = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        if dimse.message is None:
            message = DIMSEMessage()
            message.data_set = SpillBuffer(threshold, create, tracker.add, check_space)
            dimse.message = message
        original(primitive)

    dimse.receive_primitive = receive_primitive


#: How long the DUL thread waits in ``select`` when it has nothing to do (it is woken at
#: once for incoming data, a PDU to send or a queued event; this only paces its timers).
IDLE_WAIT = 0.02


class _WakeableSocket(AssociationSocket):
    """An ``AssociationSocket`` whose ``ready`` waits in ``select`` for data or a wake-up."""

    _node_wakeup: socket.socket | None = None
    _node_waker: socket.socket | None = None
    _node_wait: float = IDLE_WAIT
    #: Set once the A-ASSOCIATE-AC is sent when our own data phase may take over
    #: (:mod:`node.receive.dataphase`): the DUL then must not read from the socket.
    _node_hold: bool = False

    def wake(self) -> None:
        """Wake the DUL thread from its ``select``."""
        waker = self._node_waker
        if waker is not None:
            with contextlib.suppress(OSError):
                waker.send(b"\0")

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        wake = self._node_wakeup
        # The DUL handles one event per turn of its loop and asks us in between: with an
        # event still queued (the A-ASSOCIATE-RQ's, right after it was read) it must not
        # wait here, or every association set-up would take IDLE_WAIT longer.
        wait = 0.0 if self.event_queue.qsize() else self._node_wait
        if self._node_hold:
            # Not a byte may be read: wait for a wake-up (hold lifted, or told to stop).
            if wake is not None:
                with contextlib.suppress(OSError, ValueError):
                    if select.select([wake], [], [], wait)[0]:
                        wake.recv(4096)
            return False
        watch = [sock] if wake is None else [sock, wake]
        try:
            readable, _, _ = select.select(watch, [], [], wait)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        if wake is not None and wake in readable:
            with contextlib.suppress(OSError):
                wake.recv(4096)
        return sock in readable


class SentCounter:
    """How many PDUs an association has handed to its DUL for sending; waitable."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.value = 0

    def bump(self) -> None:
        with self._cond:
            self.value += 1
            self._cond.notify_all()

    def wait_for(self, target: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.value >= target, timeout)


def install_wakeup(
    assoc: Any, counter: SentCounter, wait: float | None = None
) -> Callable[[], None]:
    """Make ``assoc``'s DUL thread event-driven; returns a function closing the wake-up pair.

    ``counter`` is bumped after each PDU is queued for sending (storage commitment uses it
    to send its N-EVENT-REPORT strictly after the N-ACTION response).
    """
    dul = assoc.dul
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    original_send_pdu = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        original_send_pdu(primitive)
        counter.bump()
        with contextlib.suppress(OSError):  # full buffer: a wake-up is pending anyway
            writer.send(b"\0")

    dul.send_pdu = send_pdu
    sock = dul.socket
    sock.__class__ = _WakeableSocket
    sock._node_wakeup = reader
    sock._node_waker = writer
    sock._node_wait = IDLE_WAIT if wait is None else wait
    dul._run_loop_delay = 0.0

    def close() -> None:
        sock._node_wakeup = None
        sock._node_waker = None
        reader.close()
        writer.close()

    return close


def free_slot_when_closed(assoc: Any) -> None:
    """Wake ``assoc``'s association thread when its connection ends before the A-ASSOCIATE-RQ.

    pynetdicom's acceptor waits for the first primitive from its DUL for ``acse_timeout``;
    a transport closed in Sta2 (connect then close, garbage, a cut request) takes the state
    machine back to Sta1 without queuing anything. Here, reaching Sta1 before a request was
    received queues ``None``, which that wait reads as "no request": the thread ends and the
    slot is free again. A request the state machine raises on (pynetdicom refuses an even
    presentation context ID by raising in its DUL thread) is answered A-ABORT (2, 6) and
    ends the same way.
    """
    machine = assoc.dul.state_machine
    original = machine.do_action
    requested = False

    def do_action(event: str) -> None:
        nonlocal requested
        try:
            original(event)
        except Exception as exc:
            if requested:
                _abort_established(assoc, exc)
                return
            # pynetdicom's state machine raised on the request (e.g. an even presentation
            # context ID): its DUL thread dies with this exception. Answer A-ABORT and wake
            # the association thread rather than leave the peer waiting acse_timeout.
            requested = True
            send_and_shut(getattr(assoc.dul.socket, "socket", None))
            assoc.dul.to_user_queue.put(None)
            raise
        state = machine.current_state
        if state == "Sta3":  # A-ASSOCIATE-RQ received
            requested = True
        elif state == "Sta1" and not requested:
            requested = True  # once
            log.debug("connection from %s closed before an association request", assoc)
            assoc.dul.to_user_queue.put(None)

    machine.do_action = do_action


#: A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value).
_ABORT_INVALID = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06))
#: A-ABORT, source 2 (service provider), reason 0 (not specified).
_ABORT_PROVIDER = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x00))


def _abort_established(assoc: Any, exc: Exception) -> None:
    """An established association whose DUL thread raised (a data set that cannot be
    spilled: the disk floor reached, the file system full): log it, A-ABORT, and let the
    DUL thread end. Raising on ended the thread with a traceback on stderr, outside the
    node's log, and dropped the connection without an A-ABORT."""
    requestor = getattr(assoc, "requestor", None)
    log.warning(
        "association with %s (%s:%s) aborted while receiving: %s",
        str(getattr(requestor, "ae_title", "")).strip(),
        getattr(requestor, "address", "?"),
        getattr(requestor, "port", "?"),
        exc if isinstance(exc, OSError | ReceiveError) else f"{type(exc).__name__}: {exc}",
    )
    if not isinstance(exc, OSError | ReceiveError):
        log.debug("traceback", exc_info=exc)
    send_and_shut(getattr(assoc.dul.socket, "socket", None), _ABORT_PROVIDER)
    assoc.is_aborted = True
    assoc.is_established = False
    assoc._kill = True
    assoc.dul._kill_thread = True


def send_and_shut(raw: socket.socket | None, pdu: bytes = _ABORT_INVALID) -> None:
    """Send ``pdu`` (by default A-ABORT: service provider, invalid PDU parameter; an
    A-ASSOCIATE-RJ from :mod:`node.receive.aetitles`) and shut the connection."""
    if raw is None:
        return
    with contextlib.suppress(OSError, ValueError):
        raw.settimeout(2.0)
        raw.sendall(pdu)
    with contextlib.suppress(OSError, ValueError):
        raw.shutdown(socket.SHUT_RDWR)


def contain_failures(assoc: Any, peer: str, cleanup: Callable[[], None]) -> None:
    """Abort ``assoc`` (A-ABORT, close, stop its DUL thread) if its thread raises; run
    ``cleanup`` (the connection-close handler's work) when the thread ends, whatever way:
    pynetdicom skips EVT_CONN_CLOSE when its DUL died or the request never came.

    Wraps the thread's target (bound by pynetdicom before this connection-open hook runs).
    """
    target = getattr(assoc, "_target", None)
    if not callable(target):  # pragma: no cover - not CPython's threading.Thread
        return

    def run() -> None:
        try:
            target()
        except Exception as exc:
            log.warning(
                "association with %s failed in pynetdicom (%s: %s): aborting it",
                peer,
                type(exc).__name__,
                exc,
            )
            _abort_connection(assoc)
        finally:
            if assoc.dul.is_alive():  # e.g. the reactor's own timeout path left it
                assoc.dul.kill_dul()
                wake = getattr(assoc.dul.socket, "wake", None)
                if callable(wake):
                    wake()
                assoc.dul.join(5)
            with contextlib.suppress(Exception):
                assoc.dul.socket.close()
            with contextlib.suppress(Exception):
                cleanup()

    assoc._target = run


def _abort_connection(assoc: Any) -> None:
    assoc.is_aborted = True
    assoc.is_established = False
    assoc._kill = True
    dul = assoc.dul
    assoc_socket = dul.socket
    send_and_shut(getattr(assoc_socket, "socket", None))
    dul.kill_dul()
    wake = getattr(assoc_socket, "wake", None)
    if callable(wake):
        wake()
    if dul.is_alive():
        dul.join(5)
    with contextlib.suppress(Exception):  # also triggers EVT_CONN_CLOSE (our cleanup)
        assoc_socket.close()
