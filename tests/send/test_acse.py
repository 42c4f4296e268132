"""Our A-ASSOCIATE requestor (node.send.acse): the PDU it writes, the answers it reads.

The request is checked against pynetdicom's PDU decoder (an independent implementation);
answers are hand-built PDUs (well-formed and broken), a raw TCP peer, and DCMTK storescp.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pynetdicom.pdu import A_ASSOCIATE_RQ

from node.config import Destination
from node.send import acse
from node.send.contexts import SendItem, read_header
from node.send.scu import StoreSCU
from node.send.wire import VERIFICATION, Wire
from node.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.peers import LOOPBACK, run_storescp
from tests.send.data import native_sc
from tests.send.peers import answering_server, scripted_scp, serving

SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"
JPEG = "1.2.840.10008.1.2.4.50"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
PROPOSED = [(SC, JPEG), (SC, EXPLICIT), (CT, IMPLICIT)]


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _ac_body(contexts: list[tuple[int, int, str]], max_length: int | None = 32768) -> bytes:
    """An A-ASSOCIATE-AC body (PS3.8 9.3.3): (context ID, result, transfer syntax) each."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cx_id, result, ts in contexts:
        items += _item(0x21, bytes((cx_id, 0, result, 0)) + _item(0x40, ts.encode()))
    user = _item(0x52, b"1.2.3.4")
    if max_length is not None:
        user = _item(0x51, struct.pack(">I", max_length)) + user
    items += _item(0x50, user)
    return struct.pack(">HH", 1, 0) + b"PACS".ljust(16) + b"ME".ljust(16) + bytes(32) + items


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


# ----------------------------------------------------------------- the request


def test_request_reads_back_identically_in_pynetdicom() -> None:
    raw = acse.encode_request("PACS", "DICOMNODE", PROPOSED, 16384)
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(raw)
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("PACS", "DICOMNODE")
    assert pdu.application_context_name == "1.2.840.10008.3.1.1.1"
    assert pdu.protocol_version == 1
    got = [
        (cx.context_id, cx.abstract_syntax, cx.transfer_syntax) for cx in pdu.presentation_context
    ]
    assert got == [(1, SC, [JPEG]), (3, SC, [EXPLICIT]), (5, CT, [IMPLICIT])]
    user = pdu.user_information
    assert user.maximum_length == 16384
    assert user.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert user.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert pdu.encode() == raw  # pynetdicom writes the very same bytes back


@pytest.mark.parametrize(
    ("called", "contexts", "message"),
    [
        ("", PROPOSED, "1 to 16 ASCII characters"),
        ("A" * 17, PROPOSED, "1 to 16 ASCII characters"),
        ("PACS", [(SC, EXPLICIT)] * 129, "at most 128"),
    ],
)
def test_request_refuses_what_cannot_be_encoded(
    called: str, contexts: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        acse.encode_request(called, "ME", contexts, 0)


# ----------------------------------------------------------------- the answer


def test_accept_keeps_only_accepted_contexts_with_the_proposed_syntax() -> None:
    body = _ac_body([(1, 4, IMPLICIT), (3, 0, EXPLICIT), (5, 0, IMPLICIT)], max_length=16384)
    accepted, peer_max, implementation = acse.decode_accept(body, PROPOSED)
    assert accepted == {(SC, EXPLICIT): 3, (CT, IMPLICIT): 5}
    assert (peer_max, implementation) == (16384, "1.2.3.4")


def test_accept_without_maximum_length_means_no_limit() -> None:
    accepted, peer_max, _ = acse.decode_accept(_ac_body([(1, 0, JPEG)], None), PROPOSED)
    assert accepted == {(SC, JPEG): 1} and peer_max == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_ac_body([(7, 0, EXPLICIT)]), "context 7, which was not proposed"),
        (_ac_body([(2, 0, EXPLICIT)]), "context 2, which was not proposed"),
        (_ac_body([(1, 0, JPEG)])[:-3], "overruns the PDU"),
        (_ac_body([])[:60], "at least 68 needed"),
        (_ac_body([(1, 0, JPEG)], max_length=6), "too small"),
    ],
    ids=["unknown-id", "even-id", "cut-item", "short", "tiny-pdu"],
)
def test_malformed_accept_is_an_association_error(body: bytes, message: str) -> None:
    with pytest.raises(acse.AssociationError, match=message):
        acse.decode_accept(body, PROPOSED)


