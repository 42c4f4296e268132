"""The ``dicom-node`` command line: one parser, one sub-command module per room.

Each room owns its sub-commands in a ``commands`` module (listed in :data:`COMMANDS`)
exposing ``register(subparsers, common)``; it adds its parsers with ``parents=[common]``
and sets ``func`` to a callable ``(args) -> int``. ``main(argv=None) -> int`` never calls
``sys.exit`` itself, so tests drive it directly; :func:`console` is the installed script.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from node import __version__
from node.errors import NodeError
from node.logs import FORMATS, LEVELS, setup_logging

log = logging.getLogger(__name__)

#: Sub-command -> the module that registers it, in the order they appear in ``--help``.
#: Only the module of the command being run is imported (start-up time matters for batch
#: tools: pynetdicom, numpy and the renderers are not loaded for ``convert``).
COMMANDS = {
    "run": "node.service_commands",
    "status": "node.service_commands",
    "check-config": "node.service_commands",
    "convert": "node.ingest.commands",
    "send": "node.send.commands",
    "echo": "node.send.commands",
    "queue": "node.queue.commands",
    "receive": "node.receive.commands",
    "render": "node.export.commands",
}
_VALUE_OPTIONS = ("-c", "--config", "--log-level", "--log-format")


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (first positional word), if any."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUE_OPTIONS:
            skip = True
        elif not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def _columns() -> int:
    """The terminal width as ``shutil.get_terminal_size`` finds it (``COLUMNS``, the
    terminal of stdout, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, the terminal width found without ``import shutil``: argparse
    makes a formatter for every ``add_argument`` and its ``import shutil`` (bz2, lzma ...)
    cost every command ~6 ms of start-up, help or not."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _columns() - 2 if width is None else width
        )


class Parser(argparse.ArgumentParser):
    """Every parser of the CLI (sub-commands inherit it) with :class:`_Formatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def common_options() -> argparse.ArgumentParser:
    """Options every sub-command accepts (defaults suppressed so either position works)."""
    common = Parser(add_help=False)
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
        choices=list(LEVELS),
        default=argparse.SUPPRESS,
        help="log verbosity (default: the config's node.log_level, INFO)",
    )
    group.add_argument(
        "--log-format",
        choices=list(FORMATS),
        default=argparse.SUPPRESS,
        help="log line format (default: the config's node.log_format, text)",
    )
    return common


def build_parser(command: str | None = None, *, commands: bool = True) -> argparse.ArgumentParser:
    """The parser; with ``command``, only the module registering it is imported.

    ``commands=False`` registers no sub-command at all (for ``--version``).
    """
    common = common_options()
    parser = Parser(
        prog="dicom-node",
        description="DICOM network node: drop-folder ingestion, PACS push, SCP with export.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command in COMMANDS:
        modules = [COMMANDS[command]]
    else:
        modules = list(dict.fromkeys(COMMANDS.values())) if commands else []
    for name in modules:
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
            # The command itself reports the bad config: in the format the file asks for
            # when that part of it is readable (a log shipper parsing JSON lines would
            # otherwise drop the one line that says why the node did not start).
            node = _raw_node_table(config)
            if level is None and node.get("log_level") in LEVELS:
                level = node["log_level"]
            if fmt is None and node.get("log_format") in FORMATS:
                fmt = node["log_format"]
        else:
            args.loaded_config = cfg  # the command's load_from_args takes it
            level = level or cfg.node.log_level
            fmt = fmt or cfg.node.log_format
    return level or "INFO", fmt or "text"


def _raw_node_table(path: str) -> dict[str, object]:
    """The ``[node]`` table of the TOML file at ``path`` as written, or {} if unreadable."""
    import tomllib

    try:
        with open(path, "rb") as f:
            node = tomllib.load(f).get("node")
    except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return {}
    return node if isinstance(node, dict) else {}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dicom-node`` and ``python -m node``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    # `dicom-node --version` needs no sub-command: do not import all of them for it.
    version_only = command is None and "--version" in argv and not {"-h", "--help"} & set(argv)
    parser = build_parser(command, commands=not version_only)
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
    except BrokenPipeError:  # e.g. `dicom-node check-config | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # a folder or file the command needs, refused by the system
        log.debug("details", exc_info=True)
        where = f" {exc.filename}" if exc.filename else ""
        log.error(
            "%s:%s %s (check the path and its permissions; --log-level DEBUG shows where)",
            args.command,
            where,
            exc.strerror or exc,
        )
        return 1
    except Exception as exc:
        # The job store (damaged, locked too long, disk full): sqlite3 is imported only by
        # the commands that use it, and is not imported here for the others.
        sqlite3 = sys.modules.get("sqlite3")
        if sqlite3 is None or not isinstance(exc, sqlite3.Error):
            raise
        log.debug("details", exc_info=True)
        log.error("%s: the job store refused: %s (%s)", args.command, exc, _store_hint(exc))
        return 1


def _store_hint(exc: BaseException) -> str:
    """What to do about a job store error, for the one line the CLI prints."""
    from node.queue.store import BUSY_SECONDS, is_damage, is_locked

    if is_damage(exc) or "not a database" in str(exc):
        return "the database is damaged: `dicom-node run` salvages it at its next start"
    if is_locked(exc):
        return (
            f"another process held a write transaction for over {BUSY_SECONDS:g} s: close a "
            "`sqlite3` shell left open on it, then try again"
        )
    if "full" in str(exc):
        return "free space on the file system of node.state_dir"
    return "--log-level DEBUG shows where"


def console() -> NoReturn:
    """The ``dicom-node`` console script and ``python -m node``: :func:`main`, then exit.

    Once a command has returned, tearing the interpreter down (clearing every module, the
    final garbage collections) takes 20-30 ms here: a tenth of a whole ``convert`` or
    ``send`` of a few hundred files, spent after the work is done and durable. So when
    :func:`main` returns and no other non-daemon thread is alive, the ``atexit`` handlers
    run (they flush and close the log handlers), the standard streams are flushed and the
    process leaves with :func:`os._exit`, skipping only the teardown. An exception, a
    thread still running or a stream that cannot be flushed takes the normal exit.
    """
    code = main()
    main_thread = threading.main_thread()
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)  # CPython's own exit path
    if run_exitfuncs is None or any(
        t.is_alive() and not t.daemon for t in threading.enumerate() if t is not main_thread
    ):
        sys.exit(code)
    run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: let Python report it as usual
        sys.exit(code)
    os._exit(code)
