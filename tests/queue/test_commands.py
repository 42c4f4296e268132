"""``dicom-node queue`` against a state directory that holds no job store."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main


@pytest.mark.parametrize(
    "argv",
    [["list"], ["list", "--state", "dead"], ["show", "1"], ["retry"], ["purge", "--state", "done"]],
)
def test_no_job_store_is_an_error_not_an_empty_queue(
    tmp_path: Path, argv: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A mistyped -c or base_dir must not read as "the queue is empty" (nor create a DB)."""
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nstate_dir = "nowhere/state"\n')
    assert main(["queue", *argv, "-c", str(cfg)]) == 2
    assert "no job store at" in caplog.text and "-c FILE" in caplog.text
    assert not (tmp_path / "nowhere").exists()
