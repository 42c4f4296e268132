"""Keep-alive of a job runner while it works: its claimed jobs stay leased, its heartbeat fresh.

A lease (``queue.lease_seconds``) lets another worker take a job whose worker died; it must
not let one take a job whose worker is merely slow (one multi-GB object to a slow PACS, a
250-image study PDF, a delivery waiting out connect and ACSE timeouts). So while a runner
holds a batch, a :class:`KeepAlive` thread

* renews the leases of the jobs not yet decided once a third of the lease has elapsed (one
  small SQLite write per ``lease_seconds / 3``, never one per PDU), and
* writes the runner's heartbeat every :data:`HEARTBEAT_SECONDS`, so that ``dicom-node
  status`` shows a busy component as alive rather than ``NOT RUNNING``.

A renewal that finds a job no longer held by this owner (the process was frozen past its
lease and another worker claimed the job, or ``queue`` commands changed it) logs it once as
an ERROR and lists it in :attr:`KeepAlive.lost`; the runner stops starting such jobs, and the
store's owner-checked ``ack``/``retry``/``dead``/``release`` never change a job another
worker holds (see :mod:`node.queue.store`).

Usage, by :class:`~node.jobs.JobRunner` and :class:`~node.send.worker.DeliveryWorker`::

    with KeepAlive(store, owner, lease_seconds, component) as keep:
        keep.hold(job_ids)          # just claimed
        ...                         # the long work
        keep.drop([job_id])         # decided (acked, retried, dead, released)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from node.errors import QueueError
from node.logs import fields
from node.queue.store import HEARTBEAT_SECONDS, JobStore

log = logging.getLogger(__name__)

#: A lease is renewed once this fraction of it has elapsed since it was taken or renewed.
RENEW_FRACTION = 1 / 3


class KeepAlive:
    """Renews the leases of held jobs and beats for ``component`` from a helper thread."""

    def __init__(
        self,
        store: JobStore,
        owner: str,
        lease_seconds: float,
        component: str | None = None,
        *,
        beat_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.component = component
        self.beat_seconds = HEARTBEAT_SECONDS if beat_seconds is None else beat_seconds
        self.clock = clock
        #: jobs of this owner whose lease a renewal found taken by someone else
        self.lost: set[int] = set()
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        now = clock()
        self._renew_at = now + lease_seconds * RENEW_FRACTION
        self._beat_at = now + self.beat_seconds

    # ------------------------------------------------------------------ the runner's side

    def hold(self, job_ids: Iterable[int]) -> None:
        """Jobs just claimed (their lease runs from now): keep them until dropped."""
        with self._lock:
            if not self._held:
                self._renew_at = self.clock() + self.lease_seconds * RENEW_FRACTION
            self._held.update(job_ids)

    def drop(self, job_ids: Iterable[int]) -> None:
        """Jobs decided (acked, retried, dead, released): their leases are not renewed."""
        with self._lock:
            self._held.difference_update(job_ids)

    def is_lost(self, job_id: int) -> bool:
        """True when a renewal found ``job_id`` taken from this owner."""
        with self._lock:
            return job_id in self.lost

    def start(self) -> KeepAlive:
        """Start the helper thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name=f"keepalive-{self.owner}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the helper thread; nothing is renewed after this returns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> KeepAlive:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ the helper's side

    def _loop(self) -> None:
        interval = max(0.01, min(self.beat_seconds, self.lease_seconds * RENEW_FRACTION) / 2)
        while not self._stop.wait(interval):
            self.tick()

    def tick(self) -> None:
        """One round: beat if due, renew the held leases if due (tests call it directly)."""
        now = self.clock()
        try:
            if self.component is not None and now >= self._beat_at:
                self._beat_at = now + self.beat_seconds
                self.store.heartbeat(self.component)
            with self._lock:
                due = now >= self._renew_at and bool(self._held)
                held = sorted(self._held)
                if due:
                    self._renew_at = now + self.lease_seconds * RENEW_FRACTION
            if due:
                self._renew(held)
        except (sqlite3.Error, QueueError) as exc:
            # A full or locked state disk: the runner's own store calls report it; the
            # next round tries again (the lease still has two thirds to run).
            log.warning("keep-alive of %s: job store refused: %s", self.owner, exc)

    def _renew(self, held: list[int]) -> None:
        kept = set(self.store.extend_lease(held, self.owner, self.lease_seconds))
        gone = [job_id for job_id in held if job_id not in kept]
        if not gone:
            return
        with self._lock:
            gone = [job_id for job_id in gone if job_id in self._held]  # not decided since
            self._held.difference_update(gone)
            self.lost.update(gone)
        for job_id in gone:
            holder = self.store.holder(job_id)
            log.error(
                "lease of job %d lost (%s): its lease ran out before it could be renewed (was"
                " this process frozen or starved for over queue.lease_seconds = %g s?); this"
                " runner will not record an outcome for it",
                job_id,
                holder if holder == "deleted" else f"now {holder}",
                self.lease_seconds,
                extra=fields(job=job_id, owner=self.owner),
            )

    def not_recorded(self, job_id: int, what: str, outcome: str, extra: dict[str, Any]) -> None:
        """Log that ``what``'s outcome (``outcome``) was not recorded: the store refused it
        because another worker holds the job now. An ERROR, unless a renewal already
        reported that lease lost (then the outcome is only noted, at INFO)."""
        log.log(
            logging.INFO if self.is_lost(job_id) else logging.ERROR,
            "%s not recorded as %s: its lease ran out and it is %s now (this runner no"
            " longer holds it; queue.lease_seconds = %g s)",
            what,
            outcome,
            self.store.holder(job_id),
            self.lease_seconds,
            extra=extra,
        )
