"""``dicom-node send`` and ``dicom-node echo``: the storescu/echoscu of the node.

``send`` without ``--queue`` sends now (one association per batch), prints one line per
file and a summary, and exits 0 only when every file was delivered. With ``--queue`` it
records the files in the node's job store (``node.state_dir``) for the running node's
delivery workers and returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.config import Config, Destination, check_ae, check_pdu
from node.errors import ConfigError, SendError
from node.send import duplicates
from node.send.contexts import DicomDirFile, NotDicomFile, SendItem, read_header
from node.send.scu import StoreSCU
from node.send.status import Outcome
from node.service_commands import load_from_args

if TYPE_CHECKING:
    from node.queue.store import JobStore

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
BATCH = 1000
ENQUEUE_CHUNK = 500


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "send",
        parents=[common],
        help="send DICOM files to a PACS (C-STORE), now or through the queue",
        description="Send DICOM files (directories recursively) with C-STORE. "
        "Exit status 0 only if every DICOM file was delivered (a DICOMDIR, and files "
        "met in a directory that are not DICOM at all, such as a CD's viewer, are listed "
        "as ignored).",
    )
    _target_options(p)
    p.add_argument(
        "--queue",
        action="store_true",
        help="enqueue for the node's delivery workers (needs a configured --dest NAME) "
        "instead of sending now (default: send now)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="with --queue: a file whose SOP Instance UID is still queued (e.g. waiting for a "
        "PACS that is down) for another file replaces that file in its job (default: refused)",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or directories")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser(
        "echo",
        parents=[common],
        help="C-ECHO a PACS: exit 0 if it answers",
        description="Verify a DICOM peer with C-ECHO.",
    )
    _target_options(p)
    p.add_argument("target", nargs="?", metavar="HOST:PORT", help="peer address (or --dest)")
    p.set_defaults(func=cmd_echo)


def _target_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("peer")
    g.add_argument(
        "--dest",
        metavar="NAME|HOST:PORT",
        help="a destination from the config, or HOST:PORT (default: the only configured one)",
    )
    g.add_argument("--aet", metavar="AE", help="calling AE title (default: node.ae_title)")
    g.add_argument("--aec", metavar="AE", help="called AE title (default: the destination's)")
    g.add_argument(
        "--max-pdu",
        type=int,
        metavar="BYTES",
        help="maximum PDU size we receive (default: the destination's max_pdu, 262144)",
    )


def _host_port(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (an IPv6 address as ``::1:104`` or ``[::1]:104``), else None."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return host, int(port)
    return None


def _bad_port(text: str) -> str | None:
    """Why ``text`` (HOST:PORT in form) has no usable port, or None."""
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.lstrip("-").isdigit()):
        return None
    return f"{text}: port {port} is not a TCP port (1-65535)"


def resolve_destination(cfg: Config, args: argparse.Namespace, target: str | None) -> Destination:
    """The destination named by --dest / HOST:PORT, with --aet/--aec/--max-pdu applied."""
    spec = args.dest or target
    if spec is None:
        if len(cfg.destinations) == 1:
            dest = cfg.destinations[0]
        else:
            raise ConfigError(
                "no peer given: use --dest NAME (a [[destinations]] entry) or --dest HOST:PORT"
            )
    elif any(d.name == spec for d in cfg.destinations):
        dest = cfg.destination(spec)
    elif (hp := _host_port(spec)) is not None:
        dest = Destination(name=spec, host=hp[0], port=hp[1])
    elif (why := _bad_port(spec)) is not None:
        raise ConfigError(f"{'--dest ' if args.dest else ''}{why}")
    else:
        dest = cfg.destination(spec)  # raises, listing the known names
    changes: dict[str, Any] = {}
    if args.aec is not None:
        changes["called_ae"] = check_ae(args.aec, "--aec")
    if args.aet is not None:
        changes["calling_ae"] = check_ae(args.aet, "--aet")
    if args.max_pdu is not None:
        changes["max_pdu"] = check_pdu(args.max_pdu, "--max-pdu")
    return dataclasses.replace(dest, **changes)


def iter_files(paths: Sequence[str]) -> Iterator[Path]:
    """Files named, and every file under the directories named (sorted, hidden ones skipped)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        elif path.is_file():
            yield path
        else:
            raise SendError(f"{path}: no such file or directory")


def _foreign(path: Path, exc: SendError, named: set[Path]) -> bool:
    """``path``, met while walking a folder, is no DICOM file at all (a CD's viewer, its
    AUTORUN.INF): it is listed and passed over, not a failure, as ``dcmsend --no-halt``
    does. Named on the command line, or empty (a copy that broke off), it is a failure."""
    if not isinstance(exc, NotDicomFile) or path in named:
        return False
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


