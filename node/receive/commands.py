"""The ``dicom-node receive`` sub-command: run the Storage SCP alone, like ``storescp``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from node.config import Config

log = logging.getLogger(__name__)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "receive",
        parents=[common],
        help="run the C-STORE SCP alone (like storescp) until SIGINT/SIGTERM",
        description=(
            "Receive DICOM objects into the archive (<archive>/<Study>/<Series>/<SOP>.dcm), "
            "record them and queue their export jobs in node.state_dir (`dicom-node run` "
            "exports them). Storage commitment reports a requester could not take at once are "
            "retried here. Stops gracefully on SIGINT or SIGTERM."
        ),
    )
    group = p.add_argument_group("receive options")
    group.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port to listen on (default: the config's receive.port, 11112; 0 = any free)",
    )
    group.add_argument(
        "--aet",
        default=None,
        metavar="AE",
        help="our AE title (default: the config's receive.ae_title, DICOMNODE)",
    )
    group.add_argument(
        "--archive",
        type=Path,
        default=None,
        metavar="DIR",
        help="archive directory (default: the config's receive.archive, var/archive)",
    )
    p.set_defaults(func=cmd_receive)


def apply_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    """The config with ``--port``, ``--aet`` and ``--archive`` applied."""
    changes: dict[str, Any] = {}
    if args.port is not None:
        changes["port"] = args.port
    if args.aet is not None:
        changes["ae_title"] = args.aet
    if args.archive is not None:
        changes["archive"] = args.archive.resolve()
    if not changes:
        return cfg
    from node.config import check_ae
    from node.errors import ConfigError
    from node.preflight import check_folder

    if "ae_title" in changes:
        check_ae(changes["ae_title"], "--aet")
    if "port" in changes and not 0 <= changes["port"] < 65536:
        raise ConfigError(f"--port: {changes['port']} is not a TCP port (0-65535; 0 = any free)")
    if "archive" in changes:
        check_folder("--archive", changes["archive"])
    return dataclasses.replace(cfg, receive=dataclasses.replace(cfg.receive, **changes))


def cmd_receive(args: argparse.Namespace) -> int:
    from node.jobs import JobRunner
    from node.logs import setup_logging
    from node.queue.store import HEARTBEAT_SECONDS, JobStore
    from node.receive.commitment import REPORT_KIND
    from node.receive.scp import StorageSCP
    from node.service_commands import load_from_args
    from node.statelock import StateLock
    from node.status import forget_ended_components

    cfg = apply_overrides(load_from_args(args), args)
    setup_logging(
        getattr(args, "log_level", None) or cfg.node.log_level,
        getattr(args, "log_format", None) or cfg.node.log_format,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # As for `run`: SIGHUP would end the process at once; there is nothing to reload.
    signal.signal(
        signal.SIGHUP,
        lambda *_: log.warning("received SIGHUP: ignored (SIGTERM stops the SCP gracefully)"),
    )
    with (
        StateLock(cfg.node.state_dir, "dicom-node receive"),
        JobStore(cfg.node.state_dir, durable=cfg.receive.fsync, repair=True) as store,
    ):
        # `dicom-node status` shows this process's components only (scp, commitment), not
        # those of an earlier `run` (watcher, send workers) as NOT RUNNING.
        forget_ended_components(store)
        scp = StorageSCP(cfg, store)
        scp.start()
        # Storage commitment reports the requester could not take at once are queued
        # jobs: retried here too (on new associations, with the [queue] backoff).
        reports = JobRunner(store, {REPORT_KIND: scp.deliver_report}, cfg.queue, name="commitment")
        retrying = threading.Thread(
            target=reports.run, args=(stop, "commitment"), name="commitment", daemon=True
        )
        retrying.start()
        # A line a supervisor (or a test) can wait for.
        print(f"listening on {cfg.receive.host}:{scp.port}", flush=True)
        try:
            while True:
                if scp.alive:  # a dead listener stops beating: `status` says NOT RUNNING
                    store.heartbeat("scp", f"port {scp.port}")
                if stop.wait(HEARTBEAT_SECONDS):
                    break
        finally:
            stop.set()
            scp.stop()
            retrying.join(timeout=cfg.receive.dimse_timeout + 5)
    return 0
