"""Logging: edgeflow's own loggers at the configured level, text or JSON, secrets redacted.

Third-party libraries (asyncua, pymodbus, paho, ...) log warnings and errors only: at debug
level some of them print whole protocol messages, credentials included. Every secret revealed
to create a client goes through :func:`reveal`, which registers it; the formatter replaces any
registered secret in a formatted record (message and traceback) with ``***``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["OWN_LOGGERS", "JsonFormatter", "TextFormatter", "configure", "redact", "reveal"]

# The project's top-level packages: their loggers follow EDGEFLOW_LOG_LEVEL.
OWN_LOGGERS = ("edgeflow", "flows", "connectors", "operators", "simulators", "wire", "models")
# Libraries that log every failed attempt of what edgeflow reports once per state change.
QUIET = {"pymodbus": logging.CRITICAL, "asyncua": logging.CRITICAL}
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SECRETS: set[str] = set()
_LOCK = threading.Lock()


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


def reveal(secret: _Secret) -> str:
    """Return a secret's value for a client, and redact it from every log line from now on."""
    value = secret.get_secret_value()
    if value:
        with _LOCK:
            _SECRETS.add(value)
    return value


def redact(text: str) -> str:
    """Return ``text`` with every revealed secret replaced by ``***``."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class TextFormatter(logging.Formatter):
    """The usual text line, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the formatted record with secrets masked."""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"[, "exc"]}`` per record, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        doc = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, default=str))


def configure(*, level: str = "INFO", fmt: str = "text") -> None:
    """Send logs to stderr: edgeflow's at ``level``, others at WARNING, in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(_TEXT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(quiet)
