"""The pynetdicom engine of the C-STORE SCU: its association and DIMSE, for whole batches.

The SCU's default engine is our own (``acse`` + ``wire``); this one is the cross-check and
the escape hatch (a destination's ``engine = "pynetdicom"``): pynetdicom negotiates the
association and runs the DIMSE exchange.

Why not ``Association.send_c_store`` for every file: it pauses the association's reactor
thread around each exchange and resumes it right after, and the reactor can slip through
that pause (``threading.Event`` set then cleared again at once still wakes it; it then
reads the DIMSE queue). When the peer answers fast, the reactor takes the C-STORE
response, logs "Received unexpected C-STORE service message" and the sender waits for the
DIMSE timeout and aborts (pynetdicom #875). We measured it about once per 600 stores against
a local DCMTK storescp. Here the reactor is paused once for the whole batch, given time to
settle, and the response is matched to its request (Message ID and SOP Instance UID)
before anything counts as sent.

Files in an accepted syntax are streamed from disk into P-DATA PDUs (pynetdicom's
``_dataset_path`` mechanism behind ``STORE_SEND_CHUNKED_DATASET``): no decode/re-encode.
The waiting side polls the response queue in 50 ms slices so an abort or a dead
connection is noticed at once instead of after the DIMSE timeout.

This uses pynetdicom internals (3.0.x): ``_reactor_checkpoint``, ``_is_paused``,
``dimse.msg_queue``. :func:`fast_path_available` tells when they are missing, and the
channel then falls back to ``send_c_store``.
"""

from __future__ import annotations

import io
import logging
import queue
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ
from pynetdicom.presentation import build_context

from node.config import Destination
from node.errors import SendError
from node.filemeta import FileMetaError, read_file_meta
from node.send import acse, wire
from node.send import status as st
from node.send.contexts import SendItem, check_even, check_unchanged, encode_dataset
from node.send.status import Outcome

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.01  # > one reactor loop (1 ms sleep) with room for scheduling noise
POLL_SECONDS = 0.05
#: Poll interval of pynetdicom's DUL thread during our (short-lived, per batch) associations.
#: Its default of 1 ms adds up to ~1 ms of latency to each PDU in each direction; 0.1 ms
#: roughly halves the per-C-STORE time against a fast peer for little CPU (select() calls).
REACTOR_DELAY = 0.0001


