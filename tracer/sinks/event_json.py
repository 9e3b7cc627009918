"""An event as one line of JSON, rendered once for every sink that sends that text (stdout and
/events): a kill with its memory snapshot takes ~40 µs to render, on the path to its line."""

import json
from typing import Any

_FIRST_KEYS = ("event", "ts", "node", "tier")


def schema_order(event: dict[str, Any]) -> dict[str, Any]:
    """Stable key order: kind and time first, then the kind's fields as the stages added them."""
    ordered = {key: event[key] for key in _FIRST_KEYS if key in event}
    ordered.update((key, value) for key, value in event.items() if key not in ordered)
    return ordered


class EventJson:
    """Renders an event, remembering the last one: the sinks of one pipeline are handed the same
    finished event in turn, and none changes it (tracer.pipeline.Sink)."""

    def __init__(self) -> None:
        self._event: dict[str, Any] | None = None  # held, so its id is never another event's
        self._text = ""

    def __call__(self, event: dict[str, Any]) -> str:
        if event is not self._event:
            self._text = json.dumps(schema_order(event), default=str)
            self._event = event
        return self._text
