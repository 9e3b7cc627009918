"""The stdout sink: one JSON object per event, rendered by structlog (the product; diagnostics go
to stderr, tracer/diagnostics.py)."""

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
    """One JSON object per line. write() renders into a buffer and flush() writes the buffer at
    once: the daemon flushes after every poll, so the lines of one batch of kernel records leave in
    one write(2). A write per line to a pipe wakes its reader each time, and on a CPU crowded by
    reclaiming tasks every wake-up can cost the tracer its CPU for milliseconds (an OOM storm)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._render = structlog.processors.JSONRenderer()
        self._pending: list[str] = []

    def write(self, event: dict[str, Any]) -> None:
        if event.get("event") not in schema.KINDS:
            raise ValueError(f"not an event kind: {event.get('event')!r}")
        line = self._render(None, "msg", _schema_order(None, "msg", dict(event)))
        self._pending.append(line if isinstance(line, str) else line.decode())

    def flush(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        self._stream.write(text)
        self._stream.flush()

    def start(self) -> None:
        """Nothing to start: stdout is open."""

    def close(self) -> None:
        """Writes what is buffered; the stream belongs to the caller (sys.stdout by default)."""
        self.flush()
