"""The durable record of received instances, and the jobs each one starts.

Table ``received_instances`` (one row per SOP Instance UID, in the job store's SQLite
database) is what storage commitment answers from, and ``received_series`` lets the
``study_complete`` payload list a study's series without scanning the archive.

:meth:`Ledger.record` writes, in ONE transaction (one fsync): the instance row, the series
row, the ``export_instance`` job, the re-armed ``study_complete`` job and the ``received``
counter. The C-STORE handler answers success only after that commit, so a success the
modality sees is durable: file fsynced and renamed, record and jobs committed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node.config import ForwardRule
from node.queue.store import JobStore
from node.receive import studies

log = logging.getLogger(__name__)

EXPORT_KIND = "export_instance"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS received_instances (
        sop_instance_uid TEXT PRIMARY KEY,
        sop_class_uid    TEXT NOT NULL,
        study_uid        TEXT NOT NULL,
        series_uid       TEXT NOT NULL,
        modality         TEXT NOT NULL DEFAULT '',
        calling_ae       TEXT NOT NULL DEFAULT '',
        transfer_syntax  TEXT NOT NULL DEFAULT '',
        path             TEXT NOT NULL,
        size             INTEGER NOT NULL,
        flags            TEXT NOT NULL DEFAULT '[]',
        stored_at        REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS received_instances_study ON received_instances(study_uid)",
    """CREATE TABLE IF NOT EXISTS received_series (
        study_uid  TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        modality   TEXT NOT NULL DEFAULT '',
        calling_ae TEXT NOT NULL DEFAULT '',
        instances  INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (study_uid, series_uid)
    )""",
)


@dataclass(frozen=True)
class Instance:
    """One stored object, as recorded."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    path: Path
    size: int
    modality: str = ""
    calling_ae: str = ""
    transfer_syntax: str = ""
    flags: list[str] = field(default_factory=list)


class Ledger:
    """Records instances and enqueues their follow-up jobs, atomically."""

    def __init__(
        self,
        store: JobStore,
        archive_root: Path,
        *,
        quiet_seconds: float,
        forward: Sequence[ForwardRule] = (),
    ) -> None:
        self.store = store
        self.archive_root = Path(archive_root)
        self.quiet_seconds = quiet_seconds
        self.forward = list(forward)
        with store.transaction() as db:
            for stmt in _SCHEMA:
                db.execute(stmt)

    def known(self, sop_instance_uid: str) -> bool:
        """True if an instance of that UID has been recorded."""
        return self.lookup(sop_instance_uid) is not None

    def lookup(self, sop_instance_uid: str) -> tuple[str, Path] | None:
        """``(sop_class_uid, path)`` of a recorded instance, or None."""
        with self.store.reading() as db:
            row = db.execute(
                "SELECT sop_class_uid, path FROM received_instances WHERE sop_instance_uid=?",
                (sop_instance_uid,),
            ).fetchone()
        return (row[0], Path(row[1])) if row else None

    def record(self, inst: Instance) -> None:
        """Record ``inst`` and enqueue its jobs in one committed transaction."""
        now = time.time()
        store = self.store
        with store.transaction() as db:
            before = db.execute(
                "SELECT study_uid, series_uid FROM received_instances WHERE sop_instance_uid=?",
                (inst.sop_instance_uid,),
            ).fetchone()
            # New to this series: never recorded, or recorded under another study/series
            # (a corrected Study/Series Instance UID, stored with duplicates = "overwrite").
            new = before is None or tuple(before) != (inst.study_uid, inst.series_uid)
            if before is not None and new:
                # The instance left its old series: one instance fewer there.
                db.execute(
                    "UPDATE received_series SET instances=MAX(instances-1, 0)"
                    " WHERE study_uid=? AND series_uid=?",
                    tuple(before),
                )
            db.execute(
                "INSERT INTO received_instances(sop_instance_uid, sop_class_uid, study_uid,"
                " series_uid, modality, calling_ae, transfer_syntax, path, size, flags,"
                " stored_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(sop_instance_uid) DO UPDATE SET sop_class_uid=excluded.sop_class_uid,"
                " study_uid=excluded.study_uid, series_uid=excluded.series_uid,"
                " modality=excluded.modality, calling_ae=excluded.calling_ae,"
                " transfer_syntax=excluded.transfer_syntax, path=excluded.path,"
                " size=excluded.size, flags=excluded.flags, stored_at=excluded.stored_at",
                (
                    inst.sop_instance_uid,
                    inst.sop_class_uid,
                    inst.study_uid,
                    inst.series_uid,
                    inst.modality,
                    inst.calling_ae,
                    inst.transfer_syntax,
                    str(inst.path),
                    inst.size,
                    json.dumps(inst.flags),
                    now,
                ),
            )
            db.execute(
                "INSERT INTO received_series(study_uid, series_uid, modality, calling_ae,"
                " instances) VALUES (?,?,?,?,?) ON CONFLICT(study_uid, series_uid) DO UPDATE"
                " SET instances=instances+excluded.instances, calling_ae=excluded.calling_ae",
                (inst.study_uid, inst.series_uid, inst.modality, inst.calling_ae, int(new)),
            )
            store.enqueue(
                EXPORT_KIND,
                {
                    "path": str(inst.path),
                    "study_uid": inst.study_uid,
                    "series_uid": inst.series_uid,
                    "sop_instance_uid": inst.sop_instance_uid,
                    "sop_class_uid": inst.sop_class_uid,
                    "calling_ae": inst.calling_ae,
                    "flags": list(inst.flags),
                },
                dedup_key=inst.sop_instance_uid,
                replace=True,
            )
            rows = db.execute(
                "SELECT series_uid, modality, calling_ae, instances FROM received_series"
                " WHERE study_uid=? ORDER BY rowid",
                (inst.study_uid,),
            ).fetchall()
            series = [r[0] for r in rows]
            modalities = sorted({r[1] for r in rows if r[1]})
            aes = sorted({r[2] for r in rows if r[2]})
            store.enqueue(
                studies.KIND,
                studies.study_payload(
                    study_uid=inst.study_uid,
                    archive_dir=self.archive_root / inst.study_uid,
                    calling_ae=inst.calling_ae,
                    calling_aes=aes,
                    series=series,
                    modalities=modalities,
                    # Per-series counts of distinct instances: no scan of the study's rows.
                    instances=sum(int(r[3]) for r in rows),
                    rules=self.forward,
                ),
                dedup_key=inst.study_uid,
                replace=True,
                not_before=now + self.quiet_seconds,
            )
            store.bump("received")
