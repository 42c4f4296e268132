"""Which storage SOP classes and transfer syntaxes the SCP accepts, compared with DCMTK.

A retired Ultrasound Image Storage object from an older ultrasound was refused ("no
presentation context") while storescp and Orthanc store it: pynetdicom's storage list has
no retired classes. The SCP must accept at least every storage class storescp accepts
with its defaults.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import UID_dictionary, generate_uid
from pynetdicom import AE

from tests.peers import LOOPBACK, free_port, peer_env, tool, wait_port
from tests.receive.helpers import (
    AET,
    archive_target,
    dataset_bytes,
    dcmsend,
    dcmtk_encoded,
    running_scp,
)

pytestmark = pytest.mark.dcmtk

#: Every storage SOP class pydicom names, and a few private ones modalities send.
STANDARD = sorted(
    uid
    for uid, (name, kind, *_rest) in UID_dictionary.items()
    if kind == "SOP Class" and "Storage" in name and uid.startswith("1.2.840.10008.5.1.4.1.1.")
)
PRIVATE = ["1.3.12.2.1107.5.9.1", "1.2.840.113619.4.26", "1.3.46.670589.5.0.1"]


def _accepted(port: int, called_ae: str, uids: list[str]) -> set[str]:
    ae = AE(ae_title="PROBE")
    accepted: set[str] = set()
    for start in range(0, len(uids), 100):
        ae.requested_contexts = []
        for uid in uids[start : start + 100]:
            ae.add_requested_context(uid)
        assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
        assert assoc.is_established
        accepted |= {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assoc.release()
    return accepted


def test_every_storage_class_storescp_accepts_is_accepted(tmp_path: Path) -> None:
    port = free_port()  # storescp with its defaults (run_storescp adds -pm: promiscuous)
    ref = subprocess.Popen([tool("storescp"), str(port)], env=peer_env(), cwd=tmp_path)
    try:
        wait_port(port, proc=ref)
        theirs = _accepted(port, "ANY-SCP", STANDARD + PRIVATE)
    finally:
        ref.terminate()
        ref.wait(10)
    with running_scp(tmp_path / "node") as (scp, _store, _cfg):
        ours = _accepted(scp.port, AET, STANDARD + PRIVATE)
    assert "1.2.840.10008.5.1.4.1.1.6" in theirs  # the measurement still measures something
    assert sorted(theirs - ours) == []
    assert not ours & set(PRIVATE)  # private classes: refused, as storescp does


@pytest.mark.parametrize("fast_path", [True, False])
def test_retired_ultrasound_objects_are_stored_as_sent(tmp_path: Path, fast_path: bool) -> None:
    """Retired US Image and US Multi-frame Image Storage, sent by dcmsend, on both paths."""
    from pydicom.data import get_testdata_file

    sources = []
    for uid, name in (
        ("1.2.840.10008.5.1.4.1.1.6", "SC_rgb_small_odd.dcm"),
        ("1.2.840.10008.5.1.4.1.1.3", "SC_rgb_rle_2frame.dcm"),
    ):
        ds = dcmread(get_testdata_file(name))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality = "US"
        path = tmp_path / "src" / f"{uid}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        sources.append(dcmtk_encoded(path))
    with running_scp(tmp_path / "node", fast_path=fast_path) as (_scp, _store, cfg):
        result = dcmsend(_scp.port, sources)
        assert result.returncode == 0, result.stderr
        for src in sources:
            ds, target = archive_target(cfg.receive.archive, src)
            assert dataset_bytes(target) == dataset_bytes(src)
            assert dcmread(target).file_meta.MediaStorageSOPClassUID == ds.SOPClassUID


def _video_object(path: Path, ts: str) -> Path:
    """A Video Endoscopic Image in ``ts``: its bitstream is opaque bytes (never decoded here)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "ES"
    ds.PatientID = "VIDEO1"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 480, 640, 30
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_PARTIAL_420"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    stream = b"\x00\x00\x00\x01\x67" + bytes(range(256)) * 40  # an H.264-like byte stream
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


VIDEO = [
    "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main
]


def test_video_transfer_syntaxes_are_accepted_and_stored_as_sent(tmp_path: Path) -> None:
    """A video endoscope proposes only its video syntax: storescp +xa and Orthanc take it,
    the node refused it (no presentation context). Sent with dcmsend, stored as sent."""
    sources = [_video_object(tmp_path / f"video-{ts}.dcm", ts) for ts in VIDEO]
    with running_scp(tmp_path / "node") as (scp, _store, cfg):
        result = dcmsend(scp.port, sources)
        assert result.returncode == 0, result.stdout + result.stderr
        for src in sources:
            ds, target = archive_target(cfg.receive.archive, src)
            assert dataset_bytes(target) == dataset_bytes(src), src.name


