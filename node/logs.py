"""Logging set-up: human text or JSON lines, one line per event.

Each record may carry structured fields passed with ``extra={"fields": {...}}`` (file,
SOP Instance UID, destination, outcome ...); both formats print them. pynetdicom's logger
only has a NullHandler by default, so its warnings (e.g. a dropped C-STORE response) are
silent unless a real handler is attached: ``setup_logging`` attaches ours to it too.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

#: ``node.log_level`` / ``--log-level`` and ``node.log_format`` / ``--log-format`` values
#: (``node.config`` spells the same as Literal types; a test keeps them equal).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")

_HANDLER_NAME = "dicom-node"
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        import json  # here: a short command logging text never needs it (~1.5 ms of imports)

        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Classic text lines with ``key=value`` structured fields appended (logfmt quoting)."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return line


def _text_value(value: Any) -> str:
    """A field value as logfmt writes it: bare when it is one word, else a quoted string
    (a reason or a path with spaces would otherwise run into the next ``key=value``)."""
    text = str(value)
    if text and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    import json

    return json.dumps(text, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Configure the root logger (and pynetdicom's) for the CLI and the service.

    Calling it again replaces the handler it installed before, and only that one.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:  # ours from an earlier call; others stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python warnings (e.g. watchdog's) go through logging too: with --log-format json every
    # line on stderr stays one JSON object.
    logging.captureWarnings(True)
    # pynetdicom is chatty at INFO/DEBUG; keep its warnings and errors visible.
    pnd = logging.getLogger("pynetdicom")
    pnd.setLevel(logging.WARNING if root.level <= logging.WARNING else root.level)
    pydicom_log = logging.getLogger("pydicom")
    if _said_as_warning not in pydicom_log.filters:
        pydicom_log.addFilter(_said_as_warning)


def _said_as_warning(record: logging.LogRecord) -> bool:
    """Drop pydicom's log copy of a message it also raises as a Python warning
    (``pydicom.misc.warn_and_log``): the warning is logged anyway, by the exporter with
    the file it is about, or as ``py.warnings``; the copy made every such line appear twice.
    """
    return record.funcName != "warn_and_log"


def fields(**kwargs: Any) -> dict[str, Any]:
    """``extra=`` helper: ``log.info("stored", extra=fields(sop=uid, path=p))``."""
    return {"fields": {k: v for k, v in kwargs.items() if v is not None}}
