"""Checks of a loaded config against this machine, made before anything starts.

The schema (:mod:`node.config`) judges values alone; these judge them against the file
system and the rooms' own needs, as ``dicom-node run`` and ``dicom-node check-config`` both
must (one function, so that they refuse exactly the same configs):

- every folder the node writes to is a directory, or can be created as one, by this user;
- no two of those folders are the same or inside one another (the watcher would take the
  archive as a dropped series, the crash recovery of ``ingest.work`` would re-run what
  sits in a nested ``done`` ...);
- the SCP's access rules and TLS files, and each TLS destination's certificates, load.

Each refusal is a :class:`~node.errors.ConfigError` (or the room's own NodeError) naming
the key and saying how to fix it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from node.config import Config
from node.errors import ConfigError

log = logging.getLogger(__name__)


def node_folders(cfg: Config) -> dict[str, Path]:
    """The folders the enabled stages write into, by config key."""
    folders = {"node.state_dir": cfg.node.state_dir}
    if cfg.ingest.enabled:
        ing = cfg.ingest
        folders.update(
            {
                "ingest.inbox": ing.inbox,
                "ingest.work": ing.work,
                "ingest.done": ing.done,
                "ingest.quarantine": ing.quarantine,
                "ingest.outgoing": ing.outgoing,
            }
        )
    if cfg.receive.enabled:
        folders["receive.archive"] = cfg.receive.archive
    if cfg.export.enabled:
        folders["export.dir"] = cfg.export.dir
    return folders


def check_folder(key: str, folder: Path) -> None:
    """``folder`` is a writable directory, or its nearest existing parent is one."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "" if existing == folder else f" (its parent {existing})"
        raise ConfigError(
            f"{key}: {folder}{what} exists and is not a directory: point {key} at a folder "
            "(missing folders are created)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == folder else f" (its parent {existing}, where it is created)"
        raise ConfigError(
            f"{key}: {folder}{what} is not writable by this user (uid {os.getuid()}): "
            "change its owner or permissions, or choose another folder"
        )


def check_folders(cfg: Config) -> None:
    """Every folder usable, and no folder the same as or inside another one."""
    folders = node_folders(cfg)
    for key, folder in folders.items():
        check_folder(key, folder)
    resolved = {key: folder.resolve() for key, folder in folders.items()}
    keys = list(resolved)
    for i, key in enumerate(keys):
        for other in keys[:i]:
            a, b = resolved[key], resolved[other]
            if a == b:
                raise ConfigError(
                    f"{key} and {other} are the same folder ({a}): give each its own folder"
                )
            inner, outer = (key, other) if a.is_relative_to(b) else (other, key)
            if a.is_relative_to(b) or b.is_relative_to(a):
                raise ConfigError(
                    f"{inner} = {resolved[inner]} is inside {outer} = {resolved[outer]}: "
                    "put the node's folders side by side (e.g. var/inbox, var/archive), "
                    "not one inside another"
                )
    manifest = cfg.export.manifest
    if cfg.export.enabled and manifest is not None:
        if manifest.is_dir():
            raise ConfigError(
                f"export.manifest: {manifest} is a directory; give a file name "
                "(e.g. manifest.jsonl), or leave it unset for export.dir/manifest.jsonl"
            )
        check_folder("export.manifest", manifest.parent)


def check_network(cfg: Config) -> None:
    """The SCP's access rules and TLS files, and the TLS destinations' certificates."""
    if cfg.receive.enabled:
        from node.receive.scp import check_access_config, server_tls_context

        check_access_config(cfg.receive)
        if cfg.receive.tls.enabled:
            server_tls_context(cfg.receive.tls)
    tls_destinations = [d for d in cfg.destinations if d.tls.enabled]
    if tls_destinations:
        from node.send.tls import client_context

        for dest in tls_destinations:
            client_context(dest.tls, f"destinations.{dest.name}.tls")


def preflight(cfg: Config) -> None:
    """Everything :mod:`node.config` cannot judge alone; see the module docstring."""
    check_folders(cfg)
    check_network(cfg)
