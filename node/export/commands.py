"""``dicom-node render``: DICOM objects -> PNG per frame or captioned PDF (like dcm2pnm).

Batches of PNGs are rendered by a process pool (``--jobs``, default every core); a file that
fails is reported by name with the element at fault and the batch goes on; the exit status
is 1 when anything failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import multiprocessing
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from node.config import ExportSection
from node.errors import ConfigError, ExportError
from node.export import decode
from node.export.display import VoiChoice
from node.export.exporter import Exporter, RenderOptions, logged_warnings
from node.service_commands import load_from_args

log = logging.getLogger(__name__)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "render",
        parents=[common],
        help="render DICOM images to PNG (per frame) or captioned PDF (per series/study)",
        description=(
            "Render DICOM objects for display through the PS3.3/PS3.4 grayscale pipeline "
            "(modality LUT, VOI, presentation LUT, MONOCHROME1) or as colour (RGB, YBR, "
            "palette). Encapsulated PDF objects are extracted unchanged. Default VOI: the "
            "file's first window, else its first VOI LUT, else min-max."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files or directories")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output directory")
    g = p.add_argument_group("output")
    g.add_argument(
        "--format", choices=["png", "pdf"], default="png", help="output format (default: png)"
    )
    g.add_argument(
        "--bits",
        type=int,
        choices=[8, 16],
        default=None,
        help="bits per PNG sample, grayscale and colour (48-bit RGB), as dcmj2pnm +on2 "
        "(default: export.bits, 8)",
    )
    g.add_argument(
        "--frames",
        default="all",
        metavar="all|N",
        help="render every frame, or only frame N (1-based) (default: all)",
    )
    g.add_argument(
        "--pdf-scope",
        choices=["series", "study"],
        default=None,
        help="with --format pdf: one PDF per series or per study (default: export.pdf, series)",
    )
    g.add_argument(
        "--pdf-layout",
        choices=["page", "contact"],
        default=None,
        help="one image per page at native size, or a contact sheet "
        "(default: export.pdf_layout, page)",
    )
    g.add_argument(
        "--no-overlays",
        action="store_true",
        help="do not burn in graphics overlays (60xx) (default: export.overlays, burn them in)",
    )
    g.add_argument(
        "--icc",
        action="store_true",
        help="apply an embedded (0028,2000) ICC profile to colour images (default: export.icc)",
    )
    v = p.add_argument_group("VOI (choose at most one)").add_mutually_exclusive_group()
    v.add_argument("--window-index", type=int, metavar="N", help="the N-th window of the file")
    v.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("CENTER", "WIDTH"),
        help="this window centre and width (applied to modality values, e.g. HU; WIDTH >= 1, "
        "as dcm2pnm +Ww)",
    )
    v.add_argument("--voi-lut", type=int, metavar="N", help="the N-th VOI LUT of the file")
    v.add_argument("--minmax", action="store_true", help="window from the image min and max")
    d = p.add_argument_group("privacy")
    d.add_argument(
        "--deidentify",
        action="store_true",
        help="PS3.15 Annex E basic profile for names, captions and metadata "
        "(default: export.deidentify, off)",
    )
    d.add_argument(
        "--date-shift",
        type=int,
        metavar="DAYS",
        default=None,
        help="with --deidentify: shift dates by DAYS instead of removing them",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="skip the fsync/sync that makes outputs durable (a crash may lose recent files)",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="worker processes for batches (PNG files, or PDFs by series) "
        "(default: export.workers if > 1, else all cores)",
    )
    p.set_defaults(func=cmd_render)


def _voi(args: argparse.Namespace) -> VoiChoice:
    if args.window_index is not None:
        if args.window_index < 1:
            raise ConfigError("--window-index: N starts at 1")
        return VoiChoice("window", index=args.window_index - 1)
    if args.window is not None:
        if not all(math.isfinite(v) for v in args.window):
            raise ConfigError(f"--window: CENTER and WIDTH must be numbers, got {args.window}")
        if args.window[1] < 1:
            # PS3.3 C.11.2.1.2: a width under 1 is no window (dcm2pnm +Ww refuses it too;
            # the same value in the file is refused as unusable)
            raise ConfigError(f"--window: WIDTH must be at least 1, got {args.window[1]:g}")
        return VoiChoice("user", center=args.window[0], width=args.window[1])
    if args.voi_lut is not None:
        if args.voi_lut < 1:
            raise ConfigError("--voi-lut: N starts at 1")
        return VoiChoice("lut", index=args.voi_lut - 1)
    if args.minmax:
        return VoiChoice("minmax")
    return VoiChoice()


def _frame(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--frames: expected 'all' or a frame number from 1, got {text!r}")
    return int(text) - 1


def _looks_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def collect(inputs: list[str]) -> tuple[list[Path], int]:
    """Files named, plus DICOM files (``DICM`` preamble) under named directories."""
    files: list[Path] = []
    missing = 0
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file() and not p.name.startswith(".") and _looks_dicom(p):
                    files.append(p)
        elif path.is_file():
            files.append(path)
        else:
            log.error("%s: no such file or directory", path)
            missing += 1
    return files, missing


# ------------------------------------------------------------------ worker processes

_worker: Exporter | None = None


def _init(cfg: ExportSection, options: RenderOptions, fsync: bool = True) -> None:
    global _worker
    _worker = Exporter(cfg, options, fsync=fsync)


def _one(path: Path) -> tuple[str, list[Path], str]:
    assert _worker is not None
    try:
        return str(path), _worker.export_instance(path), ""
    except ExportError as exc:
        return str(path), [], str(exc)
    except OSError as exc:
        return str(path), [], f"{path}: cannot write the export: {exc}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable(paths: list[Path]) -> None:
    """fsync files, then their directories (threads: the kernel batches journal commits)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(_fsync_path, paths))
        list(pool.map(_fsync_path, sorted({p.parent for p in paths})))


