"""The tracer's own log on stderr (probe tiers chosen, warnings, errors), one JSON object per line,
kept off the event stream on stdout."""

import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from tracer.timefmt import now_rfc3339


def _diagnostic_fields(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    message = event_dict.pop("event")
    return {"ts": now_rfc3339(), "level": method, "msg": message, **event_dict}


def stderr_log(stream: TextIO | None = None) -> Any:
    """The tracer's own log (probe tiers chosen, errors), kept off the event stream."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=[_diagnostic_fields, structlog.processors.JSONRenderer()],
    )
