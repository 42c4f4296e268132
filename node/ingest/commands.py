"""``dicom-node convert``: images -> DICOM files, one process, many files (like img2dcm -k)."""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from node.config import Config
from node.errors import ConfigError, ConversionError, NodeError
from node.fsutil import Data
from node.ingest import forkpool, metadata
from node.ingest.batchwrite import GroupCommitWriter
from node.ingest.convert import ConvertOptions, SeriesContext, convert_file
from node.ingest.ignored import is_ignored
from node.ingest.iods import SOP_KINDS
from node.ingest.names import fit_name
from node.service_commands import load_from_args

log = logging.getLogger(__name__)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "convert",
        parents=[common],
        help="convert JPEG/PNG/BMP/TIFF images into DICOM files (SC, MF SC, VL Photographic)",
        description=(
            "Convert images into DICOM. Baseline/extended JPEG is encapsulated unchanged "
            "(no decode); other inputs become native pixels. Metadata precedence, lowest "
            "first: built-in defaults, [ingest.defaults], template (--dataset-from/"
            "--study-from/--series-from), sidecar NAME.json or NAME.jpg.json, EXIF, --key."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or directories")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="output directory (created), or a .dcm file name for a single input",
    )
    g = p.add_argument_group("object")
    g.add_argument(
        "--sop-class",
        choices=SOP_KINDS,
        default=None,
        help="sc: Secondary Capture; nsc: multi-frame SC family (picked from the pixels); "
        "vlp: VL Photographic, Modality XC (default: ingest.sop_class, sc)",
    )
    g.add_argument(
        "--conversion-type",
        default=None,
        metavar="CODE",
        help="(0008,0064) ConversionType for SC: DI camera, WSD workstation, SD scanned "
        "document, SI scanned image, DV video, DF film, SYN synthetic (default: DI)",
    )
    g.add_argument(
        "--keep-appn",
        action="store_true",
        default=None,
        help="keep every JPEG APPn/COM segment byte for byte (default: remove EXIF, XMP, "
        "COM and other metadata segments; JFIF, ICC and Adobe stay)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="refuse objects without PatientID, PatientName, StudyDate and a laterality "
        "statement (default: off)",
    )
    g.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse images with more pixels (default: ingest.max_pixels, 200000000)",
    )
    m = p.add_argument_group("metadata")
    m.add_argument(
        "-k",
        "--key",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an attribute, keyword or (gggg,eeee); repeatable; applied last",
    )
    t = m.add_mutually_exclusive_group()
    t.add_argument("--dataset-from", metavar="F", help="take all attributes from DICOM file F")
    t.add_argument("--study-from", metavar="F", help="take patient and study attributes from F")
    t.add_argument(
        "--series-from", metavar="F", help="take patient, study and series attributes from F"
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="worker processes converting in parallel (default: the CPUs it may use); "
        "1 converts in this process with --threads threads",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=4,
        metavar="N",
        help="with --processes 1: files converted concurrently in this process (default: 4)",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not fsync each output (faster; a power loss may lose recent files)",
    )
    p.set_defaults(func=cmd_convert)


