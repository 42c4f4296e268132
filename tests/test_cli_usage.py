"""Usage errors of every sub-command: one log line naming the option, exit status 2.

Hostile, out-of-range and contradictory option values must be refused before any work
starts (no file read, no association, no output), never with a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from node.cli import main

CT = str(get_testdata_file("CT_small.dcm"))
PEER = "127.0.0.1:1"  # nothing listens there; none of these commands gets that far


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "127.0.0.1:65536"], "127.0.0.1:65536: port 65536 is not a TCP port"),
        (["echo", "--dest", "127.0.0.1:0"], "--dest 127.0.0.1:0: port 0 is not a TCP port"),
        (["send", "127.0.0.1:-1", CT], "127.0.0.1:-1: port -1 is not a TCP port"),
        (["echo", "--aec", "", PEER], "--aec: '' is not a valid AE title"),
        (["echo", "--aec", "A" * 17, PEER], "--aec: 'AAAAAAAAAAAAAAAAA' is not a valid AE"),
        (["echo", "--aet", "\u00c4RZT", PEER], "--aet: '\u00c4RZT' is not a valid AE title"),
        (["send", "--aec", "A\\B", PEER, CT], "--aec: 'A\\\\B' is not a valid AE title"),
        (["echo", "--max-pdu", "-5", PEER], "--max-pdu: -5 is out of range"),
        (["send", "--max-pdu", str(2**40), PEER, CT], f"--max-pdu: {2**40} is out of range"),
        (["receive", "--port", "65536"], "--port: 65536 is not a TCP port"),
        (["receive", "--aet", ""], "--aet: '' is not a valid AE title"),
        (["receive", "--archive", "{file}"], "--archive: {file} exists and is not a directory"),
        (["render", CT, "-o", "{file}"], "-o {file}: exists and is not a directory"),
        (["render", CT, "-o", "{out}", "-j", "-1"], "--jobs: -1 must be 0"),
        (["render", CT, "-o", "{out}", "--window", "nan", "40"], "--window: CENTER and WIDTH"),
        (["render", CT, "-o", "{out}", "--window", "40", "inf"], "--window: CENTER and WIDTH"),
        (["render", CT, "-o", "{out}", "--window", "40", "0.5"], "--window: WIDTH must be at"),
        (["render", CT, "-o", "{out}", "--window", "40", "-3"], "--window: WIDTH must be at"),
        (["render", CT, "-o", "{out}", "--date-shift", "3"], "--date-shift: dates are shifted"),
        (["convert", "{file}", "-o", "{out}", "--max-pixels", "0"], "--max-pixels: 0 must be"),
        (["convert", "{file}", "-o", "{out}", "--max-pixels", "-5"], "--max-pixels: -5 must be"),
        (["convert", "{file}", "-o", "{out}", "--processes", "0"], "--processes: 0 must be"),
        (["convert", "{file}", "-o", "{out}", "--threads", "-4"], "--threads: -4 must be"),
        (["convert", "{file}", "-o", "{out}", "--conversion-type", ""], "--conversion-type: empty"),
    ],
)
def test_bad_option_values_are_one_line_usage_errors(
    tmp_path: Path, argv: list[str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    a_file = tmp_path / "a file \u00e9"
    a_file.write_text("not a folder")
    out = tmp_path / "out"
    names = {"file": str(a_file), "out": str(out)}
    argv = [arg.format(**names) for arg in argv]
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nbase_dir = "{tmp_path}"\n')
    assert main([*argv, "-c", str(config)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and message.format(**names) in errors[0], errors
    assert len(errors) == 1 and "Traceback" not in caplog.text
    assert not out.exists()  # refused before any work


def test_a_file_system_refusal_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from node import service_commands

    def refused(args: object) -> int:
        raise PermissionError(13, "Permission denied", "/srv/dicom/state")

    monkeypatch.setattr(service_commands, "cmd_check_config", refused)
    config = tmp_path / "node.toml"
    config.write_text("")
    assert main(["check-config", "-c", str(config)]) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("check-config: /srv/dicom/state Permission denied")


@pytest.mark.parametrize("option", [[], ["--log-format", "json"]])
def test_a_config_asking_for_json_logs_gets_its_error_as_json_too(
    tmp_path: Path, option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`node.log_format = "json"` (the production example) feeds a log shipper that parses
    every stderr line: the one line saying why the node did not start must be JSON too,
    even though the same file has the mistake."""
    import json

    config = tmp_path / "node.toml"
    config.write_text('[node]\nlog_format = "json"\n\n[receive]\nport = "104"\n')
    assert main(["check-config", "-c", str(config), *option]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert record["message"].startswith(f"{config}:5: receive.port: expected an integer")


@pytest.mark.parametrize("columns", ["60", "140", "0", "wide", None])
def test_help_wraps_at_the_width_argparse_would_use(
    columns: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's formatter finds the terminal width without argparse's ``import shutil``."""
    import argparse

    from node.cli import _Formatter

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _Formatter("x")._width == argparse.HelpFormatter("x")._width


def test_log_levels_and_formats_are_spelled_alike_in_the_cli_and_the_config() -> None:
    import typing

    from node import logs
    from node.config import NodeSection

    hints = typing.get_type_hints(NodeSection)
    assert typing.get_args(hints["log_level"]) == logs.LEVELS
    assert typing.get_args(hints["log_format"]) == logs.FORMATS


def test_the_config_is_parsed_once_per_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI loaded --config for its log settings, then the command loaded it again."""
    from node import cli, config

    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text('[node]\nstate_dir = "state"\n')
    loads: list[object] = []
    real = config.load_config

    def counting(path: object = None) -> object:
        loads.append(path)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(config, "load_config", counting)
    monkeypatch.setattr("node.service_commands.load_config", counting)
    assert cli.main(["check-config", "-c", str(cfg_file)]) == 0
    assert len(loads) == 1
