"""The Prometheus endpoint: what it serves, where it says it serves it, a taken port."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from node.config import MetricsSection
from node.errors import ConfigError
from node.metrics import Metrics
from node.queue import JobStore


def test_metrics_on_a_free_port_log_and_serve_the_bound_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    with JobStore(tmp_path) as store:
        store.bump("ingested", 3)
        metrics = Metrics(MetricsSection(enabled=True, port=0), store)
        metrics.start()
        try:
            assert metrics.port > 0
            assert f"metrics on http://127.0.0.1:{metrics.port}/metrics" in caplog.text
            url = f"http://127.0.0.1:{metrics.port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
                body = answer.read().decode()
            assert "dicom_node_ingested_total 3.0" in body
        finally:
            metrics.stop()


def test_a_taken_metrics_port_names_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken, JobStore(tmp_path) as store:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = Metrics(MetricsSection(enabled=True, port=port), store)
        with pytest.raises(
            ConfigError, match=f"metrics.port: cannot serve metrics on 127.0.0.1:{port}"
        ):
            metrics.start()


def test_every_metric_in_the_readme_is_served_with_a_specific_help_text(tmp_path: Path) -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"`(dicom_node_[a-z_]+)", readme))
    assert len(documented) >= 9
    with JobStore(tmp_path) as store:
        store.bump("exported", 2)
        metrics = Metrics(MetricsSection(enabled=True, port=0), store)
        metrics.start()
        try:
            url = f"http://127.0.0.1:{metrics.port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
                body = answer.read().decode()
        finally:
            metrics.stop()
    helps = dict(re.findall(r"^# HELP (dicom_node_\w+) (.*)$", body, re.M))
    assert documented <= set(helps), documented - set(helps)
    for name in documented:
        types = re.findall(rf"^# TYPE {name} (\w+)$", body, re.M)
        assert (types == ["counter"]) == (name.endswith("_total")), (name, types)
    # the export counter counts files (a PNG per frame, PDFs), which "Objects exported" hid
    assert "Files written by export" in helps["dicom_node_exported_total"]
    assert "dicom_node_exported_total 2.0" in body
