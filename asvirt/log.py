"""Structured logging for the library, routed through the standard ``logging`` module.

asvirt never prints. Its loggers are structlog loggers bound to context (domain name and UUID,
QEMU's pid, the operation) that hand each record to a stdlib logger under ``asvirt.``, which
has a NullHandler: an application sees asvirt's logs once it configures logging for them, and
nothing otherwise. Records below the logger's level are dropped before any formatting work.

Every record keeps its fields up to the handler: the message is readable on its own
(``QEMU started domain='vm1' pid=1234``), and the fields travel beside it as
``record.asvirt_fields`` (a dict) with the bare event text as ``record.asvirt_event``, so that a
JSON formatter (:class:`JsonFormatter`, or any that reads record attributes) emits them as
keys. :func:`configure_logging` sets up console or JSON output (the daemon uses it).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

import structlog

logging.getLogger("asvirt").addHandler(logging.NullHandler())


def _to_stdlib(
    logger: object, method: str, event_dict: structlog.typing.EventDict
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The stdlib call for a record: a readable message, the fields as record attributes."""
    event = str(event_dict.pop("event", ""))
    exc_info = event_dict.pop("exc_info", None)
    context = " ".join(f"{key}={value!r}" for key, value in sorted(event_dict.items()))
    kwargs: dict[str, Any] = {
        "extra": {"asvirt_event": event, "asvirt_fields": dict(event_dict)},
    }
    if exc_info:
        kwargs["exc_info"] = exc_info
    return ((f"{event} {context}" if context else event),), kwargs


_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.stdlib.filter_by_level,
    _to_stdlib,
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger writing to the stdlib logger ``name`` (which must be under asvirt)."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and every field as a key."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": getattr(record, "asvirt_event", record.getMessage()),
        }
        for key, value in getattr(record, "asvirt_fields", {}).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Send asvirt's logs to stderr, as readable lines (``console``) or JSON (``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("asvirt")
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


__all__ = ["JsonFormatter", "configure_logging", "get_logger"]
