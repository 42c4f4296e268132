"""The C-STORE SCU: associations to one destination, an :class:`Outcome` for every file.

One association carries a whole batch (split only when it needs more than 128 presentation
contexts). TCP_NODELAY is set on the socket as soon as it is connected: without it each
C-STORE waits ~40 ms for the peer's delayed ACK (Nagle).

Files whose transfer syntax was accepted are sent as they are on disk (the bytes after the
file meta streamed into P-DATA PDUs, no decode/re-encode); other files are transcoded (see
``contexts``). Two engines carry the association, behind one small :class:`Channel`
interface:

* ``wire`` (default): our own A-ASSOCIATE (``acse``) and data phase (``wire``) on a
  blocking socket: no polling threads, no per-PDU hand-offs, and neither pynetdicom nor
  pydicom imported unless a file must be transcoded (a plain ``dicom-node send`` starts
  in a fraction of the time);
* ``pynetdicom``: pynetdicom's association and DIMSE provider (``dimse``), the
  cross-check the tests run every SCU case with, and a fallback.

Both match each response to its request; a lost response makes the association unusable
and the rest of the batch goes back to the queue.

An item is reported exactly once when it was attempted or decided; items left unreported
were not started (a stop was requested, or the association died before their turn) and the
caller gives them back to the queue untouched.

The :class:`Sender` protocol is what the worker needs; tests inject a fake.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from node.config import Destination
from node.errors import SendError
from node.filemeta import read_file_meta_from
from node.send import acse, wire
from node.send import status as st
from node.send.contexts import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    Context,
    FileChanged,
    SendItem,
    check_even,
    check_unchanged,
    choose_syntax,
    deflated_data_set,
    encode_dataset,
    plan_associations,
    transcode,
    why_refused,
)
from node.send.status import Outcome, Verdict

if TYPE_CHECKING:
    import ssl

    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

Report = Callable[[SendItem, Outcome], None]

ENGINES = ("wire", "pynetdicom")
DEFAULT_ENGINE = "wire"
#: The largest data set read ahead into memory (larger files are streamed on their turn).
READ_AHEAD_MAX = 8 * 1024 * 1024


class Sender(Protocol):
    """Sends a batch to one destination and reports an Outcome per attempted item."""

    def send(
        self, items: Sequence[SendItem], report: Report, stop: Callable[[], bool] | None = None
    ) -> None: ...


class Channel(Protocol):
    """An established association, whichever engine carries it."""

    #: (SOP class, transfer syntax) -> accepted presentation context ID.
    contexts: dict[Context, int]

    @property
    def ended(self) -> bool: ...

    def store(
        self,
        item: SendItem,
        target: str,
        context_id: int,
        msg_id: int,
        dataset: Dataset | bytes | None,
    ) -> Outcome:
        """C-STORE the file as it is (``dataset`` None), ``dataset`` encoded in ``target``,
        or ``dataset`` bytes already encoded in it. Raises OSError when the file cannot be
        read."""

    def ahead(self, item: SendItem | None) -> None:
        """``item`` is stored next, as it is on disk (None: nothing known). An engine may
        read it while it waits for the current response; errors are met on its turn."""

    def echo(self, context_id: int) -> Outcome: ...

    def abort(self) -> None: ...

    def release(self) -> None: ...


class WireChannel:
    """The default engine's association: ``acse`` negotiated it, ``wire`` runs the data.

    While the peer stores one object, the next file (when it goes as it is on disk and is
    at most :data:`READ_AHEAD_MAX` bytes) is opened, its meta header checked and its data
    set read: the peer's storing and our reading overlap instead of taking turns.
    """

    def __init__(self, assoc: acse.Association, dest: Destination) -> None:
        self.contexts = assoc.contexts
        self.link = wire.Wire(
            assoc.sock,
            assoc.peer_max_pdu,
            dimse_timeout=dest.dimse_timeout,
            network_timeout=dest.network_timeout,
        )
        self._upcoming: SendItem | None = None
        #: (item, its data set bytes) read while waiting for the previous response.
        self._read: tuple[SendItem, bytes] | None = None

    @property
    def ended(self) -> bool:
        return self.link.closed

    def ahead(self, item: SendItem | None) -> None:
        self._upcoming = item

    def _read_ahead(self) -> None:
        """Read the upcoming file's data set now; on any doubt leave it to its turn."""
        item, self._upcoming = self._upcoming, None
        self._read = None
        if item is None:
            return
        try:
            with open(item.path, "rb", buffering=0) as fp:
                meta = read_file_meta_from(fp, item.path)
                check_unchanged(meta, item)
                size = os.fstat(fp.fileno()).st_size - meta.data_offset
                if not 0 <= size <= READ_AHEAD_MAX or size % 2:
                    return
                fp.seek(meta.data_offset)
                data = fp.read(size)
        except (OSError, SendError):  # met again, and reported, when the file's turn comes
            return
        if len(data) == size:
            self._read = (item, data)

    def store(
        self,
        item: SendItem,
        target: str,
        context_id: int,
        msg_id: int,
        dataset: Dataset | bytes | None,
    ) -> Outcome:
        read, self._read = self._read, None
        waiting = self._read_ahead if self._upcoming is not None else None
        if dataset is not None:
            return self.link.store(
                context_id,
                sop_class_uid=item.sop_class_uid,
                sop_instance_uid=item.sop_instance_uid,
                msg_id=msg_id,
                data=dataset if isinstance(dataset, bytes) else encode_dataset(dataset, target),
                while_waiting=waiting,
            )
        if read is not None and read[0] is item:
            return self.link.store(
                context_id,
                sop_class_uid=item.sop_class_uid,
                sop_instance_uid=item.sop_instance_uid,
                msg_id=msg_id,
                data=read[1],
                while_waiting=waiting,
            )
        with open(item.path, "rb") as fp:  # one open: meta header, then the data set
            meta = read_file_meta_from(fp, item.path)
            check_unchanged(meta, item)
            offset = meta.data_offset
            check_even(os.fstat(fp.fileno()).st_size - offset)
            return self.link.store(
                context_id,
                sop_class_uid=item.sop_class_uid,
                sop_instance_uid=item.sop_instance_uid,
                msg_id=msg_id,
                source=fp,
                offset=offset,
                while_waiting=waiting,
            )

    def echo(self, context_id: int) -> Outcome:
        return self.link.echo(context_id)

    def abort(self) -> None:
        self.link.abort()

    def release(self) -> None:
        if not self.link.closed:
            self.link.release()


