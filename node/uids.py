"""UIDs: the organisation root, our implementation UID, and deterministic UIDs.

By default UIDs live under ``2.25`` (PS3.5 B.2: a UUID written as a decimal integer), which
needs no registration. With a registered ``uid_root`` the suffix is derived from the same
hash and truncated so that the whole UID stays within 64 characters.

Deterministic UIDs make re-delivery idempotent: converting the same file in the same
study/series context always yields the same SOP Instance UID, so a PACS sees a duplicate,
not a second object.
"""

from __future__ import annotations

from node import __version__
from node.errors import ConfigError

DEFAULT_ROOT = "2.25"
#: Implementation Class UID of dicom-node (2.25 form, fixed for all versions).
IMPLEMENTATION_CLASS_UID = "2.25.245786319764920577254962932873934185947"
IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__}"[:16]


def uid_problem(value: str, max_length: int | None = 64) -> str | None:
    """Why ``value`` is not a valid UID (PS3.5 9.1: at most 64 characters, digits separated
    by dots, no empty component, no component with a leading zero), or None; ``max_length``
    None leaves the length to the caller (a root is checked against its own limit)."""
    if not value:
        return "empty"
    if max_length is not None and len(value) > max_length:
        return f"{len(value)} characters"
    parts = value.split(".")
    if any(not p for p in parts):
        return "an empty component"
    if any(not (p.isascii() and p.isdigit()) for p in parts):
        return "a character other than digits and dots"
    if any(len(p) > 1 and p[0] == "0" for p in parts):
        return "a component with a leading zero"
    return None


def validate_root(root: str) -> str:
    """Check a UID root: digits and dots, no empty or zero-padded component, short enough."""
    if uid_problem(root, max_length=None) is not None:
        raise ConfigError(
            f"uid_root {root!r} is not a valid UID root: use digits separated by dots, "
            "no component with a leading zero (e.g. 1.2.826.0.1.3680043.10.123)"
        )
    if len(root) > 40:
        raise ConfigError(f"uid_root {root!r} is too long ({len(root)} > 40 characters)")
    return root


def _from_int(root: str, value: int) -> str:
    if root == DEFAULT_ROOT:
        return f"2.25.{value % (1 << 128)}"
    room = 64 - len(root) - 1
    digits = str(value)[:room].lstrip("0") or "0"
    return f"{root}.{digits}"


def uid_from_seed(root: str, *seed: str | bytes) -> str:
    """A UID derived deterministically from ``seed`` (strings or bytes) under ``root``."""
    import hashlib  # loads OpenSSL (~7 ms): only where UIDs are derived, not for `send`

    h = hashlib.sha256()
    for part in seed:
        # surrogateescape: a file name that is not UTF-8 (Latin-1 bytes from a Windows share)
        # seeds with its own bytes; any other text encodes as plain UTF-8.
        data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return _from_int(root, int.from_bytes(h.digest()[:16], "big"))


def new_uid(root: str = DEFAULT_ROOT) -> str:
    """A fresh random UID under ``root``."""
    import uuid  # imports platform (a dozen regexes): only where random UIDs are made

    return _from_int(root, uuid.uuid4().int)
