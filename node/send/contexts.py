"""Presentation contexts to propose, how to send each file on what was accepted, transcoding.

For every SOP class in a batch we propose one context per transfer syntax, each with a
single syntax, so the peer answers for each one separately (a multi-syntax context lets
the acceptor pick one and hide the others):

* every transfer syntax the batch's files of that class are encoded in;
* Explicit VR Little Endian and Implicit VR Little Endian as the fallback.

A destination's ``transfer_syntaxes`` (when not empty) limits what is proposed to that
list. A file then goes as it is (its bytes straight from disk) when its own syntax was
accepted; otherwise it is decoded (pydicom with the pylibjpeg/Pillow plugins) and
re-encoded in an accepted uncompressed syntax, keeping (0028,2110) LossyImageCompression
and setting it to ``01`` when the element was missing and the source was lossy: an always
lossy syntax, or a JPEG-LS/JPEG 2000 stream that says so (``lossy``). PS3.3 C.7.6.1.1.5:
once lossy, always lossy. The SOP Instance UID does not change.

At most 128 contexts fit in one association (PS3.8 9.3.2.2: odd IDs 1..255); the plan splits
the SOP classes over as many associations as needed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from node.errors import SendError
from node.filemeta import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MEDIA_STORAGE_DIRECTORY,
    FileMeta,
    FileMetaError,
    NotDicom,
    read_file_meta,
    read_file_meta_from,
)
from node.send.lossy import lossy_method

if TYPE_CHECKING:  # pydicom is imported only to transcode: a plain send never needs it
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: One proposed presentation context: (abstract syntax, transfer syntax).
Context = tuple[str, str]


@dataclass(frozen=True)
class SendItem:
    """One file to send: where it is and what its header says."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    key: int = 0  # the caller's handle (the job id in the worker)


class DicomDirFile(SendError):
    """The file is a DICOMDIR: nothing to send (not a failure either)."""


def read_header(path: Path) -> dict[str, str]:
    """SOP Class/Instance UID and transfer syntax from the file meta (group 0002 only).

    Raises SendError naming the file and the missing element, or for a DICOMDIR: it indexes
    the files of a medium (a CD's root holds one) and is no object to store (dcmsend and
    storescu refuse it too).
    """
    try:
        header = read_file_meta(path).as_dict()
    except OSError as exc:  # kept as the cause: a missing file or share is told apart
        raise SendError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except NotDicom as exc:
        raise NotDicomFile(str(exc)) from None
    except FileMetaError as exc:
        raise SendError(str(exc)) from None
    if header["sop_class_uid"] == MEDIA_STORAGE_DIRECTORY:
        raise DicomDirFile(
            f"{path}: a DICOMDIR ((0002,0002) MediaStorageSOPClassUID {MEDIA_STORAGE_DIRECTORY},"
            " Media Storage Directory Storage) is the index of a medium, not an object to store;"
            " the files it lists are sent on their own"
        )
    return header


class NotDicomFile(SendError):
    """The file is no DICOM file at all (see :class:`node.filemeta.NotDicom`)."""


class FileChanged(SendError):
    """The file's meta header no longer says what the send was planned on (it was rewritten
    after it was queued or listed): nothing was sent; plan the file again."""


def check_unchanged(meta: FileMeta, item: SendItem) -> None:
    """FileChanged when ``meta`` (read as the file is sent) contradicts ``item``.

    The presentation context was chosen for ``item.transfer_syntax``: the bytes of a file
    since rewritten in another syntax (decompressed or compressed in place, e.g. by
    dcmdjpeg/dcmcjpeg) would go out labelled with the wrong one, which a DCMTK peer aborts
    on and a laxer PACS stores as a damaged object.
    """
    for tag, keyword, now, planned in (
        ("(0002,0010)", "TransferSyntaxUID", meta.transfer_syntax, item.transfer_syntax),
        ("(0002,0003)", "MediaStorageSOPInstanceUID", meta.sop_instance_uid, item.sop_instance_uid),
        ("(0002,0002)", "MediaStorageSOPClassUID", meta.sop_class_uid, item.sop_class_uid),
    ):
        if now != planned:
            raise FileChanged(
                f"{item.path} changed after it was queued: its {tag} {keyword} is now {now}, "
                f"was {planned}; nothing was sent, it is planned again on the next attempt"
            )


