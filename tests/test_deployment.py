"""What an administrator installs from ``config/``: the example configs and the systemd
unit, checked against each other, the README's steps and the schema."""

from __future__ import annotations

import configparser
import shlex
import tomllib
from pathlib import Path

import pytest

from node.config import config_from_dict

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "config" / "dicom-node.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_the_schema(path: Path, tmp_path: Path) -> None:
    table = tomllib.loads(path.read_text())
    table.setdefault("node", {})["base_dir"] = str(tmp_path)  # e.g. /var/lib/dicom-node
    config_from_dict(table, path.parent)


def test_systemd_unit_does_not_restart_a_config_error_for_ever() -> None:
    """Exit status 2 is a bad config (or another node on the state directory): restarting
    every RestartSec cannot fix it and only floods the journal."""
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["KillSignal"] == "SIGTERM"  # the graceful stop of `dicom-node run`


def test_systemd_unit_matches_the_production_example_and_the_readme() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "dicom-node" and argv[1:3] == ["run", "--config"]
    config_path = argv[3]
    production = tomllib.loads((REPO / "config" / "production.example.toml").read_text())
    base_dir = production["node"]["base_dir"]
    assert service["WorkingDirectory"] == base_dir
    assert base_dir in service["ReadWritePaths"].split()  # ProtectSystem=strict otherwise
    readme = (REPO / "README.md").read_text()
    assert f"dicom-node check-config -c {config_path}" in readme
    assert str(Path(argv[0]).parent.parent) in readme  # the venv the README creates
    assert "journalctl -u dicom-node" in readme


def _installed_venv() -> bool:
    stamp = REPO / ".venv" / ".dicom-node-installed"
    pyproject = REPO / "pyproject.toml"
    return stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime


@pytest.mark.skipif(not _installed_venv(), reason="scripts/run would install into .venv first")
@pytest.mark.parametrize("how", ["env", "option"])
def test_scripts_run_takes_a_relative_config_from_the_callers_directory(
    tmp_path: Path, how: str
) -> None:
    """`cd /etc/dicom-node && /opt/dicom-node/scripts/run -c node.toml` means this
    directory's node.toml, not one in the repository (the script used to cd there first:
    "cannot read config file node.toml", or worse, the repository's own file)."""
    import os
    import subprocess

    (tmp_path / "node.toml").write_text("[recieve]\nport = 104\n")
    env = dict(os.environ)
    argv = [str(REPO / "scripts" / "run")]
    if how == "env":
        env["DICOM_NODE_CONFIG"] = "node.toml"
    else:
        argv += ["-c", "node.toml"]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "node.toml:1: recieve: unknown section (did you mean 'receive'?" in done.stderr
    assert not (tmp_path / "var").exists()
