"""Configuration: frozen dataclasses loaded from one TOML file, every key validated.

The schema *is* the dataclasses below: each field's type and default is the reference.
``load_config`` walks the TOML tables against them, so an unknown key, a wrong type or a
value outside its choices is a :class:`~node.errors.ConfigError` naming the key, e.g.
``receive.port: expected an integer, got 'abc'``.

Relative paths are resolved against ``node.base_dir``, which itself is resolved against the
directory holding the config file (default: that directory).
"""

from __future__ import annotations

import dataclasses
import ipaddress  # loaded with pathlib (urllib.parse) anyway
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from node.errors import ConfigError, NodeError
from node.tomllines import key_line
from node.uids import DEFAULT_ROOT, uid_problem, validate_root


def check_ae(value: str, key: str) -> str:
    """``value`` if it is a usable AE title (PS3.5 AE: 1-16 ASCII characters, no backslash,
    not only spaces); ConfigError naming ``key`` otherwise. The SCU and SCP refuse the
    same titles on the wire, so refusing them here is only earlier."""
    if (
        not value
        or len(value) > 16
        or "\\" in value
        or not value.isascii()
        or not value.isprintable()
        or not value.strip()
    ):
        raise ConfigError(
            f"{key}: {value!r} is not a valid AE title "
            "(1-16 printable ASCII characters, no backslash, not only spaces)"
        )
    return value


@dataclass(frozen=True)
class NodeSection:
    """``[node]``: identity and housekeeping of this node."""

    base_dir: Path = Path(".")
    state_dir: Path = Path("var/state")
    ae_title: str = "DICOMNODE"
    uid_root: str = DEFAULT_ROOT
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class IngestSection:
    """``[ingest]``: the drop folder and image -> DICOM conversion."""

    enabled: bool = True
    inbox: Path = Path("var/inbox")
    work: Path = Path("var/work")
    done: Path = Path("var/done")
    quarantine: Path = Path("var/quarantine")
    outgoing: Path = Path("var/outgoing")
    sop_class: Literal["sc", "nsc", "vlp"] = "sc"
    conversion_type: str = "DI"
    keep_appn: bool = False
    strict: bool = False
    max_pixels: int = 200_000_000
    stable_seconds: float = 2.0
    incomplete_seconds: float = 60.0
    rescan_seconds: float = 10.0
    after_delivery: Literal["move", "delete"] = "move"
    filename_pattern: str = ""
    destinations: list[str] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueSection:
    """``[queue]``: the durable job store and the retry policy."""

    lease_seconds: float = 300.0
    retry_initial_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    retry_multiplier: float = 2.0
    retry_jitter: float = 0.2
    max_attempts: int = 0
    max_age_seconds: float = 7 * 24 * 3600.0
    workers_per_destination: int = 1
    batch_size: int = 200


