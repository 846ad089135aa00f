"""Structured logging for the library, routed through the standard ``logging`` module.

asvirt never prints. Its loggers are structlog loggers bound to context (domain name and UUID,
QEMU's pid) that hand finished records to stdlib loggers under ``asvirt.``, which have a
NullHandler: an application sees asvirt's logs once it configures logging (or structlog's
``ProcessorFormatter``) for them, and nothing otherwise. Records below the logger's level are
dropped before any formatting work.
"""

from __future__ import annotations

import logging

import structlog

logging.getLogger("asvirt").addHandler(logging.NullHandler())


def _render(logger: object, method: str, event_dict: structlog.typing.EventDict) -> str:
    """``QEMU started domain='vm1' pid=1234 uuid='…'``: the message, then sorted context."""
    event = event_dict.pop("event", "")
    context = " ".join(f"{key}={value!r}" for key, value in sorted(event_dict.items()))
    return f"{event} {context}" if context else str(event)


_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.stdlib.filter_by_level,
    structlog.processors.format_exc_info,
    _render,
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger writing to the stdlib logger ``name`` (which must be under asvirt)."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
    )