def _goes_as_is(item: SendItem, accepted: dict[str, list[str]]) -> bool:
    """True when ``item`` is sent as its bytes are on disk (no transcoding, not deflated)."""
    syntax = item.transfer_syntax
    return (
        syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
        and choose_syntax(syntax, accepted.get(item.sop_class_uid, [])) == syntax
    )


def _is_tls_error(exc: OSError) -> bool:
    import ssl

    return isinstance(exc, ssl.SSLError)


class StoreSCU:
    """The real Sender: associations to one :class:`Destination`."""

    def __init__(
        self,
        destination: Destination,
        *,
        calling_ae: str,
        engine: str | None = None,
    ) -> None:
        self.dest = destination
        self.calling_ae = destination.calling_ae or calling_ae
        self.where = f"{destination.called_ae}@{destination.host}:{destination.port}"
        self._tls: ssl.SSLContext | None = None
        if destination.tls.enabled:
            from node.send.tls import client_context  # ssl only for TLS destinations

            self._tls = client_context(destination.tls, f"destinations.{destination.name}.tls")
        engine = engine or destination.engine or DEFAULT_ENGINE
        if engine not in ENGINES:
            raise ValueError(f"unknown SCU engine {engine!r} (known: {', '.join(ENGINES)})")
        self.engine = engine
        #: Results of the contexts the last association refused: they tell "SOP class not
        #: supported" from "none of these transfer syntaxes".
        self._refused: dict[Context, int] = {}
        #: Contexts of the last association "accepted" with a syntax we did not propose.
        self._strays: dict[Context, tuple[int, str]] = {}

    # ------------------------------------------------------------------ associations

    def _open(self, contexts: Sequence[Context]) -> tuple[Channel | None, Outcome | None]:
        """An established association, or None and the outcome for every file.

        The outcome is None when the peer accepted the association but none of the
        presentation contexts: each file's SOP class was refused.
        """
        self._refused, self._strays = {}, {}
        if self.engine == "pynetdicom":
            from node.send import dimse

            tls = (self._tls, self.dest.host) if self._tls is not None else None
            return dimse.associate(
                self.dest, self.calling_ae, contexts, tls, self._refused, self._strays
            )
        host, port = self.dest.host, self.dest.port
        try:
            sock = acse.connect(host, port, timeout=self.dest.acse_timeout, tls=self._tls)
        except OSError as exc:
            if self._tls is not None and _is_tls_error(exc):
                return None, st.retry(
                    f"cannot connect to {host}:{port}: TLS handshake failed ({exc})"
                )
            return None, st.retry(
                f"cannot connect to {host}:{port} "
                f"(connection refused, unreachable or timed out: {exc})"
            )
        try:
            assoc = acse.negotiate(
                sock,
                called_ae=self.dest.called_ae,
                calling_ae=self.calling_ae,
                contexts=contexts,
                max_pdu=self.dest.max_pdu,
                timeout=self.dest.acse_timeout,
            )
        except acse.Rejected as rj:
            text = f"association rejected by {self.where}: {rj}"
            return None, st.retry(text) if rj.transient else st.dead(text)
        except acse.AssociationError as exc:
            return None, st.retry(f"association with {self.where} failed: {exc}")
        except ValueError as exc:  # our side: e.g. an AE title given on the command line
            return None, st.dead(f"cannot request an association with {self.where}: {exc}")
        channel = WireChannel(assoc, self.dest)
        self._refused, self._strays = assoc.refused, assoc.strays
        if not assoc.contexts:
            channel.release()
            return None, None
        return channel, st.DELIVERED

    def echo(self) -> Outcome:
        """One C-ECHO on a fresh association."""
        verification = (wire.VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)
        channel, outcome = self._open([verification])
        if channel is None:
            return outcome or st.dead(f"{self.where} does not accept the Verification SOP class")
        try:
            return channel.echo(channel.contexts[verification])
        finally:
            channel.release()

    # ------------------------------------------------------------------ sending

    def send(
        self, items: Sequence[SendItem], report: Report, stop: Callable[[], bool] | None = None
    ) -> None:
        for contexts, members in plan_associations(items, self.dest.transfer_syntaxes):
            if stop is not None and stop():
                return
            channel, outcome = self._open(contexts)
            if channel is None:
                for item in members:
                    report(item, outcome or self._not_accepted(item, []))
                continue
            try:
                self._send_on(channel, members, report, stop)
            finally:
                channel.release()

    def _send_on(
        self,
        channel: Channel,
        items: Sequence[SendItem],
        report: Report,
        stop: Callable[[], bool] | None,
    ) -> None:
        accepted: dict[str, list[str]] = {}
        for sop_class, ts in channel.contexts:
            accepted.setdefault(sop_class, []).append(ts)
        msg_id = 0
        for n, item in enumerate(items):
            if stop is not None and stop():
                return
            if channel.ended:
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
            context_id = channel.contexts[(item.sop_class_uid, target)]
            upcoming = items[n + 1] if n + 1 < len(items) else None
            channel.ahead(upcoming if upcoming and _goes_as_is(upcoming, accepted) else None)
            try:
                outcome = self._store(channel, item, target, context_id, msg_id)
            except FileChanged as exc:  # found before anything was sent: the link is fine
                report(item, st.retry(str(exc)))
                continue
            report(item, outcome)
            if outcome.verdict is Verdict.RETRY and outcome.status is None:
                # Abort, timeout, lost or unexpected response, read error mid-stream:
                # this association is unusable; the rest goes back to the queue.
                log.warning(
                    "association of %s with %s unusable (%s); %d files left for later",
                    self.calling_ae,
                    self.where,
                    outcome.reason,
                    len(items) - n - 1,
                )
                channel.abort()
                return

    def _not_accepted(self, item: SendItem, syntaxes: list[str]) -> Outcome:
        from pydicom.uid import UID  # names for the message only

        name = UID(item.sop_class_uid).name
        label = acse.uid_name(item.sop_class_uid)  # "Name (uid)", or the UID alone
        strays = {
            ts: answer for (cls, ts), answer in self._strays.items() if cls == item.sop_class_uid
        }
        if not syntaxes and strays:
            answers = "; ".join(
                f"context {cx_id} proposed with {UID(ts).name}, answered "
                f"{acse.uid_name(chosen) if chosen else 'without a transfer syntax'}"
                for ts, (cx_id, chosen) in strays.items()
            )
            return st.dead(
                f"{label}: AE {self.where} accepted no presentation "
                f"context for it with a transfer syntax we proposed ({answers}): the peer "
                "is not conformant (PS3.8 9.3.3.2: the acceptor picks one of the proposed "
                "transfer syntaxes), so these contexts count as not accepted; have the "
                "PACS's transfer syntax settings corrected (or report it to its vendor), "
                "then `dicom-node queue retry`"
            )
        if not syntaxes:
            results = {
                ts: result
                for (cls, ts), result in self._refused.items()
                if cls == item.sop_class_uid
            }
            if results and set(results.values()) == {4}:  # transfer-syntaxes-not-supported
                proposed = ", ".join(UID(ts).name for ts in results)
                return st.dead(
                    f"{label}: AE {self.where} accepts none of the "
                    f"transfer syntaxes proposed for it ({proposed}: "
                    f"{acse.CONTEXT_RESULTS[4]}); enable one of them on the PACS"
                    + (
                        " or widen the destination's transfer_syntaxes"
                        if self.dest.transfer_syntaxes
                        else ""
                    )
                )
            why = ", ".join(sorted({acse.CONTEXT_RESULTS.get(r, str(r)) for r in results.values()}))
            return st.dead(
                f"SOP class {label} not accepted by AE {self.where}"
                + (f" ({why})" if why else "")
                + "; allow it on the PACS (Orthanc: UnknownSopClassAccepted for a class it"
                " does not know, DCMTK storescp: -pm), then `dicom-node queue retry`"
            )
        got = ", ".join(UID(ts).name for ts in syntaxes)
        return st.dead(
            f"{name}: transfer syntax {UID(item.transfer_syntax).name} not accepted by AE "
            f"{self.where} (accepted: {got}) and the file cannot be converted to it"
        )

    def _store(
        self, channel: Channel, item: SendItem, target: str, context_id: int, msg_id: int
    ) -> Outcome:
        dataset: Dataset | bytes | None = None
        if target == item.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            try:
                dataset = deflated_data_set(item.path)
            except OSError as exc:
                return st.file_unavailable(item.path, exc)
            except SendError as exc:
                return st.dead(str(exc))
        elif target != item.transfer_syntax:
            try:
                dataset = transcode(item.path, target)
            except OSError as exc:
                return st.file_unavailable(item.path, exc)
            except SendError as exc:
                return st.dead(str(exc))
            except Exception as exc:  # an unreadable DICOM file: pydicom raises many types
                return st.dead(f"{item.path}: cannot read as DICOM to transcode it: {exc}")
        started = time.perf_counter()
        try:
            outcome = channel.store(item, target, context_id, msg_id, dataset)
        except FileChanged:
            raise
        except FileNotFoundError as exc:
            return st.file_unavailable(item.path, exc)
        except OSError as exc:
            return st.retry(f"{item.path}: read error while sending: {exc}")
        except SendError as exc:
            return st.dead(f"{item.path}: {exc}")
        except (AttributeError, ValueError, KeyError, TypeError) as exc:
            return st.dead(f"{item.path}: cannot be sent: {exc}")
        log.debug(
            "C-STORE %s -> %s in %.1f ms",
            item.sop_instance_uid,
            outcome.describe(),
            1000 * (time.perf_counter() - started),
        )
        if not outcome.delivered and outcome.status is not None:
            refusal = why_refused(item)
            if refusal is not None:
                outcome = dataclasses.replace(
                    outcome,
                    verdict=Verdict.DEAD if refusal.permanent else outcome.verdict,
                    reason=f"{outcome.reason}; {refusal.text}",
                )
        return outcome
