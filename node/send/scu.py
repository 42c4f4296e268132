"""The C-STORE SCU: associations to one destination, an :class:`Outcome` for every file.

One association carries a whole batch (split only when it needs more than 128 presentation
contexts). TCP_NODELAY is set on the socket as soon as it is connected: without it each
C-STORE waits ~40 ms for the peer's delayed ACK (Nagle).

Files whose transfer syntax was accepted are sent as they are on disk (the bytes after the
file meta streamed into P-DATA PDUs, no decode/re-encode); other files are transcoded (see
``contexts``). pynetdicom negotiates the association (A-ASSOCIATE, TLS, contexts, PDU
sizes); the data phase runs on one of two engines:

* ``wire`` (default): our own C-STORE exchange on the socket with pynetdicom's polling
  threads parked (``wire``): blocking I/O, no per-PDU thread hand-offs;
* ``pynetdicom``: pynetdicom's DIMSE provider with the reactor paused once per batch
  (``dimse``), used when the internals ``wire`` needs are missing.

Both match each response to its request; a lost response makes the association unusable
and the rest of the batch goes back to the queue.

An item is reported exactly once when it was attempted or decided; items left unreported
were not started (a stop was requested, or the association died before their turn) and the
caller gives them back to the queue untouched.

The :class:`Sender` protocol is what the worker needs; tests inject a fake.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import Destination
from node.errors import SendError
from node.filemeta import read_file_meta_from
from node.send import dimse, wire
from node.send import status as st
from node.send.contexts import SendItem, choose_syntax, plan_associations, transcode
from node.send.status import Outcome, Verdict
from node.send.tls import client_context

log = logging.getLogger(__name__)

Report = Callable[[SendItem, Outcome], None]

#: Poll interval of pynetdicom's DUL thread during our (short-lived, per batch) associations.
#: Its default of 1 ms adds up to ~1 ms of latency to each PDU in each direction; 0.1 ms
#: roughly halves the per-C-STORE time against a fast peer for little CPU (select() calls).
REACTOR_DELAY: float | None = 0.0001
ENGINES = ("wire", "pynetdicom")
DEFAULT_ENGINE = "wire"


class Sender(Protocol):
    """Sends a batch to one destination and reports an Outcome per attempted item."""

    def send(
        self, items: Sequence[SendItem], report: Report, stop: Callable[[], bool] | None = None
    ) -> None: ...


def _nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: switch Nagle off on the new connection."""
    try:
        sock = event.assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # pragma: no cover - platform dependent
        log.warning("cannot set TCP_NODELAY: %s", exc)


@dataclass
class _Negotiation:
    """What we saw while associating (filled by event handlers)."""

    connected: bool = False
    reject: Any = None  # the A-ASSOCIATE-RJ primitive, when rejected
    accept: Any = None  # the A-ASSOCIATE-AC primitive, when accepted
    handlers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handlers = [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_ACSE_RECV, self._on_acse)]

    def _on_open(self, event: Any) -> None:
        self.connected = True
        _nodelay(event)

    def _on_acse(self, event: Any) -> None:
        prim = event.primitive
        if not hasattr(prim, "result_source"):
            return
        if prim.result == 0x00:
            self.accept = prim
        elif prim.result is not None:
            self.reject = prim