def _negotiate(port: int, timeout: float = 5.0) -> acse.Association:
    sock = acse.connect(LOOPBACK, port, timeout=timeout)
    return acse.negotiate(
        sock, called_ae="PACS", calling_ae="ME", contexts=PROPOSED, max_pdu=0, timeout=timeout
    )


@pytest.mark.parametrize(
    ("answer", "hold", "message"),
    [
        (_pdu(0x07, bytes(4)), True, "aborted the association during negotiation"),
        (_pdu(0x05, bytes(4)), True, "unexpected PDU type 0x05"),
        (struct.pack(">BBI", 0x02, 0, 5_000_000), True, "too long"),
        (_pdu(0x02, _ac_body([]))[:40], False, "closed the connection"),
        (_pdu(0x02, _ac_body([]))[:40], True, "within the ACSE timeout"),
        (None, True, "no answer to A-ASSOCIATE-RQ within the ACSE timeout"),
    ],
    ids=["abort", "release-rq", "huge", "cut-and-closed", "cut-and-stalled", "silent"],
)
def test_peer_answers_badly(answer: bytes | None, hold: bool, message: str) -> None:
    with (
        answering_server(answer, hold=hold) as port,
        pytest.raises(acse.AssociationError, match=message),
    ):
        _negotiate(port, timeout=0.5)


def test_reject_names_result_source_and_reason() -> None:
    with (
        answering_server(_pdu(0x03, bytes((0, 2, 3, 1)))) as port,
        pytest.raises(acse.Rejected) as info,
    ):
        _negotiate(port)
    assert info.value.transient
    assert str(info.value) == (
        "Rejected Transient (Service Provider (Presentation): Temporary congestion)"
    )


