"""From a complete inbox entry to queued deliveries: claim, convert, enqueue, finish.

Every input ends in exactly one visible state, and the file system plus the job store are
the whole record (a SIGKILL at any point loses nothing)::

    inbox/NAME ──rename──> work/ID/src/NAME            claimed (ID.claim.json absent)
       inbox/NAME.json ──rename──> work/ID/src/         (work/ID/sidecar.pending between)
       convert / validate ──> outgoing/ID/*.dcm         written atomically
       enqueue "deliver" jobs (one transaction) ──> work/ID/claim.json    queued
       every destination acknowledged ──> done/ID/ (source + DICOM), or deleted
       cannot be converted ──> quarantine/NAME + quarantine/NAME.error.txt

A claim without ``claim.json`` after a restart is processed again: conversion is
deterministic (same content, same context → same SOP Instance UID) and enqueueing is
idempotent per (SOP Instance UID, destination), so nothing is sent twice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import Config
from node.errors import ConfigError, ConversionError, NodeError
from node.fsutil import atomic_write, clean_temp_files, fsync_dir, is_resource_error
from node.ingest.convert import ConvertOptions, SeriesContext, convert_file, sidecar_for
from node.ingest.dicom_inputs import DicomInputError, dicom_files_in, is_dicom_file
from node.ingest.ignored import is_ignored
from node.ingest.metadata import is_sidecar_name
from node.ingest.names import fit_name
from node.ingest.watcher import input_files
from node.logs import fields
from node.queue import JobState, JobStore
from node.send.worker import enqueue_delivery

log = logging.getLogger(__name__)

CLAIM_FILE = "claim.json"
COPYING = ".copying"  # suffix of a cross-device claim's copy until it is complete
ERROR_SUFFIX = ".error.txt"  # the reason file beside a quarantined input
SRC = "src"
#: in a claim folder while its image is claimed and its sidecar is not yet
SIDECAR_PENDING = "sidecar.pending"


@dataclass(frozen=True)
class Claimed:
    """One converted (or validated) object of a claim, and where it is delivered from."""

    source: str
    output: str
    sop_instance_uid: str


class IngestPipeline:
    """Claims inbox entries and carries them to the queue, done/ or quarantine/."""

    def __init__(
        self,
        cfg: Config,
        store: JobStore,
        *,
        on_converted: Callable[[float], None] | None = None,
        on_enqueued: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ing = cfg.ingest
        self.store = store
        self.options = ConvertOptions.from_config(cfg)
        self.destinations = list(self.ing.destinations) or [d.name for d in cfg.destinations]
        self.pattern = re.compile(self.ing.filename_pattern) if self.ing.filename_pattern else None
        self.on_converted = on_converted
        self.on_enqueued = on_enqueued
        self._lock = threading.Lock()
        self._names: dict[str, set[str]] = {}
        #: claim.json of claims in work/, read once (not once per delivery of the claim)
        self._records: dict[str, dict[str, Any]] = {}
        # Held while a claim is processed: the watcher and the periodic sweep (which
        # retries deferred claims) never convert at the same time.
        self._processing = threading.Lock()
        #: claims whose processing failed for a reason of the machine (disk full, store
        #: unwritable ...): left in work/ without a record and processed again by sweep()
        self.deferred: set[str] = set()
        check_one_file_system(work_folders(cfg))

    # ------------------------------------------------------------------ claiming

    def claim(self, path: Path) -> Path | None:
        """Move ``path`` (and its sidecar) into a fresh work folder; None if it vanished.

        The claim is an atomic rename. An inbox on another file system (a network share)
        cannot be renamed from: the entry is then copied into the work folder under a
        temporary name, fsynced, renamed into place, and only then removed from the inbox.
        A crash in between leaves it in both places; it is claimed again and, its UIDs being
        deterministic, delivered as the same object.
        """
        claim_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        claim_dir = self.ing.work / claim_id
        (claim_dir / SRC).mkdir(parents=True)
        sidecar = None if path.is_dir() else sidecar_for(path)
        if sidecar is not None:
            # The image and its sidecar are two renames: a kill between them must not leave
            # a claim that converts the image without its patient data (and the sidecar
            # quarantined as an orphan). The marker makes the resumed claim fetch it.
            (claim_dir / SIDECAR_PENDING).touch()
        try:
            _move(path, claim_dir / SRC / path.name)
        except FileNotFoundError:
            shutil.rmtree(claim_dir, ignore_errors=True)
            return None
        except OSError as exc:  # nothing was taken: the input is still in the inbox
            shutil.rmtree(claim_dir, ignore_errors=True)
            log.error("cannot claim %s: %s (check permissions of the inbox)", path.name, exc)
            return None
        # From here the input is ours: an error with its sidecar must not undo the claim.
        if sidecar is not None:
            self._take_sidecar(path, sidecar, claim_dir)
        log.info("claimed %s", path.name, extra=fields(claim=claim_id))
        return claim_dir

    def _take_sidecar(self, image: Path, sidecar: Path, claim_dir: Path) -> None:
        """Bring the inbox's ``sidecar`` of ``image`` (claimed already) into the claim."""
        try:
            if _shared_sidecar(image, sidecar):
                # photo.json also belongs to photo.png still in the inbox (as in the CLI):
                # take a copy and leave it for the last image of that name.
                atomic_write(claim_dir / SRC / sidecar.name, sidecar.read_bytes())
            else:
                _move(sidecar, claim_dir / SRC / sidecar.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("sidecar %s stays in the inbox: %s", sidecar.name, exc)
        (claim_dir / SIDECAR_PENDING).unlink(missing_ok=True)

    def _fetch_pending_sidecar(self, claim_dir: Path) -> None:
        """A claim cut short between its image and its sidecar: take the sidecar now."""
        if not (claim_dir / SIDECAR_PENDING).exists():
            return
        for entry in (claim_dir / SRC).iterdir() if (claim_dir / SRC).exists() else []:
            if is_sidecar_name(entry.name) or is_ignored(entry.name) or entry.is_dir():
                continue
            if sidecar_for(entry) is None:  # not moved yet (else it is there already)
                left = sidecar_for(self.ing.inbox / entry.name)
                if left is not None:
                    log.info("taking %s left in the inbox by a claim cut short", left.name)
                    self._take_sidecar(self.ing.inbox / entry.name, left, claim_dir)
        (claim_dir / SIDECAR_PENDING).unlink(missing_ok=True)

    def take(self, path: Path) -> None:
        """The watcher's callback: claim, then process."""
        with self._processing:
            claim_dir = self.claim(path)
            if claim_dir is not None:
                self._process_or_defer(claim_dir)

    def _process_or_defer(self, claim_dir: Path) -> bool:
        """Process a claim; when that fails, keep it for :meth:`sweep` to process again.

        A claim interrupted half-way is in the state a crash leaves (no ``claim.json``), and
        processing it again is idempotent, so retrying it is always safe. Returns True when
        the claim was processed.
        """
        try:
            self.process(claim_dir)
        except Exception as exc:
            self.deferred.add(claim_dir.name)
            log.error(
                "claim %s interrupted, it stays in %s and is retried every few seconds: %s: %s"
                " (free space or fix permissions of the ingest folders and the state directory)",
                claim_dir.name,
                self.ing.work,
                type(exc).__name__,
                exc,
                exc_info=not is_resource_error(exc),
            )
            return False
        self.deferred.discard(claim_dir.name)
        return True

    # ------------------------------------------------------------------ processing

    def process(self, claim_dir: Path) -> None:
        """Convert or validate every input of a claim, enqueue deliveries, record the claim."""
        claim_id = claim_dir.name
        src_root = claim_dir / SRC
        self._fetch_pending_sidecar(claim_dir)
        entries = sorted(src_root.iterdir()) if src_root.exists() else []
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(COPYING):
                # A cross-device claim cut short: the original is still in the inbox and
                # will be claimed again; this partial copy is not an input.
                _remove(entry)
        self._set_aside_special_files(src_root)
        entries = sorted(src_root.iterdir()) if src_root.exists() else []
        inputs = [
            e
            for e in entries
            if not is_ignored(e.name) and not (e.is_file() and is_sidecar_name(e.name))
        ]
        if not inputs:
            for entry in entries:
                if entry.is_file() and is_sidecar_name(entry.name):
                    # A sidecar alone in a claim: the node stopped between quarantining the
                    # image and its sidecar. Finishing the empty claim would delete it.
                    self.quarantine(
                        entry,
                        "its image was quarantined (see the image's .error.txt) and the node "
                        "stopped before this sidecar followed it; drop both again once fixed",
                    )
        items: list[Claimed] = []
        # Output names already given in this claim: flattening "a/x.jpg" and "a_x.jpg" of
        # one folder gives the same name, and the second output replaced the first (which
        # was then never delivered). Inputs come in a fixed order, so a resumed claim gives
        # every input the same name again.
        self._names[claim_id] = set()
        for entry in inputs:
            if entry.is_dir():
                items += self._process_folder(claim_id, entry)
            else:
                item = self._process_one(
                    claim_id,
                    entry,
                    SeriesContext.for_group("file:" + _content_key(entry), self.options.uid_root),
                    1,
                )
                if item is not None:
                    items.append(item)
        self._names.pop(claim_id, None)
        record = {
            "claim": claim_id,
            "destinations": self.destinations,
            "items": [item.__dict__ for item in items],
            "created": time.time(),
        }
        with self._lock:
            # Jobs first (one commit for the whole claim), then the claim record: a crash in
            # between leaves no record, and the claim is processed again (idempotently).
            self._enqueue(record)
            atomic_write(claim_dir / CLAIM_FILE, json.dumps(record, indent=1).encode())
            self._records[claim_id] = record
        if items and self.destinations and self.on_enqueued is not None:
            self.on_enqueued(self.destinations)
        with self._lock:  # a delivery acknowledged before the record existed is caught here
            self.finish_if_delivered(claim_dir)

    def _set_aside_special_files(self, root: Path) -> None:
        """Quarantine what is not a regular file or folder (a FIFO, socket, device, or a
        broken symbolic link) before anything opens it: opening a FIFO blocks forever,
        reading a device never ends."""
        if not root.exists():
            return
        for folder, dirs, files in os.walk(root):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                path = Path(folder, name)
                try:
                    mode = path.stat().st_mode
                except OSError:
                    self.quarantine(path, "a broken symbolic link: its target does not exist")
                    continue
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    self.quarantine(
                        path,
                        "not a regular file (a FIFO, socket or device); save the image to a "
                        "file and drop that",
                    )

    def _enqueue(self, record: Mapping[str, Any], *, rearm: bool = True) -> None:
        """Delivery jobs for every object of a claim, in one transaction.

        Idempotent per (SOP Instance UID, destination): a job still on its way is left
        alone, and (with ``rearm``) a dropped file whose object was delivered (or gave up)
        before is sent again under the same SOP Instance UID: the user asked for it, e.g.
        because the PACS lost it. The PACS sees the same object, never a duplicate. Objects
        this very claim enqueued already (a claim resumed after a crash) are neither counted
        nor re-armed again.
        """
        claim = record["claim"]
        with self.store.transaction():
            fresh = [item for item in record["items"] if not self._enqueued_by(claim, item)]
            if rearm and fresh:
                self.store.bump("ingested", len(fresh))
            for item in fresh if record["destinations"] else []:
                enqueue_delivery(
                    self.store,
                    Path(item["output"]),
                    record["destinations"],
                    source="ingest",
                    extra={"claim": claim},
                    replace=rearm,
                )

    def _enqueued_by(self, claim: str, item: Mapping[str, Any]) -> bool:
        """True when every destination's job for ``item`` was enqueued by ``claim``."""
        if not self.destinations:
            return False
        for dest in self.destinations:
            job = self.store.find("deliver", item["sop_instance_uid"], dest)
            if job is None or job.payload.get("claim") != claim:
                return False
        return True

    def _process_folder(self, claim_id: str, folder: Path) -> list[Claimed]:
        """A dropped folder: a DICOM file-set/series as it is, or images as one series."""
        try:
            dicoms = dicom_files_in(folder)
        except DicomInputError as exc:
            self.quarantine(folder, str(exc))
            return []
        items: list[Claimed] = []
        if dicoms is not None:
            for path in dicoms:
                items += self._accept_dicom(path)
            return items
        inputs = input_files(folder)
        if not inputs:
            # Nothing to convert (only sidecars, partial or hidden files): the claim would
            # finish empty and its folder be removed without a trace.
            found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
            listing = ", ".join(found[:5]) + (
                f" and {len(found) - 5} more" if len(found) > 5 else ""
            )
            self.quarantine(
                folder,
                "the folder holds no image or DICOM file to convert"
                + (f" (only: {listing})" if found else " (it is empty)")
                + "; sidecars (*.json) need their images, *.part/*.tmp and hidden files are "
                "ignored",
            )
            return []
        series = SeriesContext.for_group(
            "dir:" + folder.name + ":" + _folder_key(folder), self.options.uid_root
        )
        for number, path in enumerate(inputs, start=1):
            item = self._process_one(claim_id, path, series, number)
            if item is not None:
                items.append(item)
        return items

    def _process_one(
        self, claim_id: str, path: Path, series: SeriesContext, number: int
    ) -> Claimed | None:
        try:
            if is_dicom_file(path):
                accepted = self._accept_dicom(path)
                return accepted[0] if accepted else None
            out_dir = self.ing.outgoing / claim_id
            rel = path.relative_to(self.ing.work / claim_id / SRC)
            output = out_dir / self._output_name(claim_id, rel.as_posix().replace("/", "_"))
            started = time.monotonic()
            result = convert_file(
                path,
                output,
                self.options,
                series,
                number,
                overrides=self._from_name(path),
                instance_key=rel.as_posix(),
            )
            if self.on_converted is not None:
                self.on_converted(time.monotonic() - started)
        except (ConversionError, DicomInputError) as exc:
            self.quarantine(path, str(exc))
            return None
        except OSError as exc:
            if is_resource_error(exc):
                raise  # not the input's fault: the whole claim is retried later
            self.quarantine(path, f"{type(exc).__name__}: {exc}")
            return None
        except (NodeError, ValueError) as exc:
            self.quarantine(path, f"{type(exc).__name__}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the claim stuck
            # Without this the claim would stay in work/ with no record, fail again at
            # every start, and hold back the other files of its folder: the input goes to
            # quarantine with the error instead, and the traceback to the log.
            log.exception("converting %s failed unexpectedly", path.name)
            self.quarantine(
                path,
                f"internal error while converting ({type(exc).__name__}: {exc}); this is a "
                "bug in dicom-node: please report it with this file",
            )
            return None
        log.info(
            "converted %s",
            path.name,
            extra=fields(claim=claim_id, sop=result.sop_instance_uid, out=result.output.name),
        )
        return Claimed(str(path), str(result.output), result.sop_instance_uid)

    def _output_name(self, claim_id: str, flat: str) -> str:
        """``flat.dcm``, or ``flat~2.dcm`` ... when an earlier input of the claim has it."""
        used = self._names.setdefault(claim_id, set())
        name = fit_name(flat, ".dcm")
        counter = 1
        while name in used:
            counter += 1
            name = fit_name(flat, f"~{counter}.dcm")
        used.add(name)
        return name

    def _accept_dicom(self, path: Path) -> list[Claimed]:
        from node.ingest.dicom_inputs import validate_dicom

        try:
            sop_uid = validate_dicom(path)
        except DicomInputError as exc:
            self.quarantine(path, str(exc))
            return []
        log.info("accepted DICOM %s as it is", path.name, extra=fields(sop=sop_uid))
        return [Claimed(str(path), str(path), sop_uid)]

    def _from_name(self, path: Path) -> Mapping[str, str]:
        """Values from the configured file-name pattern (named groups = DICOM keywords)."""
        if self.pattern is None:
            return {}
        # NFC: macOS writes names decomposed (u + U+0308 for ü): PACS match Müller, not
        # that, and the decomposed name takes more of the VR's bytes.
        name = unicodedata.normalize("NFC", path.name)
        match = self.pattern.fullmatch(name) or self.pattern.search(name)
        if match is None:
            return {}
        return {k: v for k, v in match.groupdict().items() if v is not None}

    # ------------------------------------------------------------------ endings

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move ``path`` (and its sidecar) to quarantine/ with ``NAME.error.txt``."""
        self.ing.quarantine.mkdir(parents=True, exist_ok=True)
        # NAME.error.txt must fit the file system too (a dropped name may be 255 bytes).
        name = fit_name(path.name, ERROR_SUFFIX)[: -len(ERROR_SUFFIX)]
        target = self.ing.quarantine / name
        if target.exists() or (self.ing.quarantine / f"{name}{ERROR_SUFFIX}").exists():
            unique = f"{Path(name).stem}-{uuid.uuid4().hex[:6]}{Path(name).suffix}"
            target = self.ing.quarantine / fit_name(unique, ERROR_SUFFIX)[: -len(ERROR_SUFFIX)]
        sidecar = None if path.is_dir() else sidecar_for(path)
        # The reason names the claimed copy (work/CLAIM/src/...): the user knows the inbox.
        src_root = self._claimed_root(path)
        shown = path.name
        if src_root is not None:
            reason = reason.replace(f"{src_root}{os.sep}", "")
            with contextlib.suppress(ValueError):
                shown = path.relative_to(src_root).as_posix()
        note = (
            f"file: {shown}\nreason: {reason}\n"
            f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
            "fix the cause and drop the file into the inbox again\n"
        )
        # The name as the file system has it (bytes that are not UTF-8 stay as they are).
        reason_bytes = note.encode("utf-8", "surrogateescape")
        atomic_write(target.with_name(target.name + ERROR_SUFFIX), reason_bytes)
        path.rename(target)
        if sidecar is not None:
            with contextlib.suppress(OSError):
                sidecar.rename(target.with_name(target.name + ".json"))
        self.store.bump("quarantined")
        log.warning("quarantined %s: %s", path.name, reason, extra=fields(to=str(target)))
        return target

    def _claimed_root(self, path: Path) -> Path | None:
        """``work/CLAIM/src`` when ``path`` lies in a claim, else None."""
        try:
            claim = path.relative_to(self.ing.work).parts[0]
        except (ValueError, IndexError):
            return None
        return self.ing.work / claim / SRC

    def orphan_sidecar(self, path: Path) -> None:
        """The watcher's callback for a sidecar whose image is not in the inbox."""
        self.quarantine(
            path,
            "sidecar without its image: the image was taken before this sidecar arrived, or "
            "never came. Copy the sidecar before its image (or drop both in a folder)",
        )

    def finish_if_delivered(self, claim_dir: Path, *, requeue_missing: bool = False) -> bool:
        """If every object of the claim is acknowledged by every destination, finish it.

        With ``requeue_missing``, the delivery jobs of an unfinished claim that are gone
        from the store (``dicom-node queue purge --state done`` run while some of its
        objects were still on their way) are queued again: without them the claim could
        never finish and would sit in ``work/`` until the next start-up, which re-queues
        them the same way.
        """
        record = self._records.get(claim_dir.name)
        if record is None:
            try:
                record = json.loads((claim_dir / CLAIM_FILE).read_bytes())
            except FileNotFoundError:
                return False
            self._records[claim_dir.name] = record
        complete, missing = True, 0
        items = record["items"]
        # Called after each delivery: objects go out in claim order, so the last ones are
        # the ones still on their way, and looking from the end stops at once (from the
        # start, a folder of n images cost n²/2 look-ups).
        for item in items if requeue_missing else reversed(items):
            for dest in record["destinations"]:
                job = self.store.find("deliver", item["sop_instance_uid"], dest)
                if job is not None and job.state == JobState.DONE:
                    continue
                if not requeue_missing:
                    return False  # called after each delivery of the claim: stop here
                complete = False
                missing += job is None
        if complete:
            self._finish(claim_dir, record)
            return True
        if missing:
            log.warning(
                "%d delivery job(s) of an unfinished claim are gone from the queue (purged?): "
                "queued again so that the claim can finish; the PACS receives those objects "
                "again under the same UIDs",
                missing,
                extra=fields(claim=claim_dir.name),
            )
            self._enqueue(record, rearm=False)
            if self.on_enqueued is not None:
                self.on_enqueued(list(record["destinations"]))
        return False

    def _finish(self, claim_dir: Path, record: Mapping[str, Any]) -> None:
        claim_id = claim_dir.name
        self._records.pop(claim_id, None)
        outgoing = self.ing.outgoing / claim_id
        if not record["items"]:  # everything was quarantined: nothing left to keep
            shutil.rmtree(outgoing, ignore_errors=True)
            shutil.rmtree(claim_dir, ignore_errors=True)
            return
        if self.ing.after_delivery == "delete":
            shutil.rmtree(outgoing, ignore_errors=True)
            shutil.rmtree(claim_dir, ignore_errors=True)
        else:
            done = self.ing.done / claim_id
            done.mkdir(parents=True, exist_ok=True)
            if outgoing.exists():
                outgoing.rename(done / "dicom")
            src = claim_dir / SRC
            if src.exists() and any(src.iterdir()):
                src.rename(done / "source")
            (claim_dir / CLAIM_FILE).rename(done / CLAIM_FILE)
            shutil.rmtree(claim_dir, ignore_errors=True)
        log.info(
            "delivered everywhere, claim finished",
            extra=fields(
                claim=claim_id, objects=len(record["items"]), mode=self.ing.after_delivery
            ),
        )

    def on_delivered(self, payload: Mapping[str, Any]) -> None:
        """Delivery worker callback: finish the claim this object came from, if complete."""
        claim_id = payload.get("claim")
        if not isinstance(claim_id, str) or "/" in claim_id or claim_id.startswith("."):
            return
        with self._lock:
            claim_dir = self.ing.work / claim_id
            if claim_dir.exists():
                self.finish_if_delivered(claim_dir)

    def recover(self) -> None:
        """At start-up: redo claims cut short by a crash, finish delivered ones."""
        for folder in (self.ing.work, self.ing.outgoing, self.ing.quarantine, self.ing.done):
            removed = clean_temp_files(folder)  # writes a crash cut short, never visible
            if removed:
                log.info("removed %d temporary files left in %s", removed, folder)
        if not self.ing.work.exists():
            return
        for claim_dir in sorted(self.ing.work.iterdir()):
            if not claim_dir.is_dir():
                continue
            if (claim_dir / CLAIM_FILE).exists():
                # Jobs purged or lost meanwhile are queued again (enqueueing is idempotent).
                record = json.loads((claim_dir / CLAIM_FILE).read_bytes())
                self._enqueue(record, rearm=False)
                self.finish_if_delivered(claim_dir)
            else:
                # Conversion is deterministic and its writes atomic: outputs already there
                # are simply written again, identical.
                log.info("resuming interrupted claim", extra=fields(claim=claim_dir.name))
                with self._processing:
                    self._process_or_defer(claim_dir)

    def sweep(self) -> None:
        """Process deferred claims again, and finish every claim whose deliveries are all
        done (periodic safety net)."""
        if not self.ing.work.exists():
            return
        with self._processing:
            deferred = sorted(self.deferred)
        for claim_id in deferred:
            claim_dir = self.ing.work / claim_id
            with self._processing:
                if not claim_dir.is_dir() or (claim_dir / CLAIM_FILE).exists():
                    self.deferred.discard(claim_id)
                    continue
                if self._process_or_defer(claim_dir):
                    log.info("deferred claim processed", extra=fields(claim=claim_id))
        for claim_dir in sorted(self.ing.work.iterdir()):
            if (claim_dir / CLAIM_FILE).exists():
                with self._lock:
                    self.finish_if_delivered(claim_dir, requeue_missing=True)


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _content_key(path: Path) -> str:
    """A key for a single dropped file: its name and content hash (re-drop → same UIDs)."""
    return f"{path.name}:{_digest(path)}"


def _folder_key(folder: Path) -> str:
    """A key for a dropped folder: the names and content hashes of its inputs. The same
    folder dropped again gets the same Study/Series UIDs; another folder of the same name
    never does, even when its files have the same names and sizes (a scanner's
    uncompressed pages are all one size)."""
    parts = [f"{p.relative_to(folder).as_posix()}:{_digest(p)}" for p in input_files(folder)]
    return "|".join(parts)


def _shared_sidecar(image: Path, sidecar: Path) -> bool:
    """True if ``sidecar`` is a ``NAME.json`` that another image in the inbox (``NAME.png``
    beside ``NAME.jpg``) will look up too."""
    if sidecar.name not in (image.stem + ".json", image.stem + ".JSON"):
        return False  # NAME.jpg.json belongs to NAME.jpg alone
    try:
        entries = list(os.scandir(image.parent))
    except OSError:
        return False
    return any(
        e.name != image.name
        and e.is_file()
        and Path(e.name).stem == image.stem
        and not is_sidecar_name(e.name)
        and not is_ignored(e.name)
        for e in entries
    )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; across file systems, copy (durably) then remove."""
    try:
        src.rename(dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(fit_name(f".{dst.name}", COPYING))
    if src.is_dir():
        shutil.copytree(src, tmp)
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
    else:
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    tmp.rename(dst)
    fsync_dir(dst.parent)
    try:  # the copy is complete and durable: the claim stands whatever happens now
        if src.is_dir():
            shutil.rmtree(src)
        else:
            src.unlink()
    except OSError as exc:
        log.error("claimed %s by copy but cannot remove it from the inbox: %s", src, exc)


def check_one_file_system(folders: Mapping[str, Path], *, create: bool = True) -> None:
    """work/done/quarantine/outgoing must share a file system: moves between them are
    atomic renames. (The inbox may be elsewhere, e.g. a share: claims then copy.)

    Without ``create`` (``check-config``), a folder that does not exist yet is judged by
    its nearest existing parent.
    """
    devices: dict[int, str] = {}
    for key, folder in folders.items():
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        devices.setdefault(existing.stat().st_dev, key)
    if len(devices) > 1:
        keys = ", ".join(f"{k} = {folders[k]}" for k in folders)
        raise ConfigError(
            f"{keys}: these folders are on different file systems; put them on one (moves "
            "between them must be atomic renames). Only ingest.inbox may live elsewhere"
        )


def work_folders(cfg: Config) -> dict[str, Path]:
    """The ingest folders that must share one file system, by config key."""
    ing = cfg.ingest
    return {
        "ingest.work": ing.work,
        "ingest.done": ing.done,
        "ingest.quarantine": ing.quarantine,
        "ingest.outgoing": ing.outgoing,
    }
