"""The stdout sink: one JSON object per event, via structlog (the product; diagnostics go to stderr,
tracer/diagnostics.py)."""

import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from tracer import schema

_FIRST_KEYS = ("event", "ts", "node", "tier")


def _schema_order(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """Stable key order: kind and time first, then the kind's fields as schema.py lists them."""
    ordered = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


class StdoutSink:
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

    def start(self) -> None:
        """Nothing to start: stdout is open."""

    def close(self) -> None:
        """Nothing to close: the stream belongs to the caller (sys.stdout by default)."""
