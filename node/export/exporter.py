"""Export orchestration: one object -> PNG(s), a series or study -> PDF, with a manifest.

Output layout under the export directory (every component is a validated UID or a hash;
never a name, ID or other text from the object)::

    <study>/<series>/<InstanceNumber:05d>-<SOPInstanceUID>[-f<frame:04d>].png
    <study>/<series>/<InstanceNumber:05d>-<SOPInstanceUID>.pdf     (Encapsulated PDF, as is)
    <study>/<series>.pdf                                           (series PDF)
    <study>/study.pdf                                              (study PDF)

With ``export.deidentify`` each UID is replaced by ``st-``/``se-``/``im-`` + a SHA-256
based hash (:func:`node.export.deid.uid_hash`). Each file is written atomically and a bad
object leaves no output: its frames are rendered before anything is written, except for
large multi-frame objects (ultrasound cines, breast tomosynthesis), which are decoded,
rendered and written to PNG a batch of frames at a time (``export.max_pixels`` then bounds
one frame) and whose files already written are removed if a later frame fails. Each file
written is one line in the manifest (:mod:`node.export.manifest`), recorded once the whole
object is written.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from node import __version__
from node.config import ExportSection
from node.errors import ConfigError, ExportError
from node.export import decode, display, png
from node.export.aspect import pixel_aspect
from node.export.deid import Facts, Policy, facts
from node.export.manifest import Manifest, sha256
from node.fsutil import atomic_write, clean_temp_files, safe_join

log = logging.getLogger(__name__)

SOFTWARE = f"dicom-node {__version__}"
#: Decoded samples held at once when a multi-frame object is exported to PNG a batch of
#: frames at a time (16 Mi: a 480 x 640 RGB cine goes 18 frames at a time, a 512 x 512
#: grayscale one 64).
_BATCH_SAMPLES = 1 << 24


@dataclass(frozen=True)
class RenderOptions:
    """Per-run choices (the ``render`` command's options); defaults follow the config."""

    voi: display.VoiChoice = field(default_factory=display.VoiChoice)
    frame: int | None = None  # 0-based; None = every frame
    bits: int | None = None  # None = export.bits


@dataclass
class Rendering:
    """One object rendered in memory, ready to be written."""

    path: Path
    ds: Dataset
    facts: Facts
    frames: list[display.Rendered]
    multiframe: bool


@contextlib.contextmanager
def logged_warnings(where: object) -> Iterator[None]:
    """Turn warnings (pydicom warns on invalid values) into log lines naming ``where``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                log.warning("%s: %s", where, w.message)


def check_config(cfg: ExportSection) -> None:
    """Value checks for ``[export]`` beyond the schema's types (ConfigError names the key)."""
    if not 0 <= cfg.png_compress_level <= 9:
        raise ConfigError(f"export.png_compress_level: {cfg.png_compress_level} is not 0-9")
    if cfg.workers < 0:
        raise ConfigError(f"export.workers: {cfg.workers} must be 0 or more (0 counts as 1)")
    if cfg.max_pixels <= 0:
        raise ConfigError(f"export.max_pixels: {cfg.max_pixels} must be positive")
    if abs(cfg.date_shift_days) > 365 * 200:
        raise ConfigError(f"export.date_shift_days: {cfg.date_shift_days} is out of range")


def _pdf_parts(
    items: list[tuple[Path, Dataset]], max_images: int
) -> list[list[tuple[Path, Dataset]]]:
    """``items`` in consecutive groups of at most ``max_images`` frames each (an object of
    more frames than that is a group of its own); one group when they all fit."""
    groups: list[list[tuple[Path, Dataset]]] = [[]]
    frames = 0
    for item in items:
        ds = item[1]
        count = 0
        if _drawn(ds):
            try:
                count = max(1, int(ds.get("NumberOfFrames") or 1))
            except decode.MALFORMED:
                count = 1
        if groups[-1] and frames + count > max_images:
            groups.append([])
            frames = 0
        groups[-1].append(item)
        frames += count
    return groups


def is_image(ds: Dataset) -> bool:
    """True for objects meant to carry pixels (a missing Pixel Data there is an error)."""
    return any(k in ds for k in ("PixelData", "Rows", "FloatPixelData", "DoubleFloatPixelData"))


def _drawn(ds: Dataset) -> bool:
    """Whether ``ds`` goes into a PDF as pictures (an image, not an encapsulated PDF)."""
    return is_image(ds) and not decode.is_encapsulated_pdf(ds)


class Exporter:
    """Renders and writes exports for the configuration ``cfg``."""

    def __init__(
        self,
        cfg: ExportSection,
        options: RenderOptions | None = None,
        *,
        fsync: bool = True,
    ) -> None:
        check_config(cfg)
        decode.quiet_pydicom()
        self.cfg = cfg
        self.options = options or RenderOptions()
        self.policy = Policy.from_config(cfg)
        self.root = Path(cfg.dir)
        self.manifest = Manifest(cfg.manifest or self.root / "manifest.jsonl", fsync=fsync)
        self._dir_cache: dict[tuple[str, str], Path] = {}
        self.fsync = fsync
        self.bits = self.options.bits or cfg.bits
        #: objects that could not go into a PDF (each logged with its reason)
        self.failures = 0

    def remove_leftovers(self) -> int:
        """Remove temporary files a killed writer left under the export root (at start-up).

        Only for the node, which owns its export folder while it holds the state lock: an
        output is written under a hidden temporary name and renamed into place, so a
        SIGKILL in between leaves the temporary behind for good (its job is run again).
        """
        removed = clean_temp_files(self.root)
        if removed:
            log.info("removed %d temporary files left in %s", removed, self.root)
        return removed

    # ------------------------------------------------------------------ naming

    def _dirs(self, ds: Dataset) -> tuple[str, str]:
        study = self.policy.name_part(str(ds.get("StudyInstanceUID", "") or ""), "st-")
        series = self.policy.name_part(str(ds.get("SeriesInstanceUID", "") or ""), "se-")
        return study, series

    def _target(self, study: str, series: str, name: str) -> Path:
        """``<root>/<study>/<series>/<name>``, the directory checked once by safe_join."""
        directory = self._dir_cache.get((study, series))
        if directory is None:
            directory = safe_join(self.root, study, series)
            if len(self._dir_cache) < 4096:
                self._dir_cache[(study, series)] = directory
        return (
            safe_join(directory, name) if "/" in name or name.startswith(".") else directory / name
        )

    def _stem(self, ds: Dataset, number: str) -> str:
        sop = self.policy.name_part(str(ds.get("SOPInstanceUID", "") or ""), "im-")
        return f"{int(number or 0):05d}-{sop}"

    def _voi_label(self, label: str) -> str:
        if self.policy.deidentify:  # explanations are free text: keep only the numbers
            label = re.sub(r"^(window C=\S+ W=\S+|VOI LUT \d+|min-max C=\S+ W=\S+).*", r"\1", label)
        return label

    def _write(self, target: Path, data: bytes, kind: str, **entry: object) -> Path:
        atomic_write(target, data, fsync=self.fsync)
        self.manifest.record(
            kind=kind, output=target, sha256=sha256(data), bytes=len(data), **entry
        )
        return target

    # ------------------------------------------------------------------ rendering

    def render(self, path: Path, ds: Dataset | None = None) -> Rendering:
        """Decode and render every wanted frame of ``path`` (nothing is written)."""
        path = Path(path)
        ds = ds if ds is not None else decode.read(path)
        info = decode.pixel_info(ds, path, self.cfg.max_pixels)
        indices = None if self.options.frame is None else [self.options.frame]
        return self._render_frames(path, ds, info, indices)

    def _render_frames(
        self,
        path: Path,
        ds: Dataset,
        info: decode.PixelInfo,
        indices: list[int] | None,
        span: tuple[float, float] | None = None,
    ) -> Rendering:
        arrays = list(decode.frames(ds, path, info, indices))
        frames = display.render(
            ds,
            info,
            arrays,
            path,
            self.options.voi,
            self.bits,
            icc=self.cfg.icc,
            overlays=self.cfg.overlays,
            span=span,
        )
        return Rendering(path, ds, facts(ds, self.policy), frames, info.frames > 1)

    # ------------------------------------------------------------------ public API

    def export_instance(self, path: Path) -> list[Path]:
        """PNG per frame (or the extracted PDF of an Encapsulated PDF); returns the paths.

        Raises :class:`ExportError` (naming the file and element) for anything that cannot
        be exported; nothing is written then.
        """
        path = Path(path)
        with logged_warnings(path):
            try:
                return self._export_instance(path)
            except decode.MALFORMED as exc:  # a value pydicom could not convert
                raise ExportError(f"{path}: malformed element value: {exc}") from None

    def _export_instance(self, path: Path) -> list[Path]:
        ds = decode.read(path)
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        study, series = self._dirs(ds)
        if decode.is_encapsulated_pdf(ds):
            if self.policy.deidentify:
                # the document's own text (a report) cannot be de-identified here
                log.warning(
                    "%s: encapsulated PDF not extracted: export.deidentify is on and the "
                    "document content cannot be de-identified",
                    path,
                )
                return []
            data = decode.encapsulated_pdf(ds, path)
            number = facts(ds, self.policy).instance_number
            target = self._target(study, series, self._stem(ds, number) + ".pdf")
            written = self._write(
                target,
                data,
                "encapsulated-pdf",
                source=path,
                sop_instance_uid=sop_uid,
                voi=None,
            )
            log.info("extracted encapsulated PDF %s -> %s", path, target)
            return [written]
        if not self.cfg.png:
            return []
        if not is_image(ds):
            log.info(
                "%s: not an image (SOP class %s, no Rows or Pixel Data): nothing to render",
                path,
                ds.get("SOPClassUID", "?"),
            )
            return []
        info = decode.pixel_info(ds, path, self.cfg.max_pixels, frame_by_frame=True)
        pngs: list[tuple[Path, str, int, int, str]] = []  # target, digest, size, frame, voi
        try:
            for rendering in self._png_batches(path, ds, info):
                stem = self._stem(ds, rendering.facts.instance_number)
                for frame in rendering.frames:
                    suffix = f"-f{frame.frame + 1:04d}" if rendering.multiframe else ""
                    voi = self._voi_label(frame.voi)
                    text = {
                        "Modality": rendering.facts.modality,
                        "StudyDate": rendering.facts.study_date,
                        "SeriesDescription": rendering.facts.series_description,
                        "Window": voi,
                        "Software": SOFTWARE,
                    }
                    data = png.encode(frame.pixels, text, self.cfg.png_compress_level)
                    target = self._target(study, series, stem + suffix + ".png")
                    atomic_write(target, data, fsync=self.fsync)
                    pngs.append((target, sha256(data), len(data), frame.frame, voi))
        except BaseException:
            # a later batch failed: take back this object's files (a retry writes them all)
            for target, *_ in pngs:
                with contextlib.suppress(OSError):
                    target.unlink()
            raise
        for target, digest, size, index, voi in pngs:
            self.manifest.record(
                kind="png",
                output=target,
                sha256=digest,
                bytes=size,
                source=path,
                sop_instance_uid=sop_uid,
                frame=index + 1,
                voi=voi,
            )
        log.debug("rendered %s -> %d PNG", path, len(pngs))
        return [target for target, *_ in pngs]

    def _png_batches(self, path: Path, ds: Dataset, info: decode.PixelInfo) -> Iterator[Rendering]:
        """The wanted frames rendered ``_BATCH_SAMPLES`` decoded samples at a time (all at
        once for most objects; an ultrasound cine goes in batches, and a grayscale object
        only when it is over ``export.max_pixels``: a breast tomosynthesis).

        A grayscale object whose window is min-max gets one window for all its frames, as
        decoded whole: a first pass over the frames, read one at a time, finds the range
        (only when some frame's window is min-max)."""
        wanted = list(range(info.frames)) if self.options.frame is None else [self.options.frame]
        per_frame = info.rows * info.columns * info.samples
        gray = info.photometric in display.GRAY
        step = max(1, _BATCH_SAMPLES // per_frame) if info.frame_by_frame else len(wanted)
        if gray and per_frame * len(wanted) <= self.cfg.max_pixels:
            step = len(wanted)  # decoded whole: no second pass for a min-max range
        span = None
        if step < len(wanted) and gray:
            every = list(range(info.frames))
            span = display.gray_span(
                ds,
                info,
                every,
                lambda: decode.frames(ds, path, info, every),
                path,
                self.options.voi,
            )
        for start in range(0, len(wanted), step):
            yield self._render_frames(path, ds, info, wanted[start : start + step], span)

    def export_series_pdf(self, paths: Sequence[Path]) -> list[Path]:
        """The captioned PDF (or its parts, see :meth:`_pdf`) for the instances ``paths`` of
        a series; empty if none render."""
        items = self._ordered(paths)
        if not items:
            return []
        study, series = self._dirs(items[0][1])
        target = safe_join(self.root, study, series + ".pdf")
        return self._pdf(target, items, "series")

    def export_study_pdf(self, paths: Sequence[Path]) -> list[Path]:
        """The captioned PDF (or its parts) for all instances ``paths`` of a study; empty if
        none render."""
        items = self._ordered(paths)
        if not items:
            return []
        study, _ = self._dirs(items[0][1])
        return self._pdf(safe_join(self.root, study, "study.pdf"), items, "study")

    def export_study(self, study_dir: Path) -> list[Path]:
        """PDF per series (or one per study) for the objects under ``study_dir``."""
        if self.cfg.pdf == "none":
            return []
        files = sorted(
            p
            for p in Path(study_dir).rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.parts[-3:])
        )
        items = self._ordered(files)
        if not items:
            return []
        if self.cfg.pdf == "study":
            study, _ = self._dirs(items[0][1])
            return self._pdf(safe_join(self.root, study, "study.pdf"), items, "study")
        by_series: dict[str, list[tuple[Path, Dataset]]] = {}
        for item in items:
            by_series.setdefault(str(item[1].get("SeriesInstanceUID", "")), []).append(item)
        out = []
        for group in by_series.values():
            study, series = self._dirs(group[0][1])
            out += self._pdf(safe_join(self.root, study, series + ".pdf"), group, "series")
        return out

    # ------------------------------------------------------------------ PDF helpers

    def _ordered(self, paths: Sequence[Path]) -> list[tuple[Path, Dataset]]:
        """Headers of ``paths`` (unreadable ones logged and skipped), in display order."""
        items: list[tuple[Path, Dataset]] = []
        for p in paths:
            try:
                ds = decode.read(Path(p), header_only=True)
            except ExportError as exc:
                log.error("not exported: %s", exc)
                self.failures += 1
                continue
            items.append((Path(p), ds))

        def number(ds: Dataset, keyword: str) -> int:
            try:  # each on its own: a bad Series Number keeps the instances in order
                return int(ds.get(keyword) or 0)
            except decode.MALFORMED:
                return 0

        def key(item: tuple[Path, Dataset]) -> tuple[int, str, int, str]:
            ds = item[1]
            try:
                series = str(ds.get("SeriesInstanceUID", ""))
            except decode.MALFORMED:
                series = ""
            series_no = number(ds, "SeriesNumber")
            return (series_no, series, number(ds, "InstanceNumber"), str(item[0]))

        keys = {}
        for item in items:
            with logged_warnings(item[0]):  # pydicom warns on invalid IS values
                keys[item[0]] = key(item)
        items.sort(key=lambda item: keys[item[0]])
        return items

    def _header(
        self, ds: Dataset, scope: str, count: int, modalities: str = "", part: str = ""
    ) -> tuple[str, list[str]]:
        """Title and header lines; ``modalities`` (e.g. ``CT/PT``) for a whole study,
        ``part`` (e.g. ``part 2 of 3``) for one part of a split PDF. The count line (the
        last but one) says ``count`` images: :meth:`_tally` writes the final one."""
        f = facts(ds, self.policy)
        modality = modalities or f.modality
        study = " ".join(
            x for x in (modality, "study", f.study_date, f.study_time, f.study_description) if x
        )
        lines = [study]
        ids = f.identifiers
        if ids:
            labels = {
                "PatientName": "Patient",
                "PatientID": "ID",
                "OtherPatientIDs": "other IDs",
                "PatientBirthDate": "born",
                "AccessionNumber": "Acc",
                "InstitutionName": "at",
                "ReferringPhysicianName": "ref.",
            }
            shown = [
                f"{labels[k]} {self.policy.date(v) if k == 'PatientBirthDate' else v}"
                for k, v in ids.items()
            ]
            lines.append("  ".join(shown))
        lines.append(self._tally(f, scope, f"{count} image(s)", part))
        lines.append(f"{SOFTWARE}: rendered for review; window as captioned")
        described = f.series_description if scope == "series" else f.study_description
        title = " ".join(x for x in (modality, scope, described, f.study_date) if x)
        return title + (f" ({part})" if part else ""), lines

    @staticmethod
    def _tally(f: Facts, scope: str, counted: str, part: str) -> str:
        """The header's count line: ``counted`` (e.g. ``12 image(s)``) of the series or
        study, and which part of a split PDF this is."""
        of_part = f" ({part})" if part else ""
        if scope == "series":
            desc = f" {f.series_description}" if f.series_description else ""
            return f"Series {f.series_number or '?'}{desc}: {counted}{of_part}"
        return f"{counted}{of_part}"

    def _pdf(self, target: Path, items: list[tuple[Path, Dataset]], scope: str) -> list[Path]:
        """``target``, or ``<stem>-partNofM.pdf`` when the images are more than
        ``export.pdf_max_images``: a PDF is built in memory (reportlab writes a document
        whole), ~0.2-0.6 MB per 512 x 512 image, so a 2,000-slice CT series in one PDF
        would take the node past a gigabyte. Parts end at object boundaries; parts or a
        whole PDF of an earlier export of the same series or study that the new export
        does not write again are removed once the new ones are written."""
        groups = _pdf_parts(items, self.cfg.pdf_max_images)
        # a study PDF names every modality in it (CT/PT), not only the first series' one
        with logged_warnings(target):
            drawn = (facts(d, self.policy).modality for _, d in items if _drawn(d))
            modalities = "/".join(dict.fromkeys(m for m in drawn if m))
        written = []
        for number, group in enumerate(groups, 1):
            part = f"part {number} of {len(groups)}" if len(groups) > 1 else ""
            where = (
                target.with_name(f"{target.stem}-part{number}of{len(groups)}.pdf")
                if part
                else target
            )
            with logged_warnings(where):
                try:
                    made = self._build_pdf(where, group, scope, modalities, part)
                except decode.MALFORMED as exc:
                    raise ExportError(f"{group[0][0]}: malformed element value: {exc}") from None
            if made is not None:
                written.append(made)
        if not written:
            return []  # nothing renderable now: an earlier export is left as it is
        stale = [target, *target.parent.glob(f"{glob.escape(target.stem)}-part*of*.pdf")]
        for old in stale:
            if old not in written and old.exists():
                old.unlink()
                log.info("removed %s: replaced by %s", old, ", ".join(p.name for p in written))
        return written

    def _build_pdf(
        self,
        target: Path,
        items: list[tuple[Path, Dataset]],
        scope: str,
        modalities: str,
        part: str,
    ) -> Path | None:
        from node.export.pdf import Sheet  # reportlab is imported only when a PDF is made

        # the images among them: an SR, a key object selection or an encapsulated PDF of
        # the series or study is not drawn, not counted and does not head the pages
        images = [d for _, d in items if _drawn(d)]
        first = images[0] if images else items[0][1]
        title, header = self._header(first, scope, len(images), modalities, part)
        sheet = Sheet(
            title=title,
            header=header,
            layout=self.cfg.pdf_layout,
            subject=" ".join(header[1:2]) if self.policy.identifiers_allowed else "",
            keywords="DICOM export",
            tally=len(header) - 2,
        )
        sources = []
        frames = 0
        vois = set()
        warned: set[str] = set()  # unusable pixel shapes, logged once per document
        for path, header_ds in items:
            if not _drawn(header_ds):
                continue
            try:
                with logged_warnings(path):
                    rendering = self.render(path)
            except ExportError as exc:
                log.error("not in %s PDF: %s", scope, exc)
                self.failures += 1
                continue
            except decode.MALFORMED as exc:
                log.error("not in %s PDF: %s: malformed element value: %s", scope, path, exc)
                self.failures += 1
                continue
            f = rendering.facts
            for frame in rendering.frames:
                aspect = pixel_aspect(rendering.ds, frame.frame, warned)
                voi = self._voi_label(frame.voi)
                vois.add(voi)
                where = f"Image {f.instance_number or '?'}"
                if rendering.multiframe:
                    where += f" frame {frame.frame + 1}"
                desc = f" {f.series_description}" if f.series_description else ""
                caption = [
                    f"Series {f.series_number or '?'}{desc} - {where}",
                    " - ".join(x for x in (f.modality, f.study_date, voi) if x),
                ]
                sheet.add(frame.pixels, caption, aspect)
                frames += 1
            sources.append(str(rendering.ds.get("SOPInstanceUID", "")))
        # what the pages hold: images that could not be rendered are counted apart, and the
        # frames when a multi-frame image made more pages than images
        counted = f"{len(sources)} image(s)"
        if frames > len(sources):
            counted += f", {frames} frames"
        if len(sources) < len(images):
            counted += f"; {len(images) - len(sources)} of {len(images)} not rendered (see log)"
        with logged_warnings(target):
            tally = self._tally(facts(first, self.policy), scope, counted, part)
        data = sheet.finish(tally)
        if data is None:
            return None
        self._write(
            target,
            data,
            "pdf",
            source=[str(p) for p, _ in items],
            sop_instance_uid=sources,
            voi=sorted(vois),
            pages=sheet.pages,
        )
        log.info("%s PDF %s: %d image(s), %d page(s)", scope, target, len(sources), sheet.pages)
        return target
