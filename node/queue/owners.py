"""Who holds claimed jobs: the node's workers, or a ``dicom-node queue drain`` process.

The node holds ``<state_dir>/node.lock`` (:mod:`node.statelock`), so at its start-up every
claim of another node process is a dead process's claim. ``queue drain`` does not take that
lock (it runs beside a node, or without one): its claims are named ``drain@HOST:PID`` and
are taken back only once that process is gone.
"""

from __future__ import annotations

import socket

from node.queue.store import JobStore
from node.status import pid_alive

DRAIN_OWNER = "drain@{host}:{pid}"


def drain_owner(pid: int) -> str:
    """The lease owner name of a drain process of this host."""
    return DRAIN_OWNER.format(host=socket.gethostname(), pid=pid)


def _drain_pid(owner: str | None) -> int | None:
    """The pid of a drain of this host holding ``owner``'s claims, else None."""
    prefix = DRAIN_OWNER.format(host=socket.gethostname(), pid="")
    pid = owner[len(prefix) :] if owner and owner.startswith(prefix) else ""
    return int(pid) if pid.isdigit() else None


def live_drains(store: JobStore) -> set[str]:
    """Owners of claimed jobs that are drain processes of this host still running."""
    return {
        owner
        for owner in store.claim_owners()
        if (pid := _drain_pid(owner)) is not None and pid_alive(pid)
    }


def requeue_dead_drains(store: JobStore) -> int:
    """Give back the jobs claimed by ``drain`` processes of this host that no longer run."""
    n = 0
    for owner in store.claim_owners():
        pid = _drain_pid(owner)
        if pid is not None and not pid_alive(pid):
            n += store.requeue_claimed(owner)
    return n
