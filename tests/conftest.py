"""Shared pytest fixtures: real peers (see tests/peers.py) and small data helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import Orthanc, Storescp, run_orthanc, run_storescp


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc (empty storage) on free loopback ports."""
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Storescp]:
    """DCMTK storescp with its defaults (uncompressed transfer syntaxes only)."""
    with run_storescp(tmp_path / "storescp") as server:
        yield server


@pytest.fixture
def storescp_any(tmp_path: Path) -> Iterator[Storescp]:
    """DCMTK storescp accepting every transfer syntax (+xa)."""
    with run_storescp(tmp_path / "storescp-xa", extra=["+xa"]) as server:
        yield server