def _nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: switch Nagle off on the new connection."""
    try:
        sock = event.assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # pragma: no cover - platform dependent
        log.warning("cannot set TCP_NODELAY: %s", exc)


@dataclass
class _Negotiation:
    """What we saw while associating (filled by event handlers).

    The rejection is taken from the A-ASSOCIATE-RJ *PDU* as the DUL thread decodes it, not
    from pynetdicom's ``is_rejected``: pynetdicom 3.0.4's requestor checks that the transport
    is still connected after queueing its request, and when the peer's A-ASSOCIATE-RJ arrived
    and the DUL closed the connection (PS3.8 AE-4) before that check ran, which happens when
    the machine is busy, it aborts instead and ``is_rejected`` stays False: a transient
    rejection would be reported as an aborted negotiation.
    """

    connected: bool = False
    reject: Any = None  # the A-ASSOCIATE-RJ PDU, when rejected
    abort: Any = None  # the peer's A-ABORT PDU, once one came (source and reason)
    accept: Any = None  # the A-ASSOCIATE-AC primitive, when accepted
    handlers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handlers = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_PDU_RECV, self.on_pdu),
            (evt.EVT_ACSE_RECV, self._on_acse),
        ]

    def _on_open(self, event: Any) -> None:
        self.connected = True
        _nodelay(event)

    def on_pdu(self, event: Any) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            self.reject = pdu
        elif isinstance(pdu, A_ABORT_RQ):
            self.abort = pdu

    def lost(self) -> Outcome:
        """The association ended under a C-STORE: the peer's A-ABORT, or the connection
        lost, in the words of the ``wire`` engine."""
        if self.abort is not None:
            return st.retry(wire.peer_abort_text(self.abort.source, self.abort.reason_diagnostic))
        return st.retry(f"association failed during the C-STORE: {wire.CONNECTION_LOST}")

    def _on_acse(self, event: Any) -> None:
        prim = event.primitive
        if hasattr(prim, "result_source") and prim.result == 0x00:
            self.accept = prim


def associate(
    dest: Destination,
    calling_ae: str,
    contexts: Sequence[tuple[str, str]],
    tls: tuple[ssl.SSLContext, str] | None,
    refusals: dict[tuple[str, str], int],
    strays: dict[tuple[str, str], tuple[int, str]],
) -> tuple[Channel | None, Outcome | None]:
    """A :class:`Channel` on an established association, or None and the outcome for every
    file (None when the peer accepted none of the contexts).

    The answered contexts are sorted as our own engine sorts them (``acse.sort_context``):
    pynetdicom takes a context "accepted" with a transfer syntax we did not propose in it
    as accepted in that syntax; here it counts as not accepted, with the same warning.
    ``refusals`` and ``strays`` receive what ``acse.sort_context`` files there.
    """
    where = f"{dest.called_ae}@{dest.host}:{dest.port}"
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = dest.acse_timeout
    ae.dimse_timeout = dest.dimse_timeout
    ae.network_timeout = dest.network_timeout
    ae.connection_timeout = dest.acse_timeout
    ae.maximum_pdu_size = dest.max_pdu
    ae.requested_contexts = [build_context(a, t) for a, t in contexts]
    neg = _Negotiation()
    assoc = ae.associate(
        dest.host,
        dest.port,
        ae_title=dest.called_ae,
        max_pdu=dest.max_pdu,
        evt_handlers=neg.handlers,
        tls_args=tls,
    )
    accepted: dict[tuple[str, str], int] = {}
    answered = neg.accept.presentation_context_definition_results_list if neg.accept else []
    for cx in answered:
        n = (int(cx.context_id or 0) - 1) // 2  # pynetdicom numbers them 1, 3, 5 ... in order
        if 0 <= n < len(contexts):
            syntax = str(cx.transfer_syntax[0]) if cx.transfer_syntax else ""
            acse.sort_context(
                int(cx.context_id or 0), contexts[n], cx.result, syntax, accepted, refusals, strays
            )
    if assoc.is_established:
        if not accepted:  # only contexts answered in a syntax we did not propose
            assoc.release()
            return None, None
        # EVT_PDU_RECV stays bound: one call per PDU received (a response per C-STORE),
        # and it is how the peer's A-ABORT (source, reason) reaches us.
        assoc.dul._run_loop_delay = REACTOR_DELAY
        return Channel(assoc, where, dest.dimse_timeout, accepted, neg), st.DELIVERED
    if neg.reject is not None:
        pdu = neg.reject
        rj = acse.Rejected(pdu.result, pdu.source, pdu.reason_diagnostic)
        text = f"association rejected by {where}: {rj}"  # worded as by our own engine
        return None, st.retry(text) if rj.transient else st.dead(text)
    if neg.accept is not None:
        return None, None
    if not neg.connected:
        return None, st.retry(
            f"cannot connect to {dest.host}:{dest.port} "
            "(connection refused, unreachable or timed out)"
        )
    return None, st.retry(
        f"association with {where} failed (aborted or timed out during negotiation)"
    )


class Channel:
    """An established pynetdicom association carrying one batch (see ``scu.Channel``)."""

    def __init__(
        self,
        assoc: Association,
        where: str,
        dimse_timeout: float,
        contexts: dict[tuple[str, str], int],
        negotiation: _Negotiation,
    ) -> None:
        self.assoc = assoc
        self.negotiation = negotiation
        self.where = where
        self.timeout = dimse_timeout if dimse_timeout > 0 else None
        self.contexts = contexts
        self.paused: PausedReactor | None = None
        if fast_path_available(assoc):
            self.paused = PausedReactor(assoc).__enter__()

    @property
    def ended(self) -> bool:
        return not self.assoc.is_established or self.assoc.is_aborted

    def ahead(self, item: SendItem | None) -> None:
        """Nothing is read ahead on pynetdicom's path (each store reads its own file)."""

    def store(
        self,
        item: SendItem,
        target: str,
        context_id: int,
        msg_id: int,
        dataset: Dataset | bytes | None,
    ) -> Outcome:
        if self.paused is not None:
            data: bytes | None = None
            if isinstance(dataset, bytes):
                data = dataset
            elif dataset is not None:
                data = encode_dataset(dataset, target)
            offset = 0
            if data is None:
                try:
                    meta = read_file_meta(item.path)
                except FileMetaError as exc:
                    raise SendError(str(exc)) from None
                check_unchanged(meta, item)
                offset = meta.data_offset
            return store(
                self.assoc,
                context_id,
                sop_class_uid=item.sop_class_uid,
                sop_instance_uid=item.sop_instance_uid,
                msg_id=msg_id,
                path=item.path if data is None else None,
                offset=offset,
                data=data,
                timeout=self.timeout,
                lost=self.negotiation.lost,
            )
        # pynetdicom's public path (when the batch path's internals are missing).
        try:
            # Already-encoded bytes (a deflated file): pynetdicom encodes it itself.
            ds = dataset if isinstance(dataset, Dataset) else dcmread(item.path)
            rsp = self.assoc.send_c_store(ds, msg_id)
        except RuntimeError:
            return st.retry(f"association with {self.where} ended before the C-STORE")
        if "Status" not in rsp:
            # Timeout, abort, or pynetdicom's dropped response (#875): NOT sent.
            return st.retry(
                f"no C-STORE response from {self.where} (DIMSE timeout, abort or lost response)"
            )
        return st.classify_status(int(rsp.Status), str(rsp.get("ErrorComment", "") or ""))

    def echo(self, context_id: int) -> Outcome:
        self._resume()
        rsp = self.assoc.send_c_echo()
        if "Status" not in rsp:
            return st.retry(f"no C-ECHO response from {self.where}")
        code = int(rsp.Status)
        if code == 0x0000:
            return st.DELIVERED
        return st.dead(f"C-ECHO failed: {st.status_text(code, str(rsp.get('ErrorComment', '')))}")

    def _resume(self) -> None:
        if self.paused is not None:
            self.paused.__exit__()
            self.paused = None

    def abort(self) -> None:
        self._resume()
        if self.assoc.is_established:
            self.assoc.abort()

    def release(self) -> None:
        self._resume()
        if self.assoc.is_established:
            self.assoc.release()


