"""Study-complete detection: the ``study_complete`` job and the forward rules it carries.

A study is complete when no instance of it has arrived for ``receive.study_quiet_seconds``.
There is no timer thread: every stored instance re-arms one ``study_complete`` job per
StudyInstanceUID (``replace=True``) with ``not_before = now + quiet``, so the job only
becomes claimable once the study has been quiet that long, and a crash loses nothing.
A late instance after the job ran re-arms it, and the study is reported complete again.

The payload carries everything the consumers (export, and the node's forwarding to
destinations) need without reading the archive::

    {"study_uid", "archive_dir", "calling_ae", "calling_aes", "series": [...],
     "modalities": [...], "instances": n, "forward": [destination names]}

``forward`` lists the destinations of the ``[[receive.forward]]`` rules that match (an
empty ``calling_ae`` or ``modality`` in a rule matches anything).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from node.config import ForwardRule

log = logging.getLogger(__name__)

KIND = "study_complete"


def forward_destinations(
    rules: Sequence[ForwardRule], calling_aes: Iterable[str], modalities: Iterable[str]
) -> list[str]:
    """Destination names of the rules matching a study's senders and modalities."""
    aes = {ae.strip() for ae in calling_aes}
    mods = {m.strip().upper() for m in modalities}
    out: list[str] = []
    for rule in rules:
        if rule.calling_ae and rule.calling_ae.strip() not in aes:
            continue
        if rule.modality and rule.modality.strip().upper() not in mods:
            continue
        if rule.destination not in out:
            out.append(rule.destination)
    return out


def study_payload(
    *,
    study_uid: str,
    archive_dir: Path,
    calling_ae: str,
    calling_aes: list[str],
    series: list[str],
    modalities: list[str],
    instances: int,
    rules: Sequence[ForwardRule],
) -> dict[str, Any]:
    """The ``study_complete`` job payload."""
    return {
        "study_uid": study_uid,
        "archive_dir": str(archive_dir),
        "calling_ae": calling_ae,
        "calling_aes": calling_aes,
        "series": series,
        "modalities": modalities,
        "instances": instances,
        "forward": forward_destinations(rules, calling_aes, modalities),
    }
