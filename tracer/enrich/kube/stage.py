"""The pipeline stage that names pods, waiting for the network no longer than `timeout_s`.

On a miss it asks for a refresh (one list in flight per source, whatever the number of pods
missed: no thundering herd in an OOM storm), waits for it up to the deadline of the first
event that missed, and then emits with what is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import Counter

from tracer.enrich.failures import ERROR, NOT_FOUND, TIMEOUT
from tracer.enrich.kube.cache import PodCache
from tracer.enrich.kube.source import Flight, Source
from tracer.enrich.vm.stage import PodHint

DEFAULT_TIMEOUT_S: Final = 0.1
# A pod that a finished refresh did not find is not refreshed for again before this.
MISS_RETRY_S: Final = 10.0


@dataclass
class _Miss:
    flight: Flight
    deadline: float
    asked_at: float


class KubeStage:
    """Adds namespace, pod, container, labels, annotations, owner (and qos if the path had none)."""

    def __init__(
        self,
        cache: PodCache,
        source: Source | None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        failures: Counter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self._source = source
        self._timeout = timeout_s
        self._failures = failures
        self._clock = clock
        self._misses: dict[str, _Miss] = {}

    def start(self) -> None:
        """Starts the pod source this stage answers from (its list and watch threads)."""
        if self._source is not None:
            self._source.start()

    def close(self) -> None:
        if self._source is not None:
            self._source.close()

    def pod_hint(self, pod_uid: str) -> PodHint | None:
        """For the VM stage: what the pod's labels say about a VM (no waiting)."""
        pod, _ = self.cache.lookup(pod_uid, None)
        if pod is None:
            return None
        vm = f"{pod.namespace}/{pod.vmi}" if pod.virt_launcher and pod.vmi else None
        return PodHint(pod.virt_launcher, vm)

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        uid, cid = event.get("pod_uid"), event.get("container_id")
        if uid is None and cid is None:
            return event
        try:
            pod, container = self.cache.lookup(uid, cid)
            reason = None
            if pod is None or (cid is not None and container is None):
                flight = self._refresh(str(cid or uid))
                pod, container = self.cache.lookup(uid, cid)
                if pod is None or (cid is not None and container is None):
                    reason = _reason(flight)
        except Exception:
            pod, container, reason = None, None, ERROR
        if reason is not None and self._failures is not None:
            self._failures.labels("kube", reason).inc()
        if pod is None:
            return event
        event["namespace"] = pod.namespace
        event["pod"] = pod.name
        event["container"] = container
        event["labels"] = dict(pod.labels)
        event["annotations"] = dict(pod.annotations)
        event["owner"] = dict(pod.owner) if pod.owner else None
        if event.get("qos") is None:
            event["qos"] = pod.qos
        return event

    def _refresh(self, key: str) -> Flight | None:
        """Ask for (or join) a refresh for `key` and wait for it, never past the first asker's deadline."""
        if self._source is None:
            return None
        now = self._clock()
        miss = self._misses.get(key)
        if miss is None or (miss.flight.done.is_set() and now - miss.asked_at >= MISS_RETRY_S):
            miss = _Miss(self._source.request_refresh(), now + self._timeout, now)
            self._misses[key] = miss
            if len(self._misses) > 4096:
                self._misses = {k: m for k, m in self._misses.items() if now - m.asked_at < MISS_RETRY_S}
        remaining = miss.deadline - now
        if remaining > 0:
            miss.flight.done.wait(remaining)
        return miss.flight


def _reason(flight: Flight | None) -> str:
    if flight is None:
        return NOT_FOUND
    if not flight.done.is_set():
        return TIMEOUT
    return flight.error or NOT_FOUND
