"""Who may associate: AE titles, source networks, bind check, transfer syntaxes, TLS."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    Verification,
)

from node.errors import ReceiveError
from node.queue.store import JobStore
from node.receive.scp import StorageSCP, check_access_config, server_tls_context
from tests.peers import LOOPBACK, peer_env, tool
from tests.receive.helpers import (
    AET,
    archived,
    dataset_bytes,
    dcmsend,
    echoscu,
    image_dataset,
    make_config,
    rejection,
    running_scp,
)

pytestmark = pytest.mark.dcmtk


def test_echo_from_dcmtk_and_tcp_nodelay(tmp_path: Path) -> None:
    with running_scp(tmp_path) as (scp, _, _):
        res = echoscu(scp.port)
        assert res.returncode == 0, res.stderr
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate(LOOPBACK, scp.port, ae_title=AET)
        try:
            assert assoc.is_established
            assert scp._ae is not None
            (server_side,) = scp._ae.active_associations
            sock = server_side.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            assoc.release()


def test_unknown_calling_ae_is_rejected_with_reason_3(tmp_path: Path) -> None:
    with running_scp(tmp_path, allowed_calling_aes=["MODALITY"]) as (scp, _, _):
        assert echoscu(scp.port, aet="MODALITY").returncode == 0
        res = echoscu(scp.port, aet="INTRUDER")
        assert res.returncode != 0
        assert "Calling AE Title Not Recognized" in res.stderr + res.stdout


def test_wrong_called_ae_is_rejected_with_reason_7(tmp_path: Path) -> None:
    with running_scp(tmp_path) as (scp, _, _):
        res = echoscu(scp.port, aec="SOMEONE-ELSE")
        assert res.returncode != 0
        assert "Called AE Title Not Recognized" in res.stderr + res.stdout
        assert echoscu(scp.port, aec=AET).returncode == 0


def test_reject_reason_seen_by_pynetdicom(tmp_path: Path) -> None:
    """The exact A-ASSOCIATE-RJ fields: rejected-permanent, service-user, reason 3."""
    with running_scp(tmp_path, allowed_calling_aes=["MODALITY"]) as (scp, _, _):
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        assert rejection(ae, scp.port) == (0x01, 0x01, 0x03)


def test_source_address_outside_allowed_networks_is_refused(tmp_path: Path) -> None:
    # Bound to loopback with an allow-list that excludes 127.0.0.1 (another loopback range):
    # starting is fine, 127.0.0.1 is not
    # admitted, and the connection is closed before any DICOM is read.
    with running_scp(tmp_path, allowed_networks=["127.1.0.0/16"]) as (scp, _, _):
        res = echoscu(scp.port)
        assert res.returncode != 0
        with socket.create_connection((LOOPBACK, scp.port), timeout=5) as sock:
            sock.settimeout(5)
            assert sock.recv(10) == b""  # closed by the SCP
    with running_scp(tmp_path / "ok", allowed_networks=["127.0.0.0/8"]) as (scp, _, _):
        assert echoscu(scp.port).returncode == 0


def test_non_loopback_bind_without_allow_list_refuses_to_start(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, host="0.0.0.0", allowed_networks=[], allowed_calling_aes=[])
    with pytest.raises(ReceiveError, match="allowed_networks"):
        check_access_config(cfg.receive)
    with JobStore(cfg.node.state_dir) as store, pytest.raises(ReceiveError):
        StorageSCP(cfg, store).start()
    # Loopback without lists, and non-loopback with a list, are accepted.
    check_access_config(make_config(tmp_path, allowed_networks=[]).receive)
    check_access_config(make_config(tmp_path, host="0.0.0.0").receive)


def test_deflated_transfer_syntax_is_refused(tmp_path: Path) -> None:
    with running_scp(tmp_path) as (scp, _, _):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1.99"])
        ae.add_requested_context(Verification)
        assoc = ae.associate(LOOPBACK, scp.port, ae_title=AET)
        try:
            assert assoc.is_established
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            assert CTImageStorage not in accepted
            assert Verification in accepted
        finally:
            assoc.release()


def test_compressed_syntax_preferred_over_uncompressed(tmp_path: Path) -> None:
    with running_scp(tmp_path) as (scp, _, _):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(
            CTImageStorage,
            [
                "1.2.840.10008.1.2.2",
                "1.2.840.10008.1.2",
                "1.2.840.10008.1.2.1",
                "1.2.840.10008.1.2.4.70",
            ],
        )
        assoc = ae.associate(LOOPBACK, scp.port, ae_title=AET)
        try:
            (cx,) = assoc.accepted_contexts
            assert cx.transfer_syntax[0] == "1.2.840.10008.1.2.4.70"
        finally:
            assoc.release()


def _make_certs(d: Path) -> dict[str, Path]:
    """A CA, a server and a client certificate (openssl CLI)."""
    ossl = tool("openssl")

    def run(*args: str) -> None:
        subprocess.run([ossl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2")  # fmt: skip
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_tls_port_with_client_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="node.receive.dataphase")
    certs = _make_certs(tmp_path)
    tls = {
        "enabled": True,
        "cert_file": str(certs["server.pem"]),
        "key_file": str(certs["server.key"]),
        "ca_file": str(certs["ca.pem"]),
        "verify_peer": True,
    }
    with running_scp(tmp_path / "node", tls_port=0, tls=tls) as (scp, _, _):
        assert scp.tls_port is not None
        # DCMTK echoscu over TLS with a client certificate signed by the CA.
        res = echoscu(
            scp.tls_port,
            extra=[
                "+tls",
                str(certs["client.key"]),
                str(certs["client.pem"]),
                "+cf",
                str(certs["ca.pem"]),
            ],  # fmt: skip
        )
        assert res.returncode == 0, res.stderr
        # C-STORE over TLS, several PDUs per object.
        big = tmp_path / "big.dcm"
        image_dataset(1024, 1024, bytes(range(256)) * 4096).save_as(big, enforce_file_format=True)
        res = subprocess.run(
            [
                tool("storescu"), "-aet", "MODALITY", "-aec", AET, "-pdu", "16384",
                "+tls", str(certs["client.key"]), str(certs["client.pem"]),
                "+cf", str(certs["ca.pem"]), LOOPBACK, str(scp.tls_port), str(big),
            ],
            env=peer_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        (stored,) = archived(scp.archive_root)
        assert dataset_bytes(stored)[1] == dataset_bytes(big)[1]
        # ... received by our own data phase over the TLS socket.
        # The SCP logs this after sending A-RELEASE-RP, so storescu may have exited first.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            "released (1 stored)" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
        assert any("released (1 stored)" in r.getMessage() for r in caplog.records)
        # Without a client certificate the handshake fails; the plain port still serves.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(certs["ca.pem"]))
        ctx.check_hostname = False
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate(LOOPBACK, scp.tls_port, ae_title=AET, tls_args=(ctx, None))
        assert not assoc.is_established
        # pynetdicom leaves the requestor's TLS socket open after a failed handshake.
        if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
            assoc.dul.socket.socket.close()
        # TLS older than 1.2 is refused (the context says so; the system OpenSSL may not
        # even let a client offer 1.1, so this is checked on the context itself).
        server_ctx = server_tls_context(scp.rcfg.tls)
        assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert echoscu(scp.port).returncode == 0


def test_tls_config_without_certificate_refuses_to_start(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tls={"enabled": True})
    with JobStore(cfg.node.state_dir) as store, pytest.raises(ReceiveError, match="cert_file"):
        StorageSCP(cfg, store).start()


def test_association_limit_and_idle_timeout(tmp_path: Path) -> None:
    with running_scp(tmp_path, max_associations=1, network_timeout=3.0) as (scp, _, _):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        first = ae.associate(LOOPBACK, scp.port, ae_title=AET)
        assert first.is_established
        # transient, presentation-related provider: local limit exceeded
        assert rejection(ae, scp.port) == (0x02, 0x03, 0x02)
        # The idle first association is dropped by the SCP after network_timeout ...
        deadline = time.monotonic() + 15
        while first.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not first.is_established
        # ... which frees the slot once its thread has ended.
        assert scp._ae is not None
        while scp._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert echoscu(scp.port).returncode == 0


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_connection_gone_before_its_request_frees_its_slot_at_once(
    tmp_path: Path, fast_path: bool
) -> None:
    """TCP health checks, port scans, garbage, a cut A-ASSOCIATE-RQ: the peer is gone.

    pynetdicom's association thread went on waiting acse_timeout (30 s) for the request,
    holding a slot: with max_associations = 2, three such probes made echoscu fail with
    "Local Limit Exceeded" for the next 30 s. The slot is now free as soon as the
    connection has closed."""
    probes = [b"", b"GET / HTTP/1.0\r\n\r\n", b"\x01\x00\x00\x00\x01\x00"]
    with running_scp(tmp_path, max_associations=2, fast_path=fast_path) as (scp, _, cfg):
        assert cfg.receive.acse_timeout >= 30
        for probe in probes * 2:
            with socket.create_connection((LOOPBACK, scp.port)) as s:
                s.sendall(probe)
        # The last probes may still be getting their threads when we look: poll echoscu
        # itself, for far less than acse_timeout (without the fix: 30 s of refusals).
        deadline = time.monotonic() + 5
        result = echoscu(scp.port)
        while result.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            result = echoscu(scp.port)
        assert result.returncode == 0, result.stdout + result.stderr
        assert scp._ae is not None
        assert len(scp._ae.active_associations) <= 1  # echoscu's own, releasing


def test_ipv6_loopback_bind_admits_ipv6_loopback_peers_by_default(tmp_path: Path) -> None:
    """receive.host = "::1" is loopback (no allow-list needed), but the default allow-list
    was 127.0.0.0/8 only: every connection from ::1 was closed ("not in
    receive.allowed_networks")."""
    with running_scp(tmp_path, host="::1") as (scp, _, _):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("::1", scp.port, ae_title=AET)
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()


def test_associations_leave_the_shared_supported_contexts_as_they_were(tmp_path: Path) -> None:
    """Every association reads the server's supported contexts without copying them
    (scp._SupportedContexts): negotiation of any kind must not change them."""
    from pynetdicom.pdu_primitives import (
        AsynchronousOperationsWindowNegotiation,
        SOPClassExtendedNegotiation,
        UserIdentityNegotiation,
    )
    from pynetdicom.presentation import build_role

    def snapshot(contexts: list[Any]) -> list[Any]:
        return [(type(c), sorted((k, repr(v)) for k, v in vars(c).items())) for c in contexts]

    with running_scp(tmp_path) as (scp, _, _):
        contexts = scp._servers[0][0].contexts
        before = snapshot(contexts)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.4.100"])  # refused syntax
        ae.add_requested_context("1.2.3.4.5.6")  # unknown abstract syntax
        ae.add_requested_context(Verification)
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = b"user"
        identity.secondary_field = b"secret"
        extended = SOPClassExtendedNegotiation()
        extended.sop_class_uid = CTImageStorage
        extended.service_class_application_information = b"\x02\x00\x00"
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 4
        window.maximum_number_operations_performed = 4
        negotiation = [
            build_role(CTImageStorage, scu_role=True, scp_role=True),
            identity,
            extended,
            window,
        ]
        assoc = ae.associate(LOOPBACK, scp.port, ae_title=AET, ext_neg=negotiation)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert echoscu(scp.port).returncode == 0
        assert echoscu(scp.port, aec="SOMEONE-ELSE").returncode != 0
        assert dcmsend(scp.port, [Path(get_testdata_file("CT_small.dcm"))]).returncode == 0
        assert snapshot(contexts) == before
