"""Helpers for the SCP tests: a running StorageSCP, test objects, DCMTK senders."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.config import Config, config_from_dict
from node.queue.store import JobStore
from node.receive.scp import StorageSCP
from tests.peers import LOOPBACK, peer_env, tool

REPO = Path(__file__).resolve().parents[2]

AET = "DICOMNODE"

#: pydicom's bundled files covering the transfer syntaxes and IOD families a PACS sees.
SAMPLES = [
    "CT_small.dcm",  # CT, Explicit VR LE
    "MR_small.dcm",  # MR, Explicit VR LE
    "MR_small_implicit.dcm",  # Implicit VR LE
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "MR_small_RLE.dcm",  # RLE Lossless
    "SC_rgb_rle_2frame.dcm",  # RLE, multi-frame colour
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEGLSNearLossless_08.dcm",  # JPEG-LS near-lossless
    "JPGExtended.dcm",  # JPEG Extended
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, SC
    "rtplan.dcm",  # RT Plan (no pixels)
    "rtdose.dcm",  # RT Dose, multi-frame
    "test-SR.dcm",  # Structured report
    "waveform_ecg.dcm",  # waveform
]


def make_config(tmp: Path, top: dict[str, Any] | None = None, **receive: Any) -> Config:
    table: dict[str, Any] = {"port": 0, "min_free_bytes": 0, "study_quiet_seconds": 60.0}
    table.update(receive)
    return config_from_dict({**(top or {}), "receive": table}, tmp)


@contextlib.contextmanager
def running_scp(
    tmp: Path, top: dict[str, Any] | None = None, **receive: Any
) -> Iterator[tuple[StorageSCP, JobStore, Config]]:
    cfg = make_config(tmp, top, **receive)
    store = JobStore(cfg.node.state_dir)
    scp = StorageSCP(cfg, store)
    scp.start()
    try:
        yield scp, store, cfg
    finally:
        scp.stop(grace=2.0)
        store.close()


def renamed_copy(src: str | Path, out: Path, study_uid: str | None = None) -> Path:
    """``src`` with fresh Study/Series/SOP Instance UIDs, in its own transfer syntax."""
    ds = dcmread(src)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    # DCMTK drops (FFFC,FFFC) Data Set Trailing Padding when it sends: not part of the
    # object on the wire, so not part of the comparison either.
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def sample_files(out_dir: Path) -> list[Path]:
    paths = []
    for name in SAMPLES:
        src = get_testdata_file(name)
        assert src is not None, f"pydicom test file {name} missing"
        paths.append(dcmtk_encoded(renamed_copy(src, out_dir / name)))
    # JPEG Lossless SV1 (.70), made by DCMTK itself from the CT.
    ct = out_dir / "CT_small.dcm"
    sv1 = out_dir / "CT_jpeg_sv1.dcm"
    subprocess.run([tool("dcmcjpeg"), "+e1", str(ct), str(sv1)], check=True, capture_output=True)
    paths.append(dcmtk_encoded(renamed_copy(sv1, out_dir / "CT_jpeg_sv1_renamed.dcm")))
    sv1.unlink()
    return paths


def dcmtk_encoded(path: Path) -> Path:
    """Re-encode ``path`` as DCMTK puts it on the wire (explicit sequence lengths), in place.

    The SCP stores the bytes it received; comparing them with the file is fair only if
    the file holds what the sender transmits.
    """
    tmp = path.with_suffix(".tmp")
    subprocess.run([tool("dcmconv"), "+e", str(path), str(tmp)], check=True, capture_output=True)
    tmp.replace(path)
    return path


def dataset_bytes(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, the encoded data set after the File Meta Information)."""
    raw = path.read_bytes()
    fp = BytesIO(raw)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return str(meta.TransferSyntaxUID), raw[fp.tell() :]


def dcmsend(port: int, files: list[Path], *, aec: str = AET, aet: str = "MODALITY") -> Any:
    """DCMTK dcmsend (proposes each file's own transfer syntax), one association."""
    return subprocess.run(
        [tool("dcmsend"), "-aet", aet, "-aec", aec, "--no-halt", LOOPBACK, str(port)]
        + [str(f) for f in files],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def echoscu(
    port: int, *, aec: str = AET, aet: str = "MODALITY", extra: list[str] | None = None
) -> Any:
    return subprocess.run(
        [tool("echoscu"), "-aet", aet, "-aec", aec, *(extra or []), LOOPBACK, str(port)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_receive(config: Path) -> tuple[subprocess.Popen[str], int]:
    """``dicom-node receive --config CONFIG --port 0`` in a subprocess; returns it and the
    port it bound (read from its first line, printed once it listens)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "receive", "--config", str(config), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening on 127.0.0.1:PORT" once bound
    assert line.startswith("listening on"), f"unexpected first line {line!r}"
    return proc, int(line.rsplit(":", 1)[1])


def rejection(ae: Any, port: int, called_ae: str = AET) -> tuple[int, int, int] | None:
    """(result, source, reason) of the A-ASSOCIATE-RJ answering ``ae``'s request, or None
    when the association was accepted (it is released then).

    Read from the RJ PDU itself: pynetdicom 3.0.4's ``is_rejected`` misses a rejection whose
    connection closed before the requesting thread looked (see node/send/dimse.py)."""
    from pynetdicom import evt
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    seen: list[tuple[int, int, int]] = []

    def on_pdu(event: Any) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            seen.append((event.pdu.result, event.pdu.source, event.pdu.reason_diagnostic))

    assoc = ae.associate(
        LOOPBACK, port, ae_title=called_ae, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)]
    )
    if assoc.is_established:
        assoc.release()
        return None
    assert len(seen) == 1, f"no A-ASSOCIATE-RJ and no association (aborted?): {seen}"
    return seen[0]


def archived(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if ".incoming" not in p.parts)


def archive_target(root: Path, src: Path) -> tuple[Dataset, Path]:
    """``src``'s header and where the SCP stores it: ``<root>/<Study>/<Series>/<SOP>.dcm``."""
    ds = dcmread(src, stop_before_pixels=True)
    return ds, root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def image_dataset(rows: int, cols: int, pixel_bytes: bytes, **uids: str) -> Dataset:
    """A small Secondary Capture dataset (Explicit VR LE), for crafted objects."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = uids.get("sop", generate_uid())
    ds.StudyInstanceUID = uids.get("study", generate_uid())
    ds.SeriesInstanceUID = uids.get("series", generate_uid())
    ds.PatientID = "TEST"
    ds.Modality = "OT"
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixel_bytes
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def quiet_build(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Build hostile datasets without pydicom's validation warnings (errors in pytest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def replace_cfg(cfg: Config, **receive: Any) -> Config:
    return dataclasses.replace(cfg, receive=dataclasses.replace(cfg.receive, **receive))