def fast_path_available(assoc: Association) -> bool:
    """True when this pynetdicom has the internals the batch path relies on."""
    return (
        hasattr(assoc, "_reactor_checkpoint")
        and hasattr(assoc, "_is_paused")
        and hasattr(getattr(assoc, "dimse", None), "msg_queue")
    )


class PausedReactor:
    """Keep the association's reactor thread parked while we own the DIMSE queue."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc

    def __enter__(self) -> PausedReactor:
        a: Any = self.assoc
        a._reactor_checkpoint.clear()
        deadline = time.monotonic() + 5.0
        while not a._is_paused and time.monotonic() < deadline:
            time.sleep(0.0001)
        # It may have passed the checkpoint just before we cleared it: let that loop end.
        time.sleep(SETTLE_SECONDS)
        return self

    def __exit__(self, *exc: object) -> None:
        a: Any = self.assoc
        a._reactor_checkpoint.set()


def store(
    assoc: Association,
    context_id: int,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    msg_id: int,
    path: Path | None = None,
    offset: int = 0,
    data: bytes | None = None,
    timeout: float | None = None,
    lost: Callable[[], Outcome] | None = None,
) -> Outcome:
    """One C-STORE of ``path`` (as stored, its data set at ``offset``) or ``data`` (an
    encoded data set); its Outcome.

    Must run inside :class:`PausedReactor`. Raises OSError when the file cannot be read.
    """
    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = sop_class_uid
    req.AffectedSOPInstanceUID = sop_instance_uid
    req.Priority = 2
    if path is not None:
        check_even(path.stat().st_size - offset)
        req._dataset_path = (path, offset)
    else:
        req.DataSet = io.BytesIO(data or b"")
    a: Any = assoc
    a.dimse.send_msg(req, context_id)
    return _wait_response(assoc, msg_id, sop_instance_uid, timeout, lost or _Negotiation().lost)


def _wait_response(
    assoc: Association,
    msg_id: int,
    sop_instance_uid: str,
    timeout: float | None,
    lost: Callable[[], Outcome],
) -> Outcome:
    a: Any = assoc
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            _cx, rsp = a.dimse.msg_queue.get(block=True, timeout=POLL_SECONDS)
        except queue.Empty:
            if a.is_aborted or a.acse.is_aborted() or not a.dul.is_alive():
                return lost()
            if deadline is not None and time.monotonic() > deadline:
                log.error("no C-STORE response within the DIMSE timeout: aborting")
                assoc.abort()
                return st.retry(wire.dimse_timeout_text(timeout))
            continue
        if rsp is None:  # the provider gave up on the association (abort, closed socket)
            return lost()
        if not isinstance(rsp, C_STORE) or rsp.MessageIDBeingRespondedTo != msg_id:
            log.error(
                "unexpected DIMSE message %s (responding to %s) while waiting for message %d",
                type(rsp).__name__,
                getattr(rsp, "MessageIDBeingRespondedTo", None),
                msg_id,
            )
            assoc.abort()
            return st.retry("unexpected DIMSE message instead of the C-STORE response")
        uid = rsp.AffectedSOPInstanceUID
        if uid and str(uid) != sop_instance_uid:
            assoc.abort()
            return st.retry(f"C-STORE response names another SOP Instance UID ({uid})")
        if not rsp.is_valid_response or rsp.Status is None:
            assoc.abort()
            return st.retry("invalid C-STORE response (no Status)")
        return st.classify_status(int(rsp.Status), str(rsp.ErrorComment or ""))
