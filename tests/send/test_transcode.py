"""Files the peer does not take as they are, and odd files, checked against DCMTK.

Transcoding: the referee is ``dcmconv`` (+ti / +te): what we put on the wire after
converting a file must decode to the same data set as DCMTK's conversion of that file,
element for element, inside sequences too. Then the same through a real peer: DCMTK storescp
accepting Implicit VR Little Endian only (``+xi``). Also: deflated files of odd length,
objects without pixels under a compressed syntax, and a file whose meta contradicts its
data set.
"""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from node.config import Destination
from node.send.contexts import SendItem, encode_dataset, transcode
from node.send.scu import StoreSCU
from node.send.worker import read_header
from tests.peers import LOOPBACK, Storescp, run_storescp, tool

DCMCONV = {ImplicitVRLittleEndian: "+ti", ExplicitVRLittleEndian: "+te"}

#: (pydicom test file, conversion made first with dcmconv or None) -> what it exercises.
SOURCES = {
    ("CT_small.dcm", None): "explicit LE, a sequence of defined length (OtherPatientIDs)",
    ("test-SR.dcm", None): "explicit LE, nested sequences of defined length",
    ("rtplan.dcm", None): "implicit LE, nested sequences of defined length",
    ("waveform_ecg.dcm", "+tb"): "big endian: OW waveform data, private OW/OB elements",
    ("examples_palette.dcm", "+tb"): "big endian: OW palette LUT data",
    ("examples_overlay.dcm", "+tb"): "big endian: OW overlay data",
    ("SC_rgb_small_odd.dcm", "+tb"): "big endian: 8-bit RGB pixels in OW",
    ("MR_small.dcm", "+tb"): "big endian: 16-bit pixels",
}


def _source(name: str, conversion: str | None, tmp: Path) -> Path:
    src = get_testdata_file(name)
    assert src is not None, name
    if conversion is None:
        return Path(src)
    out = tmp / f"{Path(name).stem}{conversion.replace('+', '_')}.dcm"
    subprocess.run([tool("dcmconv"), conversion, src, str(out)], check=True, capture_output=True)
    return out


def _dcmconv(src: Path, target: str, tmp: Path) -> Dataset:
    out = tmp / f"ref-{src.stem}-{DCMCONV[target][1:]}.dcm"
    subprocess.run(
        [tool("dcmconv"), DCMCONV[target], str(src), str(out)], check=True, capture_output=True
    )
    return dcmread(out)


def _comparable(ds: Dataset) -> dict[str, Any]:
    """The data set as DICOM JSON (values, not encodings); DCMTK drops trailing padding."""
    ds.pop(0xFFFCFFFC, None)
    return ds.to_json_dict()


def _send(scp: Storescp, files: list[Path], engine: str = "wire") -> dict[str, str]:
    """Send ``files`` to ``scp`` in one batch; each file's outcome by its path."""
    dest = Destination(name="pacs", host=LOOPBACK, port=scp.port, called_ae=scp.aet, engine=engine)
    items = [SendItem(path=f, key=i, **read_header(f)) for i, f in enumerate(files)]
    outcomes: dict[str, str] = {}
    StoreSCU(dest, calling_ae="DICOMNODE").send(
        items, lambda item, out: outcomes.__setitem__(str(item.path), out.describe())
    )
    return outcomes