#: SOP classes of objects that belong to no patient, study or series (Hanging Protocol,
#: Color Palette, implant templates, defined procedure protocols, inventories): for them an
#: absent StudyInstanceUID/SeriesInstanceUID is no defect.
_NON_PATIENT_PREFIXES = (
    "1.2.840.10008.5.1.4.38.",
    "1.2.840.10008.5.1.4.39.",
    "1.2.840.10008.5.1.4.43.",
    "1.2.840.10008.5.1.4.44.",
    "1.2.840.10008.5.1.4.45.",
    "1.2.840.10008.5.1.4.1.1.200.",
    "1.2.840.10008.5.1.4.1.1.201.",
)


@dataclass(frozen=True)
class Refusal:
    """What the file's data set says about why a peer refused it (see :func:`why_refused`)."""

    text: str
    #: The data set lacks an identifying UID: no peer can file it, so retrying is pointless.
    permanent: bool


def why_refused(item: SendItem) -> Refusal | None:
    """Why the peer may have refused ``item``, from its data set; None if nothing is wrong.

    * its data set names another SOP Class or Instance UID than its file meta (which the
      C-STORE-RQ carries);
    * it lacks (or has empty) one of the UIDs every PACS files an object by:
      (0008,0016) SOPClassUID, (0008,0018) SOPInstanceUID, (0020,000D) StudyInstanceUID,
      (0020,000E) SeriesInstanceUID (Type 1, PS3.3 C.12.1, C.7.2.1, C.7.3.1). Orthanc
      answers such a file with 0xA700 "out of resources", which reads as transient and was
      retried for queue.max_age_seconds; such a refusal is ``permanent``.

    Only read after a refusal: a plain send never parses the data set.
    """
    from pydicom import dcmread

    wanted = {
        "SOPClassUID": ("(0008,0016)", "(0002,0002) MediaStorageSOPClassUID", item.sop_class_uid),
        "SOPInstanceUID": (
            "(0008,0018)",
            "(0002,0003) MediaStorageSOPInstanceUID",
            item.sop_instance_uid,
        ),
        "StudyInstanceUID": ("(0020,000D)", "", ""),
        "SeriesInstanceUID": ("(0020,000E)", "", ""),
    }
    if item.sop_class_uid.startswith(_NON_PATIENT_PREFIXES):
        del wanted["StudyInstanceUID"], wanted["SeriesInstanceUID"]
    try:
        ds = dcmread(
            item.path,
            force=True,
            stop_before_pixels=True,
            specific_tags=[0x00080016, 0x00080018, 0x0020000D, 0x0020000E],
        )
    except Exception:  # an unreadable file says nothing about the refusal
        return None
    contradictions, missing = [], []
    for keyword, (tag, meta, sent) in wanted.items():
        value = str(ds.get(keyword, "") or "").strip("\x00 ")
        if not value:
            missing.append(f"{tag} {keyword}")
        elif meta and value != sent:
            contradictions.append(
                f"its {tag} {keyword} is {value}, its {meta} (sent in the command) is {sent}"
            )
    parts = []
    if contradictions:
        parts.append(
            f"{item.path} contradicts itself: {'; '.join(contradictions)}. Fix the file meta "
            "(e.g. dcmconv, which rebuilds it from the data set) and send it again"
        )
    if missing:
        parts.append(
            f"{item.path}: its data set has no {', no '.join(missing)} (or an empty one), "
            "a Type 1 UID a PACS files every object by, so no peer can store it; add the "
            "missing UID (e.g. dcmodify -i, with the UID of its study or series) and send "
            "it again"
        )
    if not parts:
        return None
    return Refusal("; ".join(parts), permanent=bool(missing))


