"""The node service: builds every stage from the config, starts them, stops them gracefully.

::

    watcher ──> ingest pipeline ──> queue ("deliver") ──> delivery workers ──> PACS
    SCP ──> archive ──> queue ("export_instance", "study_complete") ──> export runner
                                                   └──> forward rules ──> "deliver"

Each stage is a thread over the shared job store; SIGTERM/SIGINT set one stop event, every
loop finishes what it holds (an in-flight C-STORE, a claimed job) and releases the rest.
A SIGKILL loses nothing: claimed jobs are requeued at the next start, interrupted claims in
``ingest.work`` are processed again, and the SCP removes leftover temporary files.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from node.config import Config
from node.jobs import JobRunner, PermanentJobError
from node.logs import fields
from node.metrics import Metrics
from node.queue import Job, JobStore
from node.queue.owners import live_drains
from node.queue.store import HEARTBEAT_SECONDS, PENDING_STATES
from node.receive.studies import forward_destinations
from node.statelock import StateLock

log = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0
RESTART_MIN_SECONDS = 1.0  # first pause before a crashed stage is started again
RESTART_MAX_SECONDS = 30.0  # longest pause (doubling in between)


class NodeService:
    """All stages of one node process."""

    def __init__(self, cfg: Config) -> None:
        from node.service_commands import check_rooms

        check_rooms(cfg)  # refuse a bad config before anything is opened or started
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.lock = StateLock(cfg.node.state_dir, "dicom-node run")
        # The lock first: only its holder may check and salvage a damaged store (which
        # moves the database file aside), and nothing else is opened before it.
        self.lock.acquire()
        try:
            self.store = JobStore(cfg.node.state_dir, repair=True)
        except BaseException:
            self.lock.release()
            raise
        self.metrics = Metrics(cfg.metrics, self.store)
        self.threads: list[threading.Thread] = []
        self.scp: Any = None
        self.pipeline: Any = None
        self.exporter: Any = None
        self.wake_delivery: dict[str, threading.Event] = {}
        self.exit_status = 0

    # ------------------------------------------------------------------ building

    def _thread(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            # A stage that raises is started again (after a growing pause) until the node
            # stops: its errors are mostly the environment's (a full disk makes every
            # SQLite commit fail, heartbeats included), and a stage that stayed dead would
            # leave the inbox unwatched or the exports undone while the process lives on.
            # Claimed jobs are protected by their leases; the watcher rescans the inbox.
            pause = RESTART_MIN_SECONDS
            while True:
                started = time.monotonic()
                try:
                    target()
                except Exception:
                    if self.stop_event.is_set():
                        log.exception("stage %s failed while stopping", name)
                        break
                    if time.monotonic() - started > RESTART_MAX_SECONDS:
                        pause = RESTART_MIN_SECONDS  # it ran fine for a while
                    log.exception("stage %s crashed; restarting it in %.0f s", name, pause)
                    if self.stop_event.wait(pause):
                        break
                    pause = min(pause * 2, RESTART_MAX_SECONDS)
                    continue
                break
            log.debug("stage %s stopped", name)

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def start(self) -> None:
        """Recover from any previous crash, then start every enabled stage.

        The config was checked when the service was built (as ``check-config`` checks it);
        everything else that can refuse it is built first, and interrupted ingest claims
        are resumed before any worker runs, so no worker sees a half-recovered claim. The
        state directory's lock is taken before any recovery: a second node on the same
        state refuses to start rather than take the first one's work (``statelock``).
        """
        self.lock.acquire()
        try:
            self._start()
        except BaseException:
            self.lock.release()
            raise

    def _start(self) -> None:
        cfg = self.cfg
        # This run's components beat at once; an earlier run's are forgotten.
        from node.status import forget_ended_components

        forget_ended_components(self.store)
        # Claims of the previous node process go back to the queue; those of a `queue
        # drain` still running are its own (taking them made it and us send them both).
        drains = live_drains(self.store)
        requeued = self.store.requeue_claimed(keep=drains)
        if requeued:
            log.info("requeued %d jobs claimed by a previous run", requeued)
        if drains:
            log.info(
                "leaving the jobs claimed by a running `dicom-node queue drain` to it",
                extra=fields(owners=",".join(sorted(drains))),
            )
        self._warn_orphaned_deliveries()

        if cfg.export.enabled:
            from node.export.exporter import Exporter

            self.exporter = Exporter(cfg.export)
            self.exporter.remove_leftovers()
        watcher = None
        if cfg.ingest.enabled:
            from node.ingest.pipeline import IngestPipeline
            from node.ingest.watcher import DropFolderWatcher

            self.pipeline = IngestPipeline(
                cfg,
                self.store,
                on_converted=self.metrics.observe_conversion,
                on_enqueued=self._wake_delivery,
            )
            watcher = DropFolderWatcher(
                cfg.ingest, self.pipeline.take, on_orphan=self.pipeline.orphan_sidecar
            )
            self.pipeline.recover()
            if not cfg.destinations:
                log.warning("no [[destinations]]: converted objects are kept, not delivered")
        self.metrics.start()

        if cfg.receive.enabled:
            from node.receive.scp import StorageSCP

            self.scp = StorageSCP(cfg, self.store)
            self.scp.start()  # it logs where it listens
            from node.receive.commitment import REPORT_KIND

            reports = JobRunner(
                self.store, {REPORT_KIND: self.scp.deliver_report}, cfg.queue, name="commitment"
            )
            self._thread("commitment", partial(reports.run, self.stop_event, "commitment"))

        from node.send.worker import DeliveryWorker

        for dest in cfg.destinations:
            wake = self.wake_delivery.setdefault(dest.name, threading.Event())
            for n in range(max(1, cfg.queue.workers_per_destination)):
                worker = DeliveryWorker(
                    cfg,
                    dest,
                    self.store,
                    owner=f"{os.getpid()}-{n}",
                    on_delivered=self._delivered,
                    wake=wake,
                )
                self._thread(f"deliver-{dest.name}-{n}", partial(worker.run, self.stop_event))

        runner = JobRunner(
            self.store,
            {"export_instance": self._export_instance, "study_complete": self._study_complete},
            cfg.queue,
            name="export",
        )
        for n in range(max(1, cfg.export.workers)):
            self._thread(f"export-{n}", partial(runner.run, self.stop_event, f"export-{n}"))

        if watcher is not None:
            beat = partial(self.store.heartbeat, "watcher")
            self._thread("watcher", partial(watcher.run, self.stop_event, beat))
            log.info("watching %s", cfg.ingest.inbox)

        self._thread("housekeeping", self._housekeeping)

    def _warn_orphaned_deliveries(self) -> None:
        """Deliveries waiting for a destination no longer configured are sent by nobody
        (and a drop-folder claim waiting for them stays in ``ingest.work``): say so at
        start, once per destination, instead of letting them wait in silence."""
        from node.send.worker import KIND

        configured = {d.name for d in self.cfg.destinations}
        waiting: dict[str, int] = {}
        for kind, dest, state, n in self.store.counts():
            if kind == KIND and dest not in configured and state in PENDING_STATES:
                waiting[dest] = waiting.get(dest, 0) + n
        for dest, n in sorted(waiting.items()):
            log.warning(
                "%d delivery job(s) wait for destination %r, which is not in [[destinations]]:"
                " nothing sends them. Put the entry back (a renamed destination keeps its old"
                " name for its jobs), or see them with `dicom-node queue list --dest %s"
                " --state queued` and send their files with `send --queue --dest NAME`",
                n,
                dest,
                dest,
                extra=fields(destination=dest, jobs=n),
            )

    # ------------------------------------------------------------------ job handlers

    def _wake_delivery(self, destinations: list[str]) -> None:
        for name in destinations:
            event = self.wake_delivery.get(name)
            if event is not None:
                event.set()

    def _delivered(self, job: Job) -> None:
        self.metrics.observe_delivery(time.time() - job.created_at)
        if self.pipeline is not None and job.payload.get("source") == "ingest":
            self.pipeline.on_delivered(job.payload)

    def _export_instance(self, job: Job) -> None:
        if self.exporter is None or not self.cfg.export.png:
            return
        path = Path(job.payload["path"])
        if not path.exists():
            raise PermanentJobError(f"{path}: archived object is gone; nothing to export")
        outputs = self.exporter.export_instance(path)
        self.store.bump("exported", len(outputs))
        log.info("exported", extra=fields(sop=job.payload.get("sop_instance_uid"), n=len(outputs)))

    def _study_complete(self, job: Job) -> None:
        payload = job.payload
        study_dir = Path(payload["archive_dir"])
        if not study_dir.is_dir():
            raise PermanentJobError(f"study folder {study_dir} is gone")
        if self.exporter is not None and self.cfg.export.pdf != "none":
            outputs = self.exporter.export_study(study_dir)
            self.store.bump("exported", len(outputs))
            log.info("study exported", extra=fields(study=payload.get("study_uid"), n=len(outputs)))
        # The rules of the config in force now, matched against every sender and modality.
        targets = forward_destinations(
            self.cfg.receive.forward,
            payload.get("calling_aes") or [payload.get("calling_ae", "")],
            payload.get("modalities") or [],
        )
        if targets:
            self._forward(targets, study_dir)

    def _forward(self, destinations: list[str], study_dir: Path) -> None:
        from node.send.worker import enqueue_delivery

        files = sorted(study_dir.rglob("*.dcm"))
        with self.store.transaction():
            for path in files:
                # A corrected copy (same SOP Instance UID, overwritten in place or moved
                # to another study/series by receive.duplicates = "overwrite") goes again.
                enqueue_delivery(
                    self.store, path, destinations, source="forward", resend_changed=True
                )
        self._wake_delivery(destinations)
        log.info("forwarded study", extra=fields(to=",".join(destinations), objects=len(files)))

    # ------------------------------------------------------------------ life cycle

    def _housekeeping(self) -> None:
        last_sweep = 0.0
        while not self.stop_event.is_set():
            if self.store.damaged is not None:
                # Every stage would fail on it from now on: stop (status 1, so that systemd
                # starts the node again), and the next start salvages the store.
                log.error(
                    "job store %s is damaged (%s): stopping; start the node again to salvage"
                    " it (readable jobs are kept, the damaged file is set aside)",
                    self.store.path,
                    self.store.damaged,
                )
                self.exit_status = 1
                self.stop_event.set()
                break
            self.store.heartbeat("node")
            if self.scp is not None and self.scp.alive:  # a dead listener stops beating
                self.store.heartbeat("scp", f"port {self.scp.port}")
            if self.pipeline is not None and time.monotonic() - last_sweep > SWEEP_SECONDS:
                self.pipeline.sweep()
                last_sweep = time.monotonic()
            self.stop_event.wait(HEARTBEAT_SECONDS)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: the SCP first (no new work), then every loop."""
        self.stop_event.set()
        self._wake_delivery(list(self.wake_delivery))
        if self.scp is not None:
            self.scp.stop()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self.metrics.stop()
        self.store.close()
        self.lock.release()

    def run_forever(self) -> int:
        """Start, wait for SIGTERM/SIGINT, stop. Returns the exit status."""

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stop_event.set()

        def on_hangup(signum: int, _frame: Any) -> None:
            # The default action of SIGHUP ends the process at once: a closed terminal or
            # a `kill -HUP` sent to make daemons reload cut C-STOREs short. The config is
            # read only at start, so there is nothing to reload.
            log.warning(
                "received SIGHUP: ignored (the configuration is read only at start; restart"
                " the node to apply changes, SIGTERM stops it gracefully)"
            )

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)
        try:
            self.start()
        except BaseException:  # e.g. the SCP's port is taken: release what did start
            self.stop(timeout=5.0)
            raise
        log.info("dicom-node running (pid %d)", os.getpid())
        while not self.stop_event.wait(1.0):
            pass
        self.stop()
        log.info("dicom-node stopped")
        return self.exit_status