@dataclass(frozen=True)
class TLSSettings:
    """TLS for one destination or for the SCP's TLS port."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_peer: bool = True
    check_hostname: bool = False


@dataclass(frozen=True)
class Destination:
    """``[[destinations]]``: a PACS (or any C-STORE SCP) to deliver to."""

    name: str
    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = ""
    max_pdu: int = 262_144
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    transfer_syntaxes: list[str] = field(default_factory=list)
    tls: TLSSettings = field(default_factory=TLSSettings)
    #: Who runs the association: "wire" (ours, the default when unset) or "pynetdicom"
    #: (slower; an escape hatch when a peer and our association do not get along).
    engine: Literal["wire", "pynetdicom"] | None = None


@dataclass(frozen=True)
class ForwardRule:
    """``[[receive.forward]]``: deliver received studies to a destination."""

    destination: str
    calling_ae: str = ""
    modality: str = ""


@dataclass(frozen=True)
class ReceiveSection:
    """``[receive]``: the C-STORE SCP."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "DICOMNODE"
    archive: Path = Path("var/archive")
    allowed_calling_aes: list[str] = field(default_factory=list)
    allowed_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    require_called_ae: bool = True
    duplicates: Literal["keep", "overwrite"] = "keep"
    min_free_bytes: int = 1_000_000_000
    chunk_threshold_bytes: int = 64 * 1024 * 1024
    max_associations: int = 16
    max_pdu: int = 262_144
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    study_quiet_seconds: float = 30.0
    tls_port: int = 0
    tls: TLSSettings = field(default_factory=TLSSettings)
    forward: list[ForwardRule] = field(default_factory=list)
    fsync: bool = True
    fast_path: bool = True
    #: Storage SOP classes accepted beyond the standard ones (private classes such as
    #: Siemens CSA Non-Image 1.3.12.2.1107.5.9.1), as storescp's association profile or
    #: Orthanc's AcceptedSopClasses.
    extra_sop_classes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportSection:
    """``[export]``: PNG and PDF rendering of received objects."""

    enabled: bool = True
    dir: Path = Path("var/export")
    png: bool = True
    pdf: Literal["series", "study", "none"] = "series"
    pdf_layout: Literal["page", "contact"] = "page"
    bits: Literal[8, 16] = 8
    deidentify: bool = False
    allow_patient_identifiers: bool = False
    date_shift_days: int = 0
    max_pixels: int = 200_000_000
    pdf_max_images: int = 250
    workers: int = 1
    date_policy: Literal["remove", "shift", "keep"] = "remove"
    keep_descriptions: bool = False
    overlays: bool = True
    icc: bool = False
    png_compress_level: int = 3
    manifest: Path | None = None


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: optional Prometheus endpoint (loopback only by default)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class Config:
    """The whole node configuration."""

    node: NodeSection = field(default_factory=NodeSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    queue: QueueSection = field(default_factory=QueueSection)
    destinations: list[Destination] = field(default_factory=list)
    receive: ReceiveSection = field(default_factory=ReceiveSection)
    export: ExportSection = field(default_factory=ExportSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    source: Path | None = None

    def destination(self, name: str) -> Destination:
        """The destination called ``name``; ConfigError listing the known ones otherwise."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"unknown destination {name!r} (known: {known})")


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}{_suggest(value, args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            hint = ""
            if isinstance(value, dict) and dataclasses.is_dataclass(args[0]):
                hint = f" (an array of tables: write [[{key}]], with double brackets, per entry)"
            raise ConfigError(f"{key}: expected a list, got {value!r}{hint}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return {str(k): _scalar_str(v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}{_unquote_hint(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}{_unquote_hint(value)}")
        if not math.isfinite(value):  # TOML has nan and inf; no key of ours means them
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_shown(value)}{_quote_hint(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        if value.startswith("~") or _names_a_variable(value):
            raise ConfigError(
                f"{key}: {value!r}: '~' and environment variables are not expanded; "
                "give the path itself (absolute, or relative to node.base_dir)"
            )
        return Path(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _names_a_variable(value: str) -> bool:
    """``$NAME`` or ``${NAME}`` somewhere in ``value`` (as a shell would expand it)."""
    for i, c in enumerate(value[:-1]):
        if c == "$" and (value[i + 1] == "{" or value[i + 1].isalpha() or value[i + 1] == "_"):
            return True
    return False


def _scalar_str(value: Any, key: str) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(
        f"{key}: expected a string or number, got {_shown(value)}{_quote_hint(value)}"
    )


def _shown(value: Any) -> str:
    """``value`` as the TOML file wrote it where Python's repr would not tell (dates)."""
    import datetime  # only on the error path (tomllib has imported it anyway)

    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return f"the TOML date/time {value.isoformat()}"
    return repr(value)


def _quote_hint(value: Any) -> str:
    """How to write ``value`` as the string a text key expects."""
    import datetime

    if isinstance(value, datetime.datetime):
        return (
            " (TOML reads an unquoted date and time as a date-time: quote it, as DICOM "
            f'writes it, e.g. "{value:%Y%m%d%H%M%S}")'
        )
    if isinstance(value, datetime.date):
        return (
            " (TOML reads an unquoted date as a date: quote it, as DICOM writes it, "
            f'e.g. "{value:%Y%m%d}")'
        )
    if isinstance(value, datetime.time):
        return (
            " (TOML reads an unquoted time as a time: quote it, as DICOM writes it, "
            f'e.g. "{value:%H%M%S}")'
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f' (quote it: "{value}")'
    return ""


def _unquote_hint(value: Any) -> str:
    """For a number written as a string: how to write it as a number."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (write the number without quotes: {value.strip()})"
    return ""


def _suggest(value: Any, known: Any) -> str:
    """`` (did you mean 'x'?)`` for a misspelt ``value`` among ``known``, else ''."""
    close = _closest(value, known)
    return f" (did you mean {close!r}?)" if close else ""


def _closest(value: Any, known: Any) -> str | None:
    """The entry of ``known`` that ``value`` most likely misspells (case first), or None."""
    if not isinstance(value, str):
        return None
    texts = [k for k in known if isinstance(k, str)]
    by_case = [k for k in texts if k.lower() == value.lower()]
    import difflib  # only on the error path

    close = by_case or difflib.get_close_matches(value, texts, n=1, cutoff=0.6)
    return close[0] if close else None


def _build(cls: Any, table: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(table) - names)
    if unknown:
        name = unknown[0]
        key = f"{prefix}.{name}" if prefix else name
        what = "key" if prefix else "section"
        known = ", ".join(sorted(names))
        close = _closest(name, names)
        hint = f"did you mean {close!r}? " if close else ""
        raise ConfigError(f"{key}: unknown {what} ({hint}known: {known})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{prefix}.{f.name}: required key is missing")
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        kwargs[f.name] = _coerce(table[f.name], hints[f.name], key)
    return cls(**kwargs)


def _resolve_paths(obj: Any, base: Path) -> Any:
    """Return ``obj`` with every relative Path field made absolute under ``base``."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in ("base_dir", "source"):
            continue
        if isinstance(value, Path):
            changes[f.name] = value if value.is_absolute() else (base / value)
        elif isinstance(value, list):
            changes[f.name] = [_resolve_paths(v, base) for v in value]
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _resolve_paths(value, base)
    return dataclasses.replace(obj, **changes)


def check_uid(value: str, key: str, example: str) -> str:
    """``value`` if it is a valid UID (PS3.5 9.1: 1-64 characters, digits and dots, no
    empty component, no component with a leading zero); ConfigError naming ``key``."""
    why = uid_problem(value)
    if why is not None:
        raise ConfigError(
            f"{key}: {value!r} is not a valid UID ({why}; PS3.5 9.1: at most 64 characters, "
            f"digits separated by dots, no leading zero in a component), e.g. {example}"
        )
    return value


def _host(value: str, key: str) -> None:
    if not value.strip() or any(c.isspace() for c in value) or not value.isprintable():
        raise ConfigError(
            f"{key}: {value!r} is not a host name or address (e.g. 127.0.0.1 or pacs.example.org)"
        )


def _port(value: int, key: str, *, zero: bool) -> None:
    low = 0 if zero else 1
    if not low <= value < 65536:
        raise ConfigError(f"{key}: {value} is not a TCP port ({low}-65535)")


def check_pdu(value: int, key: str) -> int:
    """``value`` if it is a maximum PDU length we can announce; ConfigError naming ``key``."""
    if value and not 4096 <= value <= 2**32 - 1:
        raise ConfigError(
            f"{key}: {value} is out of range (0 = no limit, or 4096 to 4294967295 bytes)"
        )
    return value


def _timeouts(section: Any, prefix: str) -> None:
    for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
        value = getattr(section, name)
        if value <= 0:
            raise ConfigError(f"{prefix}.{name}: {value:g} must be more than 0 seconds")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_host(a: str, b: str) -> bool:
    """Two bind/connect addresses that may reach the same listener on this machine."""
    wildcard = ("0.0.0.0", "::", "")
    return a == b or a in wildcard or b in wildcard or (is_loopback(a) and is_loopback(b))


def _validate_receive(cfg: Config) -> None:
    r = cfg.receive
    _host(r.host, "receive.host")
    _port(r.port, "receive.port", zero=True)
    _port(r.tls_port, "receive.tls_port", zero=True)
    if r.tls.enabled and r.tls_port and r.tls_port == r.port:
        raise ConfigError(
            f"receive.tls_port: {r.tls_port} is also receive.port: TLS needs its own port"
        )
    for i, ae in enumerate(r.allowed_calling_aes):
        check_ae(ae, f"receive.allowed_calling_aes[{i}]")
    for i, rule in enumerate(r.forward):
        if rule.calling_ae:
            check_ae(rule.calling_ae, f"receive.forward[{i}].calling_ae")
    check_pdu(r.max_pdu, "receive.max_pdu")
    _timeouts(r, "receive")
    if r.max_associations < 1:
        raise ConfigError(f"receive.max_associations: {r.max_associations} must be at least 1")
    if r.chunk_threshold_bytes <= 0:
        raise ConfigError(
            f"receive.chunk_threshold_bytes: {r.chunk_threshold_bytes} must be positive "
            "(bytes of a data set kept in memory before it goes to disk)"
        )
    if r.min_free_bytes < 0:
        raise ConfigError(f"receive.min_free_bytes: {r.min_free_bytes} must be 0 or more")
    for i, uid in enumerate(r.extra_sop_classes):
        check_uid(
            uid,
            f"receive.extra_sop_classes[{i}]",
            "1.3.12.2.1107.5.9.1 for Siemens CSA Non-Image",
        )


def _validate_ports(cfg: Config) -> None:
    """Listeners of this node that would take the same port (the second one cannot start)."""
    listeners: list[tuple[str, str, int]] = []
    if cfg.receive.enabled:
        if cfg.receive.port:
            listeners.append(("receive.port", cfg.receive.host, cfg.receive.port))
        if cfg.receive.tls.enabled and cfg.receive.tls_port:
            listeners.append(("receive.tls_port", cfg.receive.host, cfg.receive.tls_port))
    if cfg.metrics.enabled and cfg.metrics.port:
        listeners.append(("metrics.port", cfg.metrics.host, cfg.metrics.port))
    for i, (key, host, port) in enumerate(listeners):
        for other, other_host, other_port in listeners[:i]:
            if port == other_port and _same_host(host, other_host):
                raise ConfigError(f"{key}: {port} is also {other}: give each listener its own port")


def _validate_self_destination(cfg: Config, i: int, dest: Destination) -> None:
    """A destination that is this node's own SCP must be one that SCP admits."""
    r = cfg.receive
    if not (r.enabled and r.port and dest.port == r.port and _same_host(dest.host, r.host)):
        return
    key = f"destinations[{i}]"
    if r.require_called_ae and dest.called_ae != r.ae_title:
        raise ConfigError(
            f"{key}.called_ae: {dest.called_ae!r} but {dest.host}:{dest.port} is this node's "
            f"own SCP, whose AE title is receive.ae_title = {r.ae_title!r}: every delivery "
            "would be refused. Set called_ae to it (or point the destination elsewhere)"
        )
    calling = dest.calling_ae or cfg.node.ae_title
    if r.allowed_calling_aes and calling not in r.allowed_calling_aes:
        raise ConfigError(
            f"{key}.calling_ae: {calling!r} is not in receive.allowed_calling_aes, but "
            f"{dest.host}:{dest.port} is this node's own SCP: every delivery would be refused"
        )


def _validate(cfg: Config) -> None:
    try:
        validate_root(cfg.node.uid_root)
    except ConfigError as exc:
        raise ConfigError(f"node.{exc}") from None
    check_ae(cfg.node.ae_title, "node.ae_title")
    check_ae(cfg.receive.ae_title, "receive.ae_title")
    names: set[str] = set()
    for i, dest in enumerate(cfg.destinations):
        key = f"destinations[{i}]"
        if not dest.name.strip():
            raise ConfigError(f"{key}.name: empty; give each destination a name")
        if dest.name in names:
            raise ConfigError(f"{key}.name: {dest.name!r} is used twice; names must be unique")
        names.add(dest.name)
        _host(dest.host, f"{key}.host")
        check_ae(dest.called_ae, f"{key}.called_ae")
        if dest.calling_ae:
            check_ae(dest.calling_ae, f"{key}.calling_ae")
        _port(dest.port, f"{key}.port", zero=False)
        check_pdu(dest.max_pdu, f"{key}.max_pdu")
        _timeouts(dest, key)
        for j, uid in enumerate(dest.transfer_syntaxes):
            check_uid(
                uid,
                f"{key}.transfer_syntaxes[{j}]",
                "1.2.840.10008.1.2.1 for Explicit VR Little Endian",
            )
        _validate_self_destination(cfg, i, dest)
    for name in cfg.ingest.destinations:
        if name not in names:
            known = ", ".join(sorted(names)) or "none configured"
            raise ConfigError(f"ingest.destinations: unknown destination {name!r} (known: {known})")
    for i, rule in enumerate(cfg.receive.forward):
        if rule.destination not in names:
            known = ", ".join(sorted(names)) or "none configured"
            raise ConfigError(
                f"receive.forward[{i}].destination: unknown {rule.destination!r} (known: {known})"
            )
    for i, net in enumerate(cfg.receive.allowed_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"receive.allowed_networks[{i}]: {exc}") from None
    _validate_receive(cfg)
    _host(cfg.metrics.host, "metrics.host")
    _port(cfg.metrics.port, "metrics.port", zero=True)
    _validate_ports(cfg)
    if cfg.ingest.filename_pattern:
        import re

        try:
            re.compile(cfg.ingest.filename_pattern)
        except re.error as exc:
            raise ConfigError(f"ingest.filename_pattern: not a valid regex: {exc}") from None
    if cfg.ingest.max_pixels <= 0:
        raise ConfigError(f"ingest.max_pixels: {cfg.ingest.max_pixels} must be positive")
    if cfg.export.max_pixels <= 0:
        raise ConfigError(f"export.max_pixels: {cfg.export.max_pixels} must be positive")
    if cfg.export.pdf_max_images <= 0:
        raise ConfigError(
            f"export.pdf_max_images: {cfg.export.pdf_max_images} must be positive "
            "(images per PDF; more are split into parts)"
        )
    q = cfg.queue
    for key, value, low, high in (
        ("queue.retry_jitter", q.retry_jitter, 0.0, 1.0),
        # 0 made a failing job due again at once: a busy loop against a failing peer.
        ("queue.retry_initial_seconds", q.retry_initial_seconds, MIN_RETRY_SECONDS, None),
        ("queue.retry_max_seconds", q.retry_max_seconds, q.retry_initial_seconds, None),
        ("queue.retry_multiplier", q.retry_multiplier, 1.0, None),
        ("queue.lease_seconds", q.lease_seconds, 1.0, None),
        ("queue.batch_size", q.batch_size, 1, 100_000),
        ("queue.workers_per_destination", q.workers_per_destination, 1, 64),
        ("queue.max_attempts", q.max_attempts, 0, None),
        ("queue.max_age_seconds", q.max_age_seconds, 0.0, None),
        ("ingest.stable_seconds", cfg.ingest.stable_seconds, 0.0, None),
        ("ingest.rescan_seconds", cfg.ingest.rescan_seconds, 0.1, None),
        ("ingest.incomplete_seconds", cfg.ingest.incomplete_seconds, 0.0, None),
        ("receive.study_quiet_seconds", cfg.receive.study_quiet_seconds, 0.0, None),
    ):
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{key}: {value} is out of range (must be {bound})")


MIN_RETRY_SECONDS = 0.1  # the shortest backoff: a failed job is never due again at once


def config_from_dict(table: dict[str, Any], base: Path, source: Path | None = None) -> Config:
    """Build and validate a Config from an already-parsed TOML table."""
    cfg = _build(Config, table, "")
    node_base = cfg.node.base_dir if cfg.node.base_dir.is_absolute() else base / cfg.node.base_dir
    node_base = node_base.resolve()
    cfg = _resolve_paths(cfg, node_base)
    cfg = dataclasses.replace(
        cfg, node=dataclasses.replace(cfg.node, base_dir=node_base), source=source
    )
    _validate(cfg)
    return cfg


def load_config(path: Path | str | None) -> Config:
    """Load ``path`` (TOML). ``None`` gives the built-in defaults rooted at the cwd."""
    if path is None:
        return config_from_dict({}, Path.cwd())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8: save it as such"
        ) from None
    import tomllib  # ~4 ms of imports: only when there is a file to parse

    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return config_from_dict(table, path.resolve().parent, source=path.resolve())
    except ConfigError as exc:
        raise located(exc, path, text) from None


def located(exc: NodeError, path: Path | None, text: str | None = None) -> NodeError:
    """``exc`` with the config file, and the line of the key it names, in front
    (``/etc/dicom-node/node.toml:12: receive.port: ...``), as compilers do; ``exc`` itself
    when there is no file (built-in defaults) or it already names one."""
    if path is None or str(exc).startswith(str(path)):
        return exc
    message = str(exc)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
    key = message.split(":", 1)[0] if ":" in message else ""
    if key.startswith("[") and key.endswith("]"):  # "[ingest.defaults]: ..."
        key = key[1:-1]
    line = key_line(text, key) if key and " " not in key else None
    where = f"{path}:{line}" if line else f"{path}"
    return ConfigError(f"{where}: {message}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (for ``check-config``)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return v

    out = conv(cfg)
    out.pop("source", None)
    return typing.cast(dict[str, Any], out)
