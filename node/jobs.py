"""A generic job runner: claim jobs of some kinds, run a handler, ack / retry / dead.

Used for the node's own work (export of received instances, study-complete handling);
deliveries have their own worker in :mod:`node.send.worker`, which batches associations.

A handler returns normally on success. :class:`PermanentJobError` (or any
:class:`~node.errors.ExportError`/:class:`~node.errors.ConversionError`) sends the job to
``dead`` with the message; any other exception is retried with the queue's backoff policy
until it gives up.

While a batch is held, a :class:`~node.queue.keepalive.KeepAlive` renews its leases and
beats for the runner's component, so that a long job (a study PDF of hundreds of images, a
report waiting on an unreachable requester) is neither taken by another worker nor shown
as ``NOT RUNNING``. Outcomes are recorded only for jobs the runner still holds: a job whose
lease was lost (the process was frozen past it) is left to whoever holds it now, with an
ERROR line.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from node.config import QueueSection
from node.errors import ConversionError, ExportError, QueueError
from node.logs import fields
from node.queue import Job, JobStore
from node.queue.keepalive import KeepAlive
from node.queue.retry import give_up_reason, next_attempt
from node.queue.store import HEARTBEAT_SECONDS

log = logging.getLogger(__name__)

#: The longest wait between attempts while the job store keeps failing.
STORE_RETRY_MAX_SECONDS = 30.0

Handler = Callable[[Job], None]


class PermanentJobError(Exception):
    """The job can never succeed as it is: it goes to ``dead`` with this message."""


PERMANENT = (PermanentJobError, ExportError, ConversionError)


def _about(job: Job) -> dict[str, Any]:
    """Log fields naming the job and what it is about (the object or study, its file)."""
    p = job.payload
    return fields(
        job=job.id,
        sop=p.get("sop_instance_uid"),
        study=p.get("study_uid") if "sop_instance_uid" not in p else None,
        path=p.get("path") or p.get("archive_dir"),
    )


class JobRunner:
    """Runs handlers for jobs of the given kinds until stopped.

    One runner may serve several threads (``export.workers``): each thread claims under
    its own owner name (``NAME:PID:THREAD``), so that a lease renewed or lost is one
    thread's.
    """

    def __init__(
        self,
        store: JobStore,
        handlers: Mapping[str, Handler],
        policy: QueueSection,
        *,
        name: str = "jobs",
        idle_seconds: float = 0.5,
        batch: int = 8,
    ) -> None:
        self.store = store
        self.handlers = dict(handlers)
        self.policy = policy
        self.name = name
        self.idle_seconds = idle_seconds
        self.batch = batch

    @property
    def owner(self) -> str:
        """The lease owner of the calling thread."""
        return f"{self.name}:{os.getpid()}:{threading.get_ident()}"

    def run_once(self, heartbeat: str | None = None) -> int:
        """Claim and run one batch; returns how many jobs were handled.

        While the batch is held its leases are renewed and, with ``heartbeat``, that
        component beats (see :mod:`node.queue.keepalive`).
        """
        owner = self.owner
        jobs = self.store.claim(
            owner,
            kinds=list(self.handlers),
            limit=self.batch,
            lease_seconds=self.policy.lease_seconds,
        )
        if not jobs:
            return 0
        with KeepAlive(self.store, owner, self.policy.lease_seconds, heartbeat) as keep:
            keep.hold(job.id for job in jobs)
            for index, job in enumerate(jobs):
                if keep.is_lost(job.id):
                    continue  # another worker holds it now (logged by the keep-alive)
                try:
                    self._run(job, owner, keep)
                except BaseException:
                    self.store.release((j.id for j in jobs[index + 1 :]), owner=owner)
                    raise
                finally:
                    keep.drop([job.id])
        return len(jobs)

    def _run(self, job: Job, owner: str, keep: KeepAlive) -> None:
        try:
            self.handlers[job.kind](job)
        except PERMANENT as exc:
            log.error("%s job failed for good: %s", job.kind, exc, extra=_about(job))
            if not self.store.dead(job.id, str(exc), owner=owner):
                self._not_held(job, owner, "dead", keep)
            return
        except Exception as exc:  # retried: anything else may be transient
            now = time.time()
            at = next_attempt(job.attempts, job.created_at, now, self.policy)
            reason = f"{type(exc).__name__}: {exc}"
            if at is None:
                reason = (
                    f"{reason}; {give_up_reason(job.attempts, job.created_at, now, self.policy)}"
                )
                log.error("%s job dead: %s", job.kind, reason, extra=_about(job))
                if not self.store.dead(job.id, reason, owner=owner):
                    self._not_held(job, owner, "dead", keep)
            else:
                log.warning("%s job will be retried: %s", job.kind, reason, extra=_about(job))
                if not self.store.retry(job.id, at, reason, owner=owner):
                    self._not_held(job, owner, "retry", keep)
            return
        if not self.store.ack([job.id], owner=owner):
            self._not_held(job, owner, "done", keep)

    def _not_held(self, job: Job, owner: str, outcome: str, keep: KeepAlive) -> None:
        """Say that ``job``'s outcome here was not recorded: another worker holds it now."""
        about = _about(job)
        about["fields"]["owner"] = owner
        keep.not_recorded(job.id, f"{job.kind} job", outcome, about)

    def run(self, stop: threading.Event, heartbeat: str | None = None) -> None:
        """Loop until ``stop`` is set; a claimed job always finishes before stopping.

        With ``heartbeat``, the loop records that component as alive (every few seconds)
        for ``dicom-node status``.
        """
        last_beat = 0.0
        failures = 0  # consecutive job store errors (full or locked state disk ...)
        while not stop.is_set():
            try:
                if heartbeat is not None and time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    self.store.heartbeat(heartbeat)
                    last_beat = time.monotonic()
                handled = self.run_once(heartbeat)
            except (sqlite3.Error, QueueError) as exc:
                # One line, then one every 12th attempt (every 6 minutes once the wait has
                # grown to 30 s): the store comes back when space is freed or the lock
                # released.
                failures += 1
                if failures == 1 or failures % 12 == 0:
                    log.error(
                        "job runner %s: job store unavailable (%s); retrying",
                        self.owner,
                        exc,
                    )
                stop.wait(min(STORE_RETRY_MAX_SECONDS, self.idle_seconds * 2 ** min(failures, 8)))
                continue
            except Exception:
                log.exception("job runner %s failed; continuing", self.owner)
                handled = 0
            if failures:
                log.info("job runner %s: job store available again", self.owner)
                failures = 0
            if not handled:
                stop.wait(self.idle_seconds)
