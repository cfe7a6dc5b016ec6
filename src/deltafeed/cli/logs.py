"""How the command line logs: plain text for a terminal, or one JSON object per line for a log
collector (``--log-format json``: journald, Docker, Loki, CloudWatch read fields, not prose).

A JSON line holds ``time`` (ISO 8601, UTC, milliseconds), ``level`` (lower case), ``logger``,
``message`` and, when an exception is logged, ``exception`` (its traceback as one string). Nothing
else: log lines never carry secrets, and the formatter adds none.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys

import msgspec

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "setup_logging"]

#: ``--log-level`` choices, by name.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
#: ``--log-format`` choices.
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(doc).decode()


def setup_logging(level: str, fmt: str) -> None:
    """Log to stderr at ``level`` (a :data:`LEVELS` name) in ``fmt`` (a :data:`FORMATS` name).

    As :func:`logging.basicConfig`: where the root logger has handlers already (a host program, a
    test runner capturing logs), they are left as they are."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=LEVELS[level], handlers=[handler])
    # picows logs every frame at debug: only when deltafeed itself is asked for debug.
    logging.getLogger("picows").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
