"""Where a key is in a TOML file: the line a config error points the operator at.

A light scan of table headers (``[receive]``, ``[[destinations]]``) and ``key = value``
lines, multi-line strings skipped: enough to turn ``receive.ae_titel: unknown key`` into
``node.toml:12: receive.ae_titel: ...`` as compilers do. Not a TOML parser (``tomllib``
has already parsed the file when this runs); a key it cannot place gets no line.
"""

from __future__ import annotations


def key_line(text: str, key: str) -> int | None:
    """The 1-based line of ``key`` (``receive.port``, ``destinations[1].host``,
    ``receive.allowed_networks[2]``) in TOML ``text``: its ``key = ...`` line, else the
    line of the nearest enclosing table or key found. A light scan of table headers and
    key lines (multi-line strings skipped), enough to point an operator at a line."""
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}  # array-of-tables path (no indexes) -> entries so far
    table = ""
    in_string: str | None = None

    def resolve(dotted: str) -> str:
        out = ""
        for part in _key_parts(dotted):
            plain = f"{_plain(out)}.{part}" if out else part
            out = f"{out}.{part}" if out else part
            if plain in arrays:
                out += f"[{arrays[plain] - 1}]"
        return out

    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if in_string:
            if stripped.count(in_string) % 2:
                in_string = None
            continue
        if stripped.startswith("[["):
            name = stripped[2:].split("]]", 1)[0].strip()
            parent = resolve(name.rsplit(".", 1)[0]) + "." if "." in name else ""
            plain = _plain(parent) + _key_parts(name)[-1]
            arrays[plain] = arrays.get(plain, 0) + 1
            table = resolve(name)
            lines.setdefault(table, number)
            lines.setdefault(_plain(table), number)
        elif stripped.startswith("["):
            table = resolve(stripped[1:].split("]", 1)[0].strip())
            lines.setdefault(table, number)
        elif "=" in stripped and not stripped.startswith("#"):
            name = stripped.split("=", 1)[0].strip()
            if name and all(c.isalnum() or c in "_-.'\" \t" for c in name):
                full = f"{table}.{'.'.join(_key_parts(name))}" if table else name
                lines.setdefault(full, number)
                lines.setdefault(_plain(full), number)
            for quote in ('"""', "'''"):
                if stripped.count(quote) % 2:
                    in_string = quote
    probe = key
    while probe:
        if probe in lines:
            return lines[probe]
        if probe.endswith("]"):
            probe = probe[: probe.rindex("[")]
        else:
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
    return None


def _key_parts(dotted: str) -> list[str]:
    """``a."b.c".d`` -> ``["a", "b.c", "d"]`` (TOML dotted keys, quotes removed)."""
    parts, current, quote = [], "", ""
    for c in dotted:
        if quote:
            if c == quote:
                quote = ""
            else:
                current += c
        elif c in "\"'":
            quote = c
        elif c == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += c
    parts.append(current.strip())
    return parts


def _plain(path: str) -> str:
    """``destinations[1].tls`` -> ``destinations.tls``."""
    out, depth = "", 0
    for c in path:
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif not depth:
            out += c
    return out
