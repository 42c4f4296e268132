"""``dicom-node status``: what the node holds and whether it is alive, from the state DB.

Everything comes from ``node.state_dir/queue.sqlite3`` (jobs, counters, heartbeats), so it
works from another shell, while the node runs or after it stopped.

The exit status follows the LSB convention for an init script's ``status`` action, with
one code of its own for a node that runs but needs attention (see :func:`assess`):

* ``0`` running and healthy: every component alive, no dead job, none waiting for a retry;
* ``1`` running but degraded: a component ``NOT RUNNING`` (a stage stuck or restarting),
  dead jobs, or jobs waiting for a retry (a destination refusing or unreachable);
* ``3`` not running: no component alive, or no state database at all.

A store that cannot be read (damaged, locked) is an error of the command, as before.
"""

from __future__ import annotations

import os
import time
from typing import Any

from node.config import Config
from node.queue import JobState, JobStore
from node.queue.store import DB_NAME

#: A component is alive if it wrote a heartbeat within this many seconds (it beats every
#: ``HEARTBEAT_SECONDS``, 2 s).
ALIVE_SECONDS = 10.0

#: ``dicom-node status`` exit statuses (LSB: 0 running, 3 not running; 1 degraded)
EXIT_RUNNING = 0
EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_ended_components(store: JobStore) -> int:
    """Delete the heartbeats of processes that have ended; how many went.

    Components of an earlier run (a destination since renamed, fewer workers, a watcher
    when only ``dicom-node receive`` runs now) would otherwise show as ``NOT RUNNING`` in
    ``status`` for ever. Called when a node process starts; its own beats are kept.
    """
    ended = {pid for pid, _, _ in store.heartbeats().values() if not pid_alive(pid)}
    return store.forget_heartbeats(ended - {os.getpid()})


def collect_status(cfg: Config) -> dict[str, Any]:
    """Queue depth per kind/destination/state, recent errors, counters, liveness.

    Without a state database (the node never ran with this config, or ``-c`` names another
    node's config) the report is empty and says so; none is created (a status command that
    leaves a fresh database behind would hide the mistake from the next ``status``)."""
    db = cfg.node.state_dir / DB_NAME
    if not db.exists():
        return {
            "state_db": str(db),
            "state_db_exists": False,
            "pending": 0,
            "queue": {},
            "counters": {},
            "components": {},
            "recent_errors": [],
        }
    with JobStore(cfg.node.state_dir, reader=True) as store:
        now = time.time()
        queue: dict[str, dict[str, dict[str, int]]] = {}
        for kind, dest, state, count in store.counts():
            queue.setdefault(kind, {}).setdefault(dest or "-", {})[state] = count
        errors = [
            {
                "id": job.id,
                "kind": job.kind,
                "destination": job.destination,
                "state": str(job.state),
                "attempts": job.attempts,
                "error": job.last_error,
            }
            for state in (JobState.DEAD, JobState.RETRY)
            for job in store.select(state=state, limit=5)
        ]
        components = {
            name: {
                "pid": pid,
                "seconds_ago": round(now - seen, 1),
                "alive": now - seen < ALIVE_SECONDS and pid_alive(pid),
                "detail": detail,
            }
            for name, (pid, seen, detail) in store.heartbeats().items()
        }
        return {
            "state_db": str(store.path),
            "state_db_exists": True,
            "pending": store.pending(),
            "queue": queue,
            "counters": store.counters(),
            "components": components,
            "recent_errors": errors,
        }


def assess(report: dict[str, Any]) -> tuple[int, str, list[str]]:
    """``(exit status, health word, problems)`` of a :func:`collect_status` report."""
    if not report.get("state_db_exists", True):
        return EXIT_NOT_RUNNING, "not running", ["no state database: no node has run"]
    components = report["components"]
    if not any(comp["alive"] for comp in components.values()):
        return EXIT_NOT_RUNNING, "not running", ["no component wrote a heartbeat lately"]
    problems = [
        f"{name} NOT RUNNING" for name, comp in sorted(components.items()) if not comp["alive"]
    ]
    for state, what in (("dead", "dead job(s)"), ("retry", "job(s) waiting for a retry")):
        n = sum(
            states.get(state, 0) for dests in report["queue"].values() for states in dests.values()
        )
        if n:
            problems.append(f"{n} {what}")
    if problems:
        return EXIT_DEGRADED, "degraded", problems
    return EXIT_RUNNING, "running", []


def format_status(report: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`collect_status` (with its :func:`assess` line)."""
    _, health, problems = assess(report)
    lines = [f"health: {health}" + (f" ({'; '.join(problems)})" if problems else "")]
    lines.append(f"state: {report['state_db']}")
    if not report.get("state_db_exists", True):
        lines[1] += (
            " (does not exist: no node has run with this config; "
            "check -c FILE and node.state_dir / node.base_dir)"
        )
    lines += [f"pending jobs: {report['pending']}", ""]
    lines.append("components:")
    if not report["components"]:
        lines.append("  (none has run yet)")
    width = max([10, *(len(name) for name in report["components"])])
    for name, comp in sorted(report["components"].items()):
        state = "alive" if comp["alive"] else "NOT RUNNING"
        lines.append(
            f"  {name:<{width}} {state:<12} pid {comp['pid']}, seen {comp['seconds_ago']} s ago"
            f"  {comp['detail']}".rstrip()
        )
    lines.append("")
    lines.append("queue (kind / destination: state=count):")
    if not report["queue"]:
        lines.append("  (empty)")
    for kind, dests in sorted(report["queue"].items()):
        for dest, states in sorted(dests.items()):
            counts = ", ".join(f"{s}={n}" for s, n in sorted(states.items()))
            lines.append(f"  {kind:<16} {dest:<12} {counts}")
    lines.append("")
    lines.append("counters:")
    for name, value in sorted(report["counters"].items()) or [("(none)", 0)]:
        lines.append(f"  {name:<16} {value}")
    if report["recent_errors"]:
        lines.append("")
        lines.append("recent errors:")
        for err in report["recent_errors"]:
            lines.append(
                f"  #{err['id']} {err['kind']} -> {err['destination'] or '-'} [{err['state']}, "
                f"{err['attempts']} attempts]: {err['error']}"
            )
    return "\n".join(lines)
