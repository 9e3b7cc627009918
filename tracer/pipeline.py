"""One event's way after decoding: cgroup paths and tags, the enrichment stages, then every sink.

    kernel ─ sources/ ─ decode ─┬─ resolve/  cgroup id → path → pod, container, runtime tags
                                ├─ enrich/   pod names, VM, memory snapshot, overhead advice
                                └─ sinks/    stdout, metrics, /events, Loki

Built once from the configuration (tracer/cli/run.py). Data flows one way: a stage adds fields
to the event it is given and returns it, a sink consumes the finished event; neither reaches
back into the source or into an earlier stage.
"""

from collections.abc import Callable, Sequence
from typing import Any, Protocol

Event = dict[str, Any]


class Stage(Protocol):
    """Adds fields to an event (never removes one). Runs on the event thread: it must answer from
    what it already knows, or wait at most a bounded, configured time."""

    def start(self) -> None:
        """Starts what the stage learns from in the background (a pod watch, a /proc scan)."""

    def __call__(self, event: Event) -> Event: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A consumer of finished events. write() must not block the event loop: a sink that talks to
    the network queues, and counts what it has to drop."""

    def start(self) -> None: ...

    def write(self, event: Event) -> None: ...

    def flush(self) -> None:
        """Hands on what write() buffered; called after each poll of the source."""

    def close(self) -> None: ...


class Pipeline:
    """All stages, then all sinks, for every event, in the order given."""

    def __init__(
        self, stages: Sequence[Stage], sinks: Sequence[Sink], on_close_error: Callable[[str, Exception], None]
    ) -> None:
        self.stages = tuple(stages)
        self.sinks = tuple(sinks)
        self._on_close_error = on_close_error
        self._started: list[Stage | Sink] = []

    def start(self) -> None:
        """Starts every stage and sink; if one cannot start, closes those already started and raises."""
        parts: list[Stage | Sink] = [*self.stages, *self.sinks]
        try:
            for part in parts:
                part.start()
                self._started.append(part)
        except BaseException:
            self.close()
            raise

    def publish(self, event: Event) -> None:
        for stage in self.stages:
            event = stage(event)
        for sink in self.sinks:
            sink.write(event)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        """Closes what was started, last first; one part failing to close does not stop the others."""
        while self._started:
            part = self._started.pop()
            try:
                part.close()
            except Exception as err:
                self._on_close_error(type(part).__name__, err)
