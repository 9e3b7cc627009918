"""JSON lines via structlog: events on stdout (the product), diagnostics on stderr."""

import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from tracer import schema
from tracer.timefmt import now_rfc3339

_FIRST_KEYS = ("event", "ts", "node", "tier")


def _schema_order(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """Stable key order: kind and time first, then the kind's fields as schema.py lists them."""
    ordered = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _diagnostic_fields(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    message = event_dict.pop("event")
    return {"ts": now_rfc3339(), "level": method, "msg": message, **event_dict}


class EventWriter:
    """One JSON object per line, flushed per event (structlog's PrintLogger flushes)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._log = structlog.wrap_logger(
            structlog.PrintLogger(stream or sys.stdout),
            processors=[_schema_order, structlog.processors.JSONRenderer()],
        )

    def write(self, event: dict[str, Any]) -> None:
        fields = dict(event)
        kind = fields.pop("event")
        if kind not in schema.KINDS:
            raise ValueError(f"not an event kind: {kind!r}")
        self._log.msg(kind, **fields)


def diagnostics(stream: TextIO | None = None) -> Any:
    """The tracer's own log (probe tiers chosen, errors), kept off the event stream."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=[_diagnostic_fields, structlog.processors.JSONRenderer()],
    )