def proposed_syntaxes(own: Iterable[str], preferences: Sequence[str] = ()) -> list[str]:
    """Transfer syntaxes to propose for one SOP class, each in its own context, in order."""
    out: list[str] = []
    for ts in [*own, *UNCOMPRESSED]:
        if ts in out or (preferences and ts not in preferences):
            continue
        out.append(ts)
    return out


def plan_associations(
    items: Sequence[SendItem], preferences: Sequence[str] = ()
) -> list[tuple[list[Context], list[SendItem]]]:
    """Split ``items`` into association-sized groups with the contexts each one proposes.

    Items of one SOP class stay in one group; groups keep the items' original order.
    """
    by_class: dict[str, list[SendItem]] = {}
    for item in items:
        by_class.setdefault(item.sop_class_uid, []).append(item)
    groups: list[tuple[list[Context], list[SendItem]]] = []
    contexts: list[Context] = []
    members: list[SendItem] = []
    for sop_class, class_items in by_class.items():
        syntaxes = proposed_syntaxes(
            dict.fromkeys(i.transfer_syntax for i in class_items), preferences
        )
        if not syntaxes:
            syntaxes = list(preferences)
        new = [(sop_class, ts) for ts in syntaxes[:MAX_CONTEXTS]]
        if contexts and len(contexts) + len(new) > MAX_CONTEXTS:
            groups.append((contexts, members))
            contexts, members = [], []
        contexts.extend(new)
        members.extend(class_items)
    if members:
        groups.append((contexts, members))
    return groups


def choose_syntax(own: str, accepted: Iterable[str]) -> str | None:
    """The syntax to send a file in: its own if accepted, else an uncompressed one, else None."""
    accepted = list(accepted)
    if own in accepted:
        return own
    for ts in UNCOMPRESSED:
        if ts in accepted:
            return ts
    return None


def check_even(size: int) -> None:
    """SendError for a data set of odd length (Deflated aside: see deflated_data_set).

    Every element has even length: such a file is damaged, and a DCMTK-based peer aborts the
    association on its odd last PDV, which would be retried until the queue gives up.
    """
    if size % 2:
        raise SendError(
            f"the data set has an odd length ({size} bytes): every DICOM element has even "
            "length, so the file is damaged (a stray byte after the last element?); "
            "fix or re-export it"
        )


def deflated_data_set(path: Path) -> bytes:
    """The deflated data set of ``path`` as it goes into P-DATA: even length.

    A deflate stream has any length and Part 10 writers (DCMTK's ``dcmconv +td``
    among them) store it unpadded; PDV fragments must be even (DCMTK's storescp aborts
    the association on an odd one: "Odd Fragment Length"). A NUL after the end of the
    deflate stream is ignored by the inflater, so an odd stream gets one.
    """
    with open(path, "rb") as fp:
        try:
            fp.seek(read_file_meta_from(fp, path).data_offset)
        except FileMetaError as exc:
            raise SendError(str(exc)) from None
        data = fp.read()
    return data + b"\x00" if len(data) % 2 else data


