"""The ``dicom-node`` command line: one parser, one sub-command module per room.

Each room owns its sub-commands in a ``commands`` module exposing
``register(subparsers, common)``; it adds its parsers with ``parents=[common]`` and sets
``func`` to a callable ``(args) -> int``. ``main(argv=None) -> int`` never calls
``sys.exit`` itself, so tests drive it directly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from node import __version__
from node.errors import NodeError
from node.logs import setup_logging

log = logging.getLogger(__name__)

#: Modules that contribute sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "node.service_commands",  # run, status, check-config
    "node.ingest.commands",  # convert
    "node.send.commands",  # send, echo
    "node.queue.commands",  # queue
    "node.receive.commands",  # receive
    "node.export.commands",  # render
)


def common_options() -> argparse.ArgumentParser:
    """Options every sub-command accepts (defaults suppressed so either position works)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("general options")
    group.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML configuration file (default: built-in defaults under the current directory)",
    )
    group.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=argparse.SUPPRESS,
        help="log verbosity (default: the config's node.log_level, INFO)",
    )
    group.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=argparse.SUPPRESS,
        help="log line format (default: the config's node.log_format, text)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="DICOM network node: drop-folder ingestion, PACS push, SCP with export.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub, common)
    return parser


def _log_settings(args: argparse.Namespace) -> tuple[str, str]:
    """Command-line log options win over the config's ``[node]`` ones, then the defaults."""
    level = getattr(args, "log_level", None)
    fmt = getattr(args, "log_format", None)
    config = getattr(args, "config", None)
    if (level is None or fmt is None) and config:
        from node.config import load_config

        try:
            cfg = load_config(config)
        except NodeError:
            pass  # the command itself reports a bad config
        else:
            level = level or cfg.node.log_level
            fmt = fmt or cfg.node.log_format
    return level or "INFO", fmt or "text"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dicom-node`` and ``python -m node``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    level, fmt = _log_settings(args)
    setup_logging(level, fmt)
    try:
        return int(args.func(args))
    except NodeError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
