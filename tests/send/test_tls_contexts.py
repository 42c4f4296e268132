"""TLS to a destination, and batches needing more than 128 presentation contexts."""

from __future__ import annotations

import contextlib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from node.config import Destination, TLSSettings
from node.send.contexts import SendItem
from node.send.scu import StoreSCU
from node.send.worker import read_header
from tests.peers import LOOPBACK
from tests.send.data import native_sc
from tests.send.peers import serving


def _openssl(*args: str) -> None:
    subprocess.run(["/usr/bin/openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(d / f"{name}.pem"),
        )
    return d


@contextlib.contextmanager
def tls_scp(pki: Path, *, require_client_cert: bool) -> Iterator[tuple[int, list[str]]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    received: list[str] = []

    def handle(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.7", [ExplicitVRLittleEndian])
    with serving(ae, [(evt.EVT_C_STORE, handle)], ssl_context=ctx) as port:
        yield port, received


def _send(dest: Destination, files: list[Path]) -> list[str]:
    items = [SendItem(path=f, key=i, **read_header(f)) for i, f in enumerate(files)]
    out: list[str] = []
    StoreSCU(dest, calling_ae="ME").send(items, lambda i, o: out.append(o.describe()))
    return out


def test_tls_with_client_certificate(tmp_path: Path, pki: Path) -> None:
    f = native_sc(tmp_path / "a.dcm")
    with tls_scp(pki, require_client_cert=True) as (port, received):
        tls = TLSSettings(
            enabled=True,
            ca_file=pki / "ca.pem",
            cert_file=pki / "client.pem",
            key_file=pki / "client.key",
        )
        dest = Destination(name="t", host=LOOPBACK, port=port, called_ae="TLSPACS", tls=tls)
        assert _send(dest, [f]) == ["delivered"]
    assert received == [dcmread(f).SOPInstanceUID]


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)
def test_tls_refuses_a_server_our_ca_did_not_sign(tmp_path: Path, pki: Path) -> None:
    f = native_sc(tmp_path / "a.dcm")
    other = tmp_path / "other-ca.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Other",
        "-keyout",
        str(tmp_path / "o.key"),
        "-out",
        str(other),
    )
    with tls_scp(pki, require_client_cert=False) as (port, received):
        tls = TLSSettings(enabled=True, ca_file=other)
        dest = Destination(name="t", host=LOOPBACK, port=port, called_ae="TLSPACS", tls=tls)
        [outcome] = _send(dest, [f])
    assert outcome.startswith("retry: cannot connect")
    assert received == []


def test_more_than_128_contexts_use_several_associations(tmp_path: Path) -> None:
    # 70 storage SOP classes x 2 contexts (explicit = own syntax, implicit) = 140 > 128.
    storage = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    classes = [uid for uid in storage if uid_to_service_class(uid) is StorageServiceClass][:70]
    assert len(classes) == 70
    files = []
    for i, uid in enumerate(classes):
        path = native_sc(tmp_path / f"{i}.dcm")
        ds = dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    associations: list[int] = []
    received: list[str] = []

    def on_accept(event: evt.Event) -> None:
        associations.append(len(event.assoc.accepted_contexts))

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPClassUID))
        return 0

    ae = AE(ae_title="MANY")
    for uid in classes:
        ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    with serving(ae, [(evt.EVT_ACCEPTED, on_accept), (evt.EVT_C_STORE, on_store)]) as port:
        dest = Destination(name="m", host=LOOPBACK, port=port, called_ae="MANY")
        assert _send(dest, files) == ["delivered"] * len(files)
    assert len(associations) == 2
    assert sorted(received) == sorted(classes)