def check_args(args: argparse.Namespace) -> None:
    """Usage errors of ``convert``'s own options, before any file is read."""
    for option, value in (
        ("--max-pixels", args.max_pixels),
        ("--processes", args.processes),
        ("--threads", args.threads),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{option}: {value} must be at least 1")
    if args.conversion_type is not None and not args.conversion_type.strip():
        raise ConfigError("--conversion-type: empty; give a code such as DI, WSD, SD or SI")


def options_from_args(args: argparse.Namespace, cfg: Config) -> ConvertOptions:
    check_args(args)
    base = ConvertOptions.from_config(cfg)
    keys = tuple(metadata.parse_key(k) for k in args.key)
    template = None
    for scope in ("dataset", "study", "series"):
        path = getattr(args, f"{scope}_from", None)
        if path:
            # A template value that -k replaces is not checked: -k is how to fix one.
            replaced = {int(metadata.resolve_tag(name, "--key")) for name, _ in keys}
            template = metadata.load_template(Path(path), scope, replaced)  # type: ignore[arg-type]
    options = ConvertOptions(
        sop_class=args.sop_class or base.sop_class,
        conversion_type=args.conversion_type or base.conversion_type,
        keep_appn=bool(args.keep_appn) or base.keep_appn,
        strict=bool(args.strict) or base.strict,
        max_pixels=args.max_pixels or base.max_pixels,
        uid_root=base.uid_root,
        defaults=base.defaults,
        keys=keys,
        template=template,
        fsync=not args.no_fsync,
    )
    return options  # the user-supplied sources were validated when it was built


@dataclass
class Job:
    source: Path
    output: Path
    group: Path
    number: int = 0


@dataclass
class Summary:
    converted: int = 0
    refused: list[tuple[Path, str]] = field(default_factory=list)


def _under(path: str, root: str) -> bool:
    """``path`` is ``root`` or inside it (both absolute and resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _input_files(
    root: Path, out_root: Path, skipped: list[Path] | None = None
) -> list[tuple[Path, Path]]:
    """Files under the directory ``root`` as ``(path, its directory relative to root)``.

    Skipped: what the drop folder ignores (:func:`~node.ingest.ignored.is_ignored`: hidden
    entries and everything inside hidden directories (.thumbnails, .git ...), Windows'
    ``Thumbs.db`` and ``desktop.ini``, partial downloads ``*.part`` ...; added to
    ``skipped`` unless inside a skipped directory), sidecars (``*.json``), anything that
    resolves under ``out_root`` (our earlier outputs), unreadable directories. Symbolic
    links to files are inputs; symbolic links to directories are not followed (as
    ``Path.rglob``). One ``scandir`` per directory: the entries' types come with the
    listing, so a plain file costs no extra system call.
    Sorted as paths are (component by component).
    """
    out = str(out_root)
    found: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = []
    pending: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    while pending:
        directory, rel = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            continue
        dir_is_output: bool | None = None
        for entry in entries:
            name = entry.name
            if is_ignored(name):
                if skipped is not None:
                    skipped.append(Path(entry.path))
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, (*rel, name)))
                    continue
                if metadata.is_sidecar_name(name) or not entry.is_file():
                    continue
                if entry.is_symlink():
                    is_output = _under(os.path.realpath(entry.path), out)
                else:
                    if dir_is_output is None:
                        dir_is_output = _under(os.path.realpath(directory), out)
                    is_output = dir_is_output
            except OSError:
                continue
            if not is_output:
                found.append(((*rel, name), directory, rel))
    found.sort()
    return [(Path(directory, key[-1]), Path(*rel)) for key, directory, rel in found]


def collect(inputs: list[str], output: Path, skipped: list[Path] | None = None) -> list[Job]:
    """Input files in order; outputs mirror each directory input's layout under OUTPUT.

    Inside directories, names the drop folder ignores are skipped (and added to
    ``skipped``); a file named on the command line is always an input."""
    jobs: list[Job] = []
    single = output.suffix.lower() == ".dcm"
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for f, rel in _input_files(path, output.resolve(), skipped):
                jobs.append(Job(f, output / rel / fit_name(f.stem, ".dcm"), f.parent))
        else:
            target = output if single else output / fit_name(path.stem, ".dcm")
            jobs.append(Job(path, target, path.parent))
    if single and len(jobs) != 1:
        raise ConfigError(
            f"-o {output}: a .dcm file name needs exactly one input, got {len(jobs)}; "
            "give a directory instead"
        )
    seen: dict[Path, int] = defaultdict(int)
    for job in jobs:
        seen[job.output] += 1
    for job in jobs:
        if seen[job.output] > 1:  # photo.jpg and photo.png: keep both
            job.output = job.output.with_name(fit_name(job.source.name, ".dcm"))
    return jobs


def _group_contexts(jobs: list[Job], uid_root: str) -> dict[Path, SeriesContext]:
    """One Study/Series per input directory, derived from its path and its files.

    The key is the directory's path plus each file's name, size and modification time
    (a stat, no read): converting the same files again gives the same UIDs, and other
    files dropped later under the same folder name do not share a Study Instance UID.
    """
    members: dict[Path, list[Job]] = defaultdict(list)
    for job in jobs:
        members[job.group].append(job)
    contexts = {}
    for group, group_jobs in members.items():
        h = hashlib.sha256(os.fsencode(group.resolve()))  # names need not be UTF-8
        for number, job in enumerate(group_jobs, start=1):
            job.number = number
            h.update(os.fsencode(job.source.name) + b"\x00")
            try:
                st = job.source.stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"unreadable")
        contexts[group] = SeriesContext.for_group(h.hexdigest(), uid_root)
    return contexts


def _convert_forked(
    jobs: list[Job],
    processes: int,
    one: Callable[[Job, Callable[[Path, Data], None]], str | None],
    writer: GroupCommitWriter,
    record: Callable[[int, Job, str | None], None],
) -> None:
    """Convert in forked worker processes; this process commits and reports in input order.

    Each worker writes its outputs to hidden temporaries (``write_temp``) and reports
    their names; only this process adds them to the group commit, so a file still appears
    under its final name only complete and durable. UIDs do not depend on the worker: the
    Study/Series contexts and instance numbers were fixed before the fork.
    """

    died: list[int] = []

    def in_worker(index: int) -> tuple[str | None, str | None]:
        written: list[str] = []

        def write(target: Path, data: Data) -> None:
            written.append(str(writer.write_temp(target, data)))

        error = one(jobs[index], write)
        return (written[-1] if written and error is None else None), error

    def on_result(index: int, result: tuple[str | None, str | None] | forkpool.ChildDied) -> None:
        job = jobs[index]
        if isinstance(result, forkpool.ChildDied):
            died.append(index)
            record(index + 1, job, f"{job.source}: not converted: {result} while converting it")
            return
        tmp, error = result
        if tmp is not None:
            try:
                writer.add(Path(tmp), job.output)
            except OSError as exc:  # the group commit failed (as in the threaded loop)
                error = f"{job.source}: cannot write {job.output}: {exc.strerror or exc}"
        record(index + 1, job, error)

    forkpool.run_forked(len(jobs), processes, in_worker, on_result)
    if died:  # a worker killed after writing a temporary: remove what it left behind
        writer.remove_strays({job.output.parent for job in jobs})


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty() and total > 1
        self.last = 0.0

    def update(self, done: int, refused: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        filled = width * done // max(self.total, 1)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
            + (f" ({refused} refused)" if refused else "")
        )
        if done == self.total:
            self.stream.write("\n")
        self.stream.flush()


#: How many skipped names the summary lists.
_SKIPPED_SHOWN = 5

#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_buffers_mapped() -> None:
    """Let glibc reuse freed file-sized buffers instead of unmapping them after each file.

    Each file allocates a few buffers of its own size (the input, the output). By default
    glibc serves such blocks with mmap or returns them to the kernel on free, so every
    file pays ~200 page faults per buffer; in worker threads the dynamic threshold does not
    adapt (measured: the conversion loop 25-30 % slower). Blocks up to 16 MiB then come
    from the heap and up to 32 MiB of free heap is kept. Only this command's process is
    affected; elsewhere (not glibc) this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: libc is among them
        libc.mallopt(_M_MMAP_THRESHOLD, 16 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 32 << 20)
    except (OSError, AttributeError):
        return


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cmd_convert(args: argparse.Namespace) -> int:
    _keep_buffers_mapped()
    cfg = load_from_args(args)
    options = options_from_args(args, cfg)
    output = Path(args.output)
    skipped: list[Path] = []
    jobs = collect(args.inputs, output, skipped)
    if not jobs:
        raise ConfigError("no input files found in " + ", ".join(args.inputs))
    contexts = _group_contexts(jobs, options.uid_root)
    summary = Summary()
    progress = Progress(len(jobs), sys.stderr)
    started = time.monotonic()

    writer = GroupCommitWriter(fsync=options.fsync)

    def one(job: Job, write: Callable[[Path, Data], None] = writer) -> str | None:
        try:
            convert_file(
                job.source, job.output, options, contexts[job.group], job.number, writer=write
            )
        except ConversionError as exc:
            return str(exc)
        except NodeError as exc:
            return f"{job.source}: {exc}"
        except OSError as exc:  # the output cannot be written (disk full, permissions ...)
            return f"{job.source}: cannot write {job.output}: {exc.strerror or exc}"
        return None

    def record(i: int, job: Job, error: str | None) -> None:
        if error is None:
            summary.converted += 1
        else:
            summary.refused.append((job.source, error))
            log.error("refused %s", error)
        progress.update(i, len(summary.refused))

    processes = args.processes if args.processes is not None else _usable_cpus()
    try:
        if processes > 1 and len(jobs) > 1 and forkpool.available():
            _convert_forked(jobs, processes, one, writer, record)
        else:
            # A few threads overlap file-system waits (open, fsync, rename release the GIL)
            # with the parsing and encoding of the next files; results in input order.
            from concurrent.futures import ThreadPoolExecutor

            workers = max(1, min(args.threads, len(jobs)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert") as pool:
                results = zip(jobs, pool.map(one, jobs), strict=True)
                for i, (job, error) in enumerate(results, start=1):
                    record(i, job, error)
    except BaseException:  # Ctrl-C or a bug: leave no hidden temporaries behind
        writer.abort({job.output.parent for job in jobs})
        raise
    try:
        writer.close()
    except OSError as exc:
        log.error("cannot put the last outputs in place under %s: %s", output, exc)
        summary.converted = sum(1 for job in jobs if writer.committed(job.output))
        summary.refused.append((output, f"{output}: writing failed: {exc}"))
    elapsed = time.monotonic() - started
    rate = len(jobs) / elapsed if elapsed > 0 else 0.0
    print(
        f"converted {summary.converted}, refused {len(summary.refused)} "
        f"of {len(jobs)} file(s) in {elapsed:.2f} s ({rate:.0f} files/s)",
        file=sys.stderr,
    )
    for path, reason in summary.refused:
        print(
            f"  refused: {reason if str(path) in reason else f'{path}: {reason}'}", file=sys.stderr
        )
    if skipped:
        skipped.sort()
        shown = ", ".join(str(p) for p in skipped[:_SKIPPED_SHOWN])
        more = f" and {len(skipped) - _SKIPPED_SHOWN} more" if len(skipped) > _SKIPPED_SHOWN else ""
        print(
            f"  skipped {len(skipped)} file(s) that are never images (hidden, Thumbs.db, "
            f"desktop.ini, *.part, *.tmp, ~* ...; as the drop folder does): {shown}{more}",
            file=sys.stderr,
        )
    return 0 if not summary.refused else 1