@pytest.mark.parametrize("fast_path", [True, False])
def test_retired_jpeg_syntaxes_are_accepted_and_stored_as_sent(
    tmp_path: Path, fast_path: bool
) -> None:
    """img2dcm wraps a progressive JPEG in the retired JPEG Full Progression syntax (.55);
    older modalities still send the other retired JPEG processes. Orthanc stores them
    (its JPEG and JPEG 2000 defaults, Part 2 included); the node refused them with no
    presentation context. Sent with dcmsend, stored as sent."""
    from PIL import Image

    jpeg = tmp_path / "progressive.jpg"
    Image.new("RGB", (80, 64), (200, 40, 90)).save(jpeg, progressive=True, quality=90)
    src = tmp_path / "progressive.dcm"
    subprocess.run([tool("img2dcm"), str(jpeg), str(src)], check=True, capture_output=True)
    assert str(dcmread(src).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.55"
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, _store, cfg):
        result = dcmsend(scp.port, [src])
        assert result.returncode == 0, result.stdout + result.stderr
        _ds, target = archive_target(cfg.receive.archive, src)
        assert target.is_file(), result.stdout + result.stderr
        assert dataset_bytes(target) == dataset_bytes(src)
        # Every retired JPEG process and JPEG 2000 Part 2, each proposed alone.
        ae = AE(ae_title="PROBE")
        retired = [52, 53, 54, 55, 56, 58, 59, 60, 61, 62, 63, 64, 65, 66, 92, 93]
        syntaxes = [f"1.2.840.10008.1.2.4.{n}" for n in retired]
        for ts in syntaxes:
            ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", [ts])
        assoc = ae.associate(LOOPBACK, scp.port, ae_title=AET)
        assert assoc.is_established
        accepted = sorted(str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts)
        assoc.release()
        assert accepted == sorted(syntaxes)


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_private_class_sent_on_a_ct_context_is_not_stored(
    tmp_path: Path, fast_path: bool
) -> None:
    """A private SOP class is refused at negotiation; sent on a context negotiated for CT
    (PS3.7 10.1: a DIMSE-C command's SOP class is its context's abstract syntax), our data
    phase stored it all the same. Now 0x0122 (SOP class not supported), and a CT object on
    the same context is still stored.

    pynetdicom routes a C-STORE by its (0000,0002) and aborts on a class it does not know;
    once another SCP of the process registered the class (receive.extra_sop_classes, as
    here), its path stored it. Our handler now answers 0x0122 there too."""
    from node.receive.sopclasses import accepted_storage_classes
    from tests.receive.helpers import archived, image_dataset
    from tests.receive.test_dataphase import _dataset_bytes, _wire

    accepted_storage_classes([PRIVATE[0]])  # registered with pynetdicom, process-wide
    ct = "1.2.840.10008.5.1.4.1.1.2"
    private = image_dataset(2, 2, b"\x01\x02\x03\x04")
    private.SOPClassUID = PRIVATE[0]
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, store, _cfg):
        wire, ids = _wire(scp.port, ct)
        outcome = wire.store(
            ids[ct],
            sop_class_uid=PRIVATE[0],
            sop_instance_uid=private.SOPInstanceUID,
            msg_id=1,
            data=_dataset_bytes(private),
        )
        assert outcome.status == 0x0122, outcome
        assert "SOP class not supported" in outcome.comment
        ct_object = image_dataset(2, 2, b"\x05\x06\x07\x08")
        ct_object.SOPClassUID = ct
        outcome = wire.store(
            ids[ct],
            sop_class_uid=ct,
            sop_instance_uid=ct_object.SOPInstanceUID,
            msg_id=2,
            data=_dataset_bytes(ct_object),
        )
        assert outcome.status == 0, outcome
        wire.release()
        assert [p.stem for p in archived(scp.archive_root)] == [ct_object.SOPInstanceUID]
        classes = [j.payload["sop_class_uid"] for j in store.select(kind="export_instance")]
        assert PRIVATE[0] not in classes


#: A storescu association profile proposing the Siemens CSA Non-Image class, which
#: DCMTK's own lists do not hold (storescu -xf FILE Private).
STORESCU_PRIVATE_PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[Private]
PresentationContext1 = 1.3.12.2.1107.5.9.1\\Uncompressed

