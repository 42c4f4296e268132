"""Storage Commitment Push Model SCP (PS3.4 Annex J).

A modality asks, with an N-ACTION (Action Type 1, Request Storage Commitment), whether
the instances listed in (0008,1199) ReferencedSOPSequence are safely stored; it deletes
its local copy only after a positive answer. We answer the N-ACTION at once (success)
and send the result as an N-EVENT-REPORT (Event Type 1: all committed; 2: some failed)
*on the same association*, from a helper thread started when the N-ACTION response is
sent (``EVT_DIMSE_SENT``), once its PDU is queued (never before the response) and after a
grace period of one second in which a requester may release the association instead.

The answer comes from durable state only: an instance is committed when the ledger
(``received_instances``, committed before the C-STORE success) records it with the same
SOP Class UID and its file is in the archive. Failure reasons (PS3.4 J.3.2.1.1):
0x0112 no such object instance, 0x0119 class/instance conflict, 0x0110 processing failure.

If the requester has already released that association, the report goes on a new
association to it (we propose the SCP role for the SOP class, PS3.4 J.3.3), addressed from
the ``[[destinations]]`` entry whose ``called_ae`` is the requester's AE title.

The request is also a durable job (kind :data:`REPORT_KIND`, keyed by its Transaction UID)
committed *before* the N-ACTION is answered: the report cannot be forgotten. Delivered on
the association or on the first new one, the job is done; otherwise (the requester cannot
be reached, or the node stopped before sending) ``dicom-node run`` delivers it on a new
association, retried with the queue's backoff, and builds it again from the ledger at that
time. A job of a requester with no ``[[destinations]]`` entry goes to ``dead`` with the
reason (``dicom-node queue`` lists it); the modality may still ask again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from node.fsutil import is_valid_uid
from node.jobs import PermanentJobError
from node.logs import fields
from node.queue import Job
from node.receive.ledger import Ledger

log = logging.getLogger(__name__)

#: The well-known SOP Instance UID of the Storage Commitment Push Model (PS3.4 J.3.5).
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Job kind of a storage commitment report to deliver (payload: transaction_uid, refs,
#: calling_ae).
REPORT_KIND = "commitment_report"

NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110

_NO_SUCH_ACTION_TYPE = 0x0123
_INVALID_ARGUMENT = 0x0115
_NO_SUCH_SOP_CLASS = 0x0118
_NO_SUCH_SOP_INSTANCE = 0x0112


@dataclass(frozen=True)
class Peer:
    """Where to open a new association to a requester: its address and AE titles."""

    host: str
    port: int
    called_ae: str
    calling_ae: str


@dataclass(frozen=True)
class CommitContext:
    """What the N-ACTION handler needs, bound at registration.

    ``peers`` maps a requester's AE title to where it accepts associations (from
    ``[[destinations]]`` whose ``called_ae`` is that title): used when the report cannot be
    sent on the requesting association because the requester already released it.
    """

    ledger: Ledger
    peers: dict[str, Peer] = field(default_factory=dict)
    timeout: float = 30.0
    release_grace: float = 1.0


def check(ledger: Ledger, sop_class_uid: str, sop_instance_uid: str) -> int | None:
    """None if the instance is safely stored, else the PS3.4 failure reason."""
    try:
        found = ledger.lookup(sop_instance_uid)
    except Exception as exc:
        log.error("storage commitment: cannot read the ledger: %s", exc)
        return PROCESSING_FAILURE
    if found is None:
        return NO_SUCH_OBJECT_INSTANCE
    stored_class, path = found
    if stored_class != sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    if not path.is_file():
        return NO_SUCH_OBJECT_INSTANCE
    return None


def build_report(ledger: Ledger, transaction_uid: str, refs: list[tuple[str, str]]) -> Dataset:
    """The Event Information of the N-EVENT-REPORT for ``refs`` ((class, instance) pairs)."""
    report = Dataset()
    report.TransactionUID = transaction_uid
    ok = DicomSequence()
    failed = DicomSequence()
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        reason = check(ledger, sop_class, sop_instance)
        if reason is None:
            ok.append(item)
        else:
            item.FailureReason = reason
            failed.append(item)
    if ok:
        report.ReferencedSOPSequence = ok
    if failed:
        report.FailedSOPSequence = failed
    return report


def handle_n_action(event: Any, ctx: CommitContext) -> tuple[int, Dataset | None]:
    """N-ACTION: validate the request, answer, and schedule the N-EVENT-REPORT."""
    request = event.request
    if str(request.RequestedSOPClassUID) != str(StorageCommitmentPushModel):
        return _NO_SUCH_SOP_CLASS, None
    requested = str(request.RequestedSOPInstanceUID or "").strip("\x00 ")
    if requested != WELL_KNOWN_INSTANCE:
        # PS3.4 J.3.5: the Push Model has one, well-known, instance. Orthanc drops such a
        # request; PS3.7 10.1.4.1.10 answers it 0x0112 (no such SOP instance). Nothing queued.
        log.error(
            "storage commitment request refused: (0000,1001) RequestedSOPInstanceUID %r is "
            "not the well-known %s: fix the requesting system",
            requested,
            WELL_KNOWN_INSTANCE,
            extra=fields(calling_ae=str(event.assoc.requestor.ae_title).strip()),
        )
        return _NO_SUCH_SOP_INSTANCE, None
    if request.ActionTypeID != 1:
        return _NO_SUCH_ACTION_TYPE, None
    try:
        info = event.action_information
        transaction_uid = str(info.TransactionUID)
        refs = [
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
            for item in info.ReferencedSOPSequence
        ]
    except Exception as exc:
        log.error("storage commitment request unreadable: %s", exc)
        return _INVALID_ARGUMENT, None
    if not is_valid_uid(transaction_uid) or not refs:
        log.error("storage commitment request: bad (0008,1195) TransactionUID or empty refs")
        return _INVALID_ARGUMENT, None

    calling_ae = str(event.assoc.requestor.ae_title).strip()
    report = build_report(ctx.ledger, transaction_uid, refs)
    try:
        # Durable before the answer. Not due until the report on the association (or the
        # first new one) had every chance; a node that stops before then leaves it due.
        job_id = ctx.ledger.store.enqueue(
            REPORT_KIND,
            {"transaction_uid": transaction_uid, "refs": refs, "calling_ae": calling_ae},
            dedup_key=transaction_uid,
            replace=True,
            not_before=time.time() + _immediate_budget(ctx),
        )
    except Exception as exc:
        log.error("storage commitment request not recorded, refused: %s", exc)
        return PROCESSING_FAILURE, None
    pending = getattr(event.assoc, "_dicom_node_commit_pending", None)
    if pending is None:
        pending = {}
        event.assoc._dicom_node_commit_pending = pending
    pending[int(request.MessageID)] = (report, calling_ae, ctx, job_id)
    return 0x0000, None


def _immediate_budget(ctx: CommitContext) -> float:
    """Longest the immediate report may take: the response's send, the release grace, a
    report on the association, then an association and a report on a new one."""
    return 4 * ctx.timeout + ctx.release_grace + 5.0


def handle_dimse_sent(event: Any) -> None:
    """Once our N-ACTION response is being sent, start sending its N-EVENT-REPORT."""
    message = event.message
    if type(message).__name__ != "N_ACTION_RSP":
        return
    pending = getattr(event.assoc, "_dicom_node_commit_pending", None)
    if not pending:
        return
    item = pending.pop(int(message.command_set.MessageIDBeingRespondedTo), None)
    if item is None:
        return
    report, calling_ae, ctx, job_id = item
    counter = getattr(event.assoc, "_dicom_node_sent", None)
    # The response is one P-DATA PDU, queued right after this event returns.
    target = counter.value + 1 if counter is not None else 0
    thread = threading.Thread(
        target=_send_report,
        args=(event.assoc, report, calling_ae, ctx, counter, target, job_id),
        name="commitment-report",
        daemon=True,
    )
    thread.start()


def _send_report(
    assoc: Any,
    report: Dataset,
    calling_ae: str,
    ctx: CommitContext,
    counter: Any,
    target: int,
    job_id: int,
) -> None:
    """Send the N-EVENT-REPORT on the association once its N-ACTION response is queued;
    if the requester released it already, on a new association to the requester. The
    job is then done, or due at once for ``dicom-node run`` to retry."""
    store = ctx.ledger.store
    log_fields = _report_fields(report, calling_ae)
    if counter is not None and not counter.wait_for(target, ctx.timeout):
        log.error("storage commitment report not sent: N-ACTION response never went out")
        store.retry(job_id, time.time(), "the N-ACTION response never went out")
        return
    # Requesters that want the report on a new association release right after the
    # N-ACTION response: give them a moment to do so before using this association.
    deadline = time.monotonic() + ctx.release_grace
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.02)
    status = None
    if assoc.is_established:
        try:
            # send_n_event_report pauses the association's reactor before sending; it
            # returns (status, reply), the status empty when no response came.
            status, _ = assoc.send_n_event_report(
                report, _event_type(report), StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
            )
        except Exception as exc:
            log.info("storage commitment report: same association failed: %s", exc)
    code = getattr(status, "Status", None)
    if code is None and calling_ae in ctx.peers:
        code = _report_on_new_association(report, calling_ae, ctx)
    if code is None:
        reason = f"not delivered on the requesting association, and {_unreachable(calling_ae, ctx)}"
        log.warning(
            "storage commitment report not delivered yet (%s): queued", reason, extra=log_fields
        )
        store.retry(job_id, time.time(), reason)
        return
    _answered(code, log_fields)
    store.ack([job_id], note=f"answered 0x{code:04X}" if code else None)


def deliver_queued_report(job: Job, ctx: CommitContext) -> None:
    """:class:`~node.jobs.JobRunner` handler of :data:`REPORT_KIND`: a report not delivered
    at once, or left by a node that stopped, goes on a new association, built again from
    the ledger now. Unreachable: raised (retried); no way to reach the requester: dead."""
    payload = job.payload
    calling_ae = str(payload["calling_ae"])
    if calling_ae not in ctx.peers:
        raise PermanentJobError(
            f"storage commitment report for {calling_ae!r} cannot be delivered: "
            f"{_unreachable(calling_ae, ctx)}"
        )
    refs = [(str(cls), str(inst)) for cls, inst in payload["refs"]]
    report = build_report(ctx.ledger, str(payload["transaction_uid"]), refs)
    code = _report_on_new_association(report, calling_ae, ctx)
    if code is None:
        peer = ctx.peers[calling_ae]
        raise ConnectionError(
            f"storage commitment report: no association with {peer.called_ae} at "
            f"{peer.host}:{peer.port}"
        )
    _answered(code, _report_fields(report, calling_ae))


def _event_type(report: Dataset) -> int:
    return 2 if report.get("FailedSOPSequence") else 1  # 2: some failed


def _report_fields(report: Dataset, calling_ae: str) -> dict[str, Any]:
    return fields(
        transaction_uid=str(report.TransactionUID),
        calling_ae=calling_ae,
        committed=len(report.get("ReferencedSOPSequence", [])),
        failed=len(report.get("FailedSOPSequence", [])),
    )


def _unreachable(calling_ae: str, ctx: CommitContext) -> str:
    peer = ctx.peers.get(calling_ae)
    if peer is None:
        return (
            f"no [[destinations]] entry has called_ae = {calling_ae!r} to reach it (add one "
            "with the modality's host and port)"
        )
    return f"{peer.called_ae} at {peer.host}:{peer.port} did not accept an association"


def _answered(code: int, log_fields: dict[str, Any]) -> None:
    if code != 0:
        log.warning("storage commitment report answered 0x%04X", code, extra=log_fields)
    else:
        log.info("storage commitment reported", extra=log_fields)


def _report_on_new_association(report: Dataset, calling_ae: str, ctx: CommitContext) -> int | None:
    """Open an association to the requester (we take the SCP role) and send the report."""
    peer = ctx.peers.get(calling_ae)
    if peer is None:
        return None
    ae = AE(ae_title=peer.calling_ae)
    # A bounded connect too: the queued copy falls due after _immediate_budget.
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ctx.timeout
    ae.add_requested_context(StorageCommitmentPushModel)
    # PS3.4 J.3.3: on an association it initiates, the SCP proposes the SCP role.
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae, ext_neg=[role])
    if not assoc.is_established:
        log.error(
            "storage commitment report: cannot associate with %s at %s:%d",
            peer.called_ae,
            peer.host,
            peer.port,
        )
        return None
    try:
        status, _ = assoc.send_n_event_report(
            report, _event_type(report), StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
        )
        code = getattr(status, "Status", None)
        return int(code) if code is not None else None
    finally:
        assoc.release()
