"""One object whose transfer outlasts the lease, two workers on the destination, DCMTK's
storescp behind a slow link: the object arrives once and its job is done once.

The link is a relay that passes the C-STORE's bytes in small slices with a pause between
them (a slow WAN or an overloaded PACS); storescp itself is the real peer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import Config, Destination, QueueSection
from node.queue.store import JobState, JobStore
from node.send.worker import DeliveryWorker, enqueue_delivery
from tests.peers import LOOPBACK, run_storescp
from tests.send.data import native_sc
from tests.send.peers import until

SLICE = 32 * 1024
PAUSE = 0.03  # ~1 MB/s: the 4 MB object takes about four 1-second leases


@contextlib.contextmanager
def slow_link(port: int) -> Iterator[int]:
    """A relay on a free port to 127.0.0.1:port, slow towards the peer."""
    server = socket.create_server((LOOPBACK, 0))
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket, slow: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(SLICE):
                dst.sendall(data)
                if slow:
                    time.sleep(PAUSE)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection((LOOPBACK, port))
            for src, dst, slow in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=pump, args=(src, dst, slow), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.mark.parametrize("engine", ["wire", "pynetdicom"])
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)
def test_an_object_longer_than_the_lease_is_sent_once(tmp_path: Path, engine: str) -> None:
    big = native_sc(tmp_path / "big.dcm", size=2048)  # 4 MB of pixels
    with run_storescp(tmp_path / "scp") as scp, slow_link(scp.port) as port:
        dest = Destination(name="pacs", host=LOOPBACK, port=port, called_ae=scp.aet, engine=engine)
        cfg = Config(queue=QueueSection(lease_seconds=1.0), destinations=[dest])
        store = JobStore(tmp_path / "state", durable=False)
        [job] = enqueue_delivery(store, big, ["pacs"])
        stop = threading.Event()
        workers = [
            DeliveryWorker(cfg, dest, store, owner=f"4242-{n}", heartbeat=False) for n in range(2)
        ]
        threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
        for thread in threads:
            thread.start()
        try:
            until(lambda: store.get(job).state == JobState.DONE, timeout=60)  # type: ignore[union-attr]
        finally:
            stop.set()
            for thread in threads:  # an in-flight C-STORE finishes first
                thread.join(60)
        done = store.get(job)
        assert done is not None and done.state == JobState.DONE
        assert done.attempts == 1  # claimed once: nobody took it over
        assert store.counters() == {"delivered": 1}
        assert len(scp.files()) == 1, [p.name for p in scp.files()]
        store.close()
