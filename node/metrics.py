"""Optional Prometheus endpoint (``[metrics]``, 127.0.0.1 by default).

Counters and the queue-depth gauge are read from the state database at scrape time, so
they agree with ``dicom-node status`` and survive restarts; latency histograms are observed
in-process (conversion time, delivery latency from enqueue to acknowledgement).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from node.config import MetricsSection
from node.errors import ConfigError
from node.queue import JobStore

log = logging.getLogger(__name__)

#: State-DB counter -> the help text of its ``dicom_node_<name>_total`` counter.
COUNTERS = {
    "ingested": "Objects converted from the drop folder and queued for delivery",
    "delivered": "Objects acknowledged by a destination (once per object and destination)",
    "delivery_failed": "Deliveries given up for good (the job is dead; see dicom-node status)",
    "quarantined": "Drop-folder inputs moved to the quarantine folder",
    "received": "Objects stored by the SCP (C-STORE success)",
    "exported": "Files written by export (one PNG per frame, one PDF per series or study)",
}


class Metrics:
    """Prometheus registry for one node process; a no-op when disabled."""

    def __init__(self, cfg: MetricsSection, store: JobStore) -> None:
        self.cfg = cfg
        self.store = store
        self.enabled = cfg.enabled
        self._server: Any = None
        self.conversion_seconds: Any = None
        self.delivery_seconds: Any = None
        if not self.enabled:
            return
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store))
        self.conversion_seconds = Histogram(
            "dicom_node_conversion_seconds",
            "Time to convert one dropped input (a file or a folder) into DICOM",
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "dicom_node_delivery_latency_seconds",
            "Time from enqueue to the PACS acknowledging the object",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=self.registry,
        )

    def start(self) -> None:
        if not self.enabled:
            return
        from prometheus_client import start_http_server

        try:
            self._server, _thread = start_http_server(
                self.cfg.port, addr=self.cfg.host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics.port: cannot serve metrics on {self.cfg.host}:{self.cfg.port}: "
                f"{exc.strerror or exc} (another process there? set metrics.port, or "
                "metrics.enabled = false)"
            ) from None
        log.info("metrics on http://%s:%d/metrics", self.cfg.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (``metrics.port = 0`` takes a free one); 0 when not serving."""
        return int(self._server.server_port) if self._server is not None else 0

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # shutdown() only stops the loop: free the port
            self._server = None

    def observe_conversion(self, seconds: float) -> None:
        if self.conversion_seconds is not None:
            self.conversion_seconds.observe(seconds)

    def observe_delivery(self, seconds: float) -> None:
        if self.delivery_seconds is not None:
            self.delivery_seconds.observe(seconds)


class _StoreCollector:
    """Exposes the state DB's counters and queue depth at scrape time."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        values = self.store.counters()
        for name, help_text in COUNTERS.items():
            family = CounterMetricFamily(f"dicom_node_{name}", help_text)
            family.add_metric([], float(values.get(name, 0)))
            yield family
        depth = GaugeMetricFamily(
            "dicom_node_queue_depth",
            "Jobs by kind, destination and state (queued, claimed, retry: the backlog; "
            "done, dead: kept until dicom-node queue purge)",
            labels=["kind", "destination", "state"],
        )
        for kind, dest, state, count in self.store.counts():
            depth.add_metric([kind, dest, state], float(count))
        yield depth
