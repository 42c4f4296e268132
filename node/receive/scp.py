"""The Storage SCP application entity: contexts, access control, TLS, limits.

:class:`StorageSCP` accepts C-ECHO, C-STORE for every storage SOP class pynetdicom knows (and
the retired ones and ``receive.extra_sop_classes``, see :mod:`node.receive.sopclasses`),
and Storage Commitment Push Model. For each proposed context it picks the first syntax of
:data:`TRANSFER_SYNTAXES` the sender offers: the sender's compressed syntax as it is (no
decompression), then Explicit VR LE, Implicit VR LE, and Explicit VR Big Endian last.
Deflated Explicit VR LE is not offered (an inflation bomb needs no pixels).

Access, in the order a connection meets it:

1. source address: ``receive.allowed_networks`` (empty = any); refused by closing the TCP
   connection before any DICOM is read;
2. concurrent connections: at most ``max_associations`` + 4 open sockets; above
   ``max_associations`` pynetdicom rejects with "local limit exceeded" (transient);
3. AE titles outside the DICOM default repertoire (or spaces only): A-ASSOCIATE-RJ reason
   7 or 3 before pynetdicom decodes the request (:mod:`node.receive.aetitles`);
4. called AE title must be ours (``require_called_ae``): A-ASSOCIATE-RJ reason 7;
5. calling AE title in ``receive.allowed_calling_aes`` (empty = any): RJ reason 3.

Binding to a non-loopback address with neither list set refuses to start. TLS (TLS 1.2+,
optional client-certificate verification) runs on its own port, with the handshake done
in the connection's thread under a timeout so a silent client cannot block accepting.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from node.config import Config, ReceiveSection, TLSSettings, is_loopback
from node.errors import ReceiveError
from node.queue import Job
from node.queue.store import JobStore
from node.receive import dataphase
from node.receive.archive import Archive
from node.receive.commitment import (
    CommitContext,
    Peer,
    deliver_queued_report,
    handle_dimse_sent,
    handle_n_action,
)
from node.receive.dataphase import DataPhaseSettings
from node.receive.guard import pdu_cap
from node.receive.handlers import (
    StoreContext,
    handle_conn_close,
    handle_conn_open,
    handle_echo,
    handle_store,
    set_nodelay,
)
from node.receive.ledger import Ledger
from node.receive.sopclasses import accepted_storage_classes, check_extra_classes
from node.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

#: The retired JPEG processes (PS3.5 Table A-1, 2008 and earlier): .52-.56 and .58-.66.
RETIRED_JPEG = [f"1.2.840.10008.1.2.4.{n}" for n in (*range(52, 57), *range(58, 67))]

#: Accepted transfer syntaxes, in preference order (the acceptor picks the first offered).
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14, SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL (Lossless Only)
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    # Video (Video Endoscopic/Microscopic/Photographic, US cine): stored as sent, never
    # decoded here. storescp +xa and Orthanc accept them; their senders rarely can offer
    # anything else.
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
    # Retired JPEG processes and JPEG 2000 Part 2, stored as sent as Orthanc does (its
    # JPEG / JPEG 2000 defaults): img2dcm and gdcmimg wrap a progressive JPEG in .55, and
    # older modalities still send the others. The export cannot render them.
    *RETIRED_JPEG,
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component (Lossless Only)
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
]
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]

_CONNECTION_SLACK = 4


def _networks(cfg: ReceiveSection) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in cfg.allowed_networks]


def check_access_config(cfg: ReceiveSection) -> None:
    """Refuse a configuration that would expose an open SCP, or cannot work (says why)."""
    if cfg.tls.enabled and cfg.tls_port and cfg.tls_port == cfg.port:
        raise ReceiveError(
            f"receive.tls_port = {cfg.tls_port} is also receive.port: TLS needs its own port"
        )
    if not 0 <= cfg.tls_port < 65536:
        raise ReceiveError(f"receive.tls_port: {cfg.tls_port} is not a TCP port (0-65535)")
    if cfg.chunk_threshold_bytes <= 0:
        raise ReceiveError("receive.chunk_threshold_bytes must be positive (bytes kept in memory)")
    if cfg.max_associations <= 0:
        raise ReceiveError("receive.max_associations must be at least 1")
    check_extra_classes(cfg.extra_sop_classes)
    if is_loopback(cfg.host):
        return
    if not cfg.allowed_networks and not cfg.allowed_calling_aes:
        raise ReceiveError(
            f"receive.host={cfg.host!r} is reachable from other machines but neither "
            "receive.allowed_networks nor receive.allowed_calling_aes is set: an open SCP "
            "accepts data from anyone. List the modalities' networks (e.g. "
            'allowed_networks = ["NETWORK/PREFIX", ...]) and/or AE titles, or bind to 127.0.0.1'
        )


def server_tls_context(tls: TLSSettings) -> ssl.SSLContext:
    if tls.cert_file is None or tls.key_file is None:
        raise ReceiveError(
            "receive.tls.enabled needs receive.tls.cert_file and receive.tls.key_file "
            "(the server certificate and its private key, PEM)"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ReceiveError(
            f"receive.tls.cert_file/key_file: cannot load {tls.cert_file}: {exc}"
        ) from None
    if tls.verify_peer:
        if tls.ca_file is None:
            raise ReceiveError(
                "receive.tls.verify_peer = true needs receive.tls.ca_file (the CA that signs "
                "the modalities' client certificates), or set verify_peer = false"
            )
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ReceiveError(f"receive.tls.ca_file: cannot load {tls.ca_file}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _SupportedContexts(list[PresentationContext]):
    """The server's supported contexts, shared by every association instead of copied.

    pynetdicom deep-copies them for every association it accepts: with every storage SOP
    class times the accepted transfer syntaxes that is ~4,700 UIDs re-created and
    re-validated by pydicom, 20-40 ms per association here (a modality that opens one
    association per image was capped near 20 images/s by it); even a copy sharing the UID
    strings took ~0.6 ms, a sixth of a whole C-ECHO association. Nothing needs a copy:
    pynetdicom 3.0 only reads the acceptor's supported contexts (``negotiate_as_acceptor``
    builds new context objects for its answer), and so do our handlers. A test runs
    associations with every kind of negotiation and checks these objects are unchanged
    afterwards, so a pynetdicom that starts writing to them is noticed.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


