"""Sub-commands of the whole node: ``run``, ``status``, ``check-config``."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from node.config import Config, config_to_dict, load_config, located
from node.errors import NodeError

log = logging.getLogger(__name__)


def load_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``--config`` (or the built-in defaults); the one the CLI already
    loaded for its log settings when it did (``args.loaded_config``): not parsed twice."""
    loaded = getattr(args, "loaded_config", None)
    return loaded if loaded is not None else load_config(getattr(args, "config", None))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run",
        parents=[common],
        help="run the node: watcher, queue workers, SCU, SCP and export",
        description="Run the node with the given config until SIGTERM/SIGINT.",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="queue depth, last errors, counters and liveness, read from the state DB",
        description="Works from another shell while the node runs (reads node.state_dir).",
        epilog="exit status (LSB status convention): 0 running and healthy; 1 running but"
        " degraded (a component NOT RUNNING, dead jobs, or jobs waiting for a retry);"
        " 3 not running (no component alive, or no state database). The same with --json."
        " A state database that cannot be read (damaged, locked) is an error: 1 or 2 with"
        " one line on stderr.",
    )
    p.add_argument("--json", action="store_true", help="JSON output (default: text)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the config as `run` does and print it resolved (absolute paths, "
        "defaults filled)",
    )
    p.set_defaults(func=cmd_check_config)


def cmd_run(args: argparse.Namespace) -> int:
    from node.service import NodeService

    return NodeService(load_from_args(args)).run_forever()


def cmd_status(args: argparse.Namespace) -> int:
    from node.status import assess, collect_status, format_status

    cfg = load_from_args(args)
    report = collect_status(cfg)
    code, health, problems = assess(report)
    if args.json:
        import json  # here: `send` and `convert` load this module too

        report = {"health": health, "problems": problems, "exit_status": code, **report}
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_status(report))
    return code


def check_rooms(cfg: Config) -> None:
    """The rooms' own checks (values the schema alone cannot judge), as ``run`` makes them
    before it starts anything: ``[ingest.defaults]`` keywords and values against the DICOM
    dictionary and their VRs, the file-name pattern's group names, the ingest folders
    sharing one file system, ``[export]`` ranges, and :mod:`node.preflight` (folders usable
    and not nested, the SCP's access rules and TLS files, TLS destinations)."""
    from node.export.exporter import check_config as check_export
    from node.ingest.convert import ConvertOptions
    from node.ingest.pipeline import check_one_file_system, work_folders
    from node.preflight import preflight

    try:
        ConvertOptions.from_config(cfg)
        preflight(cfg)
        if cfg.ingest.enabled:
            check_one_file_system(work_folders(cfg), create=False)
        check_export(cfg.export)
    except NodeError as exc:  # name the file (and the key's line) as the schema does
        raise located(exc, cfg.source) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    check_rooms(cfg)
    import json

    print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=False))
    return 0