def test_context_accepted_in_a_syntax_not_proposed_in_it_counts_as_not_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PS3.8 9.3.3.2: the acceptor picks one of the syntaxes proposed in the context. A
    peer answering another one failed the whole association (retried for days); now only
    that context is left out, with a warning, and the association goes on."""
    answer = _pdu(0x02, _ac_body([(1, 0, EXPLICIT), (3, 0, EXPLICIT), (5, 0, IMPLICIT)]))
    with answering_server(answer) as port:
        assoc = _negotiate(port)
        Wire(assoc.sock, assoc.peer_max_pdu, dimse_timeout=1, network_timeout=1).abort()
    assert assoc.contexts == {(SC, EXPLICIT): 3, (CT, IMPLICIT): 5}
    assert assoc.refused == {(SC, JPEG): acse.OTHER_SYNTAX}
    assert assoc.strays == {(SC, JPEG): (1, EXPLICIT)}
    [warning] = [r for r in caplog.records if r.name == "node.send.acse"]
    assert warning.levelname == "WARNING"
    assert "presentation context 1 (Secondary Capture Image Storage" in warning.getMessage()
    assert "with transfer syntax Explicit VR Little Endian (1.2.840.10008.1.2.1)" in (
        warning.getMessage()
    )
    assert "proposed: JPEG Baseline (Process 1)" in warning.getMessage()
    assert "not conformant (PS3.8 9.3.3.2)" in warning.getMessage()


def test_scu_reports_a_peer_accepting_only_unproposed_syntaxes_as_dead(tmp_path: Path) -> None:
    """A raw peer answering our only context in a syntax we did not propose (and no syntax
    at all): the association is released, and the file is dead, naming what happened."""
    f = native_sc(tmp_path / "a.dcm")
    item = SendItem(path=f, **read_header(f))
    answer = _pdu(0x02, _ac_body([(1, 0, IMPLICIT), (3, 0, EXPLICIT)]))
    out = []
    with answering_server(answer) as port:
        dest = Destination(name="p", host=LOOPBACK, port=port, called_ae="PACS")
        StoreSCU(dest, calling_ae="ME", engine="wire").send(
            [item], lambda _i, o: out.append(o.describe())
        )
    assert len(out) == 1
    assert out[0].startswith(
        f"dead: Secondary Capture Image Storage ({SC}): AE PACS@{LOOPBACK}:{port} accepted no "
        "presentation context for it with a transfer syntax we proposed (context 1 proposed "
        "with Explicit VR Little Endian, answered Implicit VR Little Endian (1.2.840.10008.1.2); "
        "context 3 proposed with Implicit VR Little Endian, answered Explicit VR Little "
        "Endian (1.2.840.10008.1.2.1)): the peer is not conformant"
    )


def test_accept_through_the_socket_then_release(tmp_path: Path) -> None:
    """A hand-built A-ASSOCIATE-AC over TCP: the association and its limits come through."""
    answer = _pdu(0x02, _ac_body([(1, 3, JPEG), (3, 0, EXPLICIT), (5, 0, IMPLICIT)], 4096))
    with answering_server(answer) as port:
        assoc = _negotiate(port)
        assert assoc.contexts == {(SC, EXPLICIT): 3, (CT, IMPLICIT): 5}
        wire = Wire(assoc.sock, assoc.peer_max_pdu, dimse_timeout=1, network_timeout=1)
        assert wire.fragment == 4096 - 6
        wire.abort()
        assert wire.closed and not wire.released


def test_scu_reports_a_silent_peer_as_retry(tmp_path: Path) -> None:
    f = native_sc(tmp_path / "a.dcm")
    item = SendItem(path=f, sop_class_uid=SC, sop_instance_uid="1.2.3", transfer_syntax=EXPLICIT)
    out = []
    with answering_server(None) as port:
        dest = Destination(name="p", host=LOOPBACK, port=port, called_ae="PACS", acse_timeout=0.3)
        scu = StoreSCU(dest, calling_ae="ME")
        scu.send([item], lambda _item, outcome: out.append(outcome.describe()))
    assert out == [
        f"retry: association with PACS@{LOOPBACK}:{port} failed: "
        "no answer to A-ASSOCIATE-RQ within the ACSE timeout"
    ]


# ----------------------------------------------------------------- a real acceptor


def test_dcmtk_storescp_accepts_what_it_supports(tmp_path: Path) -> None:
    """storescp with its defaults refuses JPEG and takes the uncompressed contexts; its
    maximum PDU length (16 KiB by default) bounds our fragments; C-ECHO and release work."""
    proposed = [*PROPOSED, (VERIFICATION, IMPLICIT)]
    with run_storescp(tmp_path / "in") as scp:
        sock = acse.connect(LOOPBACK, scp.port, timeout=5)
        assoc = acse.negotiate(
            sock, called_ae=scp.aet, calling_ae="ME", contexts=proposed, max_pdu=0, timeout=5
        )
        assert assoc.contexts == {(SC, EXPLICIT): 3, (CT, IMPLICIT): 5, (VERIFICATION, IMPLICIT): 7}
        assert assoc.peer_max_pdu == 16384
        assert assoc.peer_implementation.startswith("1.2.276.0.7230010.3")  # DCMTK's root
        wire = Wire(assoc.sock, assoc.peer_max_pdu, dimse_timeout=5, network_timeout=5)
        assert wire.echo(7).delivered
        wire.release()
        assert wire.closed and wire.released


def test_refusal_says_whether_the_sop_class_or_the_transfer_syntax_was_refused(
    tmp_path: Path,
) -> None:
    """storescp (defaults) refuses JPEG Baseline with result 4 (transfer syntaxes not
    supported), pynetdicom an SOP class it does not serve with result 3: a destination restricted to
    JPEG was reported as "SOP class Secondary Capture ... not accepted", sending the admin
    after the wrong setting."""
    from pydicom import dcmread

    from tests.send.data import jpeg_object

    jpeg = jpeg_object(tmp_path / "j.dcm")
    unknown = tmp_path / "u.dcm"
    ds = dcmread(native_sc(tmp_path / "n.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.11.12"
    ds.save_as(unknown)  # Variable Modality LUT Softcopy PS
    items = [SendItem(path=p, key=n, **read_header(p)) for n, p in enumerate([jpeg, unknown])]
    out: dict[int, str] = {}

    def send(item: SendItem, port: int, aet: str, preference: list[str]) -> None:
        dest = Destination(
            name="p", host=LOOPBACK, port=port, called_ae=aet, transfer_syntaxes=preference
        )
        StoreSCU(dest, calling_ae="ME", engine="wire").send(
            [item], lambda i, o: out.__setitem__(i.key, o.describe())
        )

    with run_storescp(tmp_path / "in") as scp:
        send(items[0], scp.port, scp.aet, [JPEG])
    with scripted_scp() as fake:  # storescp runs promiscuous (-pm) here: pynetdicom refuses
        send(items[1], fake.port, fake.aet, [])
    assert out[0].startswith("dead: Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7)")
    assert "accepts none of the transfer syntaxes proposed for it (JPEG Baseline" in out[0]
    assert "transfer-syntaxes-not-supported" in out[0] and "transfer_syntaxes" in out[0]
    assert out[1].startswith("dead: SOP class Variable Modality LUT")
    assert "(abstract-syntax-not-supported (provider rejection)); allow it on the PACS" in out[1]


@pytest.mark.parametrize("called", ["ABCDEFGHIJKLMNOPQ", "ÄRZTE"])
def test_scu_reports_an_unusable_ae_title_as_dead(tmp_path: Path, called: str) -> None:
    f = native_sc(tmp_path / "a.dcm")
    item = SendItem(path=f, sop_class_uid=SC, sop_instance_uid="1.2.3", transfer_syntax=EXPLICIT)
    out = []
    with answering_server(None) as port:
        dest = Destination(name="p", host=LOOPBACK, port=port, called_ae=called)
        StoreSCU(dest, calling_ae="ME").send([item], lambda _i, o: out.append(o.describe()))
    assert len(out) == 1 and out[0].startswith("dead: cannot request an association with ")
    assert "AE title" in out[0]


def test_pdv_fragments_are_capped_when_the_peer_announces_a_huge_maximum(tmp_path: Path) -> None:
    """A peer announcing 1 GiB got each file in one PDU, read into one buffer of the whole
    file's size: the fragment is capped as for a peer announcing no limit (0), and even."""
    from pydicom import dcmread
    from pynetdicom import AE, evt
    from pynetdicom.pdu import P_DATA_TF

    src = native_sc(tmp_path / "big.dcm", size=2200, bits=16)  # ~9.7 MB of pixels
    sizes: list[int] = []
    received: list[bytes] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            sizes.append(event.pdu.pdu_length)

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset.PixelData)
        return 0x0000

    ae = AE(ae_title="BIGPDU")
    ae.maximum_pdu_size = 1 << 30
    ae.add_supported_context(SC, [EXPLICIT])
    outcomes = []
    with serving(ae, [(evt.EVT_PDU_RECV, on_pdu), (evt.EVT_C_STORE, on_store)]) as port:
        dest = Destination(name="big", host=LOOPBACK, port=port, called_ae="BIGPDU")
        item = SendItem(path=src, **read_header(src))
        StoreSCU(dest, calling_ae="ME", engine="wire").send([item], lambda i, o: outcomes.append(o))
    assert [o.describe() for o in outcomes] == ["delivered"]
    assert received == [dcmread(src).PixelData]
    assert max(sizes) <= 4 * 1024 * 1024 + 6  # as for a peer announcing no limit
    assert all(size % 2 == 0 for size in sizes)
    assert sum(sizes) > len(received[0])
