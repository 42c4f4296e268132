"""The SQLite job table: enqueue, claim with a lease, ack, retry, dead, requeue.

One row is one unit of work ("deliver this file to that destination", "export this
series"). States::

    queued ──claim──> claimed ──ack──> done
      ▲                 │ ├──retry──> retry ──(next_attempt_at reached)──> claimable
      │                 │ └──dead───> dead  ──rearm──> queued
      └──── release / requeue_claimed (restart) / expired lease (crashed worker)

Enqueue is idempotent on ``(kind, dedup_key, destination)``: enqueuing the same SOP
Instance UID for the same destination twice yields the same job. Every state change is
committed (WAL, ``synchronous=FULL``) before the method returns, so whatever a caller
reports as accepted survives a crash or power loss.

The same database holds two small side tables used by ``dicom-node status``: monotonically
increasing ``counters`` and component ``heartbeats``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from node.errors import QueueError

log = logging.getLogger(__name__)

DB_NAME = "queue.sqlite3"
#: How long a statement waits for another connection's write lock before "database is locked".
BUSY_SECONDS = 30.0
#: How often a running component writes its heartbeat (:meth:`JobStore.heartbeat`);
#: ``dicom-node status`` calls it alive while its last beat is under
#: ``node.status.ALIVE_SECONDS`` old.
HEARTBEAT_SECONDS = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL,
    dedup_key       TEXT,
    destination     TEXT    NOT NULL DEFAULT '',
    payload         TEXT    NOT NULL DEFAULT '{}',
    state           TEXT    NOT NULL DEFAULT 'queued',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_expires   REAL,
    last_error      TEXT,
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedup ON jobs(kind, dedup_key, destination)
    WHERE dedup_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(kind, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeats (
    component TEXT PRIMARY KEY, pid INTEGER, seen_at REAL NOT NULL, detail TEXT
);
"""


CLOCK_STEP_SECONDS = 5.0  # a wall clock this far behind an earlier reading went back


# Is a lease over? On the boot clock when the lease was taken during this boot (a step of
# the wall clock, forward or back, changes nothing: a worker's jobs are not taken from it
# because NTP moved the time an hour ahead), on the wall clock otherwise (taken before a
# reboot, or by a version without the boot columns).
def _lease_over(boot_id: str | None, boot_now: float, now: float) -> tuple[str, list[Any]]:
    if boot_id is None:
        return "lease_expires < ?", [now]
    return (
        "((lease_boot_id = ? AND lease_boot < ?)"
        " OR (COALESCE(lease_boot_id, '') != ? AND lease_expires < ?))",
        [boot_id, boot_now, boot_id, now],
    )


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


_BOOT_ID = _read_boot_id()