[[Profiles]]
[Private]
PresentationContexts = Private
"""


def _csa_non_image(path: Path) -> Path:
    """A Siemens CSA Non-Image object: no pixels, a private CSA header blob."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = PRIVATE[0]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = "CSA1"
    ds.Modality = "MR"
    block = ds.private_block(0x0029, "SIEMENS CSA NON-IMAGE", create=True)
    block.add_new(0x10, "OB", b"SV10\x04\x03\x02\x01" + bytes(200))
    ds.save_as(path, enforce_file_format=True)
    return path


def _storescu_profile(port: int, profile: Path, src: Path) -> Any:
    return subprocess.run(
        [tool("storescu"), "-aet", "MODALITY", "-aec", AET, "-xf", str(profile), "Private"]
        + [LOOPBACK, str(port), str(src)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("fast_path", [True, False])
def test_extra_sop_classes_accepts_a_private_class(tmp_path: Path, fast_path: bool) -> None:
    """Siemens CSA Non-Image objects (sent by every Siemens MR/CT with its images) were
    refused at negotiation with no way to accept them. With receive.extra_sop_classes they
    are stored as received, recorded and queued like any object, on both paths; the export
    skips them (no pixels). Sent by storescu with an association profile (-xf)."""
    from node.config import ExportSection
    from node.export.exporter import Exporter

    src = dcmtk_encoded(_csa_non_image(tmp_path / "csa.dcm"))
    profile = tmp_path / "private.cfg"
    profile.write_text(STORESCU_PRIVATE_PROFILE)
    with running_scp(tmp_path / "plain", fast_path=fast_path) as (scp, store, cfg):
        refused = _storescu_profile(scp.port, profile, src)
        assert refused.returncode != 0
        assert "No Acceptable Presentation Contexts" in refused.stderr, refused.stderr
        probe = AE(ae_title="PROBE")
        probe.add_requested_context(PRIVATE[0])
        probe.add_requested_context("1.2.840.10008.1.1")
        assoc = probe.associate(LOOPBACK, scp.port, ae_title=AET)
        assert [cx.result for cx in assoc.rejected_contexts] == [0x03]  # abstract syntax
        assoc.release()  # not supported (PS3.8 9.3.3.2)
        assert not archive_target(cfg.receive.archive, src)[1].exists()
    extra = {"extra_sop_classes": [PRIVATE[0]], "fast_path": fast_path}
    with running_scp(tmp_path / "extra", **extra) as (scp, store, cfg):
        result = _storescu_profile(scp.port, profile, src)
        assert result.returncode == 0, result.stdout + result.stderr
        ds, target = archive_target(cfg.receive.archive, src)
        assert dataset_bytes(target) == dataset_bytes(src)
        dump = subprocess.run(
            [tool("dcmdump"), "+P", "0002,0002", "+P", "0008,0016", str(target)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert dump.count(f"[{PRIVATE[0]}]") == 2, dump  # file meta and data set agree
        jobs = [j.payload for j in store.select(kind="export_instance")]
        assert [j["sop_class_uid"] for j in jobs] == [PRIVATE[0]]
    export = ExportSection(dir=tmp_path / "export")
    assert Exporter(export, fsync=False).export_instance(target) == []


def test_extra_sop_classes_are_checked(tmp_path: Path) -> None:
    """A malformed UID is refused at config load naming the key; a UID DICOM defines as
    something else than a storage class (a transfer syntax, Storage Commitment) when the
    SCP is checked; a standard storage class listed is harmless."""
    from node.errors import ConfigError, ReceiveError
    from node.receive.scp import check_access_config
    from tests.receive.helpers import make_config

    for bad in ("1.3.12.2.1107.05.9.1", "1.3.12..2", "1.3.12.2.1107.5.9.1 ", "9" * 65):
        with pytest.raises(ConfigError, match=r"receive\.extra_sop_classes\[1\]"):
            make_config(tmp_path, extra_sop_classes=[PRIVATE[1], bad])
    for other in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.20.1", "1.2.840.10008.1.1"):
        cfg = make_config(tmp_path, extra_sop_classes=[other])
        with pytest.raises(ReceiveError, match=r"extra_sop_classes\[0\]: .* not a storage"):
            check_access_config(cfg.receive)
    check_access_config(make_config(tmp_path, extra_sop_classes=STANDARD[:1]).receive)
