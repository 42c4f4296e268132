"""``dicom-node queue list|show|retry|purge``: look into the job store and act on it.

They open the node's job store (``node.state_dir``) next to a running node; SQLite's
locking keeps both consistent. ``retry`` re-arms dead jobs (attempts reset); ``purge``
deletes done or dead jobs for good.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from node.errors import QueueError
from node.queue.owners import drain_owner, requeue_dead_drains
from node.queue.store import DB_NAME, Job, JobState, JobStore
from node.service_commands import load_from_args

log = logging.getLogger(__name__)

STATES = [str(s) for s in JobState]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    q = sub.add_parser(
        "queue",
        parents=[common],
        help="inspect and manage the durable job queue",
        description="Inspect the job queue in the node's state directory, re-arm dead jobs, "
        "purge finished ones.",
    )
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    p = qsub.add_parser("list", parents=[common], help="counts per kind/destination/state, or jobs")
    _filters(p)
    p.add_argument(
        "--limit", type=_positive, default=100, metavar="N", help="jobs to list (default: 100)"
    )
    p.add_argument("--json", action="store_true", help="JSON output (default: text)")
    p.set_defaults(func=cmd_list)

    p = qsub.add_parser("show", parents=[common], help="one job in full: payload, error, times")
    p.add_argument("job_id", type=int, metavar="ID")
    p.add_argument("--json", action="store_true", help="JSON output (default: text)")
    p.set_defaults(func=cmd_show)

    p = qsub.add_parser("retry", parents=[common], help="re-arm dead (or --state) jobs now")
    p.add_argument("job_ids", type=int, nargs="*", metavar="ID", help="jobs (default: all)")
    p.add_argument(
        "--state",
        choices=["dead", "retry"],
        default="dead",
        help="which jobs to re-arm when no ID is given (default: dead)",
    )
    p.add_argument("--json", action="store_true", help="JSON output (default: text)")
    p.set_defaults(func=cmd_retry)

    p = qsub.add_parser("purge", parents=[common], help="delete done or dead jobs")
    p.add_argument("--state", choices=["done", "dead"], required=True, help="which jobs to delete")
    p.add_argument("--json", action="store_true", help="JSON output (default: text)")
    p.set_defaults(func=cmd_purge)

    p = qsub.add_parser(
        "drain",
        parents=[common],
        help="deliver the due jobs of a destination now, without the node service",
        description="Run one delivery worker in the foreground until no job of the "
        "destination is due (jobs waiting for a later retry stay queued). Claims left by a "
        "crashed `drain` on this host are taken back first.",
    )
    p.add_argument("--dest", required=True, help="destination name from the config")
    p.add_argument("--json", action="store_true", help="JSON summary (default: text)")
    p.set_defaults(func=cmd_drain)


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1 (argparse names the option on error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", choices=STATES, help="only jobs in this state (default: counts)")
    p.add_argument("--kind", help="only this job kind, e.g. deliver (default: all)")
    p.add_argument("--dest", help="only this destination (default: all)")


def _store(args: argparse.Namespace, *, reader: bool = False) -> JobStore:
    """The node's job store; an error (not a new, empty store) when there is none there.
    ``reader``: only read (``list``, ``show``), also as a user who may not write to it."""
    cfg = load_from_args(args)
    path = cfg.node.state_dir / DB_NAME
    if not path.exists():
        # Creating it would answer "the queue is empty" for a mistyped or missing config.
        where = f"config {args.config}" if getattr(args, "config", None) else "no -c FILE"
        raise QueueError(
            f"no job store at {path} ({where}): give the node's config with -c FILE, "
            "or check node.state_dir / node.base_dir"
        )
    return JobStore(cfg.node.state_dir, reader=reader)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _line(job: Job) -> str:
    p = job.payload
    what = p.get("path") or p.get("sop_instance_uid") or job.dedup_key or ""
    due = ""
    if job.state == JobState.RETRY:
        due = f" next {_when(job.next_attempt_at)}"
    err = f"  [{job.last_error}]" if job.last_error else ""
    return (
        f"{job.id:>7} {job.kind:<15} {job.destination or '-':<12} {job.state:<8} "
        f"a={job.attempts}{due} {what}{err}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    with _store(args, reader=True) as store:
        if args.state is None:
            rows = [
                r
                for r in store.counts()
                if (args.kind is None or r[0] == args.kind)
                and (args.dest is None or r[1] == args.dest)
            ]
            if args.json:
                print(
                    json.dumps(
                        [
                            {"kind": k, "destination": d, "state": s, "count": n}
                            for k, d, s, n in rows
                        ]
                    )
                )
            elif not rows:
                filtered = args.kind is not None or args.dest is not None
                print("no job matches --kind/--dest" if filtered else "the queue is empty")
            else:
                print(f"{'kind':<16} {'destination':<16} {'state':<8} {'count':>7}")
                for kind, dest, state, n in rows:
                    print(f"{kind:<16} {dest or '-':<16} {state:<8} {n:>7}")
            return 0
        jobs = store.select(
            state=JobState(args.state), kind=args.kind, destination=args.dest, limit=args.limit
        )
    if args.json:
        print(json.dumps([j.as_dict() for j in jobs]))
    else:
        for job in jobs:
            print(_line(job))
        if len(jobs) == args.limit:
            print(f"(first {args.limit}; use --limit for more)", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _store(args, reader=True) as store:
        job = store.get(args.job_id)
    if job is None:
        raise QueueError(f"no job with id {args.job_id}: see `dicom-node queue list --state dead`")
    if args.json:
        print(json.dumps(job.as_dict(), indent=2))
        return 0
    d = job.as_dict()
    for key in ("created_at", "updated_at", "next_attempt_at", "lease_expires"):
        d[key] = _when(d[key])
    payload = d.pop("payload")
    for key, value in d.items():
        print(f"{key:<16} {value if value is not None else '-'}")
    for key, value in payload.items():
        print(f"payload.{key:<8} {value}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    with _store(args) as store:
        ids = args.job_ids or None
        if ids:
            jobs = {i: store.get(i) for i in ids}
            unknown = [str(i) for i, job in jobs.items() if job is None]
            if unknown:
                raise QueueError(
                    f"no job with id {', '.join(unknown)}: nothing re-armed "
                    "(see `dicom-node queue list --state dead`)"
                )
            for i, job in jobs.items():
                if job is not None and job.state == JobState.CLAIMED:
                    print(f"job {i} is claimed (being worked on): left alone", file=sys.stderr)
        n = store.rearm(ids, state=None if ids else JobState(args.state))
    if args.json:
        print(json.dumps({"rearmed": n}))
    else:
        print(f"re-armed {n} job(s)")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    with _store(args) as store:
        n = store.purge(JobState(args.state))
    if args.json:
        print(json.dumps({"purged": n}))
    else:
        print(f"purged {n} {args.state} job(s)")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    from node.send.worker import DeliveryWorker  # the send room; imported only when used

    cfg = load_from_args(args)
    dest = cfg.destination(args.dest)
    owner = drain_owner(os.getpid())
    before_dead = 0
    with _store(args) as store:  # no store: an error, as for the other actions
        taken_back = requeue_dead_drains(store)
        if taken_back:
            log.warning("took back %d job(s) claimed by a crashed drain", taken_back)
        before = store.counters()
        before_dead = len(store.select(state=JobState.DEAD, destination=dest.name, limit=10**9))
        # No heartbeat: a drain is no component of a node, and its row would show as
        # NOT RUNNING (a degraded node for `status`) once the drain has ended.
        worker = DeliveryWorker(cfg, dest, store, owner=owner, heartbeat=False)
        # One attempt per job: with a short backoff (or retry_multiplier = 1) a failed job
        # was due again at once and a drain against a failing peer never ended.
        worker.retried_before = time.time()
        handled = 0
        while (n := worker.run_once()) > 0:
            handled += n
        after = store.counters()
        dead = len(store.select(state=JobState.DEAD, destination=dest.name, limit=10**9))
        waiting = len(store.select(state=JobState.RETRY, destination=dest.name, limit=10**9))
    delivered = after.get("delivered", 0) - before.get("delivered", 0)
    summary = {
        "destination": dest.name,
        "attempted": handled,
        "delivered": delivered,
        "dead": dead - before_dead,
        "waiting_retry": waiting,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{dest.name}: {handled} attempted, {delivered} delivered, "
            f"{summary['dead']} newly dead, {waiting} waiting for a retry"
        )
    return 0 if summary["dead"] == 0 and waiting == 0 else 1
