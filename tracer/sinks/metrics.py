"""Prometheus metrics for oomtrace events: a Sink that counts every finished event.

Metrics go into a registry passed in by the caller (never the process-wide default), so each
test builds its own. Labels are bounded: the Kubernetes/VM names an enrichment step may add to
an event, never a pid, uid or cgroup id. tracer.http.server serves the registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from tracer import __version__
from tracer.schema import (
    FIRST,
    KINDS,
    KMSG,
    LOSS_REASONS,
    MEMCG_OOM,
    NEAR_OOM,
    NEAR_OOM_PHASES,
    OOM_KILL,
    PROBE_TIERS,
    UNAVAILABLE,
)

# Label names of every per-event counter; values come from enrichment keys of the same name.
LABELS: Final = ("namespace", "pod", "container", "vm")

# What oomtrace_probe_info's tier label may say: a probe tier, unavailable, or the kernel log.
INFO_TIERS: Final = (*PROBE_TIERS, UNAVAILABLE, KMSG)

# near_oom fields summed into counters, with the factor that converts them to the metric's unit.
_NEAR_OOM_AMOUNTS: Final = (
    ("reclaim_calls", 1.0),
    ("charge_failures", 1.0),
    ("reclaim_time_ns", 1e-9),
    ("reclaimed_bytes", 1.0),
)


class Metrics:
    """Counters and gauges fed by the event pipeline, registered in `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        kernel: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry)

        self._memcg_ooms = counter("oomtrace_memcg_ooms_total", "Memory cgroup OOMs (OOM killer invoked).")
        self._oom_kills = counter("oomtrace_oom_kills_total", "Tasks killed by the OOM killer.")
        self._near_oom_events = counter(
            "oomtrace_near_oom_events_total", "Cgroups entering near-OOM (first charge failure after quiet)."
        )
        self._near_oom = {
            "reclaim_calls": counter(
                "oomtrace_near_oom_reclaims_total", "Memcg reclaims after a charge failed at the limit."
            ),
            "charge_failures": counter(
                "oomtrace_near_oom_charge_failures_total", "Charges that failed for good at the limit."
            ),
            "reclaim_time_ns": counter(
                "oomtrace_near_oom_reclaim_seconds_total", "Time spent in memcg reclaim near OOM."
            ),
            "reclaimed_bytes": counter(
                "oomtrace_near_oom_reclaimed_bytes_total", "Bytes reclaimed by memcg reclaim near OOM."
            ),
        }
        self._events = Counter(
            "oomtrace_events_total", "Events emitted, by kind.", ["event"], registry=registry
        )
        self._lost = Counter(
            "oomtrace_events_lost_total",
            "Events lost before they were emitted.",
            ["reason"],
            registry=registry,
        )
        # A VM pod's memory outside guest RAM, against what its limit leaves for it, as of its
        # last event with an overhead analysis (tracer/enrich/overhead.py).
        self._vm_non_guest = Gauge(
            "oomtrace_vm_non_guest_usage_bytes",
            "A VM pod's memory usage minus its guest RAM, at its last analysed event.",
            list(LABELS),
            registry=registry,
        )
        self._vm_budget = Gauge(
            "oomtrace_vm_overhead_budget_bytes",
            "What a VM pod's memory limit leaves beyond guest RAM (limit - guest memory).",
            list(LABELS),
            registry=registry,
        )
        self._headers_info = Gauge(
            "oomtrace_kernel_headers_info",
            "The header tree bcc compiled against (running kernel, kheaders, BCC_KERNEL_SOURCE, "
            "foreign <version>) and whether kernel struct offsets come from BTF.",
            ["origin", "btf"],
            registry=registry,
        )
        self._last_event = Gauge(
            "oomtrace_last_event_timestamp_seconds",
            "Unix time at which the last event was observed.",
            registry=registry,
        )
        self._probe_info = Gauge(
            "oomtrace_probe_info",
            "Attached probes: the tier each one runs on and its kernel target.",
            ["probe", "tier", "target"],
            registry=registry,
        )
        self._probes: set[tuple[str, str, str]] = set()
        build_info = Gauge(
            "oomtrace_build_info",
            "oomtrace version and running kernel.",
            ["version", "kernel"],
            registry=registry,
        )
        build_info.labels(__version__, kernel).set(1)

        # Series with known label values exist from the start, so rate() and absent() work before
        # the first event or loss.
        for kind in KINDS:
            self._events.labels(kind)
        for reason in LOSS_REASONS:
            self._lost.labels(reason)

    def start(self) -> None:
        """Nothing to start: the registry is served by the HTTP server."""

    def close(self) -> None:
        """Nothing to release: the registry outlives the pipeline until the process ends."""

    def flush(self) -> None:
        """Nothing buffered here: write() hands each event on at once."""

    def write(self, event: Mapping[str, Any]) -> None:
        """Count one event of tracer.schema; raise ValueError (counting nothing) if it is malformed."""
        kind = event.get("event")
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        amounts: list[tuple[Counter, float]] = []
        if kind == NEAR_OOM:
            phase = event.get("phase")
            if phase not in NEAR_OOM_PHASES:
                raise ValueError(f"unknown near_oom phase {phase!r}")
            for field, scale in _NEAR_OOM_AMOUNTS:
                value = event.get(field)
                if value is None:
                    continue
                if value < 0:
                    raise ValueError(f"near_oom {field} is negative: {value!r}")
                amounts.append((self._near_oom[field], value * scale))

        labels = [_label(event.get(name)) for name in LABELS]
        overhead = event.get("overhead")
        if isinstance(overhead, Mapping) and event.get("vm"):
            used, budget = overhead.get("non_guest_usage_bytes"), overhead.get("overhead_budget_bytes")
            if isinstance(used, int) and isinstance(budget, int):
                self._vm_non_guest.labels(*labels).set(used)
                self._vm_budget.labels(*labels).set(budget)
        self._events.labels(kind).inc()
        self._last_event.set(self._clock())
        if kind == MEMCG_OOM:
            self._memcg_ooms.labels(*labels).inc()
        elif kind == OOM_KILL:
            self._oom_kills.labels(*labels).inc()
        else:
            if event["phase"] == FIRST:
                self._near_oom_events.labels(*labels).inc()
            # The producer never reports the same reclaim in a "first" and a "summary" event.
            for metric, amount in amounts:
                metric.labels(*labels).inc(amount)

    def lost(self, reason: str, n: int) -> None:
        """Count `n` events lost for `reason`, one of schema.LOSS_REASONS."""
        if reason not in LOSS_REASONS:
            raise ValueError(f"unknown loss reason {reason!r} (expected one of {', '.join(LOSS_REASONS)})")
        if n < 0:
            raise ValueError(f"lost event count is negative: {n}")
        self._lost.labels(reason).inc(n)

    def set_headers(self, origin: str, btf: bool) -> None:
        """Which kernel header tree bcc compiled against, and whether struct offsets come from BTF."""
        self._headers_info.clear()
        self._headers_info.labels(origin, "true" if btf else "false").set(1)

    def set_probes(self, probes: Iterable[tuple[str, str, str]]) -> None:
        """Replace the probe_info series with one per (probe, tier, target)."""
        new = set(probes)
        for _probe, tier, _target in new:
            if tier not in INFO_TIERS:
                raise ValueError(f"unknown probe tier {tier!r} (expected one of {', '.join(INFO_TIERS)})")
        # Add before removing, so a concurrent scrape never sees an empty set of probes.
        for probe in new:
            self._probe_info.labels(*probe).set(1)
        for probe in self._probes - new:
            self._probe_info.remove(*probe)
        self._probes = new


def _label(value: object) -> str:
    return "" if value is None else str(value)