def boot_clock() -> tuple[str | None, float]:
    """``(boot id, seconds since boot)``: a clock no wall-clock step moves, the same for
    every process of this boot (CLOCK_BOOTTIME also counts time suspended). Without it
    (not Linux), ``(None, 0.0)``: leases then end on the wall clock."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if not _BOOT_ID or clock is None:
        return None, 0.0
    return _BOOT_ID, time.clock_gettime(clock)


_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def is_locked(exc: BaseException) -> bool:
    """``exc`` is SQLite's "database is locked" (another connection kept its write lock
    beyond the busy timeout), not damage."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def is_damage(exc: BaseException) -> bool:
    """True for SQLite's "database disk image is malformed" / "file is not a database"."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.DatabaseError)
        and code is not None
        and (code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB))
    )


def salvage_rows(source: Path, target: sqlite3.Connection) -> tuple[dict[str, int], int]:
    """Copy every readable row of every table of ``source`` into ``target``.

    Tables the target lacks are created from the source's schema. Rows are read in rowid
    order; a damaged page raises, and the reading resumes past it (rowids probed further
    and further ahead). Returns rows copied per table and the number of ranges skipped.
    """
    copied: dict[str, int] = {}
    lost = 0
    try:
        src = sqlite3.connect(source, isolation_level=None)
    except sqlite3.Error:
        return copied, 1
    try:
        try:
            tables = src.execute(
                "SELECT name, sql FROM sqlite_master WHERE type='table'"
                " AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
        except sqlite3.DatabaseError:
            return copied, 1  # not even the schema is readable: nothing to salvage
        target.execute("BEGIN IMMEDIATE")
        for name, sql in tables:
            with contextlib.suppress(sqlite3.OperationalError):  # already there
                target.execute(sql)
            copied[name], skipped = _copy_table(src, target, name)
            lost += skipped
        target.execute("COMMIT")
    finally:
        src.close()
    return copied, lost


def _copy_table(src: sqlite3.Connection, target: sqlite3.Connection, table: str) -> tuple[int, int]:
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        top = src.execute(f"SELECT max(rowid) FROM {quoted}").fetchone()[0]
    except sqlite3.DatabaseError:
        top = None
    after, n, skipped = -(2**63), 0, 0
    while True:
        rows: list[Any] = []
        columns: list[str] = []
        try:
            cur = src.execute(
                f"SELECT rowid, * FROM {quoted} WHERE rowid > ? ORDER BY rowid LIMIT 1000",
                (after,),
            )
            columns = [d[0] for d in cur.description][1:]
            for row in cur:  # rows before a damaged page are kept
                rows.append(row)
            failed = False
        except sqlite3.DatabaseError:
            failed = True
        if rows:
            marks = ",".join("?" * len(columns))
            names = ",".join('"' + c.replace('"', '""') + '"' for c in columns)
            target.executemany(
                f"INSERT OR IGNORE INTO {quoted}({names}) VALUES ({marks})",
                [tuple(r[1:]) for r in rows],
            )
            n += len(rows)
            after = rows[-1][0]
        if not failed:
            if len(rows) < 1000:
                return n, skipped
            continue
        # A damaged page: probe further and further ahead for a readable rowid.
        skipped += 1
        step = 1
        while True:
            probe = after + step
            if top is not None and probe > top or step > 2**62:
                return n, skipped
            try:
                src.execute(
                    f"SELECT rowid FROM {quoted} WHERE rowid > ? ORDER BY rowid LIMIT 2", (probe,)
                ).fetchall()
            except sqlite3.DatabaseError:
                step *= 2
                continue
            after = probe
            break


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    RETRY = "retry"
    DONE = "done"
    DEAD = "dead"


#: The states of a job still to be done (queued, being worked on, waiting for a retry).
PENDING_STATES = frozenset((JobState.QUEUED, JobState.CLAIMED, JobState.RETRY))


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    id: int
    kind: str
    dedup_key: str | None
    destination: str
    payload: dict[str, Any]
    state: JobState
    attempts: int
    next_attempt_at: float
    lease_owner: str | None
    lease_expires: float | None
    last_error: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            dedup_key=row["dedup_key"],
            destination=row["destination"],
            payload=json.loads(row["payload"]),
            state=JobState(row["state"]),
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            lease_owner=row["lease_owner"],
            lease_expires=row["lease_expires"],
            last_error=row["last_error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {
            "id": self.id,
            "kind": self.kind,
            "dedup_key": self.dedup_key,
            "destination": self.destination,
            "payload": self.payload,
            "state": str(self.state),
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "lease_owner": self.lease_owner,
            "lease_expires": self.lease_expires,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class JobStore:
    """The durable job table in ``state_dir/queue.sqlite3``; safe across threads and processes.

    One connection per instance, serialised by a lock; other processes (the CLI's ``queue``
    and ``status`` commands) open their own and SQLite's file locking does the rest.
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        durable: bool = True,
        repair: bool = False,
        reader: bool = False,
    ) -> None:
        """Open (or create) the store.

        With ``repair`` (only for the process holding the state directory's lock: ``run``
        and ``receive``) a damaged database is checked for and salvaged: see
        :meth:`_salvage`. With ``reader`` (``status``, ``queue list``): when this user may
        not write to the store (a monitoring account, the group of the node's user), it is
        opened read-only instead of failing; nothing is created then (see
        :meth:`_open_read_only`).
        """
        self.path = Path(state_dir) / DB_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueError(
                f"cannot create the state folder {self.path.parent} (node.state_dir): "
                f"{exc.strerror or exc}"
            ) from None
        self._lock = threading.RLock()
        self._durable = durable
        #: set when SQLite reported the database damaged while the store was in use
        self.damaged: str | None = None
        self._last_now = 0.0  # the wall clock at the last claim (a step back is noticed)
        #: where the damaged database was moved by a repair at open, if one was needed
        self.salvaged_from: Path | None = None
        try:
            try:
                self._connect()
            except sqlite3.DatabaseError as exc:
                if not (repair and is_damage(exc)):
                    raise
                self._salvage(str(exc), connected=False)
            else:
                problem = self._damage() if repair else None
                if problem is not None:
                    self._salvage(problem)
            if repair:  # the clock may have been set back while no node ran
                moved = self.rebase_clock()
                if moved:
                    log.warning("the system clock went back: %d waiting job(s) moved", moved)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error, AttributeError):
                self._db.close()
            if reader and (self._not_writable(exc) or is_locked(exc)):
                # A reader needs no write: a store locked by another process's long
                # write transaction is still readable (WAL: the last committed state).
                self._open_read_only()
                return
            raise QueueError(
                f"cannot open job store {self.path}: {exc}{self._advice(exc)}"
            ) from None

    def _not_writable(self, exc: sqlite3.Error) -> bool:
        """``exc`` says this user cannot write the store or create its WAL files."""
        text = str(exc).lower()
        return "readonly" in text or "unable to open" in text or "read-only" in text

    def _advice(self, exc: sqlite3.Error) -> str:
        """What to do about ``exc``: never "move the file aside" for a permission problem
        (that would throw the queue away)."""
        if self._not_writable(exc):
            return (
                f" (this user, uid {os.getuid()}, may not write to it or to "
                f"{self.path.parent}: run the command as the node's user, e.g. "
                "sudo -u dicom-node ..., or fix the owner of node.state_dir)"
            )
        if is_locked(exc):  # not damage: moving the file aside would lose the queue
            return (
                f" (another process held a write transaction on it for over {BUSY_SECONDS:g} s:"
                " close a `sqlite3` shell or backup left open on it, or end a hung dicom-node"
                " process, then try again)"
            )
        return (
            " (is node.state_dir the node's state folder? a damaged store is salvaged by "
            "`dicom-node run` at its start)"
        )

    def _open_read_only(self) -> None:
        """A read-only connection that creates no file: SQLite's ``mode=ro`` while the WAL
        file exists (the node runs: its shared-memory file is read), ``immutable`` when it
        does not (no process is writing; ``mode=ro`` would need to create the WAL files)."""
        from urllib.parse import quote

        wal = self.path.with_name(self.path.name + "-wal")
        flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        uri = f"file:{quote(str(self.path.resolve()))}?{flags}"
        try:
            self._db = sqlite3.connect(
                uri, uri=True, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise QueueError(
                f"cannot read job store {self.path}: {exc}{self._advice(exc)}"
            ) from None
        log.debug("opened %s read-only (%s)", self.path, flags)

    def _connect(self) -> None:
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            self._open(self._durable)
        except sqlite3.Error:
            self._db.close()
            raise

    def _damage(self) -> str | None:
        """What ``PRAGMA quick_check`` finds wrong (a few tens of ms per 100k jobs), or None."""
        try:
            rows = [r[0] for r in self._db.execute("PRAGMA quick_check(20)").fetchall()]
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            return str(exc)
        return None if rows == ["ok"] else "; ".join(rows)

    def _salvage(self, problem: str, *, connected: bool = True) -> None:
        """Move the damaged database aside and copy every readable row into a new one.

        The damaged file (with its ``-wal``) is kept as ``queue.sqlite3.damaged-TIME`` for
        the admin; rows on damaged pages are lost (the node's start-up recovery queues the
        deliveries of ingest claims again from their records in ``ingest.work``).
        """
        if connected:
            self._db.close()
        aside = self.path.with_name(f"{DB_NAME}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("-wal", "-shm", ""):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        self._connect()
        copied, lost = salvage_rows(aside, self._db)
        log.error(
            "job store %s was damaged (%s): moved to %s; %d rows copied into a new store%s",
            self.path,
            problem,
            aside.name,
            sum(copied.values()),
            f", {lost} unreadable range(s) skipped" if lost else "",
        )
        self.salvaged_from = aside

    def _open(self, durable: bool) -> None:
        """Connection settings and the schema (created or upgraded in place)."""
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
        with self._tx() as db:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "rerun_at" not in columns:
                # Set when a claimed job is replaced: ack() then queues it once more.
                db.execute("ALTER TABLE jobs ADD COLUMN rerun_at REAL")
            if "lease_boot" not in columns:
                # The lease's end on the boot clock, and that boot's id (see _lease_free).
                db.execute("ALTER TABLE jobs ADD COLUMN lease_boot REAL")
                db.execute("ALTER TABLE jobs ADD COLUMN lease_boot_id TEXT")

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db.in_transaction:
                # Nested inside transaction() on this thread (the lock is ours): join it,
                # the outer block commits or rolls back everything at once.
                yield self._db
                return
            with self._watch():
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):  # e.g. already rolled back
                        self._db.execute("ROLLBACK")
                    raise
                try:
                    self._db.execute("COMMIT")
                except BaseException:
                    # SQLite rolls back a commit that failed on a full disk, but not every
                    # failed commit (SQLITE_BUSY): a transaction left open would be joined,
                    # as if nested, by every later write of this connection and never
                    # committed.
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._watch():
            yield self._db

    @contextmanager
    def _watch(self) -> Iterator[None]:
        """Remember a "database disk image is malformed" (the node stops on it, and its
        next start salvages the store)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                self.damaged = str(exc)
            raise

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """Group several writes into one commit (one fsync): ``with store.transaction() as db``.

        Store methods called inside the block (``enqueue``, ``bump`` ...) join it; ``db`` may
        also run statements on side tables a room keeps in the same database. Everything is
        committed when the block exits, or rolled back if it raises.
        """
        return self._tx()

    def reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """Run queries without taking the write lock or committing: ``with store.reading()
        as db`` (a room's look-up in its side tables on the hot path; a read inside
        :meth:`transaction` sees that transaction's writes)."""
        return self._read()

    def _now(self) -> float:
        """The wall clock for a claim; when it went back since the last one, the times of
        waiting jobs are moved back with it first (:meth:`rebase_clock`)."""
        now = time.time()
        if now < self._last_now - CLOCK_STEP_SECONDS:
            moved = self.rebase_clock(now)
            log.warning(
                "the system clock went back %.0f s: %d waiting job(s) keep their delays",
                self._last_now - now,
                moved,
            )
        self._last_now = now
        return now

    def rebase_clock(self, now: float | None = None) -> int:
        """Undo a backward step of the wall clock for jobs written before it.

        A job last written "in the future" (``updated_at`` past now) was written before the
        clock went back: its due time (a retry's backoff, a study's quiet period) and lease
        move back by the same amount, instead of waiting the step out (an hour, for a
        daylight-saving or NTP mistake). Returns the number of jobs moved.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET next_attempt_at = next_attempt_at - (updated_at - ?),"
                " lease_expires = lease_expires - (updated_at - ?), updated_at = ?"
                " WHERE updated_at > ? AND state IN ('queued', 'retry', 'claimed')",
                (now, now, now, now + CLOCK_STEP_SECONDS),
            )
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        destination: str = "",
        dedup_key: str | None = None,
        replace: bool = False,
        not_before: float = 0.0,
    ) -> int:
        """Add a job and return its id; with a ``dedup_key`` an existing job is reused.

        ``replace=True`` re-arms an existing job (new payload, state queued, attempts 0):
        used for "export this series again, more instances arrived".
        """
        return self.enqueue_many(
            kind,
            [(payload, destination, dedup_key)],
            replace=replace,
            not_before=not_before,
        )[0]

    def enqueue_many(
        self,
        kind: str,
        items: Sequence[tuple[dict[str, Any], str, str | None]],
        *,
        replace: bool = False,
        not_before: float = 0.0,
    ) -> list[int]:
        """Enqueue ``(payload, destination, dedup_key)`` items in one transaction."""
        now = time.time()
        ids: list[int] = []
        with self._tx() as db:
            for payload, destination, dedup_key in items:
                data = json.dumps(payload, sort_keys=True)
                row = None
                if dedup_key is not None:
                    row = db.execute(
                        "SELECT id, state FROM jobs WHERE kind=? AND dedup_key=? AND destination=?",
                        (kind, dedup_key, destination),
                    ).fetchone()
                if row is None:
                    cur = db.execute(
                        "INSERT INTO jobs(kind, dedup_key, destination, payload, state,"
                        " next_attempt_at, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                        (kind, dedup_key, destination, data, not_before, now, now),
                    )
                    ids.append(int(cur.lastrowid or 0))
                    continue
                ids.append(int(row["id"]))
                if replace and row["state"] != JobState.CLAIMED:
                    db.execute(
                        "UPDATE jobs SET payload=?, state='queued', attempts=0, rerun_at=NULL,"
                        " next_attempt_at=?, last_error=NULL, lease_owner=NULL,"
                        " lease_expires=NULL, updated_at=? WHERE id=?",
                        (data, not_before, now, row["id"]),
                    )
                elif replace:
                    # Being worked on right now: run it once more after this attempt
                    # (ack() sees rerun_at and queues it again instead of marking it done).
                    db.execute(
                        "UPDATE jobs SET payload=?, rerun_at=?, updated_at=? WHERE id=?",
                        (data, not_before, now, row["id"]),
                    )
        return ids

    def claim(
        self,
        owner: str,
        *,
        kinds: Iterable[str] | None = None,
        destination: str | None = None,
        limit: int = 1,
        lease_seconds: float = 300.0,
        retried_before: float | None = None,
    ) -> list[Job]:
        """Atomically lease up to ``limit`` ready jobs (queued, due retries, expired leases).

        With ``retried_before``, a job that failed and was scheduled for a retry at or after
        that time is not taken (``queue drain``: one attempt per job and run).
        """
        now = self._now()
        boot_id, boot_now = boot_clock()
        over, over_args = _lease_over(boot_id, boot_now, now)
        where = [
            f"((state IN ('queued','retry') AND next_attempt_at <= ?)"
            f" OR (state='claimed' AND {over}))"
        ]
        args: list[Any] = [now, *over_args]
        if retried_before is not None:
            where.append("NOT (state='retry' AND updated_at >= ?)")
            args.append(retried_before)
        if kinds is not None:
            kind_list = list(kinds)
            where.append(f"kind IN ({','.join('?' * len(kind_list))})")
            args.extend(kind_list)
        if destination is not None:
            where.append("destination = ?")
            args.append(destination)
        with self._tx() as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                (*args, limit),
            ).fetchall()
            ids = [r["id"] for r in rows]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            # rerun_at=NULL: this claim runs the latest payload, which covers a re-run
            # asked for while an earlier (expired) claim held the job.
            db.execute(
                "UPDATE jobs SET state='claimed', lease_owner=?, lease_expires=?,"
                " lease_boot=?, lease_boot_id=?,"
                f" attempts=attempts+1, rerun_at=NULL, updated_at=? WHERE id IN ({marks})",
                (owner, now + lease_seconds, boot_now + lease_seconds, boot_id, now, *ids),
            )
            claimed = db.execute(
                f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY id", ids
            ).fetchall()
        return [Job.from_row(r) for r in claimed]

    def ack(
        self, job_ids: Iterable[int], *, note: str | None = None, owner: str | None = None
    ) -> list[int]:
        """Mark jobs done (``note`` keeps e.g. a warning status the peer returned).

        A job replaced while it was claimed (``enqueue(..., replace=True)``) is queued again
        instead, due at the ``not_before`` of that replacement, with attempts reset.

        With ``owner`` (a worker recording its own work), only the jobs ``owner`` still holds
        are changed: a job whose lease ran out and was claimed by another worker is that
        worker's now. Returns the ids changed.
        """
        ids = list(job_ids)
        if not ids:
            return []
        now = time.time()
        with self._tx() as db:
            ids = self._held(db, ids, owner)
            marks = ",".join("?" * len(ids))
            self._set_state(ids, JobState.DONE, error=note, only_if="rerun_at IS NULL")
            db.execute(
                "UPDATE jobs SET state='queued', attempts=0, next_attempt_at=rerun_at,"
                " rerun_at=NULL, last_error=NULL, lease_owner=NULL, lease_expires=NULL,"
                f" updated_at=? WHERE rerun_at IS NOT NULL AND id IN ({marks})",
                (now, *ids),
            )
        return ids

    def retry(self, job_id: int, at: float, error: str, *, owner: str | None = None) -> bool:
        """Schedule another attempt at ``at`` (epoch seconds), recording why.

        With ``owner``, only if ``owner`` still holds the job (see :meth:`ack`); returns
        whether the job was changed.
        """
        now = time.time()
        with self._tx() as db:
            if not self._held(db, [job_id], owner):
                return False
            db.execute(
                "UPDATE jobs SET state='retry', next_attempt_at=?, last_error=?,"
                " lease_owner=NULL, lease_expires=NULL, updated_at=? WHERE id=?",
                (at, error, now, job_id),
            )
        return True

    def dead(self, job_id: int, reason: str, *, owner: str | None = None) -> bool:
        """Give up on a job: it stays visible in state ``dead`` with the reason.

        With ``owner``, only if ``owner`` still holds the job (see :meth:`ack`); returns
        whether the job was changed.
        """
        with self._tx() as db:
            if not self._held(db, [job_id], owner):
                return False
            self._set_state([job_id], JobState.DEAD, error=reason)
        return True

    def release(self, job_ids: Iterable[int], *, owner: str | None = None) -> None:
        """Give claimed jobs back untouched (graceful shutdown): the attempt is not counted.

        With ``owner``, jobs another worker holds now (their lease ran out here) are left
        to it.
        """
        ids = list(job_ids)
        if not ids:
            return
        now = time.time()
        with self._tx() as db:
            ids = self._held(db, ids, owner)
            marks = ",".join("?" * len(ids))
            db.execute(
                "UPDATE jobs SET state='queued', attempts=MAX(attempts-1, 0), lease_owner=NULL,"
                f" lease_expires=NULL, updated_at=? WHERE state='claimed' AND id IN ({marks})",
                (now, *ids),
            )

    def _held(self, db: sqlite3.Connection, ids: list[int], owner: str | None) -> list[int]:
        """Those of ``ids`` claimed by ``owner`` (all of them when ``owner`` is None)."""
        if owner is None or not ids:
            return ids
        marks = ",".join("?" * len(ids))
        rows = db.execute(
            f"SELECT id FROM jobs WHERE state='claimed' AND lease_owner=? AND id IN ({marks})",
            (owner, *ids),
        ).fetchall()
        held = {r[0] for r in rows}
        return [i for i in ids if i in held]

    def extend_lease(self, job_ids: Iterable[int], owner: str, lease_seconds: float) -> list[int]:
        """Push back the lease of jobs ``owner`` still holds (a long job is still running).

        Returns the ids renewed: a job missing from it is not ``owner``'s any more (its
        lease ran out, e.g. while the process was frozen, and another worker claimed it, or
        ``queue`` commands changed it).
        """
        ids = list(job_ids)
        if not ids:
            return []
        now = time.time()
        boot_id, boot_now = boot_clock()
        marks = ",".join("?" * len(ids))
        with self._tx() as db:
            rows = db.execute(
                "UPDATE jobs SET lease_expires=?, lease_boot=?, lease_boot_id=?"
                f" WHERE state='claimed' AND lease_owner=? AND id IN ({marks}) RETURNING id",
                (now + lease_seconds, boot_now + lease_seconds, boot_id, owner, *ids),
            ).fetchall()
        renewed = {r[0] for r in rows}
        return [i for i in ids if i in renewed]

    def requeue_claimed(self, owner_prefix: str | None = None, *, keep: Iterable[str] = ()) -> int:
        """On start-up: every claimed job (of a dead process) goes back to queued.

        Jobs of the owners in ``keep`` (processes still working on them, e.g. a running
        ``queue drain``) stay claimed. A pending re-run (the job was replaced while
        claimed) is folded in: the requeued job runs once, with the replacement's payload,
        not twice.
        """
        now = time.time()
        sql = (
            "UPDATE jobs SET state='queued', lease_owner=NULL, lease_expires=NULL,"
            " next_attempt_at=MAX(next_attempt_at, COALESCE(rerun_at, 0)), rerun_at=NULL,"
            " updated_at=? WHERE state='claimed'"
        )
        args: list[Any] = [now]
        if owner_prefix is not None:
            sql += " AND lease_owner LIKE ?"
            args.append(owner_prefix + "%")
        kept = list(keep)
        if kept:
            sql += f" AND COALESCE(lease_owner, '') NOT IN ({','.join('?' * len(kept))})"
            args.extend(kept)
        with self._tx() as db:
            cur = db.execute(sql, args)
        return cur.rowcount

    def claim_owners(self) -> set[str]:
        """The lease owners of the claimed jobs."""
        with self._read() as db:
            rows = db.execute(
                "SELECT DISTINCT lease_owner FROM jobs WHERE state='claimed'"
            ).fetchall()
        return {r[0] for r in rows if r[0]}

    def rearm(self, job_ids: Iterable[int] | None = None, *, state: JobState | None = None) -> int:
        """Put dead (or ``state``) jobs back to queued with attempts reset."""
        now = time.time()
        with self._tx() as db:
            if job_ids is not None:
                ids = list(job_ids)
                marks = ",".join("?" * len(ids)) or "NULL"
                cur = db.execute(
                    "UPDATE jobs SET state='queued', attempts=0, next_attempt_at=0,"
                    f" updated_at=? WHERE state != 'claimed' AND id IN ({marks})",
                    (now, *ids),
                )
            else:
                cur = db.execute(
                    "UPDATE jobs SET state='queued', attempts=0, next_attempt_at=0,"
                    " updated_at=? WHERE state=?",
                    (now, str(state or JobState.DEAD)),
                )
        return cur.rowcount

    def purge(self, state: JobState) -> int:
        """Delete every job in ``state`` (done or dead); claimed jobs cannot be purged."""
        if state == JobState.CLAIMED:
            raise QueueError("claimed jobs are being worked on and cannot be purged")
        with self._tx() as db:
            cur = db.execute("DELETE FROM jobs WHERE state=?", (str(state),))
        return cur.rowcount

    def _set_state(
        self,
        job_ids: Iterable[int],
        state: JobState,
        error: str | None,
        only_if: str = "1=1",
    ) -> None:
        ids = list(job_ids)
        if not ids:
            return
        now = time.time()
        marks = ",".join("?" * len(ids))
        with self._tx() as db:
            db.execute(
                f"UPDATE jobs SET state=?, last_error=COALESCE(?, last_error), lease_owner=NULL,"
                f" lease_expires=NULL, updated_at=? WHERE id IN ({marks}) AND {only_if}",
                (str(state), error, now, *ids),
            )

    # ------------------------------------------------------------------ reading

    def get(self, job_id: int) -> Job | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def holder(self, job_id: int) -> str:
        """Where ``job_id`` is now, for a log line: ``claimed by OWNER``, ``queued``,
        ``deleted`` ..."""
        job = self.get(job_id)
        if job is None:
            return "deleted"
        return f"{job.state} by {job.lease_owner}" if job.lease_owner else str(job.state)

    def find(self, kind: str, dedup_key: str, destination: str = "") -> Job | None:
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE kind=? AND dedup_key=? AND destination=?",
                (kind, dedup_key, destination),
            ).fetchone()
        return Job.from_row(row) if row else None

    def select(
        self,
        *,
        state: JobState | None = None,
        kind: str | None = None,
        destination: str | None = None,
        limit: int = 1000,
    ) -> list[Job]:
        where, args = ["1=1"], []
        for col, val in (("state", state), ("kind", kind), ("destination", destination)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(str(val))
        with self._read() as db:
            rows = db.execute(
                f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> list[tuple[str, str, str, int]]:
        """``(kind, destination, state, count)`` for every non-empty group."""
        with self._read() as db:
            rows = db.execute(
                "SELECT kind, destination, state, COUNT(*) AS n FROM jobs"
                " GROUP BY kind, destination, state ORDER BY kind, destination, state"
            ).fetchall()
        return [(r["kind"], r["destination"], r["state"], r["n"]) for r in rows]

    def pending(self, kind: str | None = None) -> int:
        """Jobs not yet done or dead (queued, claimed, retry)."""
        sql = "SELECT COUNT(*) FROM jobs WHERE state IN ('queued','claimed','retry')"
        args: tuple[Any, ...] = ()
        if kind is not None:
            sql += " AND kind=?"
            args = (kind,)
        with self._read() as db:
            return int(db.execute(sql, args).fetchone()[0])

    # ------------------------------------------------------------------ status side tables

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` (ingested, delivered, quarantined, ...)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO counters(name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def counters(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute("SELECT name, value FROM counters ORDER BY name").fetchall()
        return {r["name"]: r["value"] for r in rows}

    def heartbeat(self, component: str, detail: str = "") -> None:
        """Record that ``component`` of this process is alive now."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO heartbeats(component, pid, seen_at, detail) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(component) DO UPDATE SET pid=excluded.pid,"
                " seen_at=excluded.seen_at, detail=excluded.detail",
                (component, os.getpid(), time.time(), detail),
            )

    def forget_heartbeats(self, pids: Iterable[int]) -> int:
        """Delete the heartbeats of these (ended) processes; how many rows went."""
        with self._tx() as db:
            return sum(
                db.execute("DELETE FROM heartbeats WHERE pid=?", (pid,)).rowcount for pid in pids
            )

    def heartbeats(self) -> dict[str, tuple[int, float, str]]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM heartbeats ORDER BY component").fetchall()
        return {r["component"]: (r["pid"], r["seen_at"], r["detail"] or "") for r in rows}