class _Server(ThreadedAssociationServer):
    """pynetdicom's server with address filtering, a connection cap and a safe handshake."""

    daemon_threads = True
    node_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    node_max_connections: int = 20
    node_io_timeout: float | None = None
    node_tls: ssl.SSLContext | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._node_lock = threading.Lock()
        self._node_open = 0
        super().__init__(*args, **kwargs)
        self.contexts = _SupportedContexts(self.contexts)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        sock, address = self.socket.accept()
        set_nodelay(sock)
        # A peer that stalls mid-PDU must not hold a thread forever.
        sock.settimeout(self.node_io_timeout)
        if self.node_tls is not None:
            sock = self.node_tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if self.node_networks:
            try:
                ip = ipaddress.ip_address(host.split("%")[0])
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not any(ip in net for net in self.node_networks):
                log.warning("connection from %s refused: not in receive.allowed_networks", host)
                return False
        with self._node_lock:
            if self._node_open >= self.node_max_connections:
                log.warning(
                    "connection from %s refused: %d connections open", host, self._node_open
                )
                return False
            self._node_open += 1
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                try:
                    request.do_handshake()
                except (OSError, ssl.SSLError) as exc:
                    log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._node_lock:
                self._node_open -= 1


class StorageSCP:
    """The C-STORE / C-ECHO / Storage Commitment SCP of the node."""

    def __init__(self, cfg: Config, store: JobStore) -> None:
        self.cfg = cfg
        self.rcfg = cfg.receive
        self.store = store
        self.archive = Archive(
            self.rcfg.archive,
            duplicates=self.rcfg.duplicates,
            min_free_bytes=self.rcfg.min_free_bytes,
            fsync=self.rcfg.fsync,
        )
        self._servers: list[tuple[_Server, threading.Thread]] = []
        self._ae: AE | None = None
        self._commit_ctx: CommitContext | None = None
        self._storage_classes: tuple[str, ...] = ()

    # ------------------------------------------------------------------ set-up

    def _make_ae(self) -> AE:
        r = self.rcfg
        ae = AE(ae_title=r.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = r.max_pdu
        ae.maximum_associations = r.max_associations
        ae.acse_timeout = r.acse_timeout
        ae.dimse_timeout = r.dimse_timeout
        ae.network_timeout = r.network_timeout
        ae.require_called_aet = r.require_called_ae
        ae.require_calling_aet = [a.strip() for a in r.allowed_calling_aes]
        for sop_class in self._storage_classes:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, UNCOMPRESSED)
        ae.add_supported_context(StorageCommitmentPushModel, UNCOMPRESSED)
        return ae

    def _handlers(self, ledger: Ledger) -> list[Any]:
        r = self.rcfg
        store_ctx = StoreContext(
            archive=self.archive,
            ledger=ledger,
            chunk_threshold=r.chunk_threshold_bytes,
            pdu_cap=pdu_cap(r.max_pdu),
            storage_classes=frozenset(self._storage_classes),
        )
        peers = {
            d.called_ae.strip(): Peer(
                host=d.host,
                port=d.port,
                called_ae=d.called_ae,
                calling_ae=d.calling_ae or r.ae_title,
            )
            for d in self.cfg.destinations
        }
        commit_ctx = CommitContext(ledger=ledger, peers=peers, timeout=r.dimse_timeout)
        self._commit_ctx = commit_ctx
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, handle_conn_open, [store_ctx])]
        if r.fast_path:
            settings = DataPhaseSettings(
                pdu_cap=pdu_cap(r.max_pdu),
                network_timeout=r.network_timeout if r.network_timeout > 0 else None,
                accept_timeout=r.acse_timeout if r.acse_timeout > 0 else 30.0,
            )
            handlers.append((evt.EVT_CONN_OPEN, dataphase.handle_conn_open, [store_ctx, settings]))
        return handlers + [
            (evt.EVT_CONN_CLOSE, handle_conn_close),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [store_ctx]),
            (evt.EVT_N_ACTION, handle_n_action, [commit_ctx]),
            (evt.EVT_DIMSE_SENT, handle_dimse_sent),
        ]

    def _serve(self, ae: AE, port: int, handlers: list[Any], tls: ssl.SSLContext | None) -> None:
        r = self.rcfg
        try:
            server: _Server = ae.make_server(  # type: ignore[assignment]
                (r.host, port), evt_handlers=handlers, server_class=_Server
            )
        except OSError as exc:
            raise ReceiveError(
                f"receive: cannot listen on {r.host}:{port}: {exc.strerror or exc} "
                "(is another SCP running there? set receive.port or --port)"
            ) from None
        server.node_networks = _networks(r)
        server.node_max_connections = r.max_associations + _CONNECTION_SLACK
        server.node_io_timeout = r.network_timeout if r.network_timeout > 0 else None
        server.node_tls = tls
        thread = threading.Thread(
            target=server.serve_forever, name=f"scp-{port}", kwargs={"poll_interval": 0.2}
        )
        thread.daemon = True
        thread.start()
        ae._servers.append(server)
        self._servers.append((server, thread))
        log.info(
            "%s SCP %s listening on %s:%d, archive %s",
            "TLS" if tls else "DICOM",
            r.ae_title,
            r.host,
            server.server_address[1],
            self.archive.root,
        )

    def start(self) -> None:
        """Bind and serve in background threads; ReceiveError on a refused config."""
        if self._servers:
            return
        r = self.rcfg
        check_access_config(r)
        self._storage_classes = accepted_storage_classes(r.extra_sop_classes)
        tls = server_tls_context(r.tls) if r.tls.enabled else None
        self.archive.prepare()
        ledger = Ledger(
            self.store,
            self.archive.root,
            quiet_seconds=r.study_quiet_seconds,
            forward=r.forward,
        )
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            # pynetdicom's "standard" handlers format a debug dump of every PDU and DIMSE
            # message even when nothing will log it (~0.4 ms per C-STORE). Process-wide,
            # but they only ever produce DEBUG output.
            pynetdicom_config.LOG_HANDLER_LEVEL = "none"
        ae = self._make_ae()
        handlers = self._handlers(ledger)
        self._ae = ae
        try:
            self._serve(ae, r.port, handlers, None)
            if tls is not None:
                self._serve(ae, r.tls_port, handlers, tls)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; give running associations ``grace`` seconds, then abort them."""
        for server, thread in self._servers:
            with contextlib.suppress(ValueError):
                server.shutdown()
            thread.join(5)
        self._servers = []
        if self._ae is not None:
            deadline = time.monotonic() + grace
            while self._ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in list(self._ae.active_associations):
                log.warning("aborting association with %s at shutdown", assoc.requestor.ae_title)
                phase = getattr(assoc, "_dicom_node_phase", None)
                if phase is not None:
                    phase.abort()  # our data phase: A-ABORT, and wake its blocked receive
                else:
                    assoc.abort()
            self._ae = None

    def deliver_report(self, job: Job) -> None:
        """Job handler for queued storage commitment reports (see node.receive.commitment)."""
        if self._commit_ctx is None:
            raise ReceiveError("the SCP is not running")
        deliver_queued_report(job, self._commit_ctx)

    @property
    def port(self) -> int:
        """The bound DICOM port (useful with ``receive.port = 0``)."""
        if not self._servers:
            raise ReceiveError("the SCP is not running")
        return int(self._servers[0][0].server_address[1])

    @property
    def alive(self) -> bool:
        """True while every listening thread is serving (for the node's heartbeat)."""
        return bool(self._servers) and all(thread.is_alive() for _, thread in self._servers)

    @property
    def tls_port(self) -> int | None:
        """The bound TLS port, or None without TLS."""
        if len(self._servers) < 2:
            return None
        return int(self._servers[1][0].server_address[1])

    @property
    def archive_root(self) -> Path:
        return self.archive.root