#: Word size of the binary VRs whose values are byte-swapped between big and little endian
#: (PS3.5 7.3). OB and UN are byte streams and never swapped.
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _big_to_little(ds: Dataset) -> None:
    """Make a data set read as Explicit VR Big Endian writable in little endian.

    Every element, in every sequence item, is converted from its raw big-endian bytes to a
    value (pydicom then writes numbers in the new byte order); the values pydicom keeps as
    bytes are swapped here word by word: OW (16-bit words, also when they hold 8-bit
    pixels), OF/OL (32-bit), OD/OV (64-bit). Native Pixel Data of more than 16 bits
    allocated is swapped in words of Bits Allocated, as pydicom reads it.
    """
    import numpy as np

    def swap(parent: Dataset, elem: DataElement) -> None:
        size = _WORD_SIZES.get(str(elem.VR))
        value = elem.value
        if not size or not isinstance(value, bytes | bytearray) or not value:
            return
        if elem.tag == 0x7FE00010:
            bits = int(parent.get("BitsAllocated", 16) or 16)
            size = max(size, bits // 8)
        if len(value) % size:
            raise SendError(
                f"{elem.tag} {elem.keyword or 'element'}: {len(value)} bytes of {elem.VR} "
                f"are not whole {size}-byte words, so they cannot be converted from big "
                "endian: fix the file or send it to a peer that accepts Explicit VR Big Endian"
            )
        dtype = np.dtype(f">u{size}")
        elem.value = np.frombuffer(value, dtype=dtype).astype(dtype.newbyteorder("<")).tobytes()

    ds.walk(swap)


@contextlib.contextmanager
def _quiet_decoders() -> Iterator[None]:
    """pydicom logs each failing decoder plugin at ERROR with a full traceback; the
    SendError below already names every plugin's reason, so keep its log out of ours."""
    logger = logging.getLogger("pydicom.pixels.decoders.base")
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


def transcode(path: Path, target: str) -> Dataset:
    """Read ``path`` and return it ready to be encoded in ``target`` (an uncompressed syntax).

    Compressed pixel data is decoded; big endian and deflated files are simply re-encoded.
    Raises SendError naming the file when the pixel data cannot be decoded.
    """
    from pydicom import dcmread
    from pydicom.uid import UID

    ds = dcmread(path, force=True)  # force: a bare data set has no preamble nor meta header
    if "TransferSyntaxUID" not in ds.file_meta:  # the little-endian syntax it was read in
        ds.file_meta.TransferSyntaxUID = UID(read_file_meta(path).transfer_syntax)
    source = UID(ds.file_meta.TransferSyntaxUID)
    lossy_before = ds.get("LossyImageCompression")
    # An object without Pixel Data filed under a compressed syntax (a report or a
    # presentation state archived with its study's syntax) is plain Explicit VR Little
    # Endian inside: nothing to decode, it is only re-encoded.
    if source.is_compressed and source != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and "PixelData" in ds:
        flagged = str(lossy_before or "").strip() == "01"
        method = None if flagged else lossy_method(ds, source)
        try:
            with _quiet_decoders():
                ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # the decoders raise many types; name the file and the fix
            raise SendError(
                f"{path}: cannot decode (7FE0,0010) PixelData in {source.name} to send it "
                f"uncompressed ({exc}); the destination accepts no compressed syntax for "
                f"this SOP class: enable it on the PACS or install a decoder for it"
            ) from exc
        # Once lossy, always lossy (PS3.3 C.7.6.1.1.5): a lossy stream makes it 01 even if
        # the element said 00 (as DCMTK's dcmdjpeg/dcmdjpls do); otherwise it stays as it was.
        if method is not None:
            if lossy_before is not None and not flagged:
                log.warning(
                    "%s: (0028,2110) LossyImageCompression said %r but its %s pixel data is"
                    " lossy: sent decoded as 01",
                    path,
                    str(lossy_before),
                    source.name,
                )
            ds.LossyImageCompression = "01"
            if "LossyImageCompressionMethod" not in ds:
                ds.LossyImageCompressionMethod = method
        elif lossy_before is not None:
            ds.LossyImageCompression = lossy_before
    elif source == EXPLICIT_VR_BIG_ENDIAN:
        _big_to_little(ds)
    # The data set keeps its original encoding: pydicom's writer sees that it differs from
    # the target's and converts every element still held as raw bytes (sequences of defined
    # length included) and resolves ambiguous VRs. Declaring the target as the original
    # encoding would make it copy those raw bytes verbatim: explicit VR headers inside an
    # implicit VR stream.
    ds.file_meta.TransferSyntaxUID = UID(target)
    return ds


def encode_dataset(ds: Dataset, target: str) -> bytes:
    """The data set's bytes in ``target`` (Explicit or Implicit VR Little Endian), as they go
    into P-DATA (no preamble, no file meta). SendError when pydicom cannot write it."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = target == IMPLICIT_VR_LITTLE_ENDIAN
    try:
        write_dataset(fp, ds)
    except Exception as exc:  # pydicom's writer raises many types for a value it cannot write
        raise SendError(f"pydicom cannot encode the data set in {target}: {exc}") from exc
    return fp.getvalue()