@pytest.mark.dcmtk
@pytest.mark.parametrize("target", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize(("name", "conversion"), list(SOURCES), ids=[n for n, _ in SOURCES])
def test_transcoded_data_set_equals_dcmconv(
    tmp_path: Path, name: str, conversion: str | None, target: str
) -> None:
    src = _source(name, conversion, tmp_path)
    wire = encode_dataset(transcode(src, target), target)
    ours = read_dataset(BytesIO(wire), target == ImplicitVRLittleEndian, True)
    assert _comparable(ours) == _comparable(_dcmconv(src, target, tmp_path)), SOURCES[
        (name, conversion)
    ]


@pytest.mark.dcmtk
@pytest.mark.parametrize("engine", ["wire", "pynetdicom"])
def test_peer_accepting_only_implicit_gets_sequences_and_words_right(
    tmp_path: Path, engine: str
) -> None:
    """storescp +xi: every file goes out converted to Implicit VR LE, and arrives whole.

    Before the fix, a defined-length sequence went out with its explicit VR bytes inside the
    implicit stream (storescp aborted: "Element PatientID larger than remaining bytes of
    surrounding item", and we retried for ever), and big-endian OW values other than 16-bit
    pixels (LUTs, overlays, waveforms, 8-bit pixels) went out unswapped.
    """
    files = [_source(n, c, tmp_path) for n, c in SOURCES if (n, c) != ("rtplan.dcm", None)]
    with run_storescp(tmp_path / "scp", extra=["+xi"]) as scp:
        outcomes = _send(scp, files, engine)
        received = scp.by_uid()
    assert set(outcomes.values()) == {"delivered"}, outcomes
    for f in files:
        got = dcmread(received[str(dcmread(f).SOPInstanceUID)])
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        want = _dcmconv(f, ImplicitVRLittleEndian, tmp_path)
        assert _comparable(got) == _comparable(want), f.name


def _data_set_length(path: Path) -> int:
    from node.filemeta import read_file_meta

    return path.stat().st_size - read_file_meta(path).data_offset


@pytest.mark.dcmtk
@pytest.mark.parametrize("engine", ["wire", "pynetdicom"])
def test_deflated_file_of_odd_length_reaches_a_peer_that_accepts_deflate(
    tmp_path: Path, engine: str
) -> None:
    """dcmconv +td stores the deflate stream unpadded; sent as it was, its last PDV was odd
    and storescp +xa aborted ("Odd Fragment Length"): a retry for ever. It now goes with one
    NUL after the stream, and arrives deflated with the same data set."""
    files = [_source(n, "+td", tmp_path) for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    assert any(_data_set_length(f) % 2 for f in files)  # the case under test is present
    with run_storescp(tmp_path / "scp", extra=["+xa"]) as scp:
        outcomes = _send(scp, files, engine)
        received = scp.by_uid()
    assert set(outcomes.values()) == {"delivered"}, outcomes
    for f in files:
        got = dcmread(received[str(dcmread(f).SOPInstanceUID)])
        assert got.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
        assert _comparable(got) == _comparable(dcmread(f)), f.name


@pytest.mark.dcmtk
def test_object_without_pixels_filed_under_a_compressed_syntax_is_re_encoded(
    tmp_path: Path, storescp: Storescp
) -> None:
    """An SR written with its study's JPEG transfer syntax: the peer takes no JPEG for SR,
    and there is nothing to decode. It used to go dead ("compressed transfer syntax but no
    Pixel Data"); it is now sent in Explicit VR Little Endian, data set unchanged."""
    src = get_testdata_file("test-SR.dcm")
    assert src is not None
    ds = dcmread(src)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "sr_jpeg_ts.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _send(storescp, [path]) == {str(path): "delivered"}
    [got_path] = storescp.files()
    got = dcmread(got_path)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert _comparable(got) == _comparable(dcmread(src))


@pytest.mark.dcmtk
def test_refusal_of_a_file_whose_meta_contradicts_its_data_set_says_so(
    tmp_path: Path, storescp: Storescp
) -> None:
    """pydicom's rtplan.dcm: (0002,0003) is not its (0008,0018). The command carries the
    meta's UID, storescp answers 0xA900 "data set does not match SOP class", and the reason
    used to stop there; it now names both UIDs and the fix."""
    src = get_testdata_file("rtplan.dcm")
    assert src is not None
    path = tmp_path / "rtplan.dcm"
    path.write_bytes(Path(src).read_bytes())
    [outcome] = _send(storescp, [path]).values()
    assert outcome.startswith("dead: peer status 0xA900")
    assert "(0008,0018) SOPInstanceUID is 1.2.777.777.77.7.7777.7777.20030903150023" in outcome
    assert (
        "(0002,0003) MediaStorageSOPInstanceUID" in outcome
        and read_header(path)["sop_instance_uid"] in outcome
    )


@pytest.mark.dcmtk
@pytest.mark.parametrize("engine", ["wire", "pynetdicom"])
def test_file_whose_data_set_has_odd_length_is_dead_and_the_batch_goes_on(
    tmp_path: Path, engine: str
) -> None:
    """A stray byte after the last element: storescp aborted on the odd last PDV, the file
    was retried until the queue gave up, and the rest of its batch went back to the queue
    each time. It is now dead at once, naming the length, and the batch goes on."""
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    odd = tmp_path / "odd.dcm"
    odd.write_bytes(Path(ct).read_bytes() + b"\x00")
    good = _source("MR_small.dcm", None, tmp_path)
    with run_storescp(tmp_path / "scp") as scp:
        outcomes = _send(scp, [odd, good], engine)
        assert len(scp.files()) == 1
    assert outcomes[str(good)] == "delivered"
    assert outcomes[str(odd)].startswith("dead: ")
    assert "odd length" in outcomes[str(odd)]


def _compressed(path: Path, syntax: str, flag: str | None = None, **kw: Any) -> Path:
    """CT_small compressed by pydicom (openjpeg / CharLS encoders), which writes no (0028,2110)
    LossyImageCompression even for a lossy stream (``flag``: write this one); a fresh SOP
    Instance UID."""
    src = get_testdata_file("CT_small.dcm")
    assert src is not None
    ds = dcmread(src)
    ds.compress(syntax, generate_instance_uid=True, **kw)
    assert "LossyImageCompression" not in ds
    if flag is not None:
        ds.LossyImageCompression = flag
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.dcmtk
def test_lossy_jpeg_ls_and_jpeg_2000_streams_keep_their_lossy_history(tmp_path: Path) -> None:
    """A near-lossless JPEG-LS (NEAR > 0) or irreversible JPEG 2000 (9-7 wavelet) object
    without (0028,2110) decoded for an uncompressed-only peer arrived with no trace of its
    loss (PS3.3 C.7.6.1.1.5: once lossy, always lossy; DCMTK's dcmdjpls sets it). The
    stream says so: LossyImageCompression 01 and the method; lossless streams stay as they
    were (a wrong 00 on a lossy stream becomes 01)."""
    from pydicom.uid import (
        JPEG2000,
        JPEG2000Lossless,
        JPEGLSLossless,
        JPEGLSNearLossless,
    )

    files = {
        "j2k_lossy": (_compressed(tmp_path / "a.dcm", JPEG2000, j2k_cr=[10]), "ISO_15444_1"),
        "jls_near": (
            _compressed(tmp_path / "b.dcm", JPEGLSNearLossless, jls_error=3),
            "ISO_14495_1",
        ),
        "j2k_lossless": (_compressed(tmp_path / "c.dcm", JPEG2000Lossless), None),
        "jls_lossless": (_compressed(tmp_path / "d.dcm", JPEGLSLossless), None),
        # A wrong 00 on a lossy stream: 01 as DCMTK's dcmdjpls/dcmdjpeg make it; on a
        # lossless one it is kept.
        "jls_near_said_00": (
            _compressed(tmp_path / "e.dcm", JPEGLSNearLossless, "00", jls_error=2),
            "ISO_14495_1",
        ),
        "jls_lossless_said_00": (_compressed(tmp_path / "f.dcm", JPEGLSLossless, "00"), "00"),
    }
    with run_storescp(tmp_path / "scp") as scp:  # its defaults: uncompressed only
        dest = Destination(
            name="scp", host=LOOPBACK, port=scp.port, called_ae=scp.aet, dimse_timeout=30
        )
        items = [
            SendItem(path=f, key=i, **read_header(f)) for i, (f, _) in enumerate(files.values())
        ]
        outcomes: list[str] = []
        StoreSCU(dest, calling_ae="DICOMNODE").send(
            items, lambda _item, outcome: outcomes.append(outcome.describe())
        )
        assert outcomes == ["delivered"] * len(files)
        received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in scp.files()}
    for name, (src, method) in files.items():
        dump = subprocess.run(
            [
                tool("dcmdump"),
                "+P",
                "0002,0010",
                "+P",
                "0028,2110",
                "+P",
                "0028,2114",
                str(received[dcmread(src).SOPInstanceUID]),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "=LittleEndianExplicit" in dump, name
        if method is None:
            assert "LossyImageCompression" not in dump, (name, dump)
        elif method == "00":
            assert "(0028,2110) CS [00]" in dump and "(0028,2114)" not in dump, (name, dump)
        else:
            assert "(0028,2110) CS [01]" in dump, (name, dump)
            assert f"(0028,2114) CS [{method}]" in dump, (name, dump)
