"""Sub-commands of the whole node: ``run``, ``status``, ``check-config``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from node.config import Config, config_to_dict, load_config

log = logging.getLogger(__name__)


def load_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``--config`` (or the built-in defaults)."""
    return load_config(getattr(args, "config", None))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run",
        parents=[common],
        help="run the node: watcher, queue workers, SCU, SCP and export",
        description="Run the node with the given config until SIGTERM/SIGINT.",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the config and print it resolved (paths absolute, defaults filled)",
    )
    p.set_defaults(func=cmd_check_config)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    print(
        "dicom-node run: the node service is not yet available in this version.\n"
        f"It will watch {cfg.ingest.inbox}, deliver to "
        f"{', '.join(d.name for d in cfg.destinations) or 'no destination'}, and receive on "
        f"{cfg.receive.host}:{cfg.receive.port} into {cfg.receive.archive}.",
        file=sys.stderr,
    )
    return 3


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=False))
    return 0