def _png_batch(
    cfg: ExportSection, options: RenderOptions, files: list[Path], jobs: int, fsync: bool
) -> int:
    failed = written = 0
    # A batch is made durable once at the end (one sync) instead of three fsyncs per file;
    # each output is still renamed into place atomically, so no reader sees a partial file.
    per_file = fsync and len(files) == 1
    if jobs > 1 and len(files) > 1:
        chunk = max(1, min(16, len(files) // (jobs * 4)))
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(jobs, len(files)), _init, (cfg, options, per_file)) as pool:
            results = list(pool.imap_unordered(_one, files, chunksize=chunk))
    else:
        _init(cfg, options, per_file)
        results = [_one(p) for p in files]
    made = [p for _, outs, _ in results for p in outs]
    if fsync and not per_file and made:
        make_durable([*made, Path(cfg.manifest or Path(cfg.dir) / "manifest.jsonl")])
    for _name, outs, error in results:
        if error:
            log.error("%s", error)
            failed += 1
        written += len(outs)
    log.info("render: %d file(s) -> %d output(s), %d failed", len(files), written, failed)
    return failed


def _pdf_batch(
    cfg: ExportSection, options: RenderOptions, files: list[Path], jobs: int, fsync: bool
) -> int:
    exporter = Exporter(cfg, options, fsync=fsync)
    groups: dict[str, list[Path]] = defaultdict(list)
    failed = 0
    for path in files:
        try:
            with logged_warnings(path):
                ds = decode.read(path, header_only=True)
                encapsulated = decode.is_encapsulated_pdf(ds)
                key = str(ds.get("StudyInstanceUID", ""))
                if cfg.pdf != "study":
                    key += "/" + str(ds.get("SeriesInstanceUID", ""))
        except ExportError as exc:
            log.error("%s", exc)
            failed += 1
            continue
        except decode.MALFORMED as exc:
            log.error("%s: malformed element value: %s", path, exc)
            failed += 1
            continue
        if encapsulated:
            try:
                exporter.export_instance(path)
            except ExportError as exc:
                log.error("%s", exc)
                failed += 1
            continue
        groups[key].append(path)
    batches = list(groups.values())
    if jobs > 1 and len(batches) > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(jobs, len(batches)), _init, (cfg, options, fsync)) as pool:
            results = list(pool.imap_unordered(_pdf_one, batches))
    else:
        _init(cfg, options, fsync)
        results = [_pdf_one(paths) for paths in batches]
    return failed + sum(errors for _, errors in results) + exporter.failures


def _pdf_one(paths: list[Path]) -> tuple[int, int]:
    """One series/study PDF in a worker: (files given, files that failed)."""
    assert _worker is not None
    before = _worker.failures
    try:
        if _worker.cfg.pdf == "study":
            written = _worker.export_study_pdf(paths)
        else:
            written = _worker.export_series_pdf(paths)
    except (ExportError, OSError) as exc:
        log.error("%s", exc)
        return len(paths), len(paths)
    if not written:
        log.warning("%d file(s) of one %s: nothing renderable", len(paths), _worker.cfg.pdf)
    return len(paths), _worker.failures - before


def cmd_render(args: argparse.Namespace) -> int:
    cfg = load_from_args(args).export
    if args.jobs < 0:
        raise ConfigError(f"--jobs: {args.jobs} must be 0 (the default) or more")
    if args.date_shift is not None and not (args.deidentify or cfg.deidentify):
        raise ConfigError(
            "--date-shift: dates are shifted only when de-identifying; add --deidentify "
            "(or set export.deidentify = true)"
        )
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"-o {output}: exists and is not a directory; give an output folder")
    changes: dict[str, Any] = {"dir": Path(args.output).resolve(), "manifest": None}
    if cfg.manifest is not None:
        changes["manifest"] = cfg.manifest
    if args.deidentify:
        changes["deidentify"] = True
    if args.date_shift is not None:
        changes["date_policy"] = "shift"
        changes["date_shift_days"] = args.date_shift
    if args.pdf_scope:
        changes["pdf"] = args.pdf_scope
    elif cfg.pdf == "none":
        changes["pdf"] = "series"
    if args.pdf_layout:
        changes["pdf_layout"] = args.pdf_layout
    if args.no_overlays:
        changes["overlays"] = False
    if args.icc:
        changes["icc"] = True
    cfg = dataclasses.replace(cfg, **changes)
    options = RenderOptions(voi=_voi(args), frame=_frame(args.frames), bits=args.bits)
    files, missing = collect(args.inputs)
    if not files:
        log.error("render: no DICOM files found in %s", ", ".join(args.inputs))
        return 1
    jobs = args.jobs or (cfg.workers if cfg.workers > 1 else (os.cpu_count() or 1))
    if args.format == "pdf":
        failed = _pdf_batch(cfg, options, files, jobs, not args.no_fsync)
    else:
        failed = _png_batch(cfg, options, files, jobs, not args.no_fsync)
    return 1 if failed or missing else 0
