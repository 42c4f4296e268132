"""The delivery worker: claims "deliver" jobs for one destination and runs them in batches.

Job contract (other rooms enqueue these with :func:`enqueue_delivery`): kind ``deliver``,
destination = the config destination name, dedup_key = the SOP Instance UID, payload =
``{"path", "sop_instance_uid", "sop_class_uid", "transfer_syntax"}`` plus optionally
``source`` (ingest, receive, cli) and ``origin``.

Per job and attempt: delivered -> ack (a peer warning is kept in ``last_error``), counter
``delivered``, ``on_delivered(job)``; transient -> ``retry`` at the time the retry policy
gives, or dead when it gives up; permanent -> dead with the reason, counter
``delivery_failed``, ``on_dead(job)``. Acks are written in small groups (every
``ACK_EVERY`` files or ``ACK_SECONDS``, states and counter in one commit) to keep fsyncs
off the critical path; a crash between a peer's success and our ack only means that
object is sent again, which a PACS treats as the same instance (same SOP Instance UID).
Acks whose commit fails (a full state disk) stay pending and are written before anything
new is claimed.
Jobs claimed but never started (stop requested, association lost) are released without
counting the attempt.

While a batch is held, a :class:`~node.queue.keepalive.KeepAlive` renews the leases of its
undecided jobs (every third of ``queue.lease_seconds``) and beats for the worker's
component, so that one object taking longer than the lease (a multi-GB multi-frame object,
a slow PACS) is not claimed and sent again by a second worker, and ``status`` shows the
worker alive. Every outcome is recorded only while this worker still holds the job; if a
lease was lost nevertheless (the process frozen past it), the rest of the batch is not
started and the lost job's outcome here is logged, not recorded.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from node.config import Config, Destination
from node.errors import SendError
from node.logs import fields
from node.queue.keepalive import KeepAlive
from node.queue.retry import give_up_reason, next_attempt
from node.queue.store import Job, JobStore
from node.send.contexts import SendItem, read_header
from node.send.scu import Sender, StoreSCU
from node.send.status import Outcome, Verdict, file_unavailable

log = logging.getLogger(__name__)

KIND = "deliver"
ACK_EVERY = 50
ACK_SECONDS = 0.5
IDLE_POLL_SECONDS = 1.0


# --------------------------------------------------------------------------- enqueueing


def enqueue_delivery(
    store: JobStore,
    path: Path,
    destinations: Sequence[str],
    *,
    source: str = "cli",
    extra: Mapping[str, Any] | None = None,
    replace: bool = False,
    resend_changed: bool = False,
) -> list[int]:
    """Queue ``path`` for each destination; idempotent per (SOP Instance UID, destination).

    Returns one job id per destination (the existing one when already queued). With
    ``replace`` an existing job is re-armed with this path (queued, attempts reset; a claimed
    one runs once more after its attempt). With ``resend_changed`` only an existing job
    whose file is another one is re-armed: another path, or the same path rewritten since
    (size, modification time and inode recorded in the payload as ``file_version``). Raises
    SendError when the file has no usable header.
    """
    path = Path(path).absolute()
    header = read_header(path)
    payload: dict[str, Any] = {"path": str(path), **header, "source": source}
    payload.update(extra or {})
    uid = header["sop_instance_uid"]
    if not resend_changed or replace:
        items = [(payload, dest, uid) for dest in destinations]
        return store.enqueue_many(KIND, items, replace=replace)
    stat = path.stat()
    payload["file_version"] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    ids: list[int] = []
    with store.transaction():
        for dest in destinations:
            old = store.find(KIND, uid, dest)
            changed = old is not None and _another_file(old, payload, stat.st_mtime)
            ids += store.enqueue_many(KIND, [(payload, dest, uid)], replace=changed)
    return ids


def _another_file(job: Job, payload: Mapping[str, Any], mtime: float) -> bool:
    """``job`` was queued for another file than ``payload`` describes: another path, or
    the same one rewritten since (a job queued before versions were recorded: modified
    after the job's last change)."""
    if job.payload.get("path") != payload["path"]:
        return True
    version = job.payload.get("file_version")
    if version is None:
        return mtime > job.updated_at
    return bool(version != payload["file_version"])


# --------------------------------------------------------------------------- the worker


def heartbeat_name(destination: str, owner: str) -> str:
    """The worker's component name in the heartbeats table: the same across restarts.

    Lease owners carry the process id (``1234-0``, ``drain@host:1234``) so that claims of
    different processes never mix; a heartbeat named after them would leave one "NOT
    RUNNING" line per past process in ``dicom-node status`` for ever (and make a monitor
    checking that every component is alive fail after the first restart). The pid is
    recorded in the heartbeat row anyway.
    """
    slot = re.sub(rf"(?<!\d){os.getpid()}(?!\d)", "", owner, count=1).strip("-:@") or "0"
    return f"deliver:{destination}:{slot}"


class DeliveryWorker:
    """Delivers the queued jobs of one destination, one association per batch."""

    def __init__(
        self,
        cfg: Config,
        destination: Destination,
        store: JobStore,
        *,
        owner: str,
        on_delivered: Callable[[Job], None] | None = None,
        on_dead: Callable[[Job], None] | None = None,
        sender: Sender | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        wake: threading.Event | None = None,
        heartbeat: bool = True,
    ) -> None:
        self.cfg = cfg
        self.wake = wake  # set by whoever enqueues (and on stop): no idle-poll delay
        self.dest = destination
        self.store = store
        self.owner = owner
        self.component = heartbeat_name(destination.name, owner)
        #: write heartbeats (``dicom-node run``); ``queue drain`` is no component of a node
        self.beats = heartbeat
        self.on_delivered = on_delivered
        self.on_dead = on_dead
        self.sender: Sender = sender or StoreSCU(destination, calling_ae=cfg.node.ae_title)
        self.clock = clock
        self.rand = rand
        self._stop = threading.Event()
        #: ``queue drain`` sets it to its start: a job failed since then is not tried again
        self.retried_before: float | None = None
        self._acks: list[tuple[Job, Outcome]] = []
        self._last_flush = time.monotonic()
        #: Retry reasons already logged in this batch -> jobs not logged again for them
        self._repeats: dict[str, int] = {}
        self._keep: KeepAlive | None = None  # the current batch's (see _not_held)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; the in-flight C-STORE finishes, the rest is released."""
        self._stop = stop
        log.info("delivery worker started", extra=fields(destination=self.dest.name))
        while not stop.is_set():
            try:
                done = self.run_once()
                if self.beats:
                    self.store.heartbeat(self.component)
            except sqlite3.OperationalError as exc:  # full or locked job store: no traceback
                log.error(
                    "delivery worker cannot use the job store, retrying: %s (free space on"
                    " node.state_dir, or end the process holding the database)",
                    exc,
                    extra=fields(destination=self.dest.name, pending_acks=len(self._acks)),
                )
                done = 0
                stop.wait(IDLE_POLL_SECONDS)
            except Exception:  # keep the worker alive; the job lease protects the work
                log.exception("delivery worker error", extra=fields(destination=self.dest.name))
                done = 0
                stop.wait(IDLE_POLL_SECONDS)
            if done == 0:
                self._idle(stop)
        if self._acks:
            log.error(
                "stopping with deliveries not recorded as done (the job store refused the"
                " commit): they are sent again after the restart (same SOP Instance UIDs)",
                extra=fields(destination=self.dest.name, objects=len(self._acks)),
            )
        log.info("delivery worker stopped", extra=fields(destination=self.dest.name))

    def _idle(self, stop: threading.Event) -> None:
        """Wait for new work: the wake event when there is one, else the poll interval."""
        if self.wake is None:
            stop.wait(IDLE_POLL_SECONDS)
            return
        self.wake.wait(IDLE_POLL_SECONDS)
        self.wake.clear()

    def run_once(self) -> int:
        """Claim one batch and deliver it; returns the number of jobs decided.

        Acknowledgements a failed commit left pending (a full state disk) are written
        first; while that fails, nothing new is claimed (the error propagates).
        """
        if self._acks:
            self._flush_acks()
        jobs = self.store.claim(
            self.owner,
            kinds=[KIND],
            destination=self.dest.name,
            limit=max(self.cfg.queue.batch_size, 1),
            lease_seconds=self.cfg.queue.lease_seconds,
            retried_before=self.retried_before,
        )
        if not jobs:
            return 0
        lease = self.cfg.queue.lease_seconds
        keep = KeepAlive(self.store, self.owner, lease, self.component if self.beats else None)
        keep.hold(job.id for job in jobs)
        self._keep = keep  # for acks flushed later: was the loss reported already?
        with keep:
            return self._deliver(jobs, keep)

    def _deliver(self, jobs: list[Job], keep: KeepAlive) -> int:
        """Deliver a claimed batch while ``keep`` holds it; the number of jobs decided."""
        self._repeats = {}
        by_id = {job.id: job for job in jobs}
        decided: set[int] = set()
        items: list[SendItem] = []
        for job in jobs:
            item = self._item(job)
            if isinstance(item, Outcome):
                self._record(job, item)
                decided.add(job.id)
                keep.drop([job.id])
            else:
                items.append(item)

        def report(item: SendItem, outcome: Outcome) -> None:
            decided.add(item.key)
            keep.drop([item.key])
            self._record(by_id[item.key], outcome)

        def stopping() -> bool:
            # A lease lost means this process was frozen past it: another worker may hold
            # the rest of the batch too. Start nothing more; what is still ours goes back.
            return self._stop.is_set() or bool(keep.lost)

        try:
            if items:
                self.sender.send(items, report, stopping)
        finally:
            self._log_repeats()
            try:
                self._flush_acks()
            finally:  # also when the acks cannot be written: the rest goes back now
                unstarted = [job.id for job in jobs if job.id not in decided]
                if unstarted:
                    self.store.release(unstarted, owner=self.owner)
        return len(decided)

    # ------------------------------------------------------------------ per job

    def _item(self, job: Job) -> SendItem | Outcome:
        """The job as a SendItem planned on the file as it is now, or its outcome.

        The header is read again rather than taken from the payload: a file rewritten since
        it was queued (decompressed or compressed in place) is sent in the syntax it is in
        now. A file that now holds another SOP instance is not this job's object any more.
        """
        p = job.payload
        try:
            path = Path(p["path"])
            queued_uid = str(p["sop_instance_uid"])
        except (KeyError, TypeError) as exc:
            return Outcome(Verdict.DEAD, f"job payload lacks {exc}: re-enqueue the file")
        try:
            header = read_header(path)
        except SendError as exc:
            if isinstance(exc.__cause__, OSError):  # gone, or its share not answering
                return file_unavailable(path, exc.__cause__)
            return Outcome(Verdict.DEAD, str(exc))
        if header["sop_instance_uid"] != queued_uid:
            return Outcome(
                Verdict.DEAD,
                f"{path} changed after it was queued: its (0002,0003) "
                f"MediaStorageSOPInstanceUID is now {header['sop_instance_uid']}, the job was "
                f"for {queued_uid}; enqueue the file again to send the object it holds now",
            )
        return SendItem(path=path, key=job.id, **header)

    def _record(self, job: Job, outcome: Outcome) -> None:
        uid = job.payload.get("sop_instance_uid")
        if outcome.delivered:
            self._acks.append((job, outcome))
            if len(self._acks) >= ACK_EVERY or time.monotonic() - self._last_flush > ACK_SECONDS:
                try:
                    self._flush_acks()
                except Exception as exc:  # kept pending; the batch's final flush retries
                    log.warning(
                        "cannot record deliveries as done yet, will retry: %s: %s",
                        type(exc).__name__,
                        exc,
                        extra=fields(destination=self.dest.name, pending=len(self._acks)),
                    )
            return
        if outcome.verdict is Verdict.RETRY:
            now = self.clock()
            at = next_attempt(job.attempts, job.created_at, now, self.cfg.queue, self.rand)
            if at is not None:
                if not self.store.retry(job.id, at, outcome.reason, owner=self.owner):
                    self._not_held(job, f"retry ({outcome.reason})")
                    return
                if outcome.status is None and outcome.reason in self._repeats:
                    # The PACS down or refusing: one line per batch, not one per job
                    # (10,000 queued jobs made 10,000 lines every retry round).
                    self._repeats[outcome.reason] += 1
                    return
                if outcome.status is None:
                    self._repeats[outcome.reason] = 0
                log.warning(
                    "delivery failed, will retry",
                    extra=fields(
                        destination=self.dest.name,
                        sop=uid,
                        attempt=job.attempts,
                        retry_in=f"{at - now:.1f}s",
                        reason=outcome.reason,
                    ),
                )
                return
            why = give_up_reason(job.attempts, job.created_at, now, self.cfg.queue)
            reason = f"{outcome.reason}; {why}"
        else:
            reason = outcome.reason
        with self.store.transaction():
            held = self.store.dead(job.id, reason, owner=self.owner)
            if held:
                self.store.bump("delivery_failed")
        if not held:
            self._not_held(job, f"dead ({reason})")
            return
        log.error(
            "delivery failed permanently",
            extra=fields(destination=self.dest.name, sop=uid, job=job.id, reason=reason),
        )
        if self.on_dead is not None:
            self.on_dead(job)

    def _not_held(self, job: Job, outcome: str) -> None:
        """Say that ``job``'s outcome here was not recorded: another worker holds it now
        (this worker's lease ran out, e.g. while the process was frozen)."""
        extra = fields(
            destination=self.dest.name,
            sop=job.payload.get("sop_instance_uid"),
            job=job.id,
            owner=self.owner,
        )
        keep = self._keep or KeepAlive(self.store, self.owner, self.cfg.queue.lease_seconds)
        keep.not_recorded(job.id, "delivery", outcome, extra)

    def _log_repeats(self) -> None:
        """One line for the jobs of the batch that failed again for an already logged reason."""
        for reason, n in self._repeats.items():
            if n:
                log.warning(
                    "%d more job(s) of this batch failed for the same reason, will retry",
                    n,
                    extra=fields(destination=self.dest.name, jobs=n, reason=reason),
                )
        self._repeats = {}

    def _flush_acks(self) -> None:
        """Commit the acknowledgements gathered so far (states and counter, one commit).

        When the commit fails (``database or disk is full``) they stay pending, in memory,
        and are written by the next flush: dropping them would leave those jobs claimed
        until their lease expires, and then send objects the PACS already acknowledged
        once more.
        """
        self._last_flush = time.monotonic()
        if not self._acks:
            return
        pending = list(self._acks)
        plain = [job.id for job, outcome in pending if not outcome.warning]
        with self.store.transaction():  # states and counter in one commit (one fsync)
            acked = set(self.store.ack(plain, owner=self.owner))
            for job, outcome in pending:
                if outcome.warning:
                    acked.update(self.store.ack([job.id], note=outcome.reason, owner=self.owner))
            if acked:
                self.store.bump("delivered", len(acked))
        del self._acks[: len(pending)]
        acks = [(job, outcome) for job, outcome in pending if job.id in acked]
        for job, _ in pending:
            if job.id not in acked:
                self._not_held(job, "done")
        for job, outcome in acks:
            log.info(
                "delivered",
                extra=fields(
                    destination=self.dest.name,
                    sop=job.payload.get("sop_instance_uid"),
                    warning=outcome.reason or None,
                ),
            )
            if self.on_delivered is not None:
                self.on_delivered(job)