# --------------------------------------------------------------------------- send


def cmd_send(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    target = None
    paths = list(args.paths)
    if (
        args.dest is None
        and paths
        and (_host_port(paths[0]) or _bad_port(paths[0]))
        and not Path(paths[0]).exists()
    ):
        target = paths.pop(0)  # `dicom-node send HOST:PORT PATH...`
    if not paths:
        raise SendError("nothing to send: give at least one file or directory")
    dest = resolve_destination(cfg, args, target)
    if args.queue:
        return _enqueue(cfg, dest, paths, replace=args.replace)
    if args.replace:
        raise ConfigError(
            "--replace works with --queue (it changes the file of a queued job); "
            "without --queue the files are sent now, each one once"
        )
    return _send_now(cfg, dest, paths)


def _enqueue(cfg: Config, dest: Destination, paths: Sequence[str], *, replace: bool) -> int:
    if not any(d.name == dest.name for d in cfg.destinations):
        raise ConfigError(
            f"--queue needs a destination configured in [[destinations]] (got {dest.name!r}): "
            "the node's workers deliver by destination name"
        )
    from node.queue.store import JobStore  # SQLite: only when queueing

    counts = {"queued": 0, "pending": 0, "replaced": 0, "bad": 0, "ignored": 0, "foreign": 0}
    files = iter_files(paths)
    named = {Path(raw) for raw in paths}
    with JobStore(cfg.node.state_dir) as store:
        while True:
            n = 0
            with store.transaction():  # one commit (one fsync) per ENQUEUE_CHUNK files
                for path in files:
                    counts[_enqueue_one(store, dest.name, path, named, replace)] += 1
                    n += 1
                    if n >= ENQUEUE_CHUNK:
                        break
            if n < ENQUEUE_CHUNK:
                break
    print(
        f"queued {counts['queued']} file(s) for {dest.name} in {cfg.node.state_dir}; "
        f"{counts['pending']} already queued, {counts['bad']} skipped"
        + (
            f", {counts['replaced']} replaced the file of a queued job"
            if counts["replaced"]
            else ""
        )
        + (f", {counts['ignored']} DICOMDIR ignored" if counts["ignored"] else "")
        + (f", {counts['foreign']} non-DICOM file(s) ignored" if counts["foreign"] else "")
    )
    bad = counts["bad"]
    return EXIT_OK if bad == 0 else EXIT_FAILED


def _enqueue_one(
    store: JobStore, destination: str, path: Path, named: set[Path], replace: bool
) -> str:
    """Queue one file for ``send --queue``: "queued", "pending" (already on its way),
    "replaced", "bad", "ignored" (a DICOMDIR), "foreign" (no DICOM file, met in a folder:
    see ``_foreign``).

    A job of the same SOP Instance UID that is still pending is left alone (idempotent)
    when it sends the same content; for another file it is refused, or with ``replace``
    switched to this file (a corrected file while the PACS is down), attempts reset. One
    that was delivered or gave up is re-armed with this path, since the user asked for
    this file to be sent (e.g. the PACS lost it, or the file was fixed).
    """
    from node.ingest.dicom_inputs import DicomInputError, check_complete
    from node.send.worker import KIND, enqueue_delivery

    try:
        uid = read_header(path)["sop_instance_uid"]
        # A truncated file makes the peer abort, which is a retry: it would be retried for
        # queue.max_age_seconds. Refuse it here, where the user can still fix it.
        check_complete(path)
    except DicomDirFile:
        print(f"ignored  {path}: a DICOMDIR (the index of a medium), not an object")
        return "ignored"
    except (SendError, DicomInputError) as exc:
        if isinstance(exc, SendError) and _foreign(path, exc, named):
            print(f"ignored  {path}: not a DICOM file")
            return "foreign"
        print(f"skipped  {path}: {exc}")
        return "bad"
    old = store.find(KIND, uid, destination)
    from node.queue.store import PENDING_STATES  # loaded by _enqueue already

    if old is not None and old.state in PENDING_STATES:
        queued = Path(old.payload.get("path", ""))
        if duplicates.same_file(path, queued):
            print(f"already queued  {path}: job {old.id} is {old.state}")
            return "pending"
        why = duplicates.difference(queued, path)
        if why is None:
            print(
                f"already queued  {path}: the same content as {queued}, queued under "
                f"(0008,0018) SOPInstanceUID {uid} as job {old.id} ({old.state})"
            )
            return "pending"
        how = f"queued for {destination} as job {old.id} ({old.state})"
        if not replace:
            text = duplicates.conflict(uid, queued, how, why, queued_hint=True)
            print(f"skipped  {path}: {text}")
            return "bad"
        enqueue_delivery(store, path, [destination], source="cli", replace=True)
        if old.state == "claimed":  # a worker is sending the old file: this one goes next
            print(f"replaced  {path}: job {old.id} is sending {queued} now, then this file")
        else:
            print(f"replaced  {path}: job {old.id} ({old.state}) sends this file, not {queued}")
        return "replaced"
    enqueue_delivery(store, path, [destination], source="cli", replace=True)
    if old is not None:
        print(f"re-queued  {path}: job {old.id} was {old.state}")
    return "queued"


def _send_now(cfg: Config, dest: Destination, paths: Sequence[str]) -> int:
    scu = StoreSCU(dest, calling_ae=cfg.node.ae_title)
    counts = {"delivered": 0, "warning": 0, "retry": 0, "dead": 0, "skipped": 0}
    sizes = 0
    started = time.perf_counter()

    def report(item: SendItem, outcome: Outcome) -> None:
        nonlocal sizes
        if outcome.delivered:
            counts["warning" if outcome.warning else "delivered"] += 1
            sizes += item.path.stat().st_size
        else:
            counts[str(outcome.verdict)] += 1
        # One write per line (print writes the text and the newline apart, two system calls
        # per file on an unbuffered stdout).
        sys.stdout.write(f"{outcome.describe():<10} {item.path}\n")
        reported.add(item.key)

    files = iter_files(paths)
    named = {Path(raw) for raw in paths}
    total = ignored = foreign = repeated = 0
    seen: dict[str, Path] = {}  # SOP Instance UID -> the file sent under it in this run
    while True:
        batch: list[SendItem] = []
        for path in files:
            try:
                header = read_header(path)
            except DicomDirFile:  # a CD's index: neither sent nor a failure (as dcmsend +rd)
                ignored += 1
                print(f"ignored    {path}: a DICOMDIR (the index of a medium), not an object")
                continue
            except SendError as exc:
                if _foreign(path, exc, named):
                    foreign += 1
                    print(f"ignored    {path}: not a DICOM file")
                    continue
                counts["skipped"] += 1
                print(f"skipped    {path}: {exc}")
                continue
            uid = header["sop_instance_uid"]
            first = seen.setdefault(uid, path)
            if first is not path:
                why = duplicates.difference(first, path)
                if why is None:  # the same object twice: sent once, as --queue queues it once
                    repeated += 1
                    print(
                        f"ignored    {path}: the same content as {first}, sent under "
                        f"(0008,0018) SOPInstanceUID {uid} in this run"
                    )
                else:
                    counts["skipped"] += 1
                    text = duplicates.conflict(uid, first, "sent in this run", why)
                    print(f"skipped    {path}: {text}")
                continue
            batch.append(SendItem(path=path, key=total + len(batch), **header))
            if len(batch) >= BATCH:
                break
        if not batch:
            break
        total += len(batch)
        reported: set[int] = set()
        scu.send(batch, report)
        for item in batch:
            if item.key not in reported:
                counts["retry"] += 1
                print(f"not sent   {item.path}: the association ended before its turn")
    sys.stdout.flush()
    elapsed = time.perf_counter() - started
    ok = counts["delivered"] + counts["warning"]
    print(
        f"{ok} of {total + counts['skipped']} delivered to {scu.where} "
        f"({counts['warning']} with warnings), {counts['retry']} failed transiently, "
        f"{counts['dead']} failed permanently, {counts['skipped']} skipped"
        f"{f', {ignored} DICOMDIR ignored' if ignored else ''}"
        f"{f', {foreign} non-DICOM file(s) ignored' if foreign else ''}"
        f"{f', {repeated} identical copies ignored' if repeated else ''}; "
        f"{elapsed:.3f} s, {ok / elapsed if elapsed else 0:.1f} files/s, "
        f"{sizes / elapsed / 1e6 if elapsed else 0:.1f} MB/s"
    )
    return EXIT_OK if ok == total + counts["skipped"] and total > 0 else EXIT_FAILED


# --------------------------------------------------------------------------- echo


def cmd_echo(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    dest = resolve_destination(cfg, args, args.target)
    scu = StoreSCU(dest, calling_ae=cfg.node.ae_title)
    started = time.perf_counter()
    outcome = scu.echo()
    ms = 1000 * (time.perf_counter() - started)
    if outcome.delivered:
        print(f"C-ECHO {scu.where}: success ({ms:.0f} ms)")
        return EXIT_OK
    print(f"C-ECHO {scu.where}: FAILED: {outcome.reason}", file=sys.stderr)
    return EXIT_FAILED