class StoreSCU:
    """The real Sender: pynetdicom associations to one :class:`Destination`."""

    def __init__(
        self,
        destination: Destination,
        *,
        calling_ae: str,
        reactor_delay: float | None = REACTOR_DELAY,
        engine: str | None = None,
    ) -> None:
        self.dest = destination
        self.calling_ae = destination.calling_ae or calling_ae
        self.where = f"{destination.called_ae}@{destination.host}:{destination.port}"
        self._tls = None
        if destination.tls.enabled:
            self._tls = (
                client_context(destination.tls, f"destinations.{destination.name}.tls"),
                destination.host,
            )
        #: Poll interval of pynetdicom's DUL thread (its default is 1 ms).
        self.reactor_delay = reactor_delay
        #: "wire": our own data phase on the socket (``wire``), "pynetdicom": its DIMSE
        #: (``dimse``). Negotiation is pynetdicom's in both.
        engine = engine or DEFAULT_ENGINE
        if engine not in ENGINES:
            raise ValueError(f"unknown SCU engine {engine!r} (known: {', '.join(ENGINES)})")
        self.engine = engine

    # ------------------------------------------------------------------ associations

    def _associate(
        self, contexts: list[PresentationContext]
    ) -> tuple[Association | None, Outcome | None]:
        """An established association, or None and the outcome for every file.

        The outcome is None when the peer accepted the association but none of the
        presentation contexts (pynetdicom then aborts): each file's SOP class was refused.
        """
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = self.dest.acse_timeout
        ae.dimse_timeout = self.dest.dimse_timeout
        ae.network_timeout = self.dest.network_timeout
        ae.connection_timeout = self.dest.acse_timeout
        ae.maximum_pdu_size = self.dest.max_pdu
        ae.requested_contexts = contexts
        neg = _Negotiation()
        assoc = ae.associate(
            self.dest.host,
            self.dest.port,
            ae_title=self.dest.called_ae,
            max_pdu=self.dest.max_pdu,
            evt_handlers=neg.handlers,
            tls_args=self._tls,
        )
        if assoc.is_established:
            if self.reactor_delay is not None:
                assoc.dul._run_loop_delay = self.reactor_delay
            return assoc, st.DELIVERED
        if assoc.is_rejected and neg.reject is not None:
            rj = neg.reject
            text = (
                f"association rejected by {self.where}: {rj.result_str} "
                f"({rj.source_str}: {rj.reason_str})"
            )
            # PS3.8 7.1.1.9: result 1 = rejected-permanent, 2 = rejected-transient.
            return None, st.retry(text) if rj.result == 0x02 else st.dead(text)
        if neg.accept is not None:
            return None, None
        if not neg.connected:
            return None, st.retry(
                f"cannot connect to {self.dest.host}:{self.dest.port} "
                "(connection refused, unreachable or timed out)"
            )
        return None, st.retry(
            f"association with {self.where} failed (aborted or timed out during negotiation)"
        )

    def echo(self) -> Outcome:
        """One C-ECHO on a fresh association."""
        from pynetdicom.presentation import build_context

        assoc, outcome = self._associate([build_context(Verification)])
        if assoc is None:
            return outcome or st.dead(f"{self.where} does not accept the Verification SOP class")
        try:
            rsp = assoc.send_c_echo()
        finally:
            if assoc.is_established:
                assoc.release()
        if "Status" not in rsp:
            return st.retry(f"no C-ECHO response from {self.where}")
        code = int(rsp.Status)
        if code == 0x0000:
            return st.DELIVERED
        return st.dead(f"C-ECHO failed: {st.status_text(code, str(rsp.get('ErrorComment', '')))}")

    # ------------------------------------------------------------------ sending

    def send(
        self, items: Sequence[SendItem], report: Report, stop: Callable[[], bool] | None = None
    ) -> None:
        for contexts, members in plan_associations(items, self.dest.transfer_syntaxes):
            if stop is not None and stop():
                return
            assoc, outcome = self._associate(contexts)
            if assoc is None:
                for item in members:
                    report(item, outcome or self._not_accepted(item, []))
                continue
            try:
                self._send_on(assoc, members, report, stop)
            finally:
                if assoc.is_established:
                    assoc.release()

    def _send_on(
        self,
        assoc: Association,
        items: Sequence[SendItem],
        report: Report,
        stop: Callable[[], bool] | None,
    ) -> None:
        # (SOP class, transfer syntax) -> accepted context ID; each context has one syntax.
        contexts: dict[tuple[str, str], int] = {}
        accepted: dict[str, list[str]] = {}
        for cx in assoc.accepted_contexts:
            ts = str(cx.transfer_syntax[0])
            contexts[(str(cx.abstract_syntax), ts)] = int(cx.context_id or 0)
            accepted.setdefault(str(cx.abstract_syntax), []).append(ts)
        link: wire.Wire | None = None
        paused: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        fast = False
        if self.engine == "wire" and wire.available(assoc):
            link = wire.Wire(
                assoc,
                dimse_timeout=self.dest.dimse_timeout,
                network_timeout=self.dest.network_timeout,
            )
        elif dimse.fast_path_available(assoc):
            fast = True
            paused = dimse.PausedReactor(assoc)
        msg_id = 0
        try:
            with paused:
                for n, item in enumerate(items):
                    if stop is not None and stop():
                        return
                    ended = link.closed if link is not None else not assoc.is_established
                    if ended or assoc.is_aborted:
                        log.warning(
                            "association with %s ended; %d files left for later",
                            self.where,
                            len(items) - n,
                        )
                        return
                    syntaxes = accepted.get(item.sop_class_uid, [])
                    target = choose_syntax(item.transfer_syntax, syntaxes)
                    if target is None:
                        report(item, self._not_accepted(item, syntaxes))
                        continue
                    msg_id = msg_id % 65535 + 1
                    context_id = contexts[(item.sop_class_uid, target)]
                    outcome = self._store(assoc, item, target, context_id, msg_id, fast, link)
                    report(item, outcome)
                    if outcome.verdict is Verdict.RETRY and outcome.status is None:
                        # Abort, timeout, lost or unexpected response, read error mid-stream:
                        # this association is unusable; the rest goes back to the queue.
                        log.warning(
                            "association with %s unusable (%s); %d files left for later",
                            self.where,
                            outcome.reason,
                            len(items) - n - 1,
                        )
                        if link is not None:
                            link.abort()
                        elif assoc.is_established:
                            assoc.abort()
                        return
        finally:
            if link is not None and not link.closed:
                link.release()

    def _not_accepted(self, item: SendItem, syntaxes: list[str]) -> Outcome:
        name = UID(item.sop_class_uid).name
        if not syntaxes:
            return st.dead(
                f"SOP class {name} ({item.sop_class_uid}) not accepted by AE {self.where}"
            )
        got = ", ".join(UID(ts).name for ts in syntaxes)
        return st.dead(
            f"{name}: transfer syntax {UID(item.transfer_syntax).name} not accepted by AE "
            f"{self.where} (accepted: {got}) and the file cannot be converted to it"
        )

    def _store(
        self,
        assoc: Association,
        item: SendItem,
        target: str,
        context_id: int,
        msg_id: int,
        fast: bool,
        link: wire.Wire | None = None,
    ) -> Outcome:
        dataset: Dataset | None = None
        if target != item.transfer_syntax:
            try:
                dataset = transcode(item.path, target)
            except FileNotFoundError:
                return st.dead(f"{item.path}: file is gone")
            except (SendError, OSError) as exc:
                return st.dead(str(exc))
            except Exception as exc:  # an unreadable DICOM file: pydicom raises many types
                return st.dead(f"{item.path}: cannot read as DICOM to transcode it: {exc}")
        started = time.perf_counter()
        try:
            if link is not None:
                outcome = self._wire_store(link, item, target, context_id, msg_id, dataset)
            elif fast:
                outcome = dimse.store(
                    assoc,
                    context_id,
                    sop_class_uid=item.sop_class_uid,
                    sop_instance_uid=item.sop_instance_uid,
                    msg_id=msg_id,
                    path=item.path if dataset is None else None,
                    dataset=dataset,
                    implicit_vr=UID(target).is_implicit_VR,
                    timeout=self.dest.dimse_timeout,
                )
            else:
                outcome = self._send_c_store(assoc, item, dataset, msg_id)
        except FileNotFoundError:
            return st.dead(f"{item.path}: file is gone")
        except OSError as exc:
            return st.retry(f"{item.path}: read error while sending: {exc}")
        except (AttributeError, ValueError, KeyError) as exc:
            return st.dead(f"{item.path}: cannot be sent: {exc}")
        log.debug(
            "C-STORE %s -> %s in %.1f ms",
            item.sop_instance_uid,
            outcome.describe(),
            1000 * (time.perf_counter() - started),
        )
        return outcome

    def _wire_store(
        self,
        link: wire.Wire,
        item: SendItem,
        target: str,
        context_id: int,
        msg_id: int,
        dataset: Dataset | None,
    ) -> Outcome:
        if dataset is None:
            with open(item.path, "rb") as fp:  # one open: meta header, then the data set
                offset = read_file_meta_from(fp, item.path).data_offset
                return link.store(
                    context_id,
                    sop_class_uid=item.sop_class_uid,
                    sop_instance_uid=item.sop_instance_uid,
                    msg_id=msg_id,
                    source=fp,
                    offset=offset,
                )
        data = encode(dataset, UID(target).is_implicit_VR, True, False)
        if data is None:
            return st.dead(f"{item.path}: pydicom could not encode the data set in {target}")
        return link.store(
            context_id,
            sop_class_uid=item.sop_class_uid,
            sop_instance_uid=item.sop_instance_uid,
            msg_id=msg_id,
            data=data,
        )

    def _send_c_store(
        self, assoc: Association, item: SendItem, dataset: Dataset | None, msg_id: int
    ) -> Outcome:
        """pynetdicom's public path (used when the batch path's internals are missing)."""
        try:
            rsp = assoc.send_c_store(dataset if dataset is not None else dcmread(item.path), msg_id)
        except RuntimeError:
            return st.retry(f"association with {self.where} ended before the C-STORE")
        if "Status" not in rsp:
            # Timeout, abort, or pynetdicom's dropped response (#875): NOT sent.
            return st.retry(
                f"no C-STORE response from {self.where} (DIMSE timeout, abort or lost response)"
            )
        return st.classify_status(int(rsp.Status), str(rsp.get("ErrorComment", "") or ""))
